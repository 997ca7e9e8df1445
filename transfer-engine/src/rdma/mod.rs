//! RDMA transport. Placeholder until the RDMA implementation lands: RDMA is reported unusable,
//! so `Protocol::Auto` falls back to TCP and `Protocol::Rdma` is refused.
//!
//! The engine calls exactly these two functions; an implementation keeps their signatures and
//! returns a [`crate::transport::Transport`] (see that module's doc for the contract).

use std::sync::Arc;

use crate::transport::{Transport, TransportContext};
use crate::{RdmaConfig, TransferError};

/// Whether RDMA is usable with `config`; `Err` says why not (logged once by the engine).
pub fn probe(_config: &RdmaConfig) -> Result<(), String> {
    Err("this build has no RDMA transport yet".into())
}

/// Creates the RDMA transport for an engine.
pub fn new_transport(_ctx: &TransportContext) -> Result<Arc<dyn Transport>, TransferError> {
    Err(TransferError::Rdma(
        "this build has no RDMA transport yet".into(),
    ))
}
