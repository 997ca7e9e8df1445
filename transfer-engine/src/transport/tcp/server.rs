//! The serving side of TCP data connections: answers peers' READ/WRITE frames from and into
//! registered memory after checking each range lies wholly inside one registered region
//! (GPU memory through a host staging copy).
//!
//! Answers are gathered while more requests are already buffered and written with one
//! `writev`, so a burst of small reads costs a few syscalls, not one per request.

use std::io;
use std::net::TcpStream;

use crate::registry::MemoryRegistry;
use crate::transport::tcp::gpu_staging::stage_reads;
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

/// Answers for reads of GPU memory, gathered so that one driver wait stages them all.
#[derive(Default)]
struct GpuReads {
    reads: Vec<(Header, u32)>,
    /// Payload bytes of `reads`.
    bytes: u64,
}

impl GpuReads {
    fn push(&mut self, h: Header, device: u32) {
        self.bytes += h.len;
        self.reads.push((h, device));
    }

    fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// Stages every gathered read and appends its answer (or its refusal) to `out`.
    fn stage_into(&mut self, out: &mut OutBatch) {
        if self.reads.is_empty() {
            return;
        }
        self.bytes = 0;
        let reads: Vec<(u32, u64, usize)> = self
            .reads
            .iter()
            .map(|(h, d)| (*d, h.addr, h.len as usize))
            .collect();
        // SAFETY: each range was checked to lie inside a region registered on its device,
        // which its owner keeps valid while registered; it is only read.
        let staged = unsafe { stage_reads(&reads) };
        for ((h, _), st) in self.reads.drain(..).zip(staged) {
            match st {
                Ok(bytes) => {
                    out.header(&Header {
                        kind: FrameKind::ReadResp,
                        ..h
                    });
                    out.staged_slice(bytes);
                }
                Err(e) => refuse(out, &h, format!("reading GPU memory: {e}")),
            }
        }
    }
}

/// Writes `out` (after staging the gathered GPU reads into it).
fn flush(out: &mut OutBatch, gpu_reads: &mut GpuReads, w: &mut TcpStream) -> io::Result<()> {
    gpu_reads.stage_into(out);
    out.write_to(w)
}

/// Serves one data connection (after its hello) until the peer closes it or breaks the
/// protocol; returns why it ended.
pub fn serve(stream: TcpStream, registry: &MemoryRegistry, segment: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = FrameReader::new(stream, READ_BUFFER);
    let mut out = OutBatch::default();
    let mut gpu_reads = GpuReads::default();
    loop {
        if !reader.header_buffered() && (!out.is_empty() || !gpu_reads.is_empty()) {
            flush(&mut out, &mut gpu_reads, &mut writer)?;
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
                Ok(Location::Cuda(device)) if h.len <= STAGE_CHUNK => gpu_reads.push(h, device),
                Ok(Location::Cuda(device)) => {
                    flush(&mut out, &mut gpu_reads, &mut writer)?;
                    // The first chunk is staged before the header so that a failing copy can
                    // still be answered with an error frame.
                    // SAFETY: the range lies inside a region registered on this device, which
                    // its owner keeps valid while registered; it is only read.
                    match unsafe { gpu::read_device(device, h.addr, STAGE_CHUNK as usize) } {
                        Ok(bytes) => {
                            out.header(&Header {
                                kind: FrameKind::ReadResp,
                                ..h
                            });
                            out.staged(bytes);
                            let mut off = STAGE_CHUNK;
                            while off < h.len {
                                out.write_to(&mut writer)?;
                                let n = (h.len - off).min(STAGE_CHUNK);
                                // SAFETY: as above; a failure here cannot be reported in a
                                // frame already under way, so it ends the connection.
                                let bytes =
                                    unsafe { gpu::read_device(device, h.addr + off, n as usize) }
                                        .map_err(io::Error::other)?;
                                out.staged(bytes);
                                off += n;
                            }
                        }
                        Err(e) => refuse(&mut out, &h, format!("reading GPU memory: {e}")),
                    }
                }
                Err(why) => refuse(&mut out, &h, why),
            },
            FrameKind::WriteReq => {
                if out.raw_bytes() > 0 || !gpu_reads.is_empty() {
                    // Queued read answers must leave before this write may change their bytes.
                    flush(&mut out, &mut gpu_reads, &mut writer)?;
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
                        let mut staging =
                            gpu::Staging::new(device, h.len.min(STAGE_CHUNK) as usize);
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
        if out.pieces() + gpu_reads.reads.len() >= MAX_PIECES
            || out.raw_bytes() + gpu_reads.bytes >= MAX_QUEUED_BYTES
        {
            flush(&mut out, &mut gpu_reads, &mut writer)?;
        }
    }
}
