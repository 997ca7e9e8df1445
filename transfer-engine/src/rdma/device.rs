//! RDMA device discovery: which devices exist, which ports are active, and which GID each
//! uses.
//!
//! libibverbs is loaded at run time (through `sideway`), so on a host without rdma-core or
//! without RDMA hardware discovery fails with a reason instead of the binary failing to load.
//! Each device is used through its first active port (port 1 on a single-port NIC; port 2 of
//! a dual-port NIC whose port 1 is down). The choices are pure ([`choose_port`],
//! [`choose_gid_index`]).

use std::sync::Arc;

use mooncake_sys::verbs::ibverbs::device::{DeviceInfo, DeviceList};
use mooncake_sys::verbs::ibverbs::device_context::{DeviceContext, LinkLayer, PortState};

/// Upper bound on GID table entries scanned per port.
const MAX_GIDS_SCANNED: u32 = 256;

/// One non-zero GID table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GidEntry {
    /// Index in the port's GID table.
    pub index: u32,
    /// The GID.
    pub gid: [u8; 16],
    /// Whether it is a RoCE v2 GID.
    pub roce_v2: bool,
}

fn is_link_local(gid: &[u8; 16]) -> bool {
    gid[0] == 0xfe && gid[1] & 0xc0 == 0x80
}

fn is_ipv4_mapped(gid: &[u8; 16]) -> bool {
    gid[..10].iter().all(|b| *b == 0) && gid[10] == 0xff && gid[11] == 0xff
}

/// Picks the GID index: the configured one if the table has it; index 0 on InfiniBand;
/// otherwise the best RoCE v2 GID (IPv4-mapped, then other routable, then link-local, which is
/// all a veth pair has), falling back to any GID.
pub fn choose_gid_index(
    gids: &[GidEntry],
    configured: Option<u32>,
    infiniband: bool,
) -> Result<u32, String> {
    if let Some(want) = configured {
        return gids
            .iter()
            .find(|g| g.index == want)
            .map(|g| g.index)
            .ok_or_else(|| format!("configured GID index {want} is empty or out of range"));
    }
    if infiniband {
        return gids
            .iter()
            .find(|g| g.index == 0)
            .map(|g| g.index)
            .ok_or_else(|| "GID index 0 is empty".to_string());
    }
    let rank = |g: &GidEntry| match (g.roce_v2, is_ipv4_mapped(&g.gid), is_link_local(&g.gid)) {
        (true, true, _) => 0,
        (true, false, false) => 1,
        (true, false, true) => 2,
        (false, _, _) => 3,
    };
    gids.iter()
        .min_by_key(|g| (rank(g), g.index))
        .map(|g| g.index)
        .ok_or_else(|| "the port has no GID".to_string())
}

/// The first of `states` (port 1 first) that is active, as a port number.
pub fn choose_port(states: &[PortState]) -> Option<u8> {
    states
        .iter()
        .position(|s| *s == PortState::Active)
        .and_then(|i| u8::try_from(i + 1).ok())
}

/// An opened device with an active port and a chosen GID.
pub struct ActiveDevice {
    /// Device name.
    pub name: String,
    /// The port used (1-based).
    pub port: u8,
    /// The opened device.
    pub ctx: Arc<DeviceContext>,
    /// Chosen GID index.
    pub gid_index: u32,
    /// The GID at that index.
    pub gid: [u8; 16],
    /// Port LID (InfiniBand).
    pub lid: u16,
    /// Active MTU (ibverbs enum value).
    pub mtu: u32,
}

impl std::fmt::Debug for ActiveDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveDevice")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("gid_index", &self.gid_index)
            .field("mtu", &self.mtu)
            .finish()
    }
}

fn read_gids(ctx: &DeviceContext, port: u8, table_len: i32) -> Vec<GidEntry> {
    let n = u32::try_from(table_len).unwrap_or(0).min(MAX_GIDS_SCANNED);
    (0..n)
        .filter_map(|index| {
            let gid = ctx.query_gid(port, index).ok()?.raw;
            if gid.iter().all(|b| *b == 0) {
                return None;
            }
            // 1 = RoCE v2 in ibv_query_gid_type's sysfs encoding.
            let roce_v2 = ctx
                .query_gid_type(port, index)
                .map(|t| t == 1)
                .unwrap_or(false);
            Some(GidEntry {
                index,
                gid,
                roce_v2,
            })
        })
        .collect()
}

fn open_one(
    name: &str,
    ctx: Arc<DeviceContext>,
    gid_index: Option<u32>,
) -> Result<ActiveDevice, String> {
    // A device that cannot say how many ports it has is tried on port 1, as before.
    let ports = ctx
        .query_device()
        .map(|a| a.phys_port_cnt())
        .unwrap_or(1)
        .max(1);
    let states: Vec<PortState> = (1..=ports)
        .map(|p| {
            ctx.query_port(p)
                .map(|a| a.port_state())
                .unwrap_or(PortState::Down)
        })
        .collect();
    let Some(port_num) = choose_port(&states) else {
        return Err(format!("no active port (states {states:?})"));
    };
    let port = ctx
        .query_port(port_num)
        .map_err(|e| format!("query port {port_num}: {e}"))?;
    let gids = read_gids(&ctx, port_num, port.gid_tbl_len());
    let infiniband = port.link_layer() == LinkLayer::InfiniBand;
    let index = choose_gid_index(&gids, gid_index, infiniband)?;
    let gid = gids
        .iter()
        .find(|g| g.index == index)
        .map(|g| g.gid)
        .ok_or_else(|| format!("GID index {index} vanished"))?;
    Ok(ActiveDevice {
        name: name.to_string(),
        port: port_num,
        ctx,
        gid_index: index,
        gid,
        lid: port.lid(),
        mtu: port.active_mtu() as u32,
    })
}

