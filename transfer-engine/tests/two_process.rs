//! Transfers between this test process and `te-target` processes over real TCP sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{engine, pattern_bytes, registered, req, Target};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use transfer_engine::transport::tcp::wire::{hello, ConnKind, FrameKind, Header, HEADER_LEN};
use transfer_engine::{
    AlignedBuffer, BatchId, Engine, OpCode, TransferError, TransferState, TransferStatus,
};

const MIB: u64 = 1 << 20;

#[test]
fn random_read_write_batches_match_checksums() {
    let seed = 5;
    let mut target = Target::spawn(16 * MIB, seed);
    let mut model = pattern_bytes(seed, target.len);
    let e = engine(Duration::from_secs(10), 64 << 10);
    let mut local = registered(&e, 16 * MIB as usize);
    let seg = e.open_segment(&target.name).unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    const SLOT: u64 = 256 << 10;
    let slots = (target.len / SLOT) as usize;
    for _round in 0..12 {
        let n = rng.random_range(1..=slots);
        let mut remote_slots: Vec<usize> = (0..slots).collect();
        let mut local_slots = remote_slots.clone();
        remote_slots.shuffle(&mut rng);
        local_slots.shuffle(&mut rng);
        let mut reqs = Vec::new();
        for k in 0..n {
            let len = if rng.random_bool(0.3) {
                rng.random_range(64 << 10..=SLOT)
            } else {
                rng.random_range(1..=8192)
            };
            let r_off = remote_slots[k] as u64 * SLOT + rng.random_range(0..=SLOT - len);
            let l_off = local_slots[k] as u64 * SLOT + rng.random_range(0..=SLOT - len);
            let op = if rng.random_bool(0.5) {
                OpCode::Read
            } else {
                OpCode::Write
            };
            let l = &mut local.as_mut_slice()[l_off as usize..(l_off + len) as usize];
            rng.fill_bytes(l);
            reqs.push(req(op, local.addr() + l_off, seg, target.base + r_off, len));
        }
        let b = e.allocate_batch(n).unwrap();
        e.submit(b, &reqs).unwrap();
        let st = e.wait(b).unwrap();
        e.free_batch(b).unwrap();
        for (r, s) in reqs.iter().zip(&st) {
            assert_eq!(*s, TransferStatus::completed(r.len), "{r:?}");
            let l = (r.local_addr - local.addr()) as usize;
            let t = (r.target_offset - target.base) as usize;
            let n = r.len as usize;
            match r.op {
                OpCode::Write => model[t..t + n].copy_from_slice(&local.as_slice()[l..l + n]),
                OpCode::Read => assert!(
                    local.as_slice()[l..l + n] == model[t..t + n],
                    "read of {r:?} returned wrong bytes"
                ),
            }
        }
    }
    assert_eq!(
        target.crc(target.base, target.len),
        crc32fast::hash(&model),
        "target memory differs from the model"
    );
}

#[test]
fn requests_spanning_many_stripes() {
    let mut target = Target::spawn(16 * MIB, 1);
    let e = engine(Duration::from_secs(10), 64 << 10);
    let mut local = registered(&e, 16 * MIB as usize);
    let seg = e.open_segment(&target.name).unwrap();
    let len = 8 * MIB;
    StdRng::seed_from_u64(7).fill_bytes(&mut local.as_mut_slice()[..len as usize]);
    let data_crc = crc32fast::hash(&local.as_slice()[..len as usize]);
    let b = e.allocate_batch(2).unwrap();
    // Odd offsets and length so that stripes are not aligned to anything.
    let remote = target.base + 4097;
    e.submit(b, &[req(OpCode::Write, local.addr(), seg, remote, len - 3)])
        .unwrap();
    assert_eq!(e.wait(b).unwrap(), vec![TransferStatus::completed(len - 3)]);
    assert_eq!(
        target.crc(remote, len - 3),
        crc32fast::hash(&local.as_slice()[..(len - 3) as usize])
    );
    let back = local.addr() + len;
    e.submit(b, &[req(OpCode::Read, back, seg, remote, len - 3)])
        .unwrap();
    let st = e.wait(b).unwrap();
    assert_eq!(st[1], TransferStatus::completed(len - 3));
    let s = local.as_slice();
    assert!(s[len as usize..(2 * len - 3) as usize] == s[..(len - 3) as usize]);
    assert_ne!(data_crc, 0);
}

