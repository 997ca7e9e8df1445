//! NIC affinity: which RDMA devices sit close to a piece of memory.
//!
//! On a GPU node (say 8 GPUs and 8 NICs on two sockets) a GPU's memory read through a NIC
//! behind another PCIe switch crosses the root complex, or the inter-socket link, on every
//! byte; host memory read through a NIC of the other socket crosses that link too. So each
//! registered region gets a list of preferred devices:
//! - GPU memory: the NICs sharing the longest PCI path with the GPU below the root complex (the
//!   same PCIe switch); if none shares more than the root complex, those on the GPU's NUMA node;
//! - host memory: the NICs on the NUMA node holding the region's pages;
//! - otherwise (unknown node, no NIC there, devices without a PCI device such as soft-RoCE):
//!   every NIC. The list is never empty.
//!
//! [`preferred`] is the pure rule; [`Sysfs`] reads the facts from a sysfs tree whose root is
//! injectable (tests build fake ones); [`Topology`] ties them to the transport's devices.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::registry::Region;
use crate::Location;

/// A PCI device's place in the PCI hierarchy: its root complex (`pci0000:16`) and the chain of
/// bridges and devices below it down to the device itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciPath {
    root: String,
    chain: Vec<String>,
}

/// Whether `s` is a PCI address (`0000:17:00.0`).
fn is_pci_address(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [domain, bus, devfn] => {
            let (dev, func) = devfn.split_once('.').unwrap_or(("", ""));
            hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)
        }
        _ => false,
    }
}

/// Whether `s` names a PCI root complex in sysfs (`pci0000:16`).
fn is_pci_root(s: &str) -> bool {
    s.strip_prefix("pci").is_some_and(|rest| {
        rest.split_once(':').is_some_and(|(d, b)| {
            d.len() == 4
                && b.len() == 2
                && d.chars().chain(b.chars()).all(|c| c.is_ascii_hexdigit())
        })
    })
}

impl PciPath {
    /// Parses a canonical sysfs device path (`/sys/devices/pci0000:16/0000:16:02.0/0000:17:00.0`):
    /// `None` when it has no PCI root complex (virtual devices).
    pub fn parse(path: &Path) -> Option<PciPath> {
        let mut parts = path.iter().filter_map(|c| c.to_str());
        let root = parts.by_ref().find(|c| is_pci_root(c))?.to_string();
        let chain: Vec<String> = parts
            .take_while(|c| is_pci_address(c))
            .map(String::from)
            .collect();
        if chain.is_empty() {
            return None;
        }
        Some(PciPath { root, chain })
    }

    /// How many bridges below the root complex the two paths share (0 on different root
    /// complexes or when they part at the root): 1 or more means a common PCIe switch.
    pub fn shared_depth(&self, other: &PciPath) -> usize {
        if self.root != other.root {
            return 0;
        }
        self.chain
            .iter()
            .zip(&other.chain)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

impl std::fmt::Display for PciPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.root, self.chain.join("/"))
    }
}

/// Where a device or a piece of memory sits: its NUMA node and PCI path, each if known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// NUMA node.
    pub numa: Option<u32>,
    /// PCI path (PCI devices only).
    pub pci: Option<PciPath>,
}

/// The devices (indices into `nics`) preferred for memory at `place`: those sharing the
/// longest PCI path below the root complex, else those on its NUMA node, else all of them.
/// Never empty when `nics` is not.
pub fn preferred(nics: &[Place], place: &Place) -> Vec<usize> {
    if let Some(p) = &place.pci {
        let depth = |n: &Place| n.pci.as_ref().map_or(0, |q| p.shared_depth(q));
        let best = nics.iter().map(depth).max().unwrap_or(0);
        if best > 0 {
            return (0..nics.len())
                .filter(|i| depth(&nics[*i]) == best)
                .collect();
        }
    }
    if let Some(node) = place.numa {
        let same: Vec<usize> = (0..nics.len())
            .filter(|i| nics[*i].numa == Some(node))
            .collect();
        if !same.is_empty() {
            return same;
        }
    }
    (0..nics.len()).collect()
}

