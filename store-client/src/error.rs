//! Results and errors: per key ([`KeyResult`], [`KeyError`] with a Mooncake [`ErrorCode`]) and
//! per client ([`ClientError`], for connecting and registration).

use std::time::Duration;

pub use mooncake_master::proto::ErrorCode;

use crate::buffers::RegisterError;

/// Why one key of a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KeyError {
    /// Mooncake error code.
    pub code: ErrorCode,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

impl KeyError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The outcome of one key of a call, with that key's own latency.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyResult<T> {
    /// The value (bytes moved, data, existence...) or the error.
    pub result: Result<T, KeyError>,
    /// Time from the call's start to this key's outcome.
    pub latency: Duration,
}

impl<T> KeyResult<T> {
    /// Whether the key succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The error code, `ErrorCode::Ok` on success.
    pub fn code(&self) -> ErrorCode {
        self.result.as_ref().err().map_or(ErrorCode::Ok, |e| e.code)
    }

    /// The success value, if any.
    pub fn value(&self) -> Option<&T> {
        self.result.as_ref().ok()
    }
}

/// Errors of the client as a whole (connect, registration, shutdown).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The master could not be reached or refused the handshake.
    #[error("cannot use the master at {addr}: {reason}; check the address and that it runs")]
    Master {
        /// Address tried.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The master refused (or could not be asked) a segment operation, `remove_all` or
    /// `remove_by_regex`.
    #[error("master refused {what}: {code}")]
    Refused {
        /// The operation.
        what: &'static str,
        /// Its error code.
        code: ErrorCode,
    },
    /// The transfer engine failed.
    #[error("transfer engine: {0}")]
    Engine(#[from] transfer_engine::TransferError),
    /// A buffer could not be registered.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// A configuration value is unusable.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The operation's task ended without an answer (runtime shut down).
    #[error("operation was cancelled before it finished (runtime shut down?)")]
    Cancelled,
}
