//! What a caller asks the engine to move, and what it reports back per request.

/// An opened remote (or the own) segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentHandle(pub u64);

/// A batch of requests submitted and completed together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchId(pub u64);

/// Direction of a one-sided transfer, seen from the initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// Copy target memory into local memory.
    Read,
    /// Copy local memory into target memory.
    Write,
}

/// One transfer: `len` bytes between local address `local_addr` and `target_offset` (an address
/// inside a buffer the target segment exported).
#[derive(Clone, Copy, Debug)]
pub struct TransferRequest {
    /// Read or write.
    pub op: OpCode,
    /// Local address, inside memory registered with this engine.
    pub local_addr: u64,
    /// The target segment.
    pub target: SegmentHandle,
    /// Address inside one of the target's exported buffers.
    pub target_offset: u64,
    /// Bytes to move.
    pub len: u64,
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferState {
    /// Submitted, not finished.
    Waiting,
    /// All bytes moved.
    Completed,
    /// Not done, with the reason; the target's memory was not touched when the reason is a
    /// range check.
    Failed(String),
    /// Not finished within the engine's `request_timeout`.
    TimedOut,
}

/// State of one request and the bytes it moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferStatus {
    /// The state.
    pub state: TransferState,
    /// Bytes transferred (the request's length once completed).
    pub bytes: u64,
}

impl TransferStatus {
    /// A request not finished yet.
    pub const WAITING: TransferStatus = TransferStatus {
        state: TransferState::Waiting,
        bytes: 0,
    };

    /// Completed with `bytes` moved.
    pub fn completed(bytes: u64) -> Self {
        TransferStatus {
            state: TransferState::Completed,
            bytes,
        }
    }

    /// Failed for `reason`.
    pub fn failed(reason: impl Into<String>) -> Self {
        TransferStatus {
            state: TransferState::Failed(reason.into()),
            bytes: 0,
        }
    }

    /// Timed out.
    pub fn timed_out() -> Self {
        TransferStatus {
            state: TransferState::TimedOut,
            bytes: 0,
        }
    }

    /// Whether the request is finished (any state but `Waiting`).
    pub fn is_done(&self) -> bool {
        self.state != TransferState::Waiting
    }
}