/// Normalises a PCI address as the CUDA driver writes it (`0000:3B:00.0`, or with an 8-digit
/// domain) to sysfs's form (`0000:3b:00.0`).
pub fn normalize_bus_id(id: &str) -> Option<String> {
    let (domain, rest) = id.trim().split_once(':')?;
    let (bus, devfn) = rest.split_once(':')?;
    let (dev, func) = devfn.split_once('.')?;
    let num = |s: &str, max: u32| u32::from_str_radix(s, 16).ok().filter(|v| *v <= max);
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        num(domain, u32::MAX)?,
        num(bus, 0xff)?,
        num(dev, 0x1f)?,
        num(func, 7)?
    ))
}

/// Reads device places from a sysfs tree mounted at `root` (`/` on a real host).
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new("/")
    }
}

/// The NUMA node in a `numa_node` file: `None` if unreadable or -1 (no affinity).
fn read_numa(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse::<u32>().ok()
}

impl Sysfs {
    /// A tree whose `sys/` lies under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The place of the PCI device (or not) behind sysfs link `dev` (`.../device`).
    fn device_place(dev: &Path) -> Place {
        Place {
            numa: read_numa(&dev.join("numa_node")),
            pci: fs::canonicalize(dev).ok().and_then(|p| PciPath::parse(&p)),
        }
    }

    /// The place of RDMA device `name` (empty for devices without a PCI device, like rxe).
    pub fn rdma_device(&self, name: &str) -> Place {
        if name.contains('/') || name.starts_with('.') {
            return Place::default();
        }
        Self::device_place(
            &self
                .root
                .join("sys/class/infiniband")
                .join(name)
                .join("device"),
        )
    }

    /// The place of the PCI device at address `bus_id` (any case, as the CUDA driver gives it).
    pub fn pci_device(&self, bus_id: &str) -> Place {
        match normalize_bus_id(bus_id) {
            Some(id) => Self::device_place(&self.root.join("sys/bus/pci/devices").join(id)),
            None => Place::default(),
        }
    }

    /// The host's NUMA nodes (empty if the tree does not say).
    pub fn numa_nodes(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir(self.root.join("sys/devices/system/node")) else {
            return Vec::new();
        };
        let mut nodes: Vec<u32> = dir
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("node")?
                    .parse()
                    .ok()
            })
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// PCI addresses of the NVIDIA GPUs (vendor 0x10de, display or 3D controller class).
    pub fn nvidia_gpus(&self) -> Vec<String> {
        let base = self.root.join("sys/bus/pci/devices");
        let Ok(dir) = fs::read_dir(&base) else {
            return Vec::new();
        };
        let read = |id: &str, f: &str| fs::read_to_string(base.join(id).join(f)).ok();
        let mut gpus: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
            .filter(|id| {
                read(id, "vendor").is_some_and(|v| v.trim() == "0x10de")
                    && read(id, "class").is_some_and(|c| {
                        let c = c.trim();
                        c.starts_with("0x0300") || c.starts_with("0x0302")
                    })
            })
            .collect();
        gpus.sort();
        gpus
    }
}

/// Most pages sampled to find the NUMA node of a host region.
const SAMPLED_PAGES: usize = 8;

/// The NUMA node holding most of a few pages of `[addr, addr + len)` (the first page and up to
/// seven more spread over the range): `None` if the kernel does not say (pages not present,
/// `move_pages` forbidden, as in default container profiles, or a non-NUMA kernel). Asks only:
/// no page is faulted in or moved.
pub fn numa_of_pages(addr: u64, len: u64) -> Option<u32> {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| *p > 0)?;
    let first = addr & !(page - 1);
    let pages_in = len.div_ceil(page).max(1);
    let n = pages_in.min(SAMPLED_PAGES as u64);
    let step = pages_in / n;
    let addrs: Vec<*mut libc::c_void> = (0..n)
        .map(|i| (first + i * step * page) as usize as *mut libc::c_void)
        .collect();
    let mut status = vec![-1i32; addrs.len()];
    // SAFETY: with a null `nodes` array move_pages only reports where each page is: the kernel
    // reads `count` addresses (any value is allowed; bad ones get a negative status) and writes
    // `count` statuses into our buffer of that length. Nothing is moved.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0 as libc::c_long,
            addrs.len() as libc::c_ulong,
            addrs.as_ptr(),
            std::ptr::null::<libc::c_int>(),
            status.as_mut_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        return None;
    }
    majority(&status)
}

