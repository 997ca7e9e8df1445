//! Handles of submitted calls: `submit_*` starts a call and returns at once, so the caller can
//! compute while the I/O runs, then polls or waits for the result.

use tokio::sync::oneshot;

use crate::buffers::BufferSlice;
use crate::client::Client;
use crate::error::{ClientError, KeyResult};

/// A call running in the background.
#[derive(Debug)]
pub struct OpHandle<T> {
    rx: oneshot::Receiver<T>,
}

impl<T: Send + 'static> OpHandle<T> {
    fn spawn<F>(runtime: &tokio::runtime::Handle, fut: F) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        runtime.spawn(async move {
            // The handle may have been dropped: nobody wants the result then.
            let _ = tx.send(fut.await);
        });
        Self { rx }
    }

    /// The result if the call has finished, without waiting. `Some(Err)` if it was cancelled.
    pub fn poll(&mut self) -> Option<Result<T, ClientError>> {
        match self.rx.try_recv() {
            Ok(v) => Some(Ok(v)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ClientError::Cancelled)),
        }
    }

    /// Waits for the result.
    pub async fn wait(self) -> Result<T, ClientError> {
        self.rx.await.map_err(|_| ClientError::Cancelled)
    }

    /// Waits for the result, blocking the thread (not from inside an async task).
    pub fn wait_blocking(self) -> Result<T, ClientError> {
        self.rx.blocking_recv().map_err(|_| ClientError::Cancelled)
    }
}

impl Client {
    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Starts [`Client::batch_put`] in the background.
    pub fn submit_batch_put(&self, items: Vec<(String, Vec<u8>)>) -> OpHandle<Vec<KeyResult<u64>>> {
        let c = self.clone();
        OpHandle::spawn(self.runtime(), async move { c.batch_put(&items).await })
    }

    /// Starts [`Client::batch_get`] in the background.
    pub fn submit_batch_get(&self, keys: Vec<String>) -> OpHandle<Vec<KeyResult<Vec<u8>>>> {
        let c = self.clone();
        OpHandle::spawn(self.runtime(), async move { c.batch_get(&keys).await })
    }

    /// Starts [`Client::batch_put_from`] in the background.
    pub fn submit_batch_put_from(
        &self,
        items: Vec<(String, BufferSlice)>,
    ) -> OpHandle<Vec<KeyResult<u64>>> {
        let c = self.clone();
        OpHandle::spawn(
            self.runtime(),
            async move { c.batch_put_from(&items).await },
        )
    }

    /// Starts [`Client::batch_get_into`] in the background.
    pub fn submit_batch_get_into(
        &self,
        items: Vec<(String, BufferSlice)>,
    ) -> OpHandle<Vec<KeyResult<u64>>> {
        let c = self.clone();
        OpHandle::spawn(
            self.runtime(),
            async move { c.batch_get_into(&items).await },
        )
    }

    /// Starts [`Client::batch_exists`] in the background.
    pub fn submit_batch_exists(&self, keys: Vec<String>) -> OpHandle<Vec<KeyResult<bool>>> {
        let c = self.clone();
        OpHandle::spawn(self.runtime(), async move { c.batch_exists(&keys).await })
    }

    /// Starts [`Client::batch_remove`] in the background.
    pub fn submit_batch_remove(&self, keys: Vec<String>) -> OpHandle<Vec<KeyResult<()>>> {
        let c = self.clone();
        OpHandle::spawn(self.runtime(), async move { c.batch_remove(&keys).await })
    }
}
