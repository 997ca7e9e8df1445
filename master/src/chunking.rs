//! Splitting one large batch call into several smaller ones, so that neither a request nor its
//! answer outgrows the frame limit; the pieces go out at once and their per-key results are
//! put back together in input order.

use std::future::Future;
use std::ops::Range;

use crate::proto::{BatchResult, ErrorCode};

/// How a batch is cut: keys per call and key bytes per call, at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Keys per call at most (at least 1 is always sent).
    pub max_keys: usize,
    /// Bytes of keys per call at most (a single larger key still goes alone).
    pub max_key_bytes: usize,
}

impl Default for ChunkLimits {
    /// 16,384 keys or 16 MiB of keys per call. A replica list costs about `R x (N + 31)`
    /// bytes for R replicas on segments with N-byte names, so a call of 16,384 keys answers
    /// well below the default 64 MiB frame limit for names up to a few KiB (the start calls
    /// also divide the keys by the replica count; see [`ChunkLimits::per_replicas`]).
    fn default() -> Self {
        ChunkLimits {
            max_keys: 16_384,
            max_key_bytes: 16 << 20,
        }
    }
}

impl ChunkLimits {
    /// The limits for calls whose answers carry `replicas` replica descriptors per key.
    pub fn per_replicas(self, replicas: usize) -> ChunkLimits {
        ChunkLimits {
            max_keys: (self.max_keys / replicas.max(1)).max(1),
            ..self
        }
    }
}

/// Consecutive ranges of `lens` (each item's key length) that respect `limits`.
pub fn chunk_bounds(
    lens: impl IntoIterator<Item = usize>,
    limits: ChunkLimits,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut keys, mut bytes) = (0, 0, 0);
    let mut n = 0;
    for (i, len) in lens.into_iter().enumerate() {
        if keys > 0 && (keys + 1 > limits.max_keys || bytes + len > limits.max_key_bytes) {
            out.push(start..i);
            (start, keys, bytes) = (i, 0, 0);
        }
        keys += 1;
        bytes += len;
        n = i + 1;
    }
    if n > start {
        out.push(start..n);
    }
    out
}

/// Runs `call` once per chunk of `items` (all at once) and joins the per-key results in
/// input order. A chunk whose call fails as a whole fails each of its keys, so the others'
/// results (keys already written, leases granted) still reach the caller.
pub async fn run_chunked<T, R, F, Fut>(
    items: Vec<T>,
    key_len: impl Fn(&T) -> usize,
    limits: ChunkLimits,
    call: F,
) -> BatchResult<R>
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = BatchResult<R>>,
{
    let bounds = chunk_bounds(items.iter().map(&key_len), limits);
    if bounds.len() <= 1 {
        return call(items).await;
    }
    let mut rest = items.into_iter();
    let chunks: Vec<Vec<T>> = bounds
        .iter()
        .map(|b| rest.by_ref().take(b.len()).collect())
        .collect();
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    let answers = futures::future::join_all(chunks.into_iter().map(call)).await;
    let mut out = Vec::with_capacity(sizes.iter().sum());
    for (size, answer) in sizes.into_iter().zip(answers) {
        match answer {
            Ok(per_key) if per_key.len() == size => out.extend(per_key),
            Ok(_) => out.extend((0..size).map(|_| Err(ErrorCode::RpcFail))),
            Err(code) => out.extend((0..size).map(|_| Err(code))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_keys: usize, max_key_bytes: usize) -> ChunkLimits {
        ChunkLimits {
            max_keys,
            max_key_bytes,
        }
    }

    #[test]
    fn start_calls_take_fewer_keys_per_replica() {
        assert_eq!(limits(100, 9).per_replicas(3), limits(33, 9));
        assert_eq!(limits(2, 9).per_replicas(8), limits(1, 9));
        assert_eq!(limits(10, 9).per_replicas(0), limits(10, 9));
    }

    #[test]
    fn bounds_respect_both_limits_and_cover_everything() {
        assert_eq!(chunk_bounds([1; 7], limits(3, 100)), vec![0..3, 3..6, 6..7]);
        assert_eq!(chunk_bounds([4, 4, 4, 4], limits(10, 8)), vec![0..2, 2..4]);
        // A key larger than the byte limit goes alone.
        assert_eq!(
            chunk_bounds([2, 50, 2], limits(10, 10)),
            vec![0..1, 1..2, 2..3]
        );
        assert!(chunk_bounds([0usize; 0], limits(3, 3)).is_empty());
        assert_eq!(
            chunk_bounds([1; 5], limits(0, 0)),
            vec![0..1, 1..2, 2..3, 3..4, 4..5]
        );
    }

    #[tokio::test]
    async fn results_come_back_in_input_order_and_a_failed_chunk_fails_its_keys() {
        let items: Vec<u32> = (0..10).collect();
        let r = run_chunked(
            items,
            |_| 1,
            limits(3, 100),
            |chunk: Vec<u32>| async move {
                if chunk.contains(&4) {
                    Err(ErrorCode::RpcFail)
                } else {
                    Ok(chunk.into_iter().map(|x| Ok(x * 10)).collect())
                }
            },
        )
        .await
        .unwrap();
        let want: Vec<Result<u32, ErrorCode>> = (0..10)
            .map(|x| {
                if (3..6).contains(&x) {
                    Err(ErrorCode::RpcFail)
                } else {
                    Ok(x * 10)
                }
            })
            .collect();
        assert_eq!(r, want);
    }

    #[tokio::test]
    async fn a_small_batch_is_one_call_and_keeps_a_whole_batch_error() {
        let r: BatchResult<u32> = run_chunked(
            vec![1u32, 2],
            |_| 1,
            limits(3, 100),
            |_c| async { Err(ErrorCode::InvalidParams) },
        )
        .await;
        assert_eq!(r, Err(ErrorCode::InvalidParams));
    }
}