/// The most frequent non-negative entry (the lowest on ties); `None` if there is none.
fn majority(status: &[i32]) -> Option<u32> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for s in status {
        if let Ok(node) = u32::try_from(*s) {
            *counts.entry(node).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(node, c)| (*c, std::cmp::Reverse(*node)))
        .map(|(node, _)| node)
}

/// The transport's devices with their places, and the preferred devices of GPUs (found once).
#[derive(Debug)]
pub struct Topology {
    names: Vec<String>,
    nics: Vec<Place>,
    sysfs: Sysfs,
    gpus: Mutex<HashMap<u32, Vec<usize>>>,
}

impl Topology {
    /// Reads the places of the devices `names` (in the transport's order) from `sysfs`.
    pub fn read(sysfs: Sysfs, names: &[String]) -> Topology {
        Topology {
            nics: names.iter().map(|n| sysfs.rdma_device(n)).collect(),
            names: names.to_vec(),
            sysfs,
            gpus: Mutex::new(HashMap::new()),
        }
    }

    /// The place of each device, in order.
    pub fn places(&self) -> &[Place] {
        &self.nics
    }

    /// Preferred devices for host memory on NUMA node `node` (all if unknown).
    pub fn for_numa(&self, node: Option<u32>) -> Vec<usize> {
        preferred(
            &self.nics,
            &Place {
                numa: node,
                pci: None,
            },
        )
    }

    /// Preferred devices for the memory of the PCI device at `bus_id` (a GPU).
    pub fn for_pci_device(&self, bus_id: &str) -> Vec<usize> {
        preferred(&self.nics, &self.sysfs.pci_device(bus_id))
    }

    /// Preferred devices for the memory of CUDA device `device` (all if the driver cannot
    /// place it).
    pub fn for_gpu(&self, device: u32) -> Vec<usize> {
        if let Some(p) = self.gpus.lock().get(&device) {
            return p.clone();
        }
        let chosen = match crate::gpu::pci_bus_id(device) {
            Ok(id) => {
                let p = self.for_pci_device(&id);
                tracing::info!(gpu = device, pci = %id, prefers = ?self.names_of(&p),
                    "RDMA devices for this GPU's memory");
                p
            }
            Err(e) => {
                tracing::warn!(gpu = device, error = %e, "cannot place the GPU; using every RDMA device");
                (0..self.nics.len()).collect()
            }
        };
        self.gpus.lock().insert(device, chosen.clone());
        chosen
    }

    /// Preferred devices for a registered region. Host regions are placed by their pages, so
    /// call this once they are present (after the MRs pinned them).
    pub fn for_region(&self, region: &Region) -> Vec<usize> {
        match region.location {
            Location::Host => self.for_numa(numa_of_pages(region.addr, region.len)),
            Location::Cuda(d) => self.for_gpu(d),
        }
    }

    /// The names of devices `indices`.
    pub fn names_of(&self, indices: &[usize]) -> Vec<&str> {
        indices
            .iter()
            .filter_map(|i| self.names.get(*i).map(String::as_str))
            .collect()
    }

