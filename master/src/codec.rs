//! Framing of the client ↔ master stream.
//!
//! A connection starts with a handshake (`MAGIC` + protocol version, both ways; the server
//! answers with its version and closes on mismatch). After that each message is a frame:
//! a little-endian `u32` payload length, then the postcard encoding of `(request_id, body)`.
//! Frames above the configured cap and payloads that do not decode exactly are errors that
//! close that one connection.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::PROTOCOL_VERSION;

/// First bytes of every connection, both directions.
pub const MAGIC: [u8; 4] = *b"MCKM";
/// Default cap on one frame's payload (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
const LEN_PREFIX: usize = 4;

/// Why a frame or handshake could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than allowed.
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer is not speaking this protocol.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// Both sides speak it, in different versions.
    #[error("protocol version mismatch: ours {ours}, peer {theirs}")]
    Version {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
}

/// Appends one frame holding `(id, msg)` to `out`.
pub fn encode_frame<T: Serialize>(id: u64, msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    let buf = std::mem::take(out);
    let buf = postcard::to_extend(&(id, msg), buf)
        .map_err(|e| FrameError::Malformed(format!("encode: {e}")))?;
    *out = buf;
    let len = out.len() - start - LEN_PREFIX;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    out[start..start + LEN_PREFIX].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}

/// Decodes a frame payload into `(id, body)` (the body may borrow from `payload`); trailing
/// bytes are malformed.
pub fn decode_payload<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<(u64, T), FrameError> {
    let (value, rest) = postcard::take_from_bytes::<(u64, T)>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after message",
            rest.len()
        )));
    }
    Ok(value)
}

/// Reads one frame's payload into `buf`. `Ok(false)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, FrameError> {
    let mut len = [0u8; LEN_PREFIX];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

async fn write_hello<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), FrameError> {
    let mut hello = [0u8; 8];
    hello[..4].copy_from_slice(&MAGIC);
    hello[4..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    w.write_all(&hello).await?;
    w.flush().await?;
    Ok(())
}

async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> Result<u32, FrameError> {
    let mut hello = [0u8; 8];
    r.read_exact(&mut hello).await?;
    if hello[..4] != MAGIC {
        return Err(FrameError::Handshake(format!(
            "expected magic {:?}, got {:?}",
            MAGIC,
            &hello[..4]
        )));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&hello[4..]);
    Ok(u32::from_le_bytes(v))
}

/// Client side of the handshake: send ours, check theirs.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<(), FrameError> {
    write_hello(s).await?;
    let theirs = read_hello(s).await?;
    if theirs != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(())
}

/// Server side of the handshake: check theirs, always answer ours (so the peer can report
/// the mismatch), fail on mismatch.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<(), FrameError> {
    let theirs = read_hello(s).await?;
    write_hello(s).await?;
    if theirs != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Request;

    #[test]
    fn frame_round_trips_and_rejects_trailing_bytes() {
        let req = Request::BatchExistKey {
            keys: vec!["a".into(), "bb".into()],
        };
        let mut out = vec![9u8];
        encode_frame(42, &req, &mut out).unwrap();
        let len = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 5);
        let (id, back): (u64, Request) = decode_payload(&out[5..]).unwrap();
        assert_eq!((id, back), (42, req));
        let mut extra = out[5..].to_vec();
        extra.push(0);
        assert!(decode_payload::<Request>(&extra).is_err());
        assert!(decode_payload::<Request>(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn owned_requests_decode_with_borrowed_keys() {
        let req = Request::BatchPutEnd {
            client: uuid::Uuid::new_v4(),
            keys: vec!["x".to_string(), "yz".to_string()],
        };
        let mut out = Vec::new();
        encode_frame(3, &req, &mut out).unwrap();
        let (_, back): (u64, Request<&str>) = decode_payload(&out[4..]).unwrap();
        match (back, req) {
            (
                Request::BatchPutEnd { keys, client },
                Request::BatchPutEnd {
                    keys: k2,
                    client: c2,
                },
            ) => {
                assert_eq!(keys, k2);
                assert_eq!(client, c2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3];
        let mut buf = Vec::new();
        let err = read_frame(&mut data, &mut buf, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }
}