/// An error with its causes ("failed to get device list: Function not implemented").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.ends_with(&s) {
            out = format!("{out}: {s}");
        }
        cur = c.source();
    }
    out
}

/// Opens every device named in `filter` (all devices when empty) whose port is active.
/// `Err` says why none is usable (no library, no device, every port down...).
pub fn discover(filter: &[String], gid_index: Option<u32>) -> Result<Vec<ActiveDevice>, String> {
    let list = DeviceList::new().map_err(|e| format!("cannot list RDMA devices: {}", chain(&e)))?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for dev in list.iter() {
        let name = dev.name();
        if !filter.is_empty() && !filter.contains(&name) {
            continue;
        }
        let opened = dev
            .open()
            .map_err(|e| format!("open: {}", chain(&e)))
            .and_then(|ctx| open_one(&name, ctx, gid_index));
        match opened {
            Ok(d) => found.push(d),
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    if !found.is_empty() {
        for s in &skipped {
            tracing::warn!(device = %s, "RDMA device skipped");
        }
        return Ok(found);
    }
    if skipped.is_empty() {
        if filter.is_empty() {
            Err("no RDMA device found".into())
        } else {
            Err(format!(
                "none of the configured RDMA devices {filter:?} exists"
            ))
        }
    } else {
        Err(format!("no usable RDMA device ({})", skipped.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_active_port_is_used() {
        use PortState::{Active, Down, Initializing};
        assert_eq!(choose_port(&[Active]), Some(1));
        assert_eq!(choose_port(&[Active, Active]), Some(1));
        assert_eq!(
            choose_port(&[Down, Active]),
            Some(2),
            "dual-port NIC, port 1 down"
        );
        assert_eq!(choose_port(&[Initializing, Down]), None);
        assert_eq!(choose_port(&[]), None);
    }

    fn g(index: u32, first: [u8; 4], roce_v2: bool) -> GidEntry {
        let mut gid = [0u8; 16];
        gid[..4].copy_from_slice(&first);
        gid[15] = 1;
        GidEntry {
            index,
            gid,
            roce_v2,
        }
    }

    fn v4(index: u32) -> GidEntry {
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&[10, 0, 0, 1]);
        GidEntry {
            index,
            gid,
            roce_v2: true,
        }
    }

    #[test]
    fn prefers_roce_v2_ipv4_then_routable_then_link_local() {
        let ll_v1 = g(0, [0xfe, 0x80, 0, 0], false);
        let ll_v2 = g(1, [0xfe, 0x80, 0, 0], true);
        let routable_v2 = g(2, [0x20, 0x01, 0, 0], true);
        assert_eq!(choose_gid_index(&[ll_v1, ll_v2], None, false), Ok(1));
        assert_eq!(
            choose_gid_index(&[ll_v1, ll_v2, routable_v2], None, false),
            Ok(2)
        );
        assert_eq!(
            choose_gid_index(&[ll_v1, ll_v2, routable_v2, v4(3)], None, false),
            Ok(3)
        );
        assert_eq!(
            choose_gid_index(&[ll_v1], None, false),
            Ok(0),
            "v1 as a last resort"
        );
        // rxe on a veth pair: one link-local RoCE v2 GID at index 0.
        assert_eq!(
            choose_gid_index(&[g(0, [0xfe, 0x80, 0, 0], true)], None, false),
            Ok(0)
        );
        assert!(choose_gid_index(&[], None, false).is_err());
    }

    #[test]
    fn configured_index_and_infiniband() {
        let gids = [g(0, [0xfe, 0x80, 0, 0], false), v4(3)];
        assert_eq!(choose_gid_index(&gids, Some(0), false), Ok(0));
        assert!(choose_gid_index(&gids, Some(2), false)
            .unwrap_err()
            .contains("index 2"));
        assert_eq!(choose_gid_index(&gids, None, true), Ok(0));
        assert!(choose_gid_index(&gids[1..], None, true).is_err());
    }

    #[test]
    fn discovery_on_this_host_explains_itself() {
        // Hosts without RDMA get a reason; hosts with it get active devices only.
        match discover(&[], None) {
            Ok(devs) => assert!(devs.iter().all(|d| !d.name.is_empty())),
            Err(why) => assert!(!why.is_empty()),
        }
        let err = discover(&["no-such-device-xyz".into()], None).unwrap_err();
        assert!(
            err.contains("no-such-device-xyz") || err.contains("cannot list"),
            "{err}"
        );
    }
}
