//! Shared helpers of the transfer-engine integration tests: a `te-target` child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use transfer_engine::{
    AlignedBuffer, Engine, EngineConfig, Location, OpCode, Protocol, SegmentHandle,
    TransferRequest, TransferStatus,
};

/// Initial content of byte `i` of a target buffer (same formula as `te-target`).
pub fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9) ^ seed.wrapping_mul(0x9e37)) as u8
}

/// The whole initial content of a target buffer.
pub fn pattern_bytes(seed: u64, len: u64) -> Vec<u8> {
    (0..len).map(|i| pattern(seed, i)).collect()
}

/// A running `te-target` process.
pub struct Target {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub name: String,
    pub base: u64,
    pub len: u64,
}

impl Target {
    /// Starts a target with one buffer of `len` bytes filled with `pattern(seed, _)`.
    pub fn spawn(len: u64, seed: u64) -> Target {
        Self::spawn_env(len, seed, &[])
    }

    /// Like [`Target::spawn`], with extra environment (e.g. `TE_TARGET_PROTOCOL=rdma`).
    pub fn spawn_env(len: u64, seed: u64, env: &[(&str, &str)]) -> Target {
        let mut child = Command::new(env!("CARGO_BIN_EXE_te-target"))
            .args([len.to_string(), seed.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn te-target");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w.first(), Some(&"READY"), "target said {line:?}");
        Target {
            name: w[1].to_string(),
            base: w[2].parse().unwrap(),
            len: w[3].parse().unwrap(),
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> Vec<String> {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.split_whitespace().map(str::to_string).collect()
    }

    /// CRC32 of `[addr, addr + len)` of the target's memory, computed by the target.
    pub fn crc(&mut self, addr: u64, len: u64) -> u32 {
        let w = self.ask(&format!("CRC {addr} {len}"));
        assert_eq!(w[0], "CRC", "{w:?}");
        w[1].parse().unwrap()
    }

    /// Registers another zeroed buffer in the target; returns its address.
    pub fn register(&mut self, len: u64) -> u64 {
        let w = self.ask(&format!("REGISTER {len}"));
        assert_eq!(w[0], "REGION", "{w:?}");
        w[1].parse().unwrap()
    }

    /// Sends a signal to the target.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An initiator engine over TCP.
pub fn engine(timeout: Duration, stripe: usize) -> Engine {
    Engine::new(EngineConfig {
        protocol: Protocol::Tcp,
        request_timeout: timeout,
        tcp_stripe_size: stripe,
        ..Default::default()
    })
    .unwrap()
}

/// A buffer registered with `engine` (kept registered for the test's life).
pub fn registered(engine: &Engine, len: usize) -> AlignedBuffer {
    let mut b = AlignedBuffer::new(len).unwrap();
    // SAFETY: the tests keep the buffer alive as long as the engine.
    unsafe {
        engine
            .register_memory(b.as_mut_ptr(), b.len(), Location::Host)
            .unwrap()
    };
    b
}

/// A request.
pub fn req(
    op: OpCode,
    local: u64,
    target: SegmentHandle,
    remote: u64,
    len: u64,
) -> TransferRequest {
    TransferRequest {
        op,
        local_addr: local,
        target,
        target_offset: remote,
        len,
    }
}

/// Fills `src` with a pattern, writes all of it to `dst` (in segment `seg`) in one request and
/// checks it arrived.
pub fn write_whole_and_check(
    e: &Engine,
    src: &mut AlignedBuffer,
    seg: SegmentHandle,
    dst: &AlignedBuffer,
) {
    src.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = (i % 251) as u8);
    let len = src.len() as u64;
    let batch = e.allocate_batch(1).unwrap();
    e.submit(
        batch,
        &[req(OpCode::Write, src.addr(), seg, dst.addr(), len)],
    )
    .unwrap();
    assert_eq!(e.wait(batch).unwrap()[0], TransferStatus::completed(len));
    e.free_batch(batch).unwrap();
    assert_eq!(src.as_slice(), dst.as_slice());
}

/// Runs `reqs` as one batch of `e` and returns each request's status.
pub fn run(e: &Engine, reqs: &[TransferRequest]) -> Vec<TransferStatus> {
    let b = e.allocate_batch(reqs.len()).unwrap();
    e.submit(b, reqs).unwrap();
    let st = e.wait(b).unwrap();
    e.free_batch(b).unwrap();
    st
}
