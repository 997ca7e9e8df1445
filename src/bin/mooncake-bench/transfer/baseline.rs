//! The plain TCP stream baseline between the same two processes: one connection, the target
//! discarding what it receives (sink) or sending as fast as it can (source).
//!
//! A stream either uses a private 1 MiB buffer on both ends (cache-hot: the best case of a raw
//! socket), or cycles through a window of the same memory the engine transfers use, so that
//! the comparison with a cell moves the same bytes of the same buffers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Bytes per read/write call of a stream.
const CHUNK: usize = 1 << 20;
/// Bytes of a stream's opening command: kind, window offset, window length.
const COMMAND_LEN: usize = 17;

/// Which way the bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Initiator to target.
    Sink,
    /// Target to initiator.
    Source,
}

/// Memory a stream cycles through: `len` bytes at `ptr` (a registered buffer of this process).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Start.
    pub ptr: usize,
    /// Length (> 0).
    pub len: usize,
}

impl Window {
    /// The `n`-byte chunk starting at `pos` (wrapping to 0 at the end).
    fn chunk(&self, pos: &mut usize, n: usize) -> (*mut u8, usize) {
        if *pos >= self.len {
            *pos = 0;
        }
        let n = n.min(self.len - *pos);
        let p = (self.ptr + *pos) as *mut u8;
        *pos += n;
        (p, n)
    }
}

/// One open baseline stream, driven in slices by the initiator.
pub struct Stream {
    sock: TcpStream,
    dir: Direction,
    local: Option<Window>,
    scratch: Vec<u8>,
    pos: usize,
}

impl Stream {
    /// Opens a stream; `remote` is (offset, len) of the target buffer to cycle through and
    /// `local` the initiator memory, both `None` for private cache-hot buffers.
    pub fn open(
        addr: &str,
        dir: Direction,
        remote: Option<(u64, u64)>,
        local: Option<Window>,
    ) -> anyhow::Result<Stream> {
        let mut sock =
            TcpStream::connect(addr).with_context(|| format!("baseline connect {addr}"))?;
        let mut cmd = [0u8; COMMAND_LEN];
        cmd[0] = match dir {
            Direction::Sink => b'S',
            Direction::Source => b'R',
        };
        let (off, len) = remote.unwrap_or((0, 0));
        cmd[1..9].copy_from_slice(&off.to_le_bytes());
        cmd[9..17].copy_from_slice(&len.to_le_bytes());
        sock.write_all(&cmd)?;
        Ok(Stream {
            sock,
            dir,
            local,
            scratch: vec![0x5a; CHUNK],
            pos: 0,
        })
    }

    /// Streams for `duration`; returns (bytes, seconds).
    pub fn run(&mut self, duration: Duration) -> anyhow::Result<(u64, f64)> {
        let start = Instant::now();
        let mut total = 0u64;
        while start.elapsed() < duration {
            let (ptr, n) = match self.local {
                Some(w) => w.chunk(&mut self.pos, CHUNK),
                None => (self.scratch.as_mut_ptr(), CHUNK),
            };
            // SAFETY: the chunk lies inside the window (a registered buffer this process owns
            // and keeps alive for the whole bench) or inside `scratch`; engine transfers and
            // streams take turns, so nothing else uses it meanwhile.
            let buf = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
            total += match self.dir {
                Direction::Sink => {
                    self.sock.write_all(buf)?;
                    n as u64
                }
                Direction::Source => match self.sock.read(buf)? {
                    0 => bail!("baseline source closed early"),
                    got => {
                        // Bytes not filled are re-used by the next read.
                        self.pos -= n - got;
                        got as u64
                    }
                },
            };
        }
        Ok((total, start.elapsed().as_secs_f64()))
    }

    /// Ends the stream (a sink confirms it received everything).
    pub fn finish(mut self) -> anyhow::Result<()> {
        if self.dir == Direction::Sink {
            self.sock.shutdown(Shutdown::Write)?;
            let mut total = [0u8; 8];
            self.sock
                .read_exact(&mut total)
                .context("baseline sink did not report its byte count")?;
        }
        Ok(())
    }
}

fn serve_one(mut s: TcpStream, memory: Window) -> std::io::Result<()> {
    let mut cmd = [0u8; COMMAND_LEN];
    s.read_exact(&mut cmd)?;
    let off = u64::from_le_bytes(cmd[1..9].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(cmd[9..17].try_into().unwrap_or_default());
    let mut scratch = vec![0xa5u8; CHUNK];
    let window = if len == 0 {
        Window {
            ptr: scratch.as_mut_ptr() as usize,
            len: CHUNK,
        }
    } else if off
        .checked_add(len)
        .is_some_and(|end| end <= memory.len as u64)
    {
        Window {
            ptr: memory.ptr + off as usize,
            len: len as usize,
        }
    } else {
        return Ok(()); // A window outside our buffer: refuse by closing.
    };
    let mut pos = 0;
    match cmd[0] {
        b'S' => {
            let mut total = 0u64;
            loop {
                let (ptr, n) = window.chunk(&mut pos, CHUNK);
                // SAFETY: inside our registered buffer (checked above) or `scratch`.
                let buf = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
                match s.read(buf)? {
                    0 => break,
                    got => {
                        pos -= n - got;
                        total += got as u64;
                    }
                }
            }
            s.write_all(&total.to_le_bytes())
        }
        b'R' => loop {
            let (ptr, n) = window.chunk(&mut pos, CHUNK);
            // SAFETY: inside our registered buffer (checked above) or `scratch`.
            let buf = unsafe { std::slice::from_raw_parts(ptr, n) };
            s.write_all(buf)?;
        },
        _ => Ok(()),
    }
}

/// Serves baseline streams on `listener` from a background thread; windows lie in `memory`.
pub fn serve(listener: TcpListener, memory: Window) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("baseline".into())
        .spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    // A source ends when the initiator hangs up: not an error worth a log.
                    let _ = serve_one(s, memory);
                });
            }
        })?;
    Ok(())
}