#[test]
fn concurrent_batches_from_several_threads() {
    let mut target = Target::spawn(8 * MIB, 2);
    let e = engine(Duration::from_secs(10), 256 << 10);
    let seg = e.open_segment(&target.name).unwrap();
    let base = target.base;
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut local = registered(&e, 2 * MIB as usize);
                let mut rng = StdRng::seed_from_u64(t);
                let area = base + t * 2 * MIB;
                for _ in 0..8 {
                    rng.fill_bytes(&mut local.as_mut_slice()[..MIB as usize]);
                    let n = 16;
                    let chunk = MIB / n;
                    let writes: Vec<_> = (0..n)
                        .map(|k| {
                            req(
                                OpCode::Write,
                                local.addr() + k * chunk,
                                seg,
                                area + k * chunk,
                                chunk,
                            )
                        })
                        .collect();
                    let b = e.allocate_batch(2 * n as usize).unwrap();
                    e.submit(b, &writes).unwrap();
                    assert!(e
                        .wait(b)
                        .unwrap()
                        .iter()
                        .all(|s| s.state == TransferState::Completed));
                    let reads: Vec<_> = (0..n)
                        .map(|k| {
                            req(
                                OpCode::Read,
                                local.addr() + MIB + k * chunk,
                                seg,
                                area + k * chunk,
                                chunk,
                            )
                        })
                        .collect();
                    e.submit(b, &reads).unwrap();
                    let st = futures::executor::block_on(e.completion(b)).unwrap();
                    assert!(
                        st.iter().all(|s| s.state == TransferState::Completed),
                        "{st:?}"
                    );
                    e.free_batch(b).unwrap();
                    let s = local.as_slice();
                    assert!(
                        s[..MIB as usize] == s[MIB as usize..],
                        "thread {t} read back other bytes"
                    );
                }
                crc32fast::hash(&local.as_slice()[..MIB as usize])
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let crc = h.join().unwrap();
        assert_eq!(target.crc(base + t as u64 * 2 * MIB, MIB), crc);
    }
}

#[test]
fn out_of_range_requests_fail_alone_and_touch_nothing() {
    let seed = 3;
    let mut target = Target::spawn(MIB, seed);
    let e = engine(Duration::from_secs(10), 64 << 10);
    let mut local = registered(&e, MIB as usize);
    local.as_mut_slice().fill(0xAB);
    let seg = e.open_segment(&target.name).unwrap();
    let (base, end) = (target.base, target.base + target.len);
    let la = local.addr();
    let reqs = [
        req(OpCode::Write, la, seg, base, 100),
        req(OpCode::Write, la, seg, end - 10, 100),
        req(OpCode::Write, la, seg, base - 4096, 4096),
        req(OpCode::Read, la + 4096, seg, end + 4096, 100),
        req(OpCode::Read, la + 8192, seg, u64::MAX - 10, 100),
        req(OpCode::Write, la, seg, base + 200, 0),
        req(OpCode::Read, la + 12288, seg, base + 1000, 50),
    ];
    let b = e.allocate_batch(reqs.len()).unwrap();
    e.submit(b, &reqs).unwrap();
    let st = e.wait(b).unwrap();
    assert_eq!(st[0], TransferStatus::completed(100));
    for (i, s) in st.iter().enumerate().skip(1).take(5) {
        let TransferState::Failed(reason) = &s.state else {
            panic!("request {i} should fail, got {s:?}");
        };
        assert!(!reason.is_empty());
        assert_eq!(s.bytes, 0);
    }
    assert_eq!(st[6], TransferStatus::completed(50));
    let mut model = pattern_bytes(seed, target.len);
    model[..100].fill(0xAB);
    assert_eq!(target.crc(base, target.len), crc32fast::hash(&model));
    assert!(
        local.as_slice()[4096..4196].iter().all(|&x| x == 0xAB),
        "failed read wrote locally"
    );
    assert_eq!(&local.as_slice()[12288..12338], &model[1000..1050]);
}

