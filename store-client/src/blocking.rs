//! A blocking facade for callers without an async runtime: it owns a small tokio runtime and
//! runs each call of the async [`Client`] to completion.

use crate::buffers::BufferSlice;
use crate::client::Client;
use crate::config::{ClientConfig, ReplicateConfig};
use crate::error::{ClientError, KeyResult};
use crate::metrics::MetricsSnapshot;

/// Blocking store client. Do not use it from inside an async task.
pub struct BlockingClient {
    // Field order: the client (and its background tasks) goes before the runtime.
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient")
            .field("client", &self.client)
            .finish()
    }
}

impl BlockingClient {
    /// Starts a runtime and connects (see [`Client::connect`]).
    pub fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start a tokio runtime: {e}")))?;
        let client = runtime.block_on(Client::connect(config))?;
        Ok(Self { client, runtime })
    }

    /// The async client inside (for `submit_*` handles, which work from any thread).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// See [`Client::batch_replica_descriptors`].
    pub fn batch_replica_descriptors<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Vec<KeyResult<Vec<mooncake_master::proto::ReplicaDescriptor>>> {
        self.runtime
            .block_on(self.client.batch_replica_descriptors(keys))
    }

    /// See [`Client::put`].
    pub fn put(&self, key: &str, value: &[u8]) -> KeyResult<u64> {
        self.runtime.block_on(self.client.put(key, value))
    }
    /// See [`Client::get`].
    pub fn get(&self, key: &str) -> KeyResult<Vec<u8>> {
        self.runtime.block_on(self.client.get(key))
    }
    /// See [`Client::exists`].
    pub fn exists(&self, key: &str) -> KeyResult<bool> {
        self.runtime.block_on(self.client.exists(key))
    }
    /// See [`Client::remove`].
    pub fn remove(&self, key: &str) -> KeyResult<()> {
        self.runtime.block_on(self.client.remove(key))
    }
    /// See [`Client::upsert`].
    pub fn upsert(&self, key: &str, value: &[u8]) -> KeyResult<u64> {
        self.runtime.block_on(self.client.upsert(key, value))
    }
    /// See [`Client::batch_put`].
    pub fn batch_put<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
    ) -> Vec<KeyResult<u64>> {
        self.runtime.block_on(self.client.batch_put(items))
    }
    /// See [`Client::batch_put_with`].
    pub fn batch_put_with<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        self.runtime
            .block_on(self.client.batch_put_with(items, cfg))
    }
    /// See [`Client::batch_upsert`].
    pub fn batch_upsert<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
    ) -> Vec<KeyResult<u64>> {
        self.runtime.block_on(self.client.batch_upsert(items))
    }
    /// See [`Client::batch_upsert_with`].
    pub fn batch_upsert_with<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        self.runtime
            .block_on(self.client.batch_upsert_with(items, cfg))
    }
    /// See [`Client::batch_get`].
    pub fn batch_get<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<Vec<u8>>> {
        self.runtime.block_on(self.client.batch_get(keys))
    }
    /// See [`Client::batch_exists`].
    pub fn batch_exists<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<bool>> {
        self.runtime.block_on(self.client.batch_exists(keys))
    }
    /// See [`Client::get_size`].
    pub fn get_size(&self, key: &str) -> KeyResult<u64> {
        self.runtime.block_on(self.client.get_size(key))
    }
    /// See [`Client::batch_get_size`].
    pub fn batch_get_size<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<u64>> {
        self.runtime.block_on(self.client.batch_get_size(keys))
    }
    /// See [`Client::remove_all`].
    pub fn remove_all(&self, force: bool) -> Result<u64, ClientError> {
        self.runtime.block_on(self.client.remove_all(force))
    }
    /// See [`Client::remove_by_regex`].
    pub fn remove_by_regex(&self, pattern: &str, force: bool) -> Result<u64, ClientError> {
        self.runtime
            .block_on(self.client.remove_by_regex(pattern, force))
    }
    /// See [`Client::batch_remove`].
    pub fn batch_remove<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<()>> {
        self.runtime.block_on(self.client.batch_remove(keys))
    }
    /// See [`Client::batch_remove_with`].
    pub fn batch_remove_with<K: AsRef<str>>(&self, keys: &[K], force: bool) -> Vec<KeyResult<()>> {
        self.runtime
            .block_on(self.client.batch_remove_with(keys, force))
    }
    /// See [`Client::register_buffer`].
    ///
    /// # Safety
    /// As for [`Client::register_buffer`].
    pub unsafe fn register_buffer(&self, ptr: *mut u8, len: usize) -> Result<(), ClientError> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.client.register_buffer(ptr, len) }
    }
    /// See [`Client::unregister_buffer`].
    pub fn unregister_buffer(&self, ptr: *mut u8) -> Result<(), ClientError> {
        self.client.unregister_buffer(ptr)
    }
    /// See [`Client::registered_buffer_containing`].
    pub fn registered_buffer_containing(&self, addr: u64) -> Option<BufferSlice> {
        self.client.registered_buffer_containing(addr)
    }
    /// See [`Client::put_from`].
    pub fn put_from(&self, key: &str, buf: BufferSlice) -> KeyResult<u64> {
        self.runtime.block_on(self.client.put_from(key, buf))
    }
    /// See [`Client::get_into`].
    pub fn get_into(&self, key: &str, buf: BufferSlice) -> KeyResult<u64> {
        self.runtime.block_on(self.client.get_into(key, buf))
    }
    /// See [`Client::put_from_parts`].
    pub fn put_from_parts(&self, key: &str, parts: &[BufferSlice]) -> KeyResult<u64> {
        self.runtime
            .block_on(self.client.put_from_parts(key, parts))
    }
    /// See [`Client::get_into_parts`].
    pub fn get_into_parts(&self, key: &str, parts: &[BufferSlice]) -> KeyResult<u64> {
        self.runtime
            .block_on(self.client.get_into_parts(key, parts))
    }
    /// See [`Client::batch_put_from_parts`].
    pub fn batch_put_from_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        self.runtime
            .block_on(self.client.batch_put_from_parts(items, cfg))
    }
    /// See [`Client::batch_upsert_from_parts`].
    pub fn batch_upsert_from_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        self.runtime
            .block_on(self.client.batch_upsert_from_parts(items, cfg))
    }
    /// See [`Client::batch_get_into_parts`].
    pub fn batch_get_into_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
    ) -> Vec<KeyResult<u64>> {
        self.runtime
            .block_on(self.client.batch_get_into_parts(items))
    }
    /// See [`Client::batch_get_ranges`].
    pub fn batch_get_ranges<K: AsRef<str>>(
        &self,
        items: &[(K, u64, BufferSlice)],
    ) -> Vec<KeyResult<u64>> {
        self.runtime.block_on(self.client.batch_get_ranges(items))
    }
    /// See [`Client::batch_put_from`].
    pub fn batch_put_from<K: AsRef<str>>(&self, items: &[(K, BufferSlice)]) -> Vec<KeyResult<u64>> {
        self.runtime.block_on(self.client.batch_put_from(items))
    }
    /// See [`Client::batch_get_into`].
    pub fn batch_get_into<K: AsRef<str>>(&self, items: &[(K, BufferSlice)]) -> Vec<KeyResult<u64>> {
        self.runtime.block_on(self.client.batch_get_into(items))
    }
    /// See [`Client::metrics`].
    pub fn metrics(&self) -> MetricsSnapshot {
        self.client.metrics()
    }
    /// See [`Client::close`].
    pub fn close(&self) {
        self.runtime.block_on(self.client.close())
    }
}
