//! The TCP data-path wire format: a connection hello and fixed 32-byte little-endian frame
//! headers, plus the buffered reader and vectored writer both ends use.
//!
//! ```text
//! hello  : "MCTE" | version u16 | kind u8 (1 data, 2 control) | 0u8
//! header : kind u8 | 0 0 0 | aux u32 | id u64 | addr u64 | len u64
//!   ReadReq   (1)  initiator -> target; target answers ReadResp + len bytes, or Error
//!   WriteReq  (2)  initiator -> target, followed by len bytes; target answers WriteResp or Error
//!   ReadResp  (3)  followed by len bytes
//!   WriteResp (4)
//!   Error     (5)  followed by aux bytes of UTF-8 reason (aux <= MAX_ERROR_LEN)
//! ```
//! Payload bytes go straight between the socket and registered memory; only the bytes that
//! arrive in the same read as a header pass through the reader's small buffer.

use std::io::{self, IoSlice, Read, Write};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 32;
/// Bytes in a connection hello.
pub const HELLO_LEN: usize = 16;
/// Wire version.
pub const VERSION: u16 = 2;
/// Payload remainders at least this long are read straight into their destination.
pub const DIRECT_READ_MIN: usize = 16 << 10;
/// Longest error reason carried in an `Error` frame.
pub const MAX_ERROR_LEN: u32 = 4096;

/// What a connection carries, announced in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// Data frames.
    Data = 1,
    /// Control messages (descriptor fetch, transport handshakes).
    Control = 2,
}

/// Encodes a hello. A data connection names the incarnation of the engine it means to reach
/// (as that engine's descriptor gave it; 0 for control connections, which reach any): an
/// engine restarted on the same address refuses it, so that addresses taken from the old
/// engine's descriptor never reach the new engine's memory.
pub fn hello(kind: ConnKind, incarnation: u64) -> [u8; HELLO_LEN] {
    let v = VERSION.to_le_bytes();
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(&[b'M', b'C', b'T', b'E', v[0], v[1], kind as u8, 0]);
    h[8..].copy_from_slice(&incarnation.to_le_bytes());
    h
}

/// Decodes a hello: the connection's kind and the incarnation it expects.
pub fn parse_hello(b: &[u8; HELLO_LEN]) -> Result<(ConnKind, u64), String> {
    if &b[..4] != b"MCTE" {
        return Err("not a mooncake-rs transfer connection (bad magic)".into());
    }
    let v = u16::from_le_bytes([b[4], b[5]]);
    if v != VERSION {
        return Err(format!("wire version {v}, this engine speaks {VERSION}"));
    }
    let mut inc = [0u8; 8];
    inc.copy_from_slice(&b[8..]);
    let incarnation = u64::from_le_bytes(inc);
    match b[6] {
        1 => Ok((ConnKind::Data, incarnation)),
        2 => Ok((ConnKind::Control, incarnation)),
        k => Err(format!("unknown connection kind {k}")),
    }
}

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Read `len` bytes at `addr`.
    ReadReq = 1,
    /// Write the `len` bytes that follow at `addr`.
    WriteReq = 2,
    /// Answer to a read, `len` bytes follow.
    ReadResp = 3,
    /// Answer to a write.
    WriteResp = 4,
    /// Request refused; `aux` bytes of reason follow.
    Error = 5,
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: FrameKind,
    /// Error reason length for `Error`, else 0.
    pub aux: u32,
    /// Request id, echoed in the answer.
    pub id: u64,
    /// Target address.
    pub addr: u64,
    /// Payload length (requests and read answers).
    pub len: u64,
}

impl Header {
    /// Encodes to 32 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[4..8].copy_from_slice(&self.aux.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes 32 bytes; refuses unknown kinds, non-zero padding and oversized reasons.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        let kind = match b[0] {
            1 => FrameKind::ReadReq,
            2 => FrameKind::WriteReq,
            3 => FrameKind::ReadResp,
            4 => FrameKind::WriteResp,
            5 => FrameKind::Error,
            k => return Err(format!("unknown frame kind {k}")),
        };
        if b[1..4] != [0, 0, 0] {
            return Err("non-zero header padding".into());
        }
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let aux = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if (kind == FrameKind::Error && aux > MAX_ERROR_LEN)
            || (kind != FrameKind::Error && aux != 0)
        {
            return Err(format!("bad aux field {aux} for {kind:?}"));
        }
        Ok(Header {
            kind,
            aux,
            id: u64_at(8),
            addr: u64_at(16),
            len: u64_at(24),
        })
    }
}

