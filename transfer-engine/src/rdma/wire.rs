//! What RDMA peers tell each other: the segment's devices and memory keys (published in the
//! segment descriptor) and the queue pair handshake (sent over the engine's control channel).
//!
//! Everything here arrives from the network, so decoding checks sizes and lookups never
//! trust an index.

use serde::{Deserialize, Serialize};

use super::plan::KeySpan;

/// Largest descriptor payload or handshake message accepted.
const MAX_MESSAGE: usize = 8 << 20;

/// One device of a segment, as peers address it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAddr {
    /// Device name (e.g. `rxe0`).
    pub name: String,
    /// GID used for RoCE (GRH destination).
    pub gid: [u8; 16],
    /// LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
}

/// One registered MR of a segment with its rkey on every device (same order as
/// [`RdmaSegmentInfo::devices`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMr {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// rkey per device.
    pub rkeys: Vec<u32>,
}

/// The RDMA part of a segment descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaSegmentInfo {
    /// The segment's devices.
    pub devices: Vec<DeviceAddr>,
    /// Its MRs in address order.
    pub mrs: Vec<RemoteMr>,
}

impl RdmaSegmentInfo {
    /// Encodes with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(self).map_err(|e| format!("encode RDMA segment info: {e}"))
    }

    /// Decodes, sorting MRs by address whatever the sender did.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_MESSAGE {
            return Err(format!(
                "RDMA segment info of {} bytes is too large",
                bytes.len()
            ));
        }
        let mut info: RdmaSegmentInfo =
            postcard::from_bytes(bytes).map_err(|e| format!("malformed RDMA segment info: {e}"))?;
        info.mrs.sort_by_key(|m| m.addr);
        Ok(info)
    }

    /// The MRs overlapping `[addr, addr + len)` as key spans for device `device`.
    pub fn spans(&self, device: usize, addr: u64, len: u64) -> Vec<KeySpan> {
        let end = addr.saturating_add(len);
        let first = self
            .mrs
            .partition_point(|m| m.addr.saturating_add(m.len) <= addr);
        self.mrs[first..]
            .iter()
            .take_while(|m| m.addr < end)
            .filter_map(|m| {
                Some(KeySpan {
                    start: m.addr,
                    end: m.addr.checked_add(m.len)?,
                    key: *m.rkeys.get(device)?,
                })
            })
            .collect()
    }
}

/// The initiator's half of a queue pair handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Initiator's segment name.
    pub from_segment: String,
    /// Initiator's device.
    pub from: DeviceAddr,
    /// Name of the target's device to connect to.
    pub to_device: String,
    /// Initiator's queue pair number.
    pub qpn: u32,
    /// Initiator's first send PSN.
    pub psn: u32,
    /// Initiator's active MTU (ibverbs enum value).
    pub mtu: u32,
}

/// The target's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectReply {
    /// Target's device.
    pub device: DeviceAddr,
    /// Target's queue pair number.
    pub qpn: u32,
    /// Target's first send PSN.
    pub psn: u32,
    /// Path MTU both sides use (ibverbs enum value).
    pub mtu: u32,
}

/// Encodes a handshake message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(msg).map_err(|e| format!("encode RDMA handshake: {e}"))
}

/// Decodes a handshake message.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!(
            "RDMA handshake of {} bytes is too large",
            bytes.len()
        ));
    }
    postcard::from_bytes(bytes).map_err(|e| format!("malformed RDMA handshake: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mr(addr: u64, len: u64, rkeys: &[u32]) -> RemoteMr {
        RemoteMr {
            addr,
            len,
            rkeys: rkeys.to_vec(),
        }
    }

    #[test]
    fn spans_select_overlapping_mrs_for_one_device() {
        let info = RdmaSegmentInfo {
            devices: vec![],
            mrs: vec![
                mr(300, 100, &[5, 6]),
                mr(100, 100, &[1, 2]),
                mr(200, 100, &[3]),
            ],
        };
        let info = RdmaSegmentInfo::decode(&info.encode().unwrap()).unwrap();
        let keys = |d, a, l| {
            info.spans(d, a, l)
                .iter()
                .map(|s| (s.start, s.key))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(0, 150, 100), vec![(100, 1), (200, 3)]);
        assert_eq!(
            keys(1, 150, 100),
            vec![(100, 2)],
            "no rkey for device 1 in MR 200"
        );
        assert_eq!(keys(0, 400, 10), vec![]);
        assert_eq!(keys(0, u64::MAX - 1, 10), vec![]);
    }

    #[test]
    fn handshake_roundtrip_and_garbage() {
        let req = ConnectRequest {
            from_segment: "a".into(),
            from: DeviceAddr {
                name: "rxe1".into(),
                gid: [7; 16],
                lid: 0,
            },
            to_device: "rxe0".into(),
            qpn: 17,
            psn: 99,
            mtu: 5,
        };
        let back: ConnectRequest = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        assert!(decode::<ConnectReply>(&[0xff; 3]).is_err());
        assert!(RdmaSegmentInfo::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
