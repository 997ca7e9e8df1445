//! Wire types of the client ↔ master protocol (serde + postcard; no server code).
//!
//! Every batch call answers one result per input key, in input order
//! ([`BatchResult`]). [`ErrorCode`] keeps the original Mooncake numbering so that users moving
//! from it read the same codes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identifies one client process (store-client instance) for liveness and ownership.
pub type ClientId = uuid::Uuid;
/// Identifies one mounted segment.
pub type SegmentId = uuid::Uuid;

/// Protocol version exchanged in the handshake; bumped on any incompatible wire change.
pub const PROTOCOL_VERSION: u32 = 3;

/// Outcome of a batch call: the call itself may fail, otherwise one result per key.
pub type BatchResult<T> = Result<Vec<Result<T, ErrorCode>>, ErrorCode>;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal => $name:literal,)*) => {
        /// Store error codes, numbered as in Mooncake's `types.h`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant = $code,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The numeric code (Mooncake numbering).
            pub fn code(self) -> i32 {
                self as i32
            }

            /// The code for a number, `None` for numbers this version does not know.
            pub fn from_code(code: i32) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }

            /// The upper-case name Mooncake prints (`OBJECT_NOT_FOUND`).
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    /// Success (present for numbering parity; APIs use `Result`).
    Ok = 0 => "OK",
    /// Unexpected internal failure.
    InternalError = -1 => "INTERNAL_ERROR",
    /// Insufficient buffer space.
    BufferOverflow = -10 => "BUFFER_OVERFLOW",
    /// Shard index out of range.
    ShardIndexOutOfRange = -100 => "SHARD_INDEX_OUT_OF_RANGE",
    /// No such segment is mounted.
    SegmentNotFound = -101 => "SEGMENT_NOT_FOUND",
    /// A segment with this id is already mounted.
    SegmentAlreadyExists = -102 => "SEGMENT_ALREADY_EXISTS",
    /// Unknown client.
    ClientNotFound = -103 => "CLIENT_NOT_FOUND",
    /// No segment had room for the object (an eviction pass was triggered).
    NoAvailableHandle = -200 => "NO_AVAILABLE_HANDLE",
    /// Protocol version mismatch.
    InvalidVersion = -300 => "INVALID_VERSION",
    /// Empty or oversized key.
    InvalidKey = -400 => "INVALID_KEY",
    /// Write failed.
    WriteFail = -500 => "WRITE_FAIL",
    /// Invalid parameters.
    InvalidParams = -600 => "INVALID_PARAMS",
    /// This client may not do the operation (e.g. PutEnd by another writer).
    IllegalClient = -601 => "ILLEGAL_CLIENT",
    /// Invalid write (e.g. PutEnd on a complete object).
    InvalidWrite = -700 => "INVALID_WRITE",
    /// Invalid read.
    InvalidRead = -701 => "INVALID_READ",
    /// Invalid replica (e.g. a reported replica outside its segment).
    InvalidReplica = -702 => "INVALID_REPLICA",
    /// The object is still being written.
    ReplicaIsNotReady = -703 => "REPLICA_IS_NOT_READY",
    /// No such object.
    ObjectNotFound = -704 => "OBJECT_NOT_FOUND",
    /// The key already exists (objects are immutable).
    ObjectAlreadyExists = -705 => "OBJECT_ALREADY_EXISTS",
    /// A reader holds a lease on the object; retry later or use `force`.
    ObjectHasLease = -706 => "OBJECT_HAS_LEASE",
    /// Lease expired before the transfer completed.
    LeaseExpired = -707 => "LEASE_EXPIRED",
    /// Object has an ongoing replication task.
    ObjectHasReplicationTask = -708 => "OBJECT_HAS_REPLICATION_TASK",
    /// Object has no ongoing replication task.
    ObjectNoReplicationTask = -709 => "OBJECT_NO_REPLICATION_TASK",
    /// Replica not found.
    ReplicaNotFound = -710 => "REPLICA_NOT_FOUND",
    /// Replica already exists.
    ReplicaAlreadyExists = -711 => "REPLICA_ALREADY_EXISTS",
    /// Replica existed once but is gone.
    ReplicaIsGone = -712 => "REPLICA_IS_GONE",
    /// Data transfer failed.
    TransferFail = -800 => "TRANSFER_FAIL",
    /// The RPC could not be completed (connection lost, timeout, bad frame).
    RpcFail = -900 => "RPC_FAIL",
    /// etcd operation failed.
    EtcdOperationError = -1000 => "ETCD_OPERATION_ERROR",
    /// Key not found in etcd.
    EtcdKeyNotExist = -1001 => "ETCD_KEY_NOT_EXIST",
    /// etcd transaction failed.
    EtcdTransactionFail = -1002 => "ETCD_TRANSACTION_FAIL",
    /// etcd context cancelled.
    EtcdCtxCancelled = -1003 => "ETCD_CTX_CANCELLED",
    /// Not possible in the current status (e.g. a new leader still in its recovery window).
    UnavailableInCurrentStatus = -1010 => "UNAVAILABLE_IN_CURRENT_STATUS",
    /// Not possible in the current mode.
    UnavailableInCurrentMode = -1011 => "UNAVAILABLE_IN_CURRENT_MODE",
    /// File not found.
    FileNotFound = -1100 => "FILE_NOT_FOUND",
    /// File open failed.
    FileOpenFail = -1101 => "FILE_OPEN_FAIL",
    /// File read failed.
    FileReadFail = -1102 => "FILE_READ_FAIL",
    /// File write failed.
    FileWriteFail = -1103 => "FILE_WRITE_FAIL",
    /// File buffer is wrong.
    FileInvalidBuffer = -1104 => "FILE_INVALID_BUFFER",
    /// File lock failed.
    FileLockFail = -1105 => "FILE_LOCK_FAIL",
    /// Invalid file handle.
    FileInvalidHandle = -1106 => "FILE_INVALID_HANDLE",
    /// Bucket not found.
    BucketNotFound = -1200 => "BUCKET_NOT_FOUND",
    /// Bucket already exists.
    BucketAlreadyExists = -1201 => "BUCKET_ALREADY_EXISTS",
    /// Keys exceed bucket limit.
    KeysExceedBucketLimit = -1202 => "KEYS_EXCEED_BUCKET_LIMIT",
    /// Keys ultra limit.
    KeysUltraLimit = -1203 => "KEYS_ULTRA_LIMIT",
    /// Offload not enabled.
    UnableOffload = -1300 => "UNABLE_OFFLOAD",
    /// Unable offloading.
    UnableOffloading = -1301 => "UNABLE_OFFLOADING",
    /// Task not found.
    TaskNotFound = -1400 => "TASK_NOT_FOUND",
    /// Too many pending tasks.
    TaskPendingLimitExceeded = -1401 => "TASK_PENDING_LIMIT_EXCEEDED",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for ErrorCode {}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = i32::deserialize(d)?;
        ErrorCode::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown error code {code}")))
    }
}

