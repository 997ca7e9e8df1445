//! The serving side of TCP data connections: answers peers' READ/WRITE frames from and into
//! registered memory after checking each range lies wholly inside one registered region
//! (GPU memory through a host staging copy).
//!
//! Answers are gathered while more requests are already buffered and written with one
//! `writev`, so a burst of small reads costs a few syscalls, not one per request.

use std::io;
use std::net::TcpStream;

use crate::registry::MemoryRegistry;
use crate::transport::tcp::wire::{FrameKind, FrameReader, Header, OutBatch, MAX_ERROR_LEN};
use crate::{gpu, Location};

/// Flush answers once this many pieces are queued.
const MAX_PIECES: usize = 1024;
/// Flush answers once this many payload bytes are queued.
const MAX_QUEUED_BYTES: u64 = 16 << 20;
/// GPU memory is staged through host buffers of at most this many bytes (a peer's frame may
/// name a whole exported region).
const STAGE_CHUNK: u64 = 4 << 20;
/// Header buffer of the reader.
const READ_BUFFER: usize = 64 << 10;

/// Where `[h.addr, +h.len)` lives, or why a peer may not touch it.
fn check(registry: &MemoryRegistry, h: &Header, segment: &str) -> Result<Location, String> {
    match registry.find(h.addr, h.len) {
        Some(r) if gpu::reachable(r.location) => Ok(r.location),
        Some(r) => Err(format!(
            "range [{:#x}, +{}) of segment {segment} is {:?} memory, which this process cannot reach",
            h.addr, h.len, r.location
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
                Ok(Location::Host) => {
                    out.header(&Header {
                        kind: FrameKind::ReadResp,
                        ..h
                    });
                    // SAFETY: the range lies inside a registered region, which its owner keeps
                    // valid while registered; it is only read.
                    unsafe { out.raw(h.addr as *const u8, h.len as usize) };
                }
                Ok(Location::Cuda(device)) => {
                    // The first chunk is staged before the header so that a failing copy can
                    // still be answered with an error frame.
                    let first = h.len.min(STAGE_CHUNK);
                    // SAFETY: the range lies inside a region registered on this device, which
                    // its owner keeps valid while registered; it is only read.
                    match unsafe { gpu::read_device(device, h.addr, first as usize) } {
                        Ok(bytes) => {
                            out.header(&Header {
                                kind: FrameKind::ReadResp,
                                ..h
                            });
                            out.bytes(bytes);
                            let mut off = first;
                            while off < h.len {
                                out.write_to(&mut writer)?;
                                let n = (h.len - off).min(STAGE_CHUNK);
                                // SAFETY: as above; a failure here cannot be reported in a
                                // frame already under way, so it ends the connection.
                                let bytes =
                                    unsafe { gpu::read_device(device, h.addr + off, n as usize) }
                                        .map_err(io::Error::other)?;
                                out.bytes(bytes);
                                off += n;
                            }
                        }
                        Err(e) => refuse(&mut out, &h, format!("reading GPU memory: {e}")),
                    }
                }
                Err(why) => refuse(&mut out, &h, why),
            },
            FrameKind::WriteReq => {
                if out.raw_bytes() > 0 {
                    // Queued read answers must leave before this write may change their bytes.
                    out.write_to(&mut writer)?;
                }
                match check(registry, &h, segment) {
                    Ok(Location::Host) => {
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
                    Ok(Location::Cuda(device)) => {
                        let mut staging = vec![0u8; h.len.min(STAGE_CHUNK) as usize];
                        let mut copied = Ok(());
                        let mut off = 0;
                        while off < h.len {
                            let n = (h.len - off).min(STAGE_CHUNK) as usize;
                            reader.read_payload(&mut staging[..n])?;
                            if copied.is_ok() {
                                // SAFETY: the range lies inside a region registered on this
                                // device, which its owner keeps valid and lets peers write
                                // while registered.
                                copied = unsafe {
                                    gpu::write_device(device, h.addr + off, &staging[..n])
                                };
                            }
                            off += n as u64;
                        }
                        match copied {
                            Ok(()) => out.header(&Header {
                                kind: FrameKind::WriteResp,
                                len: 0,
                                ..h
                            }),
                            Err(e) => refuse(&mut out, &h, format!("writing GPU memory: {e}")),
                        }
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
