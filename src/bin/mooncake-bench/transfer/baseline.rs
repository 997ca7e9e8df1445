//! The plain TCP stream baseline: one connection between the same two processes, the target
//! discarding what it receives (sink) or sending as fast as it can (source).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const CHUNK: usize = 1 << 20;

/// Which way the bytes flow.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// Initiator to target.
    Sink,
    /// Target to initiator.
    Source,
}

/// Streams for `duration` and returns GB/s (10^9 bytes per second).
pub fn measure(addr: &str, dir: Direction, duration: Duration) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("baseline connect {addr}"))?;
    let mut buf = vec![0x5au8; CHUNK];
    match dir {
        Direction::Sink => {
            s.write_all(b"S")?;
            let start = Instant::now();
            while start.elapsed() < duration {
                s.write_all(&buf)?;
            }
            s.shutdown(Shutdown::Write)?;
            let mut total = [0u8; 8];
            s.read_exact(&mut total)
                .context("baseline sink did not report its byte count")?;
            let secs = start.elapsed().as_secs_f64();
            Ok(u64::from_le_bytes(total) as f64 / secs / 1e9)
        }
        Direction::Source => {
            s.write_all(b"R")?;
            let start = Instant::now();
            let mut total = 0u64;
            while start.elapsed() < duration {
                match s.read(&mut buf)? {
                    0 => bail!("baseline source closed early"),
                    n => total += n as u64,
                }
            }
            let secs = start.elapsed().as_secs_f64();
            Ok(total as f64 / secs / 1e9)
        }
    }
}

fn serve_one(mut s: TcpStream) -> std::io::Result<()> {
    let mut cmd = [0u8; 1];
    s.read_exact(&mut cmd)?;
    let mut buf = vec![0xa5u8; CHUNK];
    match &cmd {
        b"S" => {
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            s.write_all(&total.to_le_bytes())
        }
        b"R" => loop {
            s.write_all(&buf)?;
        },
        _ => Ok(()),
    }
}

/// Serves baseline connections on `listener` forever (on a background thread).
pub fn serve(listener: TcpListener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("baseline".into())
        .spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    // A source ends when the initiator hangs up: not an error worth a log.
                    let _ = serve_one(s);
                });
            }
        })?;
    Ok(())
}
