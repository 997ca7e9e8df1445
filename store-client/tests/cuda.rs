//! Zero-copy puts and gets with GPU buffers, against a real embedded master and a second
//! client holding the pool (TCP, in this process): the layer-wise KV pattern of vLLM's
//! connector, where blocks live in GPU memory.
//!
//! Needs a CUDA device and driver; ignored elsewhere (`cargo test -p store-client --test cuda
//! -- --ignored`, or `scripts/gpu-check`).

use mooncake_master::{MasterConfig, MasterServer};
use store_client::{BufferSlice, Client, ClientConfig, Protocol};
use transfer_engine::gpu::{cuda, DeviceBuffer};

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i * 131 + j * 7 + (j >> 11)) as u8)
        .collect()
}

fn read_back(d: &DeviceBuffer, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    d.read(off, &mut v).unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a CUDA device"]
async fn cuda_batch_put_from_and_get_into_gpu_buffers() {
    gpu_round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a CUDA device"]
async fn cuda_gpu_buffers_through_same_host_shared_memory() {
    gpu_round_trip(true).await;
}

/// GPU buffers to and from a holder's pool: over TCP (staged through pinned host memory), or
/// with `shm` through the holder's mapped pool (copied by the driver from and to it).
async fn gpu_round_trip(shm: bool) {
    let master = MasterServer::start(MasterConfig::default()).await.unwrap();
    let addr = master.rpc_addr().to_string();
    let holder = Client::connect(
        ClientConfig::new(&addr)
            .protocol(Protocol::Tcp)
            .shared_memory(shm)
            .segment_size(64 << 20),
    )
    .await
    .unwrap();
    let worker = Client::connect(
        ClientConfig::new(&addr)
            .protocol(Protocol::Tcp)
            .shared_memory(shm)
            .segment_size(0),
    )
    .await
    .unwrap();

    // 32 layers x 4 blocks of 64 KiB, as one GPU allocation per direction.
    const BLOCK: usize = 64 << 10;
    const KEYS: usize = 128;
    let cuda = cuda().expect("a CUDA device");
    let mut src = cuda.alloc(0, KEYS * BLOCK).unwrap();
    let dst = cuda.alloc(0, KEYS * BLOCK).unwrap();
    for i in 0..KEYS {
        src.write(i * BLOCK, &value(i, BLOCK)).unwrap();
    }
    // SAFETY: both allocations outlive the client's use of them (unregistered below).
    unsafe {
        worker
            .register_buffer(src.ptr() as *mut u8, src.len())
            .unwrap();
        worker
            .register_buffer(dst.ptr() as *mut u8, dst.len())
            .unwrap();
    }
    let slice =
        |d: &DeviceBuffer, i: usize| BufferSlice::new(d.ptr() + (i * BLOCK) as u64, BLOCK as u64);
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("layer{}/block{}", i / 4, i % 4))
        .collect();

    let put: Vec<(&str, BufferSlice)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), slice(&src, i)))
        .collect();
    for (i, r) in worker.batch_put_from(&put).await.iter().enumerate() {
        assert!(r.is_ok(), "put {i}: {r:?}");
    }
    // The copying API on the holder sees the bytes that were in GPU memory.
    for i in [0, 77, KEYS - 1] {
        let got = holder.get(&keys[i]).await;
        assert_eq!(
            got.value().map(Vec::as_slice),
            Some(value(i, BLOCK).as_slice()),
            "key {i}"
        );
    }
    // Back into GPU memory, in reverse order, one batch.
    let get: Vec<(&str, BufferSlice)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), slice(&dst, KEYS - 1 - i)))
        .collect();
    for (i, r) in worker.batch_get_into(&get).await.iter().enumerate() {
        assert_eq!(r.value(), Some(&(BLOCK as u64)), "get {i}: {r:?}");
    }
    for i in 0..KEYS {
        assert!(
            read_back(&dst, (KEYS - 1 - i) * BLOCK, BLOCK) == value(i, BLOCK),
            "block {i} differs after the round trip through the pool"
        );
    }
    // One object scattered over two GPU ranges (one per half layer).
    let half = (BLOCK / 2) as u64;
    let parts = [
        BufferSlice::new(dst.ptr(), half),
        BufferSlice::new(dst.ptr() + 5 * BLOCK as u64, half),
    ];
    assert_eq!(
        worker.get_into_parts(&keys[9], &parts).await.value(),
        Some(&(BLOCK as u64))
    );
    let mut joined = read_back(&dst, 0, BLOCK / 2);
    joined.extend(read_back(&dst, 5 * BLOCK, BLOCK / 2));
    assert!(joined == value(9, BLOCK), "scattered get differs");

    let through_shm = worker.metrics().shm.requests;
    if shm {
        assert!(
            through_shm > 0,
            "the pool was not reached through its mapping"
        );
    } else {
        assert_eq!(through_shm, 0);
    }
    worker.unregister_buffer(src.ptr() as *mut u8).unwrap();
    worker.unregister_buffer(dst.ptr() as *mut u8).unwrap();
}
