//! Errors of the transfer engine's API.
//!
//! Per-request failures (a bad remote range, a lost peer) are not errors of the call that
//! submitted them: they complete the request as `TransferState::Failed`. `TransferError` is for
//! calls that cannot proceed at all.

/// Error returned by [`crate::Engine`] calls.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// An argument is unusable (zero length, capacity exceeded, malformed name...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The range overlaps memory that is already registered.
    #[error("memory [{addr:#x}, +{len}) overlaps registered region [{existing_addr:#x}, +{existing_len}); unregister it first")]
    Overlap {
        /// Start of the rejected range.
        addr: u64,
        /// Length of the rejected range.
        len: u64,
        /// Start of the region it overlaps.
        existing_addr: u64,
        /// Length of the region it overlaps.
        existing_len: u64,
    },
    /// No registered region starts at this address.
    #[error("no registered memory starts at {0:#x}")]
    NotRegistered(u64),
    /// The segment is unknown to the metadata store, or its peer does not answer.
    #[error("segment {name:?} not found: {reason}")]
    SegmentNotFound {
        /// The segment name asked for.
        name: String,
        /// Why it could not be resolved.
        reason: String,
    },
    /// The handle does not name an opened segment.
    #[error("segment handle {0} is not open")]
    SegmentHandleInvalid(u64),
    /// The batch id is unknown (never allocated, or freed).
    #[error("batch {0} not found")]
    BatchNotFound(u64),
    /// The batch has no room for that many more requests.
    #[error("batch {batch} is full: capacity {capacity}, already {used}, asked for {asked} more")]
    BatchFull {
        /// The batch.
        batch: u64,
        /// Its capacity.
        capacity: usize,
        /// Requests already submitted to it.
        used: usize,
        /// Requests in the refused submit.
        asked: usize,
    },
    /// The batch still has requests in flight; wait for them first.
    #[error("batch {0} still has requests in flight; wait for it before freeing")]
    Busy(u64),
    /// An operating-system I/O error (listening socket, thread creation...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Metadata(String),
    /// The RDMA transport failed or is unavailable.
    #[error("RDMA: {0}")]
    Rdma(String),
}
