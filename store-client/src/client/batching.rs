//! Adapters that let the auto-batcher run single-key calls through the batch data paths.

use std::sync::Arc;

use crate::auto_batcher::BatchExecutor;
use crate::error::{ErrorCode, KeyError};
use crate::validate::{check_keys, KeyProblem};

use super::read::{ReadDst, ReadOut};
use super::write::WriteItem;
use super::Inner;

/// Runs collected single-key reads as one batch read.
pub(crate) struct ReadExecutor(pub(crate) Arc<Inner>);

impl BatchExecutor for ReadExecutor {
    type Request = (String, ReadDst);
    type Response = Result<ReadOut, KeyError>;

    async fn execute(&self, requests: Vec<(String, ReadDst)>) -> Vec<Result<ReadOut, KeyError>> {
        let (keys, dsts): (Vec<_>, Vec<_>) = requests.into_iter().unzip();
        self.0.read_keys(keys, dsts).await.0
    }
}

/// Runs collected single-key writes as one batch write (default replication).
pub(crate) struct WriteExecutor(pub(crate) Arc<Inner>);

impl BatchExecutor for WriteExecutor {
    type Request = WriteItem;
    type Response = Result<u64, KeyError>;

    async fn execute(&self, items: Vec<WriteItem>) -> Vec<Result<u64, KeyError>> {
        // Two callers may put the same key at once: the first goes on, the others fail alone.
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        let problems = check_keys(&keys, true);
        let mut results: Vec<Option<Result<u64, KeyError>>> = problems
            .iter()
            .map(|p| match p {
                Some(KeyProblem::Duplicate { .. }) => Some(Err(KeyError::new(
                    ErrorCode::ObjectAlreadyExists,
                    "another concurrent put of this key is in progress",
                ))),
                _ => None,
            })
            .collect();
        let (todo, idx): (Vec<WriteItem>, Vec<usize>) = items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_none())
            .map(|(i, it)| (it, i))
            .unzip();
        let written = self
            .0
            .write_items(&todo, &self.0.config.replicate, false)
            .await;
        for (i, r) in idx.into_iter().zip(written) {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(KeyError::new(ErrorCode::InternalError, "no result"))))
            .collect()
    }
}
