//! The control channel: small request/response messages on the engine's TCP listener.
//!
//! A control connection starts with a [`ConnKind::Control`] hello, then carries frames of
//! `u32 LE length | postcard body` (capped at [`MAX_CONTROL_FRAME`]). Peers use it to fetch a
//! segment's descriptor (peer-to-peer metadata) and for transport handshakes (e.g. RDMA queue
//! pair exchange). A malformed frame closes that connection only.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::descriptor::SegmentDescriptor;
use crate::transport::tcp::wire::{hello, ConnKind};
use crate::TransferError;

/// Largest control frame accepted.
pub const MAX_CONTROL_FRAME: u32 = 16 << 20;

/// A control request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Send your segment descriptor.
    GetDescriptor,
    /// A message for the named transport.
    Transport {
        /// Transport name (`"rdma"`).
        name: String,
        /// Opaque payload.
        payload: Vec<u8>,
    },
}

/// A control response.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlResponse {
    /// The segment's descriptor.
    Descriptor(SegmentDescriptor),
    /// The transport's answer.
    Transport(Vec<u8>),
    /// The request was refused.
    Error(String),
}

/// What answers control requests on a serving engine.
pub trait ControlHandler: Send + Sync {
    /// This engine's current descriptor.
    fn descriptor(&self) -> SegmentDescriptor;
    /// Routes a transport message.
    fn transport(&self, name: &str, payload: &[u8]) -> Result<Vec<u8>, String>;
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Writes one frame.
pub fn write_frame<T: Serialize, W: Write>(w: &mut W, msg: &T) -> io::Result<()> {
    let body = postcard::to_stdvec(msg).map_err(|e| invalid(format!("encode: {e}")))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_CONTROL_FRAME)
        .ok_or_else(|| invalid(format!("control frame of {} bytes too large", body.len())))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out)
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>, R: Read>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_CONTROL_FRAME {
        return Err(invalid(format!(
            "control frame of {len} bytes exceeds the cap"
        )));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| invalid(format!("malformed control frame: {e}")))
}

/// Serves control requests on `stream` (after its hello) until the peer closes it.
pub fn serve(mut stream: TcpStream, handler: &dyn ControlHandler) -> io::Result<()> {
    while let Some(req) = read_frame::<ControlRequest, _>(&mut stream)? {
        let resp = match req {
            ControlRequest::GetDescriptor => ControlResponse::Descriptor(handler.descriptor()),
            ControlRequest::Transport { name, payload } => match handler.transport(&name, &payload)
            {
                Ok(p) => ControlResponse::Transport(p),
                Err(e) => ControlResponse::Error(e),
            },
        };
        write_frame(&mut stream, &resp)?;
    }
    Ok(())
}

/// Resolves `host:port`.
pub fn resolve(peer: &str) -> Result<SocketAddr, String> {
    peer.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {peer:?} as host:port: {e}"))?
        .next()
        .ok_or_else(|| format!("{peer:?} resolves to no address"))
}

/// Sends one control request to `peer` on a fresh connection and returns the response.
pub fn call(
    peer: SocketAddr,
    req: &ControlRequest,
    timeout: Duration,
) -> io::Result<ControlResponse> {
    let mut s = TcpStream::connect_timeout(&peer, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&hello(ConnKind::Control, 0))?;
    write_frame(&mut s, req)?;
    read_frame(&mut s)?.ok_or_else(|| invalid("peer closed the control connection".into()))
}

/// Sends a transport handshake message to the engine listening at `peer`.
pub fn transport_call(
    peer: SocketAddr,
    transport: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, TransferError> {
    let req = ControlRequest::Transport {
        name: transport.to_string(),
        payload,
    };
    match call(peer, &req, timeout)? {
        ControlResponse::Transport(p) => Ok(p),
        ControlResponse::Error(e) => Err(TransferError::InvalidArgument(format!(
            "peer {peer} refused {transport} message: {e}"
        ))),
        other => Err(TransferError::Io(invalid(format!(
            "unexpected control response {other:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_caps() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ControlRequest::GetDescriptor).unwrap();
        let back: Option<ControlRequest> = read_frame(&mut &buf[..]).unwrap();
        assert!(matches!(back, Some(ControlRequest::GetDescriptor)));
        let huge = (MAX_CONTROL_FRAME + 1).to_le_bytes();
        assert!(read_frame::<ControlRequest, _>(&mut &huge[..]).is_err());
        let garbage = [3u8, 0, 0, 0, 200, 200, 200];
        assert!(read_frame::<ControlRequest, _>(&mut &garbage[..]).is_err());
        assert!(read_frame::<ControlRequest, _>(&mut &[][..])
            .unwrap()
            .is_none());
    }
}