/// A registered memory region a client contributes to the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Unique id chosen by the client.
    pub id: SegmentId,
    /// Transfer-engine segment name of the holder (`host:port` for P2P metadata); the part
    /// before the last `:` is taken as the host for distinct-host placement.
    pub name: String,
    /// First address of the region in the holder's address space.
    pub base: u64,
    /// Length of the region in bytes.
    pub size: u64,
}

/// How many replicas to place, where, and how the object is pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateConfig {
    /// Number of replicas wanted (best effort when fewer segments are available).
    pub replica_num: usize,
    /// Segment names tried first, in order.
    pub preferred_segments: Vec<String>,
    /// Soft pin: evicted only after unpinned objects, for the soft-pin TTL.
    pub soft_pin: bool,
    /// Hard pin: never evicted.
    pub hard_pin: bool,
    /// Object group of each item of a batch put, in item order (`""`: ungrouped); empty: no
    /// item is grouped. Any other length fails the whole call with INVALID_PARAMS. Members of
    /// a group share their last access and are evicted together (see `mooncake_master::groups`).
    pub group_ids: Vec<String>,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig {
            replica_num: 1,
            preferred_segments: Vec::new(),
            soft_pin: false,
            hard_pin: false,
            group_ids: Vec::new(),
        }
    }
}

