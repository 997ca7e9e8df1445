//! GPU memory through the engine: registration checks, the memcpy transport between host and
//! device memory, and the TCP transport staging device bytes on both sides.
//!
//! These need a CUDA device and driver; they are ignored elsewhere (run them with
//! `cargo test -p transfer-engine --test cuda -- --ignored`, or `scripts/gpu-check`).

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use transfer_engine::gpu::{cuda, DeviceBuffer};
use transfer_engine::{
    gpu, AlignedBuffer, Engine, EngineConfig, Location, MetadataConfig, OpCode, Protocol,
    SegmentHandle, TransferError, TransferRequest, TransferState, TransferStatus,
};

const MIB: usize = 1 << 20;

fn engine(stripe: usize) -> Engine {
    engine_with(stripe, EngineConfig::default().tcp_connections_per_peer)
}

fn engine_with(stripe: usize, connections: usize) -> Engine {
    Engine::new(EngineConfig {
        metadata: MetadataConfig::P2p,
        protocol: Protocol::Tcp,
        request_timeout: Duration::from_secs(30),
        tcp_stripe_size: stripe,
        tcp_connections_per_peer: connections,
        ..Default::default()
    })
    .unwrap()
}

fn device(len: usize) -> DeviceBuffer {
    cuda().expect("a CUDA device").alloc(0, len).unwrap()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn read_back(d: &DeviceBuffer) -> Vec<u8> {
    let mut v = vec![0u8; d.len()];
    d.read(0, &mut v).unwrap();
    v
}

fn register_device(e: &Engine, d: &DeviceBuffer) {
    // SAFETY: the device buffer outlives the engine's use of it (each test drops the engines
    // first or unregisters).
    unsafe { e.register_memory(d.ptr() as *mut u8, d.len(), Location::Cuda(d.device())) }.unwrap();
}

fn register_host(e: &Engine, b: &mut AlignedBuffer) {
    // SAFETY: as above.
    unsafe { e.register_memory(b.as_mut_ptr(), b.len(), Location::Host) }.unwrap();
}

fn req(op: OpCode, local: u64, target: SegmentHandle, remote: u64, len: usize) -> TransferRequest {
    TransferRequest {
        op,
        local_addr: local,
        target,
        target_offset: remote,
        len: len as u64,
    }
}

fn run(e: &Engine, reqs: &[TransferRequest]) -> Vec<TransferStatus> {
    let b = e.allocate_batch(reqs.len()).unwrap();
    e.submit(b, reqs).unwrap();
    let st = e.wait(b).unwrap();
    e.free_batch(b).unwrap();
    st
}

fn all_completed(st: &[TransferStatus], reqs: &[TransferRequest]) {
    for (i, (s, r)) in st.iter().zip(reqs).enumerate() {
        assert_eq!(*s, TransferStatus::completed(r.len), "request {i}: {s:?}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_registration_checks_the_range_against_the_driver() {
    let e = engine(MIB);
    let d = device(MIB);
    assert_eq!(gpu::location_of(d.ptr()).unwrap(), Location::Cuda(0));
    let mut host = AlignedBuffer::new(4096).unwrap();
    assert_eq!(gpu::location_of(host.addr()).unwrap(), Location::Host);
    // SAFETY: every registration below is refused or undone before the buffers drop.
    unsafe {
        let past_end = e.register_memory(d.ptr() as *mut u8, MIB + 4096, Location::Cuda(0));
        assert!(
            matches!(&past_end, Err(TransferError::InvalidArgument(m)) if m.contains("is not device memory")),
            "{past_end:?}"
        );
        let host_as_gpu = e.register_memory(host.as_mut_ptr(), 4096, Location::Cuda(0));
        assert!(
            matches!(&host_as_gpu, Err(TransferError::InvalidArgument(m))
                if m.contains("first byte") && m.contains("not device memory")),
            "{host_as_gpu:?}"
        );
        let other = e.register_memory(d.ptr() as *mut u8, MIB, Location::Cuda(7));
        assert!(other.is_err(), "{other:?}");
    }
    // A range inside one allocation is fine.
    // SAFETY: unregistered below, before `d` drops.
    unsafe { e.register_memory((d.ptr() + 4096) as *mut u8, 8192, Location::Cuda(0)) }.unwrap();
    e.unregister_memory((d.ptr() + 4096) as *mut u8).unwrap();
    register_device(&e, &d);
    e.unregister_memory(d.ptr() as *mut u8).unwrap();
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_memcpy_transport_moves_bytes_between_host_and_device_memory() {
    let e = engine(MIB);
    let len = 3 * MIB + 123;
    let mut host = AlignedBuffer::new(len).unwrap();
    host.as_mut_slice().copy_from_slice(&random(len, 1));
    let d1 = device(len);
    let d2 = device(len);
    register_host(&e, &mut host);
    register_device(&e, &d1);
    register_device(&e, &d2);
    let me = e.open_segment(e.name()).unwrap();
    // host -> d1 (WRITE), d1 -> d2 (WRITE from device to device), then d2 -> host (READ)
    // into a zeroed host buffer.
    let reqs = [req(OpCode::Write, host.addr(), me, d1.ptr(), len)];
    all_completed(&run(&e, &reqs), &reqs);
    let reqs = [req(OpCode::Write, d1.ptr(), me, d2.ptr(), len)];
    all_completed(&run(&e, &reqs), &reqs);
    let expect = host.as_slice().to_vec();
    host.as_mut_slice().fill(0);
    let reqs = [req(OpCode::Read, host.addr(), me, d2.ptr(), len)];
    all_completed(&run(&e, &reqs), &reqs);
    assert!(host.as_slice() == expect.as_slice(), "host <- d2 differs");
    assert!(read_back(&d1) == expect, "d1 differs");

    // One batch of many small copies in all directions (one driver wait for the lot): host
    // pieces into d2 at shuffled places, d1 pieces into d2, d2 pieces back into host; plus a
    // range past d1's end that fails alone.
    let piece = 4096 + 3;
    let v = random(len, 9);
    host.as_mut_slice().copy_from_slice(&v);
    let n = 64;
    let mut reqs = Vec::new();
    for k in 0..n {
        let at = ((k * 37) % n) * piece;
        reqs.push(req(
            OpCode::Write,
            host.addr() + at as u64,
            me,
            d2.ptr() + at as u64,
            piece,
        ));
    }
    reqs.push(req(
        OpCode::Write,
        host.addr(),
        me,
        d1.ptr() + len as u64 - 8,
        16,
    ));
    // Overlapping source and destination in one GPU buffer: refused, not handed to the driver.
    reqs.push(req(OpCode::Write, d1.ptr(), me, d1.ptr() + 16, 64));
    let st = run(&e, &reqs);
    all_completed(&st[..n], &reqs[..n]);
    assert!(
        matches!(st[n].state, TransferState::Failed(_)),
        "{:?}",
        st[n]
    );
    assert!(
        matches!(&st[n + 1].state, TransferState::Failed(m) if m.contains("overlap")),
        "{:?}",
        st[n + 1]
    );
    assert!(
        read_back(&d2)[..n * piece] == v[..n * piece],
        "d2 after the batch"
    );
    drop(e);
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_tcp_stages_device_memory_on_both_sides() {
    // A 16 MiB stripe over one connection makes single frames larger than the server's 4 MiB
    // staging chunk and the initiator's 4 MiB receive arena.
    let a = engine_with(16 * MIB, 1);
    let b = engine(MIB);
    let len = 9 * MIB + 77;
    let mut host_a = AlignedBuffer::new(len).unwrap();
    let dev_a = device(len);
    let dev_b = device(len);
    let mut host_b = AlignedBuffer::new(len).unwrap();
    register_host(&a, &mut host_a);
    register_device(&a, &dev_a);
    register_device(&b, &dev_b);
    register_host(&b, &mut host_b);
    let seg_b = a.open_segment(b.name()).unwrap();

    // 1. host (a) -> device (b): the server stages into GPU memory, frames above its chunk.
    let v1 = random(len, 2);
    host_a.as_mut_slice().copy_from_slice(&v1);
    let reqs = [req(OpCode::Write, host_a.addr(), seg_b, dev_b.ptr(), len)];
    all_completed(&run(&a, &reqs), &reqs);
    assert!(read_back(&dev_b) == v1, "device b after host a -> device b");

    // 2. device (b) -> device (a) by READ, in pieces of random sizes and offsets: the server
    //    reads GPU memory, the initiator receives into GPU memory.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut reqs = Vec::new();
    let mut off = 0usize;
    while off < len {
        let n = rng.random_range(1..=3 * MIB).min(len - off);
        reqs.push(req(
            OpCode::Read,
            dev_a.ptr() + off as u64,
            seg_b,
            dev_b.ptr() + off as u64,
            n,
        ));
        off += n;
    }
    all_completed(&run(&a, &reqs), &reqs);
    assert!(
        read_back(&dev_a) == v1,
        "device a after device b -> device a"
    );

    // 2b. One READ of the whole GPU buffer of b into host memory: a single frame larger
    //     than the server's staging chunk, sent in chunks.
    host_a.as_mut_slice().fill(0);
    let reqs = [req(OpCode::Read, host_a.addr(), seg_b, dev_b.ptr(), len)];
    all_completed(&run(&a, &reqs), &reqs);
    assert!(
        host_a.as_slice() == v1.as_slice(),
        "host a after device b -> host a"
    );

    // 3. device (a) -> host (b) by WRITE: the initiator stages GPU bytes before sending.
    let v2 = random(len, 4);
    let mut d = dev_a;
    d.write(0, &v2).unwrap();
    let reqs = [req(OpCode::Write, d.ptr(), seg_b, host_b.addr(), len)];
    all_completed(&run(&a, &reqs), &reqs);
    assert!(
        host_b.as_slice() == v2.as_slice(),
        "host b after device a -> host b"
    );

    // 4. A range past the peer's GPU buffer fails alone; its neighbour completes.
    let reqs = [
        req(
            OpCode::Read,
            host_a.addr(),
            seg_b,
            dev_b.ptr() + len as u64 - 16,
            32,
        ),
        req(OpCode::Read, host_a.addr(), seg_b, dev_b.ptr(), 4096),
    ];
    let st = run(&a, &reqs);
    assert!(
        matches!(st[0].state, TransferState::Failed(_)),
        "{:?}",
        st[0]
    );
    assert_eq!(st[1], TransferStatus::completed(4096));
    assert!(host_a.as_slice()[..4096] == v1[..4096]);
    drop(a);
    drop(b);
}

/// Pieces of `len` bytes in total: sizes from 1 byte to 160 KiB, each local piece right after
/// the previous one except every seventh (a gap, which splits a run), each remote piece at a
/// shuffled place of the same layout. Returns (local offset, remote offset, len).
fn scattered_pieces(len: usize, seed: u64) -> Vec<(usize, usize, usize)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sizes = Vec::new();
    let mut used = 0;
    while used < len {
        let n = if rng.random_bool(0.7) {
            64 << 10
        } else {
            rng.random_range(1..=160 << 10)
        }
        .min(len - used);
        sizes.push(n);
        used += n;
    }
    let mut local = Vec::new();
    let mut at = 0;
    for (i, &n) in sizes.iter().enumerate() {
        local.push(at);
        at += n + if i % 7 == 6 { 4096 } else { 0 };
    }
    // Remote places: the same sizes laid out in a shuffled order.
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.shuffle(&mut rng);
    let mut remote = vec![0; sizes.len()];
    let mut r = 0;
    for &i in &order {
        remote[i] = r;
        r += sizes[i];
    }
    (0..sizes.len())
        .map(|i| (local[i], remote[i], sizes[i]))
        .collect()
}

/// One request per piece; `at(local offset, remote offset)` gives its (local, remote) address.
fn piece_reqs(
    pieces: &[(usize, usize, usize)],
    op: OpCode,
    target: SegmentHandle,
    at: impl Fn(u64, u64) -> (u64, u64),
) -> Vec<TransferRequest> {
    pieces
        .iter()
        .map(|&(l, r, n)| {
            let (local, remote) = at(l as u64, r as u64);
            req(op, local, target, remote, n)
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_tcp_merges_adjacent_gpu_ranges_and_keeps_every_byte() {
    // Many small pieces, mostly adjacent in GPU memory, over one connection: READ answers are
    // received into the connection's arena and copied up per run (more than two arenas'
    // worth, so it refills mid-batch); WRITE payloads and the server's answers to READs of
    // its GPU memory are staged per run. Every byte is checked.
    let a = engine_with(16 * MIB, 1);
    let b = engine(MIB);
    let len = 11 * MIB + 333;
    let span = 2 * len; // room for the gaps
    let pieces = scattered_pieces(len, 7);
    let dev_a = device(span);
    let dev_b = device(span);
    let mut host_a = AlignedBuffer::new(len).unwrap();
    let mut host_b = AlignedBuffer::new(len).unwrap();
    register_device(&a, &dev_a);
    register_host(&a, &mut host_a);
    register_device(&b, &dev_b);
    register_host(&b, &mut host_b);
    let seg_b = a.open_segment(b.name()).unwrap();

    // 1. READ from host memory of b into GPU memory of a.
    let v = random(len, 11);
    host_b.as_mut_slice().copy_from_slice(&v);
    let reqs = piece_reqs(&pieces, OpCode::Read, seg_b, |l, r| {
        (dev_a.ptr() + l, host_b.addr() + r)
    });
    all_completed(&run(&a, &reqs), &reqs);
    let got = read_back(&dev_a);
    for &(l, r, n) in &pieces {
        assert!(
            got[l..l + n] == v[r..r + n],
            "READ piece at local {l}, remote {r}, {n} bytes"
        );
    }

    // 1b. One READ larger than the receive arena: staged on its own.
    let big = 5 * MIB + 3;
    let reqs = [req(
        OpCode::Read,
        dev_a.ptr() + (span - big) as u64,
        seg_b,
        host_b.addr(),
        big,
    )];
    all_completed(&run(&a, &reqs), &reqs);
    assert!(
        read_back(&dev_a)[span - big..] == v[..big],
        "one READ above the arena into GPU memory"
    );

    // 2. WRITE from GPU memory of a (now holding the pieces) into host memory of b.
    host_b.as_mut_slice().fill(0);
    let reqs = piece_reqs(&pieces, OpCode::Write, seg_b, |l, r| {
        (dev_a.ptr() + l, host_b.addr() + r)
    });
    all_completed(&run(&a, &reqs), &reqs);
    assert!(
        host_b.as_slice() == v.as_slice(),
        "host b after the GPU WRITEs"
    );

    // 3. READ from GPU memory of b, adjacent there (the server stages per run), into
    //    shuffled places in host memory of a.
    let w = random(span, 12);
    let mut d = dev_b;
    d.write(0, &w).unwrap();
    let reqs = piece_reqs(&pieces, OpCode::Read, seg_b, |l, r| {
        (host_a.addr() + r, d.ptr() + l)
    });
    all_completed(&run(&a, &reqs), &reqs);
    for &(l, r, n) in &pieces {
        assert!(
            host_a.as_slice()[r..r + n] == w[l..l + n],
            "served GPU READ piece at remote {l}, local {r}, {n} bytes"
        );
    }
    drop(a);
    drop(b);
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_shared_memory_batches_stage_gpu_bytes_and_keep_every_byte() {
    // An owner sharing a pool, a reader on the same host whose buffer is GPU memory; large
    // batches move through pinned staging rounds on the reader's copy threads.
    let owner = engine(MIB);
    // Two copy threads with about 12 MiB each: a dozen 1 MiB rounds per thread, so each
    // staging buffer is reused several times in both directions.
    let len = 24 * MIB + 77;
    let pool =
        std::sync::Arc::new(transfer_engine::SharedMemory::create("gpu-pool", len, true).unwrap());
    owner.register_shared_memory(pool.clone()).unwrap();
    let init = random(len, 21);
    // SAFETY: the mapping holds `len` bytes; nothing else uses it until the batches below.
    unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), pool.as_ptr(), len) };
    let reader = Engine::new(EngineConfig {
        protocol: Protocol::Tcp,
        request_timeout: Duration::from_secs(30),
        copy_threads: 2,
        ..Default::default()
    })
    .unwrap();
    let d = device(len);
    register_device(&reader, &d);
    let seg = reader.open_segment(owner.name()).unwrap();
    let base = pool.as_ptr() as u64;

    // Uneven pieces (across the 1 MiB staging rounds), swapped around: pool -> GPU.
    let cuts = [
        0,
        1,
        4099,
        MIB - 1,
        2 * MIB + 5,
        4 * MIB,
        11 * MIB + 3,
        17 * MIB,
        len,
    ];
    let pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    let reqs: Vec<_> = pieces
        .iter()
        .rev()
        .map(|&(at, n)| req(OpCode::Read, d.ptr() + at as u64, seg, base + at as u64, n))
        .collect();
    all_completed(&run(&reader, &reqs), &reqs);
    assert!(
        read_back(&d) == init,
        "GPU buffer differs after reading the pool"
    );
    assert_eq!(reader.shm_stats().requests, reqs.len() as u64);

    // GPU -> pool, the pieces written to each other's places in pairs of equal length.
    let fresh = random(len, 22);
    let mut d = d;
    d.write(0, &fresh).unwrap();
    let reqs: Vec<_> = pieces
        .iter()
        .map(|&(at, n)| {
            req(
                OpCode::Write,
                d.ptr() + at as u64,
                seg,
                base + (len - at - n) as u64,
                n,
            )
        })
        .collect();
    all_completed(&run(&reader, &reqs), &reqs);
    // SAFETY: as above; the batch is done.
    let got = unsafe { std::slice::from_raw_parts(pool.as_ptr(), len) }.to_vec();
    for &(at, n) in &pieces {
        assert!(
            got[len - at - n..len - at] == fresh[at..at + n],
            "piece at {at} differs in the pool"
        );
    }
    reader.unregister_memory(d.ptr() as *mut u8).unwrap();
}
