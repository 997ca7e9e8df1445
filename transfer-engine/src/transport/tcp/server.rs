//! The serving side of TCP data connections: answers peers' READ/WRITE frames from and into
//! registered memory after checking each range lies wholly inside one registered region.
//!
//! Answers are gathered while more requests are already buffered and written with one
//! `writev`, so a burst of small reads costs a few syscalls, not one per request.

use std::io;
use std::net::TcpStream;

use crate::registry::MemoryRegistry;
use crate::transport::tcp::wire::{FrameKind, FrameReader, Header, OutBatch, MAX_ERROR_LEN};
use crate::Location;

/// Flush answers once this many pieces are queued.
const MAX_PIECES: usize = 1024;
/// Flush answers once this many payload bytes are queued.
const MAX_QUEUED_BYTES: u64 = 16 << 20;
/// Header buffer of the reader.
const READ_BUFFER: usize = 64 << 10;

/// Why a peer may not touch `[h.addr, +h.len)`, if it may not.
fn check(registry: &MemoryRegistry, h: &Header, segment: &str) -> Result<(), String> {
    match registry.find(h.addr, h.len) {
        Some(r) if r.location == Location::Host => Ok(()),
        Some(_) => Err(format!(
            "range [{:#x}, +{}) of segment {segment} is device memory, not reachable over TCP",
            h.addr, h.len
        )),
        None => Err(format!(
            "range [{:#x}, +{}) is not inside one buffer exported by segment {segment}",
            h.addr, h.len
        )),
    }
}

fn refuse(out: &mut OutBatch, h: &Header, mut reason: String) {
    reason.truncate(MAX_ERROR_LEN as usize);
    out.header(&Header {
        kind: FrameKind::Error,
        aux: reason.len() as u32,
        id: h.id,
        addr: h.addr,
        len: h.len,
    });
    out.bytes(reason.into_bytes());
}

/// Serves one data connection (after its hello) until the peer closes it or breaks the
/// protocol; returns why it ended.
pub fn serve(stream: TcpStream, registry: &MemoryRegistry, segment: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = FrameReader::new(stream, READ_BUFFER);
    let mut out = OutBatch::default();
    loop {
        if !reader.header_buffered() && !out.is_empty() {
            out.write_to(&mut writer)?;
        }
        let Some(raw) = reader.read_header()? else {
            return Ok(());
        };
        let h = Header::decode(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match h.kind {
            FrameKind::ReadReq => match check(registry, &h, segment) {
                Ok(()) => {
                    out.header(&Header {
                        kind: FrameKind::ReadResp,
                        ..h
                    });
                    // SAFETY: the range lies inside a registered region, which its owner keeps
                    // valid while registered; it is only read.
                    unsafe { out.raw(h.addr as *const u8, h.len as usize) };
                }
                Err(why) => refuse(&mut out, &h, why),
            },
            FrameKind::WriteReq => {
                if out.raw_bytes() > 0 {
                    // Queued read answers must leave before this write may change their bytes.
                    out.write_to(&mut writer)?;
                }
                match check(registry, &h, segment) {
                    Ok(()) => {
                        // SAFETY: the range lies inside a registered region, which its owner
                        // keeps valid and lets peers write while registered.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(h.addr as *mut u8, h.len as usize)
                        };
                        reader.read_payload(dst)?;
                        out.header(&Header {
                            kind: FrameKind::WriteResp,
                            len: 0,
                            ..h
                        });
                    }
                    Err(why) => {
                        reader.discard(h.len)?;
                        refuse(&mut out, &h, why);
                    }
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{other:?} frame sent to a target"),
                ))
            }
        }
        if out.pieces() >= MAX_PIECES || out.raw_bytes() >= MAX_QUEUED_BYTES {
            out.write_to(&mut writer)?;
        }
    }
}
