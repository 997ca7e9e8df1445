//! What RDMA peers tell each other: the segment's devices and memory keys (published in the
//! segment descriptor) and the queue pair handshake (sent over the engine's control channel).
//!
//! Everything here arrives from the network, so decoding checks sizes and lookups never
//! trust an index.
//!
//! The segment info grows by appending: after the original postcard encoding of devices and
//! MRs comes an [`InfoExtension`] (each MR's preferred devices). Readers that predate it stop
//! after the MRs (postcard ignores trailing bytes); readers that find no extension, or one they
//! cannot decode, treat every device alike, as before.

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
    /// Indices of the devices closest to this memory (empty: no preference). Travels in the
    /// [`InfoExtension`], not here, so that older readers still decode the MR.
    #[serde(skip)]
    pub preferred: Vec<u32>,
}

/// What follows the original encoding of [`RdmaSegmentInfo`]. New fields go at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoExtension {
    /// Per MR, in the order sent: its preferred device indices.
    pub preferred: Vec<Vec<u32>>,
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
    /// Encodes with postcard: devices and MRs, then the [`InfoExtension`].
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let err = |e: postcard::Error| format!("encode RDMA segment info: {e}");
        let mut out = postcard::to_stdvec(self).map_err(err)?;
        let ext = InfoExtension {
            preferred: self.mrs.iter().map(|m| m.preferred.clone()).collect(),
        };
        out.extend(postcard::to_stdvec(&ext).map_err(err)?);
        Ok(out)
    }

    /// Decodes, sorting MRs by address whatever the sender did.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_MESSAGE {
            return Err(format!(
                "RDMA segment info of {} bytes is too large",
                bytes.len()
            ));
        }
        let (mut info, rest): (RdmaSegmentInfo, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| format!("malformed RDMA segment info: {e}"))?;
        // A missing or undecodable extension only loses the preferences.
        let ext: InfoExtension = postcard::from_bytes(rest).unwrap_or_default();
        if ext.preferred.len() == info.mrs.len() {
            let devices = info.devices.len();
            for (mr, mut pref) in info.mrs.iter_mut().zip(ext.preferred) {
                pref.retain(|d| usize::try_from(*d).is_ok_and(|d| d < devices));
                mr.preferred = pref;
            }
        }
        info.mrs.sort_by_key(|m| m.addr);
        Ok(info)
    }

    /// The preferred devices of the MR holding `addr` (empty: none, or no such MR).
    pub fn preferred_at(&self, addr: u64) -> &[u32] {
        let i = self.mrs.partition_point(|m| m.addr <= addr);
        match i.checked_sub(1).map(|i| &self.mrs[i]) {
            Some(m) if addr - m.addr < m.len => &m.preferred,
            _ => &[],
        }
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
            preferred: Vec::new(),
        }
    }

    fn dev(name: &str) -> DeviceAddr {
        DeviceAddr {
            name: name.into(),
            gid: [1; 16],
            lid: 0,
        }
    }

    /// The encoding before the extension existed (same fields, no preferences).
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct OldMr {
        addr: u64,
        len: u64,
        rkeys: Vec<u32>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct OldInfo {
        devices: Vec<DeviceAddr>,
        mrs: Vec<OldMr>,
    }

    #[test]
    fn preferred_devices_travel_and_old_readers_still_decode() {
        let mut a = mr(100, 100, &[1, 2, 3]);
        a.preferred = vec![2, 1];
        let mut b = mr(0, 100, &[4, 5, 6]);
        b.preferred = vec![0, 7, 3]; // 7 and 3 are not devices: dropped
        let info = RdmaSegmentInfo {
            devices: vec![dev("mlx5_0"), dev("mlx5_1"), dev("mlx5_2")],
            mrs: vec![a, b, mr(300, 10, &[7, 8, 9])],
        };
        let bytes = info.encode().unwrap();
        let back = RdmaSegmentInfo::decode(&bytes).unwrap();
        assert_eq!(
            back.mrs.iter().map(|m| m.addr).collect::<Vec<_>>(),
            [0, 100, 300]
        );
        assert_eq!(back.preferred_at(150), [2, 1]);
        assert_eq!(back.preferred_at(0), [0]);
        assert_eq!(back.preferred_at(99), [0]);
        assert!(back.preferred_at(305).is_empty());
        assert!(back.preferred_at(200).is_empty(), "gap between MRs");
        assert!(back.preferred_at(u64::MAX).is_empty());

        // A reader of the old format decodes the new bytes (and ignores the extension).
        let old: OldInfo = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old.mrs.len(), 3);
        assert_eq!(old.mrs[0].rkeys, [1, 2, 3]);

        // This reader decodes old bytes: no preferences.
        let old_bytes = postcard::to_stdvec(&old).unwrap();
        let from_old = RdmaSegmentInfo::decode(&old_bytes).unwrap();
        assert_eq!(from_old.mrs.len(), 3);
        assert!(from_old.mrs.iter().all(|m| m.preferred.is_empty()));
        assert_eq!(from_old.spans(1, 150, 10)[0].key, 2);

        // A damaged or mismatched extension loses only the preferences.
        let mut damaged = old_bytes.clone();
        damaged.extend([0xff, 0xff, 0xff]);
        let d = RdmaSegmentInfo::decode(&damaged).unwrap();
        assert!(d.mrs.iter().all(|m| m.preferred.is_empty()) && d.mrs.len() == 3);
        let mut short = old_bytes;
        short.extend(
            postcard::to_stdvec(&InfoExtension {
                preferred: vec![vec![0]],
            })
            .unwrap(),
        );
        let s = RdmaSegmentInfo::decode(&short).unwrap();
        assert!(s.mrs.iter().all(|m| m.preferred.is_empty()));
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