fn read_answer(s: &mut TcpStream) -> (Header, Vec<u8>) {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let h = Header::decode(&h).unwrap();
    let n = if h.kind == FrameKind::Error {
        h.aux as u64
    } else if h.kind == FrameKind::ReadResp {
        h.len
    } else {
        0
    };
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body).unwrap();
    (h, body)
}

#[test]
fn server_checks_raw_frames_and_closes_on_garbage() {
    let seed = 9;
    let mut target = Target::spawn(MIB, seed);
    let (base, end) = (target.base, target.base + target.len);
    let e = engine(Duration::from_secs(10), MIB as usize);
    let seg = e.open_segment(&target.name).unwrap();
    let incarnation = e.segment_descriptor(seg).unwrap().incarnation;
    // A data connection for another incarnation of the target (a descriptor from before a
    // restart) is refused before any frame is served.
    let mut stale = TcpStream::connect(target.name.as_str()).unwrap();
    stale
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stale
        .write_all(&hello(ConnKind::Data, incarnation ^ 1))
        .unwrap();
    stale
        .write_all(
            &Header {
                kind: FrameKind::ReadReq,
                aux: 0,
                id: 1,
                addr: base,
                len: 16,
            }
            .encode(),
        )
        .unwrap();
    let mut one = [0u8; 1];
    match stale.read(&mut one) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a stale incarnation should be refused, got {other:?}"),
    }
    let mut s = TcpStream::connect(target.name.as_str()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&hello(ConnKind::Data, incarnation)).unwrap();
    let frame = |kind, id, addr, len| {
        Header {
            kind,
            aux: 0,
            id,
            addr,
            len,
        }
        .encode()
    };
    // A write straddling the end, with its payload; a read outside; then a valid read.
    s.write_all(&frame(FrameKind::WriteReq, 1, end - 10, 100))
        .unwrap();
    s.write_all(&[0x55; 100]).unwrap();
    s.write_all(&frame(FrameKind::ReadReq, 2, end, 16)).unwrap();
    s.write_all(&frame(FrameKind::ReadReq, 3, base + 8, 16))
        .unwrap();
    let (h1, why) = read_answer(&mut s);
    assert_eq!((h1.kind, h1.id), (FrameKind::Error, 1));
    assert!(String::from_utf8(why).unwrap().contains("not inside"));
    let (h2, _) = read_answer(&mut s);
    assert_eq!((h2.kind, h2.id), (FrameKind::Error, 2));
    let (h3, data) = read_answer(&mut s);
    assert_eq!((h3.kind, h3.id), (FrameKind::ReadResp, 3));
    assert_eq!(data, pattern_bytes(seed, 24)[8..]);
    // Garbage closes the connection.
    s.write_all(&[99u8; HEADER_LEN]).unwrap();
    let mut one = [0u8; 1];
    match s.read(&mut one) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection should be closed, got {other:?}"),
    }
    assert_eq!(
        target.crc(base, target.len),
        crc32fast::hash(&pattern_bytes(seed, target.len))
    );
    // The target still serves new connections.
    let local = registered(&e, 4096);
    let b = e.allocate_batch(1).unwrap();
    e.submit(b, &[req(OpCode::Read, local.addr(), seg, base, 4096)])
        .unwrap();
    assert_eq!(e.wait(b).unwrap()[0], TransferStatus::completed(4096));
    assert_eq!(local.as_slice(), &pattern_bytes(seed, 4096)[..]);
}