impl ReplicateConfig {
    /// The group id of item `i` of a batch (`""`: ungrouped).
    pub fn group_id(&self, i: usize) -> &str {
        self.group_ids.get(i).map_or("", String::as_str)
    }
}

/// Whether a replica may be read yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaStatus {
    /// Allocated, being written (after PutStart, before PutEnd).
    Processing,
    /// Written and readable.
    Complete,
}

/// Where one replica lives: `[addr, addr+len)` in the holder's segment `segment_name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDescriptor {
    /// Transfer-engine segment name of the holder.
    pub segment_name: String,
    /// Mounted segment holding the replica.
    pub segment_id: SegmentId,
    /// Address inside the holder's segment.
    pub addr: u64,
    /// Length in bytes (the object size).
    pub len: u64,
    /// Processing or complete.
    pub status: ReplicaStatus,
}

/// Answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// The master does not know this client (TTL expired or new leader): remount segments.
    pub need_remount: bool,
    /// Leadership term of the answering master; changes on failover.
    pub view_version: u64,
    /// How long the read lease of a GetReplicaList lasts, in milliseconds: a reader must have
    /// finished moving an object's bytes within this time of asking for its replicas, since
    /// the master may reuse the space afterwards.
    pub lease_ttl_ms: u64,
}

/// An object a client reports on remount (after failover) so that the new leader keeps it
/// readable and never allocates over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldObject {
    /// Object key.
    pub key: String,
    /// Object size in bytes.
    pub size: u64,
    /// Replicas, as PutStart returned them.
    pub replicas: Vec<ReplicaDescriptor>,
}

/// A request from client to master. Clients build it with owned `String` keys; the server
/// decodes it with keys borrowed from the frame (`Request<&str>`), the same bytes either way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request<K = String> {
    /// Mount one segment.
    MountSegment { client: ClientId, segment: Segment },
    /// Re-register after NEED_REMOUNT or failover; `objects` are reported held objects.
    RemountSegments {
        client: ClientId,
        segments: Vec<Segment>,
        objects: Vec<HeldObject>,
    },
    /// Unmount one segment; its replicas are dropped.
    UnmountSegment {
        client: ClientId,
        segment: SegmentId,
    },
    /// Heartbeat.
    Ping { client: ClientId },
    /// Allocate replicas for new keys.
    BatchPutStart {
        client: ClientId,
        items: Vec<(K, u64)>,
        config: ReplicateConfig,
    },
    /// Mark written keys complete.
    BatchPutEnd { client: ClientId, keys: Vec<K> },
    /// Drop keys whose write failed.
    BatchPutRevoke { client: ClientId, keys: Vec<K> },
    /// Like PutStart, but overwrites complete objects (reusing buffers of equal size).
    BatchUpsertStart {
        client: ClientId,
        items: Vec<(K, u64)>,
        config: ReplicateConfig,
    },
    /// Replica lists of complete keys (grants read leases).
    BatchGetReplicaList { keys: Vec<K> },
    /// Whether keys exist and are complete (an access for eviction order; a read lease only
    /// where the master runs with `--exist-grants-lease`).
    BatchExistKey { keys: Vec<K> },
    /// Remove keys (leased or processing ones only with `force`).
    BatchRemove { keys: Vec<K>, force: bool },
    /// Remove every removable key.
    RemoveAll { force: bool },
    /// Remove every removable key that the regular expression `pattern` matches (anywhere in
    /// the key, as `regex::Regex::is_match`; anchor with `^...$`).
    RemoveByRegex { pattern: K, force: bool },
}

