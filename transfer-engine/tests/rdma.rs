//! RDMA transport tests.
//!
//! Tests named `rdma_*` need the two soft-RoCE devices `rxe0` and `rxe1` of the rxe guest
//! (`scripts/rxe-vm`); they are ignored elsewhere and run there by `scripts/ci-rdma` with
//! `--include-ignored`. The others run everywhere: without RDMA the engine falls back to TCP
//! with one log line saying why.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pattern_bytes, registered, req, Target};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use transfer_engine::{
    AlignedBuffer, Engine, EngineConfig, OpCode, Protocol, RdmaConfig, SegmentHandle,
    TransferError, TransferRequest, TransferState, TransferStatus,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn rdma_config(devices: &[&str], timeout: Duration, slice_size: usize) -> EngineConfig {
    EngineConfig {
        protocol: Protocol::Rdma,
        request_timeout: timeout,
        rdma: RdmaConfig {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            slice_size,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn rdma_engine(device: &str, timeout: Duration, slice_size: usize) -> Engine {
    let e = Engine::new(rdma_config(&[device], timeout, slice_size)).unwrap();
    assert_eq!(e.protocol(), Protocol::Rdma);
    e
}

fn run_batch(e: &Engine, reqs: &[TransferRequest]) -> Vec<TransferStatus> {
    let b = e.allocate_batch(reqs.len()).unwrap();
    e.submit(b, reqs).unwrap();
    let st = e.wait(b).unwrap();
    e.free_batch(b).unwrap();
    st
}

/// The bytes at `[addr, addr + len)` of this process.
///
/// # Safety
/// The range lies in a live buffer of this test and no transfer is using it.
unsafe fn mem<'a>(addr: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: as the caller promises.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

/// Random requests over disjoint local and remote ranges: (op, local off, remote off, len).
fn random_requests(
    rng: &mut StdRng,
    local_len: u64,
    remote_len: u64,
    budget: u64,
) -> Vec<(OpCode, u64, u64, u64)> {
    let (mut l, mut r, mut spent) = (0u64, 0u64, 0u64);
    let mut out = Vec::new();
    loop {
        let len = match rng.random_range(0..10) {
            0 => rng.random_range(MIB..=3 * MIB),
            1..=3 => rng.random_range(16 * KIB..=512 * KIB),
            4 => 1,
            _ => rng.random_range(2..=8 * KIB),
        };
        let lo = l + rng.random_range(0..4096);
        let ro = r + rng.random_range(0..4096);
        if lo + len > local_len || ro + len > remote_len || spent + len > budget {
            break;
        }
        let op = if rng.random_bool(0.5) {
            OpCode::Read
        } else {
            OpCode::Write
        };
        out.push((op, lo, ro, len));
        (l, r, spent) = (lo + len, ro + len, spent + len);
    }
    out
}

/// Where one side of a random-batch run transfers: its own registered `[local, +local_len)`
/// and the target's `[remote, +model.len())`, whose content `model` tracks.
struct Run<'m> {
    seg: SegmentHandle,
    local: u64,
    local_len: u64,
    remote: u64,
    model: &'m mut [u8],
}

/// Runs `rounds` batches of random READs and WRITEs (1 byte to 3 MiB, about 6 MiB a batch),
/// checking every READ against the model and every WRITE by a CRC of the target's memory.
/// Returns the sizes used.
fn random_batches(
    e: &Engine,
    run: Run<'_>,
    rounds: usize,
    seed: u64,
    mut remote_crc: impl FnMut(u64, u64) -> u32,
) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sizes = Vec::new();
    for _ in 0..rounds {
        let plan = random_requests(&mut rng, run.local_len, run.model.len() as u64, 6 * MIB);
        assert!(!plan.is_empty());
        let mut reqs = Vec::new();
        for &(op, lo, ro, len) in &plan {
            if op == OpCode::Write {
                // SAFETY: inside this side's local buffer, no transfer in flight.
                rng.fill_bytes(unsafe { mem(run.local + lo, len) });
            }
            reqs.push(req(op, run.local + lo, run.seg, run.remote + ro, len));
            sizes.push(len);
        }
        let st = run_batch(e, &reqs);
        for (&(op, lo, ro, len), s) in plan.iter().zip(&st) {
            assert_eq!(*s, TransferStatus::completed(len), "{op:?} of {len} bytes");
            // SAFETY: the batch is finished; the range is in this side's local buffer.
            let local = unsafe { mem(run.local + lo, len) };
            let model = &mut run.model[ro as usize..(ro + len) as usize];
            match op {
                OpCode::Write => {
                    model.copy_from_slice(local);
                    assert_eq!(
                        remote_crc(run.remote + ro, len),
                        crc32fast::hash(model),
                        "WRITE of {len} bytes landed wrong"
                    );
                }
                OpCode::Read => assert!(local == model, "READ of {len} bytes returned wrong data"),
            }
        }
    }
    sizes
}

fn assert_sizes_cover_bytes_to_mib(sizes: &[u64]) {
    assert!(
        sizes.iter().any(|s| *s < 64),
        "small sizes covered: {sizes:?}"
    );
    assert!(
        sizes.iter().any(|s| *s >= MIB),
        "MiB sizes covered: {sizes:?}"
    );
}

#[test]
#[ignore = "needs rxe0/rxe1: run by scripts/ci-rdma in the rxe guest"]
fn rdma_random_batches_rxe1_to_rxe0_across_processes() {
    let seed = 11;
    let env = [
        ("TE_TARGET_PROTOCOL", "rdma"),
        ("TE_TARGET_RDMA_DEVICES", "rxe0"),
    ];
    let mut target = Target::spawn_env(12 * MIB, seed, &env);
    let mut model = pattern_bytes(seed, target.len);
    let e = rdma_engine("rxe1", Duration::from_secs(60), 64 << 10);
    let local = registered(&e, 12 * MIB as usize);
    let run = Run {
        seg: e.open_segment(&target.name).unwrap(),
        local: local.addr(),
        local_len: local.len() as u64,
        remote: target.base,
        model: &mut model,
    };
    let sizes = random_batches(&e, run, 4, 1, |a, l| target.crc(a, l));
    assert_sizes_cover_bytes_to_mib(&sizes);
}

/// An in-process RDMA engine on `device` with one registered buffer filled with
/// `pattern(seed, _)`.
fn engine_with_buffer(device: &str, len: u64, seed: u64, slice: usize) -> (Engine, AlignedBuffer) {
    let e = rdma_engine(device, Duration::from_secs(60), slice);
    let mut buf = registered(&e, len as usize);
    buf.as_mut_slice()
        .copy_from_slice(&pattern_bytes(seed, len));
    (e, buf)
}

fn local_crc(addr: u64, len: u64) -> u32 {
    // SAFETY: callers pass ranges of live in-process target buffers after their batch ended.
    crc32fast::hash(unsafe { mem(addr, len) })
}

#[test]
#[ignore = "needs rxe0/rxe1: run by scripts/ci-rdma in the rxe guest"]
fn rdma_random_batches_on_one_device_both_directions_at_once() {
    // Two engines on rxe0 (loopback through one device) connecting to each other at the
    // same moment. Each uses the lower half of its buffer as local memory and targets the
    // upper half of the other's, so the directions never share bytes.
    const LEN: u64 = 12 * MIB;
    const HALF: u64 = LEN / 2;
    let (a, abuf) = engine_with_buffer("rxe0", LEN, 3, 64 << 10);
    let (b, bbuf) = engine_with_buffer("rxe0", LEN, 4, 64 << 10);
    let mut a_upper = pattern_bytes(3, LEN).split_off(HALF as usize);
    let mut b_upper = pattern_bytes(4, LEN).split_off(HALF as usize);
    let b_on_a = a.open_segment(b.name()).unwrap();
    let a_on_b = b.open_segment(a.name()).unwrap();
    let (a_addr, b_addr) = (abuf.addr(), bbuf.addr());
    let (sizes_ab, sizes_ba) = std::thread::scope(|s| {
        let ab = s.spawn(|| {
            let run = Run {
                seg: b_on_a,
                local: a_addr,
                local_len: HALF,
                remote: b_addr + HALF,
                model: &mut b_upper,
            };
            random_batches(&a, run, 2, 21, local_crc)
        });
        let ba = s.spawn(|| {
            let run = Run {
                seg: a_on_b,
                local: b_addr,
                local_len: HALF,
                remote: a_addr + HALF,
                model: &mut a_upper,
            };
            random_batches(&b, run, 2, 22, local_crc)
        });
        (ab.join().unwrap(), ba.join().unwrap())
    });
    let all: Vec<u64> = sizes_ab.into_iter().chain(sizes_ba).collect();
    assert_sizes_cover_bytes_to_mib(&all);
    drop((abuf, bbuf));
}

#[test]
#[ignore = "needs rxe0/rxe1: run by scripts/ci-rdma in the rxe guest"]
fn rdma_more_slices_than_the_send_queue_holds() {
    // 4 KiB slices: a 3 MiB request is 768 work requests, several times the send queue
    // (256), so most slices wait in the window and are posted as completions free room.
    let (t, tbuf) = engine_with_buffer("rxe0", 8 * MIB, 9, 64 << 10);
    let e = rdma_engine("rxe1", Duration::from_secs(60), 4096);
    let mut local = registered(&e, 8 * MIB as usize);
    let seg = e.open_segment(t.name()).unwrap();
    StdRng::seed_from_u64(5).fill_bytes(local.as_mut_slice());
    let reqs = [
        req(OpCode::Write, local.addr(), seg, tbuf.addr(), 3 * MIB),
        req(
            OpCode::Write,
            local.addr() + 3 * MIB,
            seg,
            tbuf.addr() + 3 * MIB,
            MIB + 17,
        ),
        req(
            OpCode::Read,
            local.addr() + 5 * MIB,
            seg,
            tbuf.addr() + 5 * MIB,
            3 * MIB,
        ),
    ];
    let st = run_batch(&e, &reqs);
    for (r, s) in reqs.iter().zip(&st) {
        assert_eq!(*s, TransferStatus::completed(r.len), "{r:?}");
    }
    let written = (4 * MIB + 17) as usize;
    assert!(tbuf.as_slice()[..written] == local.as_slice()[..written]);
    let read = 5 * MIB as usize..8 * MIB as usize;
    assert!(local.as_slice()[read.clone()] == pattern_bytes(9, 8 * MIB)[read]);
}

#[test]
#[ignore = "needs rxe0/rxe1: run by scripts/ci-rdma in the rxe guest"]
fn rdma_unregistered_remote_range_fails_only_its_request_and_endpoint_recovers() {
    let (t, tbuf) = engine_with_buffer("rxe0", 2 * MIB, 7, 64 << 10);
    let mut gone = registered(&t, MIB as usize);
    let e = rdma_engine("rxe1", Duration::from_secs(60), 64 << 10);
    let mut local = registered(&e, 4 * MIB as usize);
    StdRng::seed_from_u64(8).fill_bytes(local.as_mut_slice());
    // The initiator's descriptor still lists `gone` after the target unregistered it (its MRs
    // are deregistered): the engine's range check passes and the device refuses the access.
    let seg = e.open_segment(t.name()).unwrap();
    t.unregister_memory(gone.as_mut_ptr()).unwrap();
    let (l, r) = (local.addr(), tbuf.addr());
    let reqs = [
        req(OpCode::Write, l, seg, r, 256 * KIB),
        req(OpCode::Write, l + 256 * KIB, seg, gone.addr(), 64 * KIB),
        req(OpCode::Read, l + MIB, seg, r + MIB, 512 * KIB),
        req(OpCode::Read, l + 2 * MIB, seg, gone.addr(), 4096),
    ];
    let st = run_batch(&e, &reqs);
    assert_eq!(st[0], TransferStatus::completed(256 * KIB));
    assert_eq!(st[2], TransferStatus::completed(512 * KIB));
    for bad in [&st[1], &st[3]] {
        match &bad.state {
            TransferState::Failed(why) => {
                assert!(
                    why.contains("RemoteAccess"),
                    "remote access error expected: {why}"
                )
            }
            other => panic!("request on an unregistered range ended {other:?}"),
        }
    }
    assert!(
        gone.as_slice().iter().all(|b| *b == 0),
        "unregistered memory untouched"
    );
    assert!(tbuf.as_slice()[..(256 * KIB) as usize] == local.as_slice()[..(256 * KIB) as usize]);
    let want = pattern_bytes(7, 2 * MIB);
    assert!(
        local.as_slice()[MIB as usize..(MIB + 512 * KIB) as usize]
            == want[MIB as usize..(MIB + 512 * KIB) as usize]
    );
    // The endpoint was reset; the next batch reconnects and succeeds.
    let again = [
        req(
            OpCode::Write,
            l + 3 * MIB,
            seg,
            r + MIB + 512 * KIB,
            512 * KIB,
        ),
        req(OpCode::Read, l, seg, r + MIB + 512 * KIB, 512 * KIB),
    ];
    let st = run_batch(&e, &again);
    assert!(
        st.iter().all(|s| s.state == TransferState::Completed),
        "{st:?}"
    );
    assert!(
        local.as_slice()[..(512 * KIB) as usize]
            == local.as_slice()[(3 * MIB) as usize..(3 * MIB + 512 * KIB) as usize]
    );
}

#[test]
#[ignore = "needs rxe0/rxe1: run by scripts/ci-rdma in the rxe guest"]
fn rdma_peer_killed_mid_batch_fails_its_requests_by_the_deadline() {
    let env = [
        ("TE_TARGET_PROTOCOL", "rdma"),
        ("TE_TARGET_RDMA_DEVICES", "rxe0"),
    ];
    let target = Target::spawn_env(16 * MIB, 2, &env);
    let timeout = Duration::from_secs(4);
    let e = rdma_engine("rxe1", timeout, 64 << 10);
    let local = registered(&e, 16 * MIB as usize);
    let seg = e.open_segment(&target.name).unwrap();
    let reqs: Vec<_> = (0..32)
        .map(|i| {
            req(
                OpCode::Write,
                local.addr() + i * 512 * KIB,
                seg,
                target.base + i * 512 * KIB,
                512 * KIB,
            )
        })
        .collect();
    // Connect first, so that the kill lands on a live queue pair with work in flight.
    assert_eq!(
        run_batch(&e, &reqs[..1]),
        vec![TransferStatus::completed(512 * KIB)]
    );
    let b = e.allocate_batch(reqs.len()).unwrap();
    let t0 = Instant::now();
    e.submit(b, &reqs).unwrap();
    while e.batch_status(b).unwrap()[0].state == TransferState::Waiting {
        std::thread::sleep(Duration::from_millis(1));
    }
    target.signal(libc::SIGKILL);
    let st = e.wait(b).unwrap();
    let elapsed = t0.elapsed();
    e.free_batch(b).unwrap();
    let done = st
        .iter()
        .filter(|s| s.state == TransferState::Completed)
        .count();
    let failed = st.len() - done;
    println!("peer killed: {done} completed, {failed} failed, batch ended after {elapsed:?} (deadline {timeout:?})");
    assert!(failed > 0, "the kill landed after the whole batch: {st:?}");
    for s in &st {
        assert!(
            matches!(
                s.state,
                TransferState::Completed | TransferState::TimedOut | TransferState::Failed(_)
            ),
            "{s:?}"
        );
    }
    // The dead peer refuses the reconnect: a new batch fails instead of hanging.
    let st = run_batch(&e, &reqs[..2]);
    assert!(
        st.iter().all(|s| s.state != TransferState::Completed),
        "{st:?}"
    );
}

/// Collects what `tracing` writes while it is alive.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
    let cap = LogCapture::default();
    let writer = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&cap.0.lock().unwrap()).into_owned();
    (r, text)
}