/// Stops a fresh target, then submits `n` MiB-sized requests (even ones WRITE, odd ones READ
/// when `mixed`, else all READ) to it; returns what the test needs to go on.
fn submit_to_stopped_target(
    n: u64,
    timeout: Duration,
    mixed: bool,
) -> (Target, Engine, AlignedBuffer, BatchId, Instant) {
    let target = Target::spawn(n * MIB, 4);
    let e = engine(timeout, MIB as usize);
    let local = registered(&e, (n * MIB) as usize);
    let seg = e.open_segment(&target.name).unwrap();
    target.signal(libc::SIGSTOP);
    let reqs: Vec<_> = (0..n)
        .map(|k| {
            let op = if mixed && k % 2 == 0 {
                OpCode::Write
            } else {
                OpCode::Read
            };
            req(op, local.addr() + k * MIB, seg, target.base + k * MIB, MIB)
        })
        .collect();
    let b = e.allocate_batch(reqs.len()).unwrap();
    let start = Instant::now();
    e.submit(b, &reqs).unwrap();
    (target, e, local, b, start)
}

#[test]
fn killed_target_fails_in_flight_requests() {
    let timeout = Duration::from_secs(30);
    let (target, e, _local, b, start) = submit_to_stopped_target(64, timeout, true);
    assert_eq!(e.status(b, 0).unwrap().state, TransferState::Waiting);
    assert!(matches!(e.free_batch(b), Err(TransferError::Busy(_))));
    std::thread::sleep(Duration::from_millis(200));
    target.signal(libc::SIGKILL);
    let st = e.wait(b).unwrap();
    assert!(
        start.elapsed() < timeout,
        "failure should come from the lost connection"
    );
    for s in &st {
        assert!(matches!(s.state, TransferState::Failed(_)), "{s:?}");
    }
    e.free_batch(b).unwrap();
}

#[test]
fn stopped_target_times_out_at_the_deadline() {
    let timeout = Duration::from_millis(1500);
    let (target, e, _local, b, start) = submit_to_stopped_target(4, timeout, false);
    let st = e.wait(b).unwrap();
    let took = start.elapsed();
    target.signal(libc::SIGCONT);
    assert!(
        st.iter().all(|s| s.state == TransferState::TimedOut),
        "{st:?}"
    );
    assert!(took >= timeout, "timed out before the deadline: {took:?}");
    assert!(took < timeout * 10, "deadline not enforced: {took:?}");
}

#[test]
fn descriptor_refreshed_for_memory_registered_after_open() {
    let mut target = Target::spawn(MIB, 6);
    let e = engine(Duration::from_secs(10), MIB as usize);
    let mut local = registered(&e, 65536);
    local.as_mut_slice().fill(0x3C);
    let seg = e.open_segment(&target.name).unwrap();
    let fresh = target.register(65536);
    let b = e.allocate_batch(1).unwrap();
    e.submit(b, &[req(OpCode::Write, local.addr(), seg, fresh, 65536)])
        .unwrap();
    assert_eq!(e.wait(b).unwrap()[0], TransferStatus::completed(65536));
    assert_eq!(target.crc(fresh, 65536), crc32fast::hash(local.as_slice()));
}

#[test]
fn engines_pick_their_port_from_mooncakes_range_when_told() {
    // Two processes in a range of two ports: each gets one of them.
    let lo = (0..100)
        .find_map(|_| {
            let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let p = a.local_addr().ok()?.port();
            let b = std::net::TcpListener::bind(("127.0.0.1", p.checked_add(1)?)).ok()?;
            drop((a, b));
            Some(p)
        })
        .expect("two free ports side by side");
    let hi = lo + 1;
    let range = [
        ("MC_MIN_RPC_PORT", lo.to_string()),
        ("MC_MAX_RPC_PORT", hi.to_string()),
    ];
    let env: Vec<(&str, &str)> = range.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Target::spawn_env(4096, 1, &env);
    let b = Target::spawn_env(4096, 2, &env);
    let port = |t: &Target| t.name.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
    let mut ports = [port(&a), port(&b)];
    ports.sort();
    assert_eq!(ports, [lo, hi]);
}
