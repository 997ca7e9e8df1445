//! Descriptors in etcd, one key per segment under a prefix, postcard-encoded.
//!
//! The engine's API is blocking while `etcd-client` is async: the store owns a one-thread tokio
//! runtime, runs each call on it and waits for the result, which works from plain threads and
//! from inside another runtime alike.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::MetadataStore;
use crate::descriptor::SegmentDescriptor;
use crate::TransferError;

/// A metadata store backed by etcd.
pub struct EtcdMetadataStore {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdMetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMetadataStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn etcd_err(what: &str, e: impl std::fmt::Display) -> TransferError {
    TransferError::Metadata(format!("etcd {what}: {e}"))
}

fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, TransferError> {
    futures::executor::block_on(runtime.spawn(fut)).map_err(|e| etcd_err("task", e))
}

impl EtcdMetadataStore {
    /// Connects to `endpoints`; keys are `prefix` + segment name.
    pub fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, TransferError> {
        if endpoints.is_empty() {
            return Err(TransferError::InvalidArgument(
                "etcd metadata needs at least one endpoint".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("te-etcd")
            .enable_all()
            .build()?;
        let eps = endpoints.to_vec();
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = run_on(
            &runtime,
            async move { Client::connect(eps, Some(opts)).await },
        )?
        .map_err(|e| etcd_err(&format!("connect to {endpoints:?}"), e))?;
        Ok(EtcdMetadataStore {
            runtime: Some(runtime),
            client,
            prefix: prefix.to_string(),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, TransferError> {
        match &self.runtime {
            Some(rt) => run_on(rt, fut),
            None => Err(TransferError::Metadata("etcd store shut down".into())),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }
}

impl Drop for EtcdMetadataStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Unlike a plain drop, this is allowed inside another runtime's context.
            rt.shutdown_background();
        }
    }
}

impl MetadataStore for EtcdMetadataStore {
    fn publish(&self, descriptor: &SegmentDescriptor) -> Result<(), TransferError> {
        let value = descriptor.encode()?;
        let key = self.key(&descriptor.name);
        let mut kv = self.client.kv_client();
        self.run(async move { kv.put(key, value, None).await })?
            .map_err(|e| etcd_err("put", e))?;
        Ok(())
    }

    fn fetch(&self, name: &str) -> Result<SegmentDescriptor, TransferError> {
        let key = self.key(name);
        let mut kv = self.client.kv_client();
        let resp = self
            .run(async move { kv.get(key, None).await })?
            .map_err(|e| etcd_err("get", e))?;
        match resp.kvs().first() {
            Some(kv) => SegmentDescriptor::decode(kv.value()),
            None => Err(TransferError::SegmentNotFound {
                name: name.to_string(),
                reason: format!("no key {:?} in etcd", self.key(name)),
            }),
        }
    }

    fn remove(&self, name: &str) -> Result<(), TransferError> {
        let key = self.key(name);
        let mut kv = self.client.kv_client();
        self.run(async move { kv.delete(key, None).await })?
            .map_err(|e| etcd_err("delete", e))?;
        Ok(())
    }
}