#[test]
fn auto_protocol_falls_back_to_tcp_with_one_line_saying_why() {
    let config = EngineConfig {
        rdma: RdmaConfig {
            devices: vec!["no-such-rdma-device".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(config.protocol, Protocol::Auto);
    let (e, logs) = with_logs(|| Engine::new(config).unwrap());
    assert_eq!(e.protocol(), Protocol::Tcp);
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("RDMA")).collect();
    assert_eq!(lines.len(), 1, "one line about RDMA: {logs}");
    println!("fallback log line: {}", lines[0]);
    assert!(lines[0].contains("using TCP"), "{}", lines[0]);
    // Either the library finds no devices at all, or it names the missing one.
    assert!(
        lines[0].contains("no-such-rdma-device") || lines[0].contains("RDMA devices"),
        "{}",
        lines[0]
    );
}

#[test]
fn auto_protocol_matches_what_this_host_has() {
    let (e, logs) = with_logs(|| Engine::new(EngineConfig::default()).unwrap());
    match transfer_engine::rdma::probe(&RdmaConfig::default()) {
        Ok(()) => assert_eq!(e.protocol(), Protocol::Rdma),
        Err(why) => {
            assert_eq!(e.protocol(), Protocol::Tcp);
            let lines: Vec<&str> = logs.lines().filter(|l| l.contains("using TCP")).collect();
            assert_eq!(lines.len(), 1, "{logs}");
            assert!(lines[0].contains(&why), "{} lacks {why}", lines[0]);
        }
    }
}

#[test]
fn forced_rdma_without_a_usable_device_is_refused() {
    match Engine::new(rdma_config(
        &["no-such-rdma-device"],
        Duration::from_secs(1),
        65536,
    )) {
        Err(TransferError::Rdma(why)) => assert!(!why.is_empty()),
        other => panic!(
            "expected an RDMA error, got {:?}",
            other.map(|e| e.protocol())
        ),
    }
}