impl<K> Request<K> {
    /// Short operation name, used for metrics labels and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::MountSegment { .. } => "mount_segment",
            Request::RemountSegments { .. } => "remount_segments",
            Request::UnmountSegment { .. } => "unmount_segment",
            Request::Ping { .. } => "ping",
            Request::BatchPutStart { .. } => "batch_put_start",
            Request::BatchPutEnd { .. } => "batch_put_end",
            Request::BatchPutRevoke { .. } => "batch_put_revoke",
            Request::BatchUpsertStart { .. } => "batch_upsert_start",
            Request::BatchGetReplicaList { .. } => "batch_get_replica_list",
            Request::BatchExistKey { .. } => "batch_exist_key",
            Request::BatchRemove { .. } => "batch_remove",
            Request::RemoveAll { .. } => "remove_all",
            Request::RemoveByRegex { .. } => "remove_by_regex",
        }
    }

    /// Number of keys (or items) the request carries; 1 for non-batch calls.
    pub fn item_count(&self) -> usize {
        match self {
            Request::BatchPutStart { items, .. } | Request::BatchUpsertStart { items, .. } => {
                items.len()
            }
            Request::BatchPutEnd { keys, .. }
            | Request::BatchPutRevoke { keys, .. }
            | Request::BatchGetReplicaList { keys }
            | Request::BatchExistKey { keys }
            | Request::BatchRemove { keys, .. } => keys.len(),
            Request::RemountSegments {
                segments, objects, ..
            } => segments.len() + objects.len(),
            _ => 1,
        }
    }
}

/// A response from master to client, matched to its request by the frame's request id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Mount/unmount outcome.
    Unit(Result<(), ErrorCode>),
    /// Ping outcome.
    Ping(Result<PingResponse, ErrorCode>),
    /// Per-key replica lists (PutStart, UpsertStart, GetReplicaList).
    Replicas(BatchResult<Vec<ReplicaDescriptor>>),
    /// Per-key outcomes (PutEnd, PutRevoke, Remove, Remount objects).
    Units(BatchResult<()>),
    /// Per-key existence.
    Bools(BatchResult<bool>),
    /// A count (RemoveAll, RemoveByRegex).
    Count(Result<u64, ErrorCode>),
}

impl Response {
    /// The error of every key that failed alone in a call that succeeded as a whole (for
    /// per-key error metrics).
    pub fn key_errors(&self) -> impl Iterator<Item = ErrorCode> + '_ {
        fn failed<T>(r: &BatchResult<T>) -> impl Iterator<Item = ErrorCode> + '_ {
            r.iter().flatten().filter_map(|k| k.as_ref().err().copied())
        }
        let (a, b, c) = match self {
            Response::Replicas(r) => (Some(failed(r)), None, None),
            Response::Units(r) => (None, Some(failed(r)), None),
            Response::Bools(r) => (None, None, Some(failed(r))),
            _ => (None, None, None),
        };
        a.into_iter()
            .flatten()
            .chain(b.into_iter().flatten())
            .chain(c.into_iter().flatten())
    }

    /// Whether the call as a whole failed (for failure metrics).
    pub fn is_error(&self) -> bool {
        match self {
            Response::Unit(r) => r.is_err(),
            Response::Ping(r) => r.is_err(),
            Response::Replicas(r) => r.is_err(),
            Response::Units(r) => r.is_err(),
            Response::Bools(r) => r.is_err(),
            Response::Count(r) => r.is_err(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_keep_mooncake_numbers() {
        for &e in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(e.code()), Some(e));
            let bytes = postcard::to_allocvec(&e).unwrap();
            assert_eq!(postcard::from_bytes::<ErrorCode>(&bytes).unwrap(), e);
        }
        assert_eq!(ErrorCode::ObjectNotFound.code(), -704);
        assert_eq!(ErrorCode::NoAvailableHandle.code(), -200);
        assert_eq!(ErrorCode::RpcFail.code(), -900);
        assert_eq!(ErrorCode::from_code(12345), None);
        assert!(ErrorCode::ObjectHasLease
            .to_string()
            .contains("OBJECT_HAS_LEASE"));
    }

    #[test]
    fn unknown_error_code_is_a_decode_error() {
        let bytes = postcard::to_allocvec(&777i32).unwrap();
        assert!(postcard::from_bytes::<ErrorCode>(&bytes).is_err());
    }
}
