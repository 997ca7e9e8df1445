//! An initiator facing a fake target that breaks the protocol: every request ends (Failed or
//! TimedOut) by its deadline, none hangs, and nothing outside its local range is written.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{registered, req};
use transfer_engine::registry::Region;
use transfer_engine::transport::tcp::wire::{FrameKind, Header, HEADER_LEN, HELLO_LEN};
use transfer_engine::{
    Engine, EngineConfig, InMemoryMetadataStore, Location, MetadataConfig, MetadataStore, OpCode,
    Protocol, SegmentDescriptor, TransferState,
};

const FAKE_BASE: u64 = 0x1000_0000;

/// What the fake target does after reading one request header.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Answers with half the payload, then stalls (socket kept open).
    StallMidPayload,
    /// Answers a request id it never got.
    UnknownId,
    /// Answers with an unknown frame kind.
    Garbage,
    /// Closes the connection.
    Hangup,
}

fn fake_target(how: Misbehaviour) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || serve_badly(s, how));
        }
    });
    addr
}

fn serve_badly(mut s: TcpStream, how: Misbehaviour) {
    let mut hello = [0u8; HELLO_LEN];
    let mut raw = [0u8; HEADER_LEN];
    if s.read_exact(&mut hello).is_err() || s.read_exact(&mut raw).is_err() {
        return;
    }
    let h = Header::decode(&raw).unwrap();
    let answer = |kind, id, len| {
        Header {
            kind,
            aux: 0,
            id,
            addr: h.addr,
            len,
        }
        .encode()
    };
    match how {
        Misbehaviour::StallMidPayload => {
            let _ = s.write_all(&answer(FrameKind::ReadResp, h.id, h.len));
            let _ = s.write_all(&vec![0xEE; h.len as usize / 2]);
            std::thread::sleep(Duration::from_secs(30));
        }
        Misbehaviour::UnknownId => {
            let _ = s.write_all(&answer(FrameKind::WriteResp, h.id + 1000, 0));
            std::thread::sleep(Duration::from_secs(30));
        }
        Misbehaviour::Garbage => {
            let _ = s.write_all(&[0xFFu8; HEADER_LEN]);
            std::thread::sleep(Duration::from_secs(30));
        }
        Misbehaviour::Hangup => {}
    }
}

fn run_against(how: Misbehaviour, op: OpCode) -> (Vec<TransferState>, Duration, Vec<u8>) {
    let store = Arc::new(InMemoryMetadataStore::new());
    let fake = fake_target(how);
    store
        .publish(&SegmentDescriptor {
            name: "fake".into(),
            tcp_addr: fake,
            incarnation: 1,
            buffers: vec![Region {
                addr: FAKE_BASE,
                len: 1 << 20,
                location: Location::Host,
            }],
            transports: Default::default(),
        })
        .unwrap();
    let timeout = Duration::from_millis(1000);
    let e = Engine::new(EngineConfig {
        metadata: MetadataConfig::InProcess(store),
        protocol: Protocol::Tcp,
        request_timeout: timeout,
        ..Default::default()
    })
    .unwrap();
    let mut local = registered(&e, 2 * 65536);
    local.as_mut_slice().fill(0x11);
    let seg = e.open_segment("fake").unwrap();
    let b = e.allocate_batch(1).unwrap();
    let start = Instant::now();
    e.submit(b, &[req(op, local.addr(), seg, FAKE_BASE, 65536)])
        .unwrap();
    let st = e.wait(b).unwrap();
    let took = start.elapsed();
    assert!(took < timeout * 10, "took {took:?}");
    let after = local.as_slice()[65536..].to_vec();
    (st.into_iter().map(|s| s.state).collect(), took, after)
}

#[test]
fn stalled_payload_times_out() {
    let (st, took, beyond) = run_against(Misbehaviour::StallMidPayload, OpCode::Read);
    assert_eq!(st, vec![TransferState::TimedOut]);
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(beyond.iter().all(|&x| x == 0x11), "wrote past the request");
}

#[test]
fn answers_that_break_the_protocol_fail_the_request() {
    for how in [
        Misbehaviour::UnknownId,
        Misbehaviour::Garbage,
        Misbehaviour::Hangup,
    ] {
        let (st, _, beyond) = run_against(how, OpCode::Write);
        assert!(matches!(st[0], TransferState::Failed(_)), "{st:?}");
        assert!(beyond.iter().all(|&x| x == 0x11));
    }
}
