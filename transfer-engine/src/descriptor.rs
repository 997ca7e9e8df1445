//! Segment descriptors: what a peer needs to know to transfer to or from a segment.
//!
//! A descriptor names the segment, the address of its engine's listener, the buffers it exports
//! and opaque per-transport data (e.g. RDMA keys and GIDs, keyed by transport name). It travels
//! through the metadata store encoded with postcard.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::registry::Region;
use crate::TransferError;

/// Everything a peer needs to reach a segment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentDescriptor {
    /// Segment name.
    pub name: String,
    /// The owning engine's TCP listener (data and control).
    pub tcp_addr: SocketAddr,
    /// Random per engine start: tells an engine restarted on the same address (with other
    /// memory at possibly the same addresses) from the one this descriptor describes.
    pub incarnation: u64,
    /// Exported buffers in address order.
    pub buffers: Vec<Region>,
    /// Opaque per-transport data, keyed by transport name (e.g. `"rdma"`).
    pub transports: BTreeMap<String, Vec<u8>>,
}

impl SegmentDescriptor {
    /// The exported buffer holding all of `[addr, addr + len)`, if one does.
    pub fn find(&self, addr: u64, len: u64) -> Option<&Region> {
        let idx = self.buffers.partition_point(|b| b.addr <= addr);
        let r = self.buffers.get(idx.checked_sub(1)?)?;
        r.contains(addr, len).then_some(r)
    }

    /// Encodes with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, TransferError> {
        postcard::to_stdvec(self)
            .map_err(|e| TransferError::Metadata(format!("encode descriptor: {e}")))
    }

    /// Decodes a postcard encoding; keeps buffers sorted whatever the sender did.
    pub fn decode(bytes: &[u8]) -> Result<Self, TransferError> {
        let mut d: SegmentDescriptor = postcard::from_bytes(bytes)
            .map_err(|e| TransferError::Metadata(format!("decode descriptor: {e}")))?;
        d.buffers.sort_by_key(|b| b.addr);
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    #[test]
    fn find_and_roundtrip() {
        let reg = |addr, len| Region {
            addr,
            len,
            location: Location::Host,
        };
        let d = SegmentDescriptor {
            name: "a".into(),
            tcp_addr: "127.0.0.1:5".parse().unwrap(),
            incarnation: 9,
            buffers: vec![reg(4096, 100), reg(10_000, 50)],
            transports: BTreeMap::from([("rdma".to_string(), vec![1, 2])]),
        };
        assert_eq!(d.find(4096, 100).map(|r| r.addr), Some(4096));
        assert_eq!(d.find(10_010, 40).map(|r| r.addr), Some(10_000));
        assert!(d.find(10_010, 41).is_none());
        assert!(d.find(4000, 10).is_none());
        assert!(d.find(4196, 1).is_none());
        let back = SegmentDescriptor::decode(&d.encode().unwrap()).unwrap();
        assert_eq!(back, d);
        assert!(SegmentDescriptor::decode(&[0xff, 0xff]).is_err());
    }
}