    /// Logs each device's place and the devices each NUMA node and NVIDIA GPU prefers.
    pub fn log(&self) {
        for (name, p) in self.names.iter().zip(&self.nics) {
            let pci = p.pci.as_ref().map(ToString::to_string);
            tracing::info!(device = %name, numa = ?p.numa, pci = ?pci, "RDMA device placement");
        }
        for node in self.sysfs.numa_nodes() {
            tracing::info!(numa = node, prefers = ?self.names_of(&self.for_numa(Some(node))),
                "RDMA devices for host memory of this NUMA node");
        }
        for gpu in self.sysfs.nvidia_gpus() {
            tracing::info!(gpu_pci = %gpu, prefers = ?self.names_of(&self.for_pci_device(&gpu)),
                "RDMA devices for this GPU's memory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs tree: PCI devices under `sys/devices`, reachable through
    /// `sys/bus/pci/devices/<id>` links, and RDMA devices whose `device` links point at them.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.dir.path())
        }

        fn at(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        /// Adds PCI device at `path` (below `sys/devices`, last component its address).
        fn pci(&self, path: &str, numa: i32, vendor_class: Option<(&str, &str)>) {
            let dir = self.at("sys/devices").join(path);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("numa_node"), format!("{numa}\n")).unwrap();
            if let Some((vendor, class)) = vendor_class {
                fs::write(dir.join("vendor"), vendor).unwrap();
                fs::write(dir.join("class"), class).unwrap();
            }
            let id = path.rsplit('/').next().unwrap();
            fs::create_dir_all(self.at("sys/bus/pci/devices")).unwrap();
            symlink(&dir, self.at("sys/bus/pci/devices").join(id)).unwrap();
        }

        /// Adds RDMA device `name` on the PCI device at `path` (`None`: a virtual device).
        fn nic(&self, name: &str, path: Option<&str>) {
            let dir = self.at("sys/class/infiniband").join(name);
            fs::create_dir_all(&dir).unwrap();
            if let Some(p) = path {
                symlink(self.at("sys/devices").join(p), dir.join("device")).unwrap();
            }
        }

        fn node(&self, n: u32) {
            fs::create_dir_all(self.at(&format!("sys/devices/system/node/node{n}"))).unwrap();
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pci_paths_parse_and_share_switches() {
        let p = |s: &str| PciPath::parse(Path::new(s));
        let gpu = p("/sys/devices/pci0000:16/0000:16:01.0/0000:17:00.0/0000:18:00.0/0000:19:00.0")
            .unwrap();
        let nic_same_switch =
            p("/sys/devices/pci0000:16/0000:16:01.0/0000:17:00.0/0000:18:04.0/0000:1a:00.0")
                .unwrap();
        let nic_same_root = p("/sys/devices/pci0000:16/0000:16:02.0/0000:20:00.0").unwrap();
        let nic_other_root = p("/sys/devices/pci0000:80/0000:16:01.0/0000:81:00.0").unwrap();
        assert_eq!(gpu.shared_depth(&nic_same_switch), 2);
        assert_eq!(gpu.shared_depth(&nic_same_root), 0);
        assert_eq!(
            gpu.shared_depth(&nic_other_root),
            0,
            "equal bridge names on different roots are different bridges"
        );
        assert_eq!(gpu.shared_depth(&gpu), 4);
        assert_eq!(
            nic_same_root.to_string(),
            "pci0000:16/0000:16:02.0/0000:20:00.0"
        );
        // Virtual devices and junk have no PCI path.
        assert_eq!(p("/sys/devices/virtual/net/veth0"), None);
        assert_eq!(p("/sys/devices/pci0000:00"), None);
        assert_eq!(p("/sys/devices/pcixyz/0000:00:01.0"), None);
        // The PCI part stops at the first non-PCI component.
        let virtio = p("/sys/devices/pci0000:00/0000:00:03.0/virtio0/net").unwrap();
        assert_eq!(virtio.to_string(), "pci0000:00/0000:00:03.0");
    }

    #[test]
    fn bus_ids_are_normalised_to_sysfs_form() {
        assert_eq!(
            normalize_bus_id("0000:3B:00.0").as_deref(),
            Some("0000:3b:00.0")
        );
        assert_eq!(
            normalize_bus_id("00000000:3B:1F.7\n").as_deref(),
            Some("0000:3b:1f.7")
        );
        assert_eq!(
            normalize_bus_id("10001:02:00.0").as_deref(),
            Some("10001:02:00.0")
        );
        for bad in [
            "",
            "3b:00.0",
            "0000:3b:00",
            "0000:3b:20.0",
            "0000:zz:00.0",
            "0000:3b:00.8",
        ] {
            assert_eq!(normalize_bus_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn two_numa_nodes_with_two_nics_each() {
        let t = Tree::new();
        t.node(0);
        t.node(1);
        let devs = [
            ("mlx5_0", "pci0000:16/0000:16:02.0/0000:17:00.0", 0),
            ("mlx5_1", "pci0000:16/0000:16:03.0/0000:18:00.0", 0),
            ("mlx5_2", "pci0000:80/0000:80:02.0/0000:81:00.0", 1),
            ("mlx5_3", "pci0000:80/0000:80:03.0/0000:82:00.0", 1),
        ];
        for (name, path, numa) in devs {
            t.pci(path, numa, None);
            t.nic(name, Some(path));
        }
        // The transport's order need not be sysfs's.
        let topo = Topology::read(t.sysfs(), &names(&["mlx5_2", "mlx5_0", "mlx5_3", "mlx5_1"]));
        assert_eq!(topo.places()[0].numa, Some(1));
        assert_eq!(
            topo.places()[1].pci.as_ref().unwrap().to_string(),
            "pci0000:16/0000:16:02.0/0000:17:00.0"
        );
        assert_eq!(topo.names_of(&topo.for_numa(Some(0))), ["mlx5_0", "mlx5_1"]);
        assert_eq!(topo.names_of(&topo.for_numa(Some(1))), ["mlx5_2", "mlx5_3"]);
        assert_eq!(topo.for_numa(None), [0, 1, 2, 3], "unknown node: all");
        assert_eq!(topo.for_numa(Some(2)), [0, 1, 2, 3], "no NIC there: all");
        assert_eq!(t.sysfs().numa_nodes(), [0, 1]);
        // A device on no switch of its own: the NIC's root port is not shared, NUMA decides.
        t.pci("pci0000:16/0000:16:05.0/0000:19:00.0", 0, None);
        assert_eq!(
            topo.names_of(&topo.for_pci_device("0000:19:00.0")),
            ["mlx5_0", "mlx5_1"]
        );
    }

    #[test]
    fn gpus_behind_switches_pick_their_switch_nic() {
        let t = Tree::new();
        // Two sockets, two PCIe switches each; every switch holds one GPU and one NIC.
        let mut nics = Vec::new();
        let mut gpus = Vec::new();
        for (root, numa, buses) in [("16", 0, [0x20u8, 0x40]), ("80", 1, [0x90, 0xb0])] {
            for (port, bus) in [(1u8, buses[0]), (2, buses[1])] {
                let up = format!("pci0000:{root}/0000:{root}:{port:02x}.0/0000:{bus:02x}:00.0");
                let gpu = format!("{up}/0000:{:02x}:00.0/0000:{:02x}:00.0", bus + 1, bus + 2);
                let nic = format!("{up}/0000:{:02x}:04.0/0000:{:02x}:00.0", bus + 1, bus + 3);
                t.pci(&gpu, numa, Some(("0x10de\n", "0x030200\n")));
                t.pci(&nic, numa, Some(("0x15b3\n", "0x020700\n")));
                let name = format!("mlx5_{}", nics.len());
                t.nic(&name, Some(&nic));
                nics.push(name);
                gpus.push(format!("0000:{:02X}:00.0", bus + 2));
            }
        }
        let topo = Topology::read(t.sysfs(), &nics);
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(
                topo.for_pci_device(gpu),
                [i],
                "GPU {gpu} (as CUDA spells it)"
            );
        }
        let found = t.sysfs().nvidia_gpus();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found
            .iter()
            .all(|g| g.ends_with(":00.0") && g == &g.to_lowercase()));
        // A GPU on socket 1 without a NIC on its switch falls back to socket 1's NICs.
        t.pci("pci0000:80/0000:80:07.0/0000:90:00.0", 1, None);
        assert_eq!(
            topo.names_of(&topo.for_pci_device("0000:90:00.0")),
            ["mlx5_2", "mlx5_3"]
        );
        topo.log();
    }

    #[test]
    fn virtual_devices_have_no_preference() {
        let t = Tree::new();
        t.node(0);
        t.nic("rxe0", None);
        t.nic("rxe1", None);
        let topo = Topology::read(t.sysfs(), &names(&["rxe0", "rxe1"]));
        assert_eq!(topo.places(), [Place::default(), Place::default()]);
        assert_eq!(topo.for_numa(Some(0)), [0, 1]);
        t.pci("pci0000:00/0000:00:02.0/0000:01:00.0", 0, None);
        assert_eq!(topo.for_pci_device("0000:01:00.0"), [0, 1]);
        topo.log();
    }

    #[test]
    fn missing_or_unreadable_files_mean_no_preference() {
        let t = Tree::new();
        // numa_node says -1 (no affinity) for one, is garbage for the other; a third device
        // link dangles; a fourth name is not in the tree at all.
        t.pci("pci0000:00/0000:00:02.0/0000:01:00.0", -1, None);
        t.pci("pci0000:00/0000:00:03.0/0000:02:00.0", 0, None);
        fs::write(
            t.at("sys/devices/pci0000:00/0000:00:03.0/0000:02:00.0/numa_node"),
            "garbage",
        )
        .unwrap();
        t.nic("mlx5_0", Some("pci0000:00/0000:00:02.0/0000:01:00.0"));
        t.nic("mlx5_1", Some("pci0000:00/0000:00:03.0/0000:02:00.0"));
        t.nic("mlx5_2", Some("pci0000:00/0000:00:04.0/0000:03:00.0"));
        let n = names(&["mlx5_0", "mlx5_1", "mlx5_2", "absent", "../escape"]);
        let topo = Topology::read(t.sysfs(), &n);
        assert!(topo.places().iter().all(|p| p.numa.is_none()));
        assert!(topo.places()[2].pci.is_none() && topo.places()[3].pci.is_none());
        assert_eq!(topo.for_numa(Some(0)), [0, 1, 2, 3, 4]);
        assert_eq!(topo.for_pci_device("0000:77:00.0"), [0, 1, 2, 3, 4]);
        assert_eq!(topo.for_pci_device("not a bus id"), [0, 1, 2, 3, 4]);
        // A tree without sysfs at all.
        let none = Sysfs::new(t.at("nowhere"));
        assert!(none.numa_nodes().is_empty() && none.nvidia_gpus().is_empty());
        let topo = Topology::read(none, &names(&["mlx5_0"]));
        assert_eq!(topo.for_numa(Some(0)), [0]);
        topo.log();
        // No devices: nothing to prefer, and no panic.
        assert!(preferred(&[], &Place::default()).is_empty());
    }

    #[test]
    fn unreadable_numa_file_is_no_preference() {
        let t = Tree::new();
        let path = "pci0000:00/0000:00:02.0/0000:01:00.0";
        t.pci(path, 0, None);
        t.nic("mlx5_0", Some(path));
        t.nic("rxe0", None);
        // A numa_node that cannot be read (even by root): a directory in its place.
        let file = t.at("sys/devices").join(path).join("numa_node");
        fs::remove_file(&file).unwrap();
        fs::create_dir(&file).unwrap();
        let topo = Topology::read(t.sysfs(), &names(&["mlx5_0", "rxe0"]));
        assert_eq!(topo.places()[0].numa, None);
        assert!(topo.places()[0].pci.is_some());
        assert_eq!(topo.for_numa(Some(0)), [0, 1]);
    }

    #[test]
    fn regions_are_placed_by_their_memory() {
        // One NIC on each of nodes 0..8 of a fake tree; a real region of this process.
        let t = Tree::new();
        let mut n = Vec::new();
        for node in 0..8u8 {
            let path = format!(
                "pci0000:{node:02x}/0000:{node:02x}:02.0/0000:{:02x}:00.0",
                node + 0x10
            );
            t.pci(&path, i32::from(node), None);
            let name = format!("mlx5_{node}");
            t.nic(&name, Some(&path));
            n.push(name);
        }
        let topo = Topology::read(t.sysfs(), &n);
        let all: Vec<usize> = (0..8).collect();
        let buf = vec![1u8; 3 << 20];
        let host = Region {
            addr: buf.as_ptr() as u64,
            len: buf.len() as u64,
            location: Location::Host,
        };
        match numa_of_pages(host.addr, host.len) {
            Some(node) if node < 8 => assert_eq!(topo.for_region(&host), [node as usize]),
            _ => assert_eq!(topo.for_region(&host), all),
        }
        // A GPU the fake tree does not hold (or no driver here): every NIC, and no panic.
        let gpu = Region {
            location: Location::Cuda(0),
            ..host
        };
        assert_eq!(topo.for_region(&gpu), all);
        assert_eq!(topo.for_region(&gpu), all, "cached");
    }

    #[test]
    fn the_majority_node_of_sampled_pages_wins() {
        assert_eq!(majority(&[1, 1, 0]), Some(1));
        assert_eq!(majority(&[0, 1]), Some(0), "ties go to the lower node");
        assert_eq!(majority(&[-14, -2, 3]), Some(3));
        assert_eq!(majority(&[-14, -2]), None);
        assert_eq!(majority(&[]), None);
    }

    #[test]
    fn this_host_places_touched_pages_on_a_real_node() {
        let buf = vec![7u8; 1 << 20];
        let nodes = Sysfs::default().numa_nodes();
        // Where the kernel answers, the node is one of the host's; otherwise no preference.
        if let Some(node) = numa_of_pages(buf.as_ptr() as u64, buf.len() as u64) {
            assert!(
                nodes.is_empty() || nodes.contains(&node),
                "{node} not in {nodes:?}"
            );
        }
        // Unmapped addresses are never placed.
        assert_eq!(numa_of_pages(0, 4096), None);
    }
}
