//! Store client: the library inference workers link to put and get KV-cache objects in the
//! pool, in batches, with a result per key.

pub mod auto_batcher;
pub mod batch_policy;
pub mod merge;
pub mod metrics;
pub mod prometheus;
pub mod replica_choice;
pub mod staging_alloc;
