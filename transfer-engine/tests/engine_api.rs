//! Engine API behaviour within one process: registration rules, the local (memcpy) segment,
//! in-process metadata between two engines, batch bookkeeping errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{registered, req, write_whole_and_check};
use transfer_engine::{
    AlignedBuffer, Engine, EngineConfig, InMemoryMetadataStore, Location, MetadataConfig, OpCode,
    Protocol, TransferError, TransferState, TransferStatus,
};

fn tcp_engine(metadata: MetadataConfig, name: Option<&str>) -> Engine {
    Engine::new(EngineConfig {
        name: name.map(str::to_string),
        metadata,
        protocol: Protocol::Tcp,
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn registration_rejects_zero_length_and_overlap() {
    let e = tcp_engine(MetadataConfig::P2p, None);
    assert_eq!(e.protocol(), Protocol::Tcp);
    assert_eq!(e.name(), e.listen_addr().to_string());
    let mut b = AlignedBuffer::new(8192).unwrap();
    let p = b.as_mut_ptr();
    // SAFETY: `b` outlives every registration below (all undone or refused).
    unsafe {
        assert!(matches!(
            e.register_memory(p, 0, Location::Host),
            Err(TransferError::InvalidArgument(_))
        ));
        e.register_memory(p, 4096, Location::Host).unwrap();
        assert!(matches!(
            e.register_memory(p.add(100), 100, Location::Host),
            Err(TransferError::Overlap { .. })
        ));
        assert!(matches!(
            e.register_memory(p, 8192, Location::Host),
            Err(TransferError::Overlap { .. })
        ));
        e.register_memory(p.add(4096), 4096, Location::Host)
            .unwrap();
    }
    assert_eq!(e.descriptor().buffers.len(), 2);
    assert!(matches!(
        e.unregister_memory(p.wrapping_add(1)),
        Err(TransferError::NotRegistered(_))
    ));
    e.unregister_memory(p).unwrap();
    e.unregister_memory(p.wrapping_add(4096)).unwrap();
    assert!(e.descriptor().buffers.is_empty());
}

#[test]
fn own_segment_is_served_by_memcpy_with_range_checks() {
    let e = tcp_engine(MetadataConfig::P2p, None);
    let mut src = registered(&e, 4096);
    let dst = registered(&e, 4096);
    src.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let me = e.open_segment(e.name()).unwrap();
    assert_eq!(e.open_segment(e.name()).unwrap(), me, "one handle per name");
    let unregistered = AlignedBuffer::new(4096).unwrap();
    let reqs = [
        req(OpCode::Write, src.addr(), me, dst.addr(), 4096),
        req(OpCode::Read, src.addr(), me, dst.addr() + 4000, 200),
        req(OpCode::Read, unregistered.addr(), me, dst.addr(), 10),
    ];
    let b = e.allocate_batch(3).unwrap();
    e.submit(b, &reqs).unwrap();
    let st = e.wait(b).unwrap();
    assert_eq!(st[0], TransferStatus::completed(4096));
    assert!(matches!(st[1].state, TransferState::Failed(_)));
    assert!(matches!(&st[2].state, TransferState::Failed(r) if r.contains("local range")));
    assert_eq!(src.as_slice(), dst.as_slice());
    assert!(matches!(
        e.submit(b, &reqs[..1]),
        Err(TransferError::BatchFull { .. })
    ));
    e.free_batch(b).unwrap();
    assert!(matches!(
        e.status(b, 0),
        Err(TransferError::BatchNotFound(_))
    ));
    assert!(matches!(e.wait(b), Err(TransferError::BatchNotFound(_))));
}

/// Runs `reqs` as one batch and checks that every request completed.
fn run_completed(e: &Engine, reqs: &[transfer_engine::TransferRequest]) {
    let st = common::run(e, reqs);
    assert!(
        st.iter().all(|s| s.state == TransferState::Completed),
        "{st:?}"
    );
}

#[test]
fn large_own_segment_batches_run_on_copy_threads_and_overlaps_keep_their_order() {
    let e = Engine::new(EngineConfig {
        protocol: Protocol::Tcp,
        copy_threads: 4,
        ..Default::default()
    })
    .unwrap();
    const LEN: usize = 6 << 20;
    let mut src = registered(&e, LEN);
    let dst = registered(&e, LEN);
    let data = common::pattern_bytes(11, LEN as u64);
    src.as_mut_slice().copy_from_slice(&data);
    let me = e.open_segment(e.name()).unwrap();
    // Uneven, out-of-order WRITEs covering the whole buffer: cut into pieces on 4 threads.
    let cuts = [0u64, 1, 4097, 3 << 20, (3 << 20) + 100, LEN as u64];
    let mut reqs: Vec<_> = cuts
        .windows(2)
        .map(|w| {
            req(
                OpCode::Write,
                src.addr() + w[0],
                me,
                dst.addr() + w[0],
                w[1] - w[0],
            )
        })
        .collect();
    reqs.reverse();
    run_completed(&e, &reqs);
    assert!(dst.as_slice() == &data[..]);

    // A large WRITE, then a small one over its start: the later one wins, as in one thread
    // (the unit tests of `parallel_copy` check that such a batch is never spread).
    let (big, small) = (5u64 << 20, 64u64 << 10);
    let reqs = [
        req(OpCode::Write, src.addr(), me, dst.addr(), big),
        req(OpCode::Write, src.addr() + big, me, dst.addr(), small),
    ];
    run_completed(&e, &reqs);
    let (big, small) = (big as usize, small as usize);
    assert!(dst.as_slice()[..small] == data[big..big + small]);
    assert!(dst.as_slice()[small..big] == data[small..big]);
}

#[test]
fn in_process_metadata_connects_two_named_engines() {
    let store = Arc::new(InMemoryMetadataStore::new());
    let a = tcp_engine(MetadataConfig::InProcess(store.clone()), Some("node-a"));
    let b = tcp_engine(MetadataConfig::InProcess(store.clone()), Some("node-b"));
    let mut a_buf = registered(&a, 1 << 20);
    let b_buf = registered(&b, 1 << 20);
    let seg_b = a.open_segment("node-b").unwrap();
    write_whole_and_check(&a, &mut a_buf, seg_b, &b_buf);
    assert!(matches!(
        a.open_segment("node-c"),
        Err(TransferError::SegmentNotFound { .. })
    ));
    drop(b);
    assert!(matches!(
        a.open_segment("node-b"),
        Ok(h) if h == seg_b
    ));
    let fresh = tcp_engine(MetadataConfig::InProcess(store.clone()), Some("node-x"));
    drop(fresh);
    assert!(
        matches!(
            a.open_segment("node-x"),
            Err(TransferError::SegmentNotFound { .. })
        ),
        "a dropped engine withdraws its descriptor"
    );
}

#[test]
fn unreachable_p2p_peer_is_segment_not_found() {
    let e = tcp_engine(MetadataConfig::P2p, None);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        e.open_segment(&dead.to_string()),
        Err(TransferError::SegmentNotFound { .. })
    ));
    assert!(matches!(
        e.open_segment("not a host"),
        Err(TransferError::SegmentNotFound { .. })
    ));
}

#[test]
fn completion_future_resolves_for_remote_batch() {
    let a = tcp_engine(MetadataConfig::P2p, None);
    let b = tcp_engine(MetadataConfig::P2p, None);
    let a_buf = registered(&a, 64 << 10);
    let mut b_buf = registered(&b, 64 << 10);
    b_buf.as_mut_slice().fill(9);
    let seg = a.open_segment(b.name()).unwrap();
    let batch = a.allocate_batch(16).unwrap();
    let reqs: Vec<_> = (0..16)
        .map(|k| {
            req(
                OpCode::Read,
                a_buf.addr() + k * 4096,
                seg,
                b_buf.addr() + k * 4096,
                4096,
            )
        })
        .collect();
    a.submit(batch, &reqs).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let st = rt.block_on(a.completion(batch)).unwrap();
    assert!(st.iter().all(|s| *s == TransferStatus::completed(4096)));
    assert!(a_buf.as_slice().iter().all(|&x| x == 9));
    a.free_batch(batch).unwrap();
}

#[test]
fn host_memory_claimed_to_be_on_a_gpu_is_refused_at_registration() {
    let a = tcp_engine(MetadataConfig::P2p, None);
    let mut host = AlignedBuffer::new(4096).unwrap();
    // SAFETY: the registration is refused, so the engine never keeps the pointer.
    let e = unsafe { a.register_memory(host.as_mut_ptr(), 4096, Location::Cuda(0)) }.unwrap_err();
    // Without CUDA the driver cannot vouch for it; with CUDA it says it is not device memory.
    assert!(
        matches!(&e, TransferError::InvalidArgument(m) if m.contains("CUDA device 0")),
        "{e}"
    );
    // Nothing was registered: the same range registers as host memory.
    // SAFETY: `host` outlives the engine's use of it (unregistered before it is dropped).
    unsafe { a.register_memory(host.as_mut_ptr(), 4096, Location::Host) }.unwrap();
    a.unregister_memory(host.as_mut_ptr()).unwrap();
}

#[test]
fn unusable_configuration_is_refused() {
    let zero = Engine::new(EngineConfig {
        request_timeout: Duration::ZERO,
        protocol: Protocol::Tcp,
        ..Default::default()
    });
    assert!(matches!(zero, Err(TransferError::InvalidArgument(_))));
    let empty_name = Engine::new(EngineConfig {
        name: Some(String::new()),
        protocol: Protocol::Tcp,
        ..Default::default()
    });
    assert!(matches!(empty_name, Err(TransferError::InvalidArgument(_))));
}

/// Established TCP connections (IPv4) whose remote end is `port`, from `/proc/net/tcp`.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16).unwrap() == port && f[3] == "01"
        })
        .count()
}

#[test]
fn idle_data_connections_close_and_the_next_transfer_reconnects() {
    let a = Engine::new(EngineConfig {
        protocol: Protocol::Tcp,
        tcp_idle_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .unwrap();
    let b = tcp_engine(MetadataConfig::P2p, None);
    let mut a_buf = registered(&a, 1 << 20);
    let b_buf = registered(&b, 1 << 20);
    let seg = a.open_segment(b.name()).unwrap();
    let port = b.listen_addr().port();
    write_whole_and_check(&a, &mut a_buf, seg, &b_buf);
    assert!(
        established_to(port) > 0,
        "the transfer used pooled connections"
    );
    let since = std::time::Instant::now();
    while established_to(port) > 0 {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "idle connections were never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    write_whole_and_check(&a, &mut a_buf, seg, &b_buf);
}