/// A buffered reader for headers that reads large payloads straight into their destination.
pub struct FrameReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl<R: Read> FrameReader<R> {
    /// Wraps `inner` with a buffer of `capacity` bytes.
    pub fn new(inner: R, capacity: usize) -> Self {
        FrameReader {
            inner,
            buf: vec![0u8; capacity.max(HEADER_LEN * 4)].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }

    /// Bytes buffered and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Whether a whole header is already buffered (reading it will not block).
    pub fn header_buffered(&self) -> bool {
        self.end - self.pos >= HEADER_LEN
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < HEADER_LEN {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next header; `Ok(None)` on a clean end of stream between frames.
    pub fn read_header(&mut self) -> io::Result<Option<[u8; HEADER_LEN]>> {
        while self.end - self.pos < HEADER_LEN {
            let had = self.end - self.pos;
            if self.fill()? == 0 {
                return if had == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[self.pos..self.pos + HEADER_LEN]);
        self.pos += HEADER_LEN;
        Ok(Some(h))
    }

    /// Fills `dst` with the next payload bytes: buffered bytes first, then large remainders
    /// straight from the stream into `dst`.
    pub fn read_payload(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < dst.len() {
            let buffered = self.end - self.pos;
            if buffered > 0 {
                let n = buffered.min(dst.len() - done);
                dst[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                done += n;
                continue;
            }
            let rest = dst.len() - done;
            // Large remainders skip the buffer; small ones share a read with what follows.
            if rest >= DIRECT_READ_MIN {
                match self.inner.read(&mut dst[done..]) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            } else if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Skips `n` payload bytes (of a refused request).
    pub fn discard(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.end && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = ((self.end - self.pos) as u64).min(n) as usize;
            self.pos += k;
            n -= k as u64;
        }
        Ok(())
    }
}

enum Piece {
    Header(usize),
    Bytes(Vec<u8>),
    Staged(crate::gpu::Staging),
    StagedSlice(super::gpu_staging::Staged),
    Raw(*const u8, usize),
}

/// Frames gathered for one vectored write: headers, small owned byte strings, and raw
/// payload ranges of registered memory (sent without copying).
#[derive(Default)]
pub struct OutBatch {
    headers: Vec<[u8; HEADER_LEN]>,
    pieces: Vec<Piece>,
    raw_bytes: u64,
}

// SAFETY: raw pieces point into registered memory, which stays valid while registered and is
// only read through them; the batch is used by one thread at a time.
unsafe impl Send for OutBatch {}

impl OutBatch {
    /// Appends a header.
    pub fn header(&mut self, h: &Header) {
        self.headers.push(h.encode());
        self.pieces.push(Piece::Header(self.headers.len() - 1));
    }

    /// Appends owned bytes (error reasons).
    pub fn bytes(&mut self, b: Vec<u8>) {
        self.pieces.push(Piece::Bytes(b));
    }

    /// Appends GPU bytes staged in host memory (counted as payload).
    pub fn staged(&mut self, s: crate::gpu::Staging) {
        self.raw_bytes += s.len() as u64;
        self.pieces.push(Piece::Staged(s));
    }

    /// Appends GPU bytes staged as part of a run (counted as payload).
    pub fn staged_slice(&mut self, s: super::gpu_staging::Staged) {
        self.raw_bytes += s.bytes().len() as u64;
        self.pieces.push(Piece::StagedSlice(s));
    }

    /// Appends `len` bytes of memory at `ptr`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must stay valid for reads until the batch is written or dropped.
    pub unsafe fn raw(&mut self, ptr: *const u8, len: usize) {
        self.raw_bytes += len as u64;
        self.pieces.push(Piece::Raw(ptr, len));
    }

    /// Pieces queued.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Raw payload bytes queued.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Writes everything with as few `writev` calls as possible, then empties the batch.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<()> {
        let result = {
            let mut slices: Vec<IoSlice<'_>> = self
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Header(i) => IoSlice::new(&self.headers[*i]),
                    Piece::Bytes(b) => IoSlice::new(b),
                    Piece::Staged(s) => IoSlice::new(s),
                    Piece::StagedSlice(s) => IoSlice::new(s.bytes()),
                    // SAFETY: guaranteed valid by the caller of `raw`.
                    Piece::Raw(ptr, len) => {
                        IoSlice::new(unsafe { std::slice::from_raw_parts(*ptr, *len) })
                    }
                })
                .collect();
            write_all_vectored(w, &mut slices)
        };
        self.headers.clear();
        self.pieces.clear();
        self.raw_bytes = 0;
        result
    }
}

fn write_all_vectored<W: Write>(w: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while slices.first().is_some_and(|s| s.is_empty()) {
        slices = &mut slices[1..];
    }
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_roundtrip_and_garbage() {
        assert_eq!(
            parse_hello(&hello(ConnKind::Data, 7)),
            Ok((ConnKind::Data, 7))
        );
        assert_eq!(
            parse_hello(&hello(ConnKind::Control, 0)),
            Ok((ConnKind::Control, 0))
        );
        assert!(parse_hello(b"GET / HTTP/1.1\r\n").is_err());
        let mut h = hello(ConnKind::Data, 1);
        h[4] = 9;
        assert!(parse_hello(&h).is_err());
    }

    proptest! {
        #[test]
        fn header_roundtrip(kind in 1u8..=5, id: u64, addr: u64, len: u64, aux in 0u32..=MAX_ERROR_LEN) {
            let mut b = [0u8; HEADER_LEN];
            b[0] = kind;
            let h = Header::decode(&b).unwrap();
            let h = Header { id, addr, len, aux: if h.kind == FrameKind::Error { aux } else { 0 }, ..h };
            prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn decode_never_panics(b in prop::array::uniform32(any::<u8>())) {
            let _ = Header::decode(&b);
        }

        #[test]
        fn reader_splits_frames(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..20), cap in 128usize..4096) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                stream.extend_from_slice(&Header { kind: FrameKind::ReadResp, aux: 0, id: i as u64, addr: 0, len: p.len() as u64 }.encode());
                stream.extend_from_slice(p);
            }
            let mut r = FrameReader::new(&stream[..], cap);
            for (i, p) in payloads.iter().enumerate() {
                let h = Header::decode(&r.read_header().unwrap().unwrap()).unwrap();
                prop_assert_eq!(h.id, i as u64);
                let mut dst = vec![0u8; h.len as usize];
                if i % 2 == 0 { r.read_payload(&mut dst).unwrap(); prop_assert_eq!(&dst, p); } else { r.discard(h.len).unwrap(); }
            }
            prop_assert!(r.read_header().unwrap().is_none());
        }
    }

    #[test]
    fn truncated_header_is_an_error() {
        let mut r = FrameReader::new(&[1u8, 0, 0][..], 256);
        assert!(r.read_header().is_err());
    }

    #[test]
    fn out_batch_writes_in_order() {
        let payload = vec![7u8; 5000];
        let mut out = OutBatch::default();
        let h = Header {
            kind: FrameKind::ReadResp,
            aux: 0,
            id: 3,
            addr: 1,
            len: 5000,
        };
        out.header(&h);
        // SAFETY: payload outlives the write below.
        unsafe { out.raw(payload.as_ptr(), payload.len()) };
        out.bytes(b"xy".to_vec());
        let mut sink = Vec::new();
        out.write_to(&mut sink).unwrap();
        assert!(out.is_empty());
        assert_eq!(&sink[..32], &h.encode());
        assert_eq!(&sink[32..5032], &payload[..]);
        assert_eq!(&sink[5032..], b"xy");
    }
}
