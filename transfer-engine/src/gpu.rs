//! Device (GPU) memory as the engine's transports reach it.
//!
//! Memory registered as [`Location::Cuda`] is checked against the driver at registration
//! (every byte of the range must belong to that device), and the TCP and memcpy transports
//! move its bytes with the driver's copies: a TCP WRITE from GPU memory is staged into host
//! memory before it is sent, a READ into GPU memory is received into host memory and copied
//! up, and a peer's request for an exported GPU range is served the same way. RDMA reaches GPU
//! memory only through GPUDirect RDMA (the NIC registers the device range itself), which needs
//! `nvidia-peermem` and is not staged.
//!
//! The application finishes writing a GPU buffer (synchronises its stream) before it hands the
//! buffer to a transfer, and does not touch a buffer a transfer is filling until it completes.

use mooncake_sys::cuda::Cuda;
pub use mooncake_sys::cuda::{cuda, CudaError, DeviceBuffer};

use crate::registry::Region;
use crate::{Location, TransferError};

/// The driver, if this process can use CUDA.
fn driver() -> Result<&'static Cuda, String> {
    cuda().map_err(|e| e.to_string())
}

/// Whether memory at `location` can be copied by this process (host memory always; device
/// memory when the CUDA driver loaded).
pub fn reachable(location: Location) -> bool {
    match location {
        Location::Host => true,
        Location::Cuda(_) => cuda().is_ok(),
    }
}

/// The device `ptr` points into, if it is device memory this process can use.
pub fn device_of(ptr: u64) -> Option<u32> {
    cuda().ok()?.device_of(ptr)
}

/// Where the memory at `ptr` lives: on the CUDA device the driver names, else the host. The
/// first call loads the driver (fails fast on hosts without one; the outcome is kept).
pub fn location_of(ptr: u64) -> Location {
    device_of(ptr).map_or(Location::Host, Location::Cuda)
}

/// Refuses a region claimed to be on a device unless the driver agrees for its first and its
/// last byte (a device allocation is contiguous, so a range whose ends lie in one allocation
/// is wholly inside it).
pub fn check_region(region: &Region) -> Result<(), TransferError> {
    let Location::Cuda(device) = region.location else {
        return Ok(());
    };
    if region.len == 0 {
        return Ok(()); // the registry refuses it with its own error
    }
    let cuda = cuda().map_err(|e| {
        TransferError::InvalidArgument(format!(
            "cannot register memory of CUDA device {device}: {e}"
        ))
    })?;
    let last = region.addr.saturating_add(region.len - 1);
    for (what, at) in [("first", region.addr), ("last", last)] {
        match cuda.device_of(at) {
            Some(d) if d == device => {}
            Some(d) => {
                return Err(TransferError::InvalidArgument(format!(
                    "memory [{:#x}, +{}) registered as CUDA device {device}: its {what} byte is on device {d}",
                    region.addr, region.len
                )))
            }
            None => {
                return Err(TransferError::InvalidArgument(format!(
                    "memory [{:#x}, +{}) registered as CUDA device {device}: its {what} byte is not device memory",
                    region.addr, region.len
                )))
            }
        }
    }
    Ok(())
}

/// Copies `len` bytes of device memory at `src` into a new host buffer.
///
/// # Safety
/// `[src, +len)` lies in a registered region of device `device`, kept valid while registered.
pub unsafe fn read_device(device: u32, src: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut v = vec![0u8; len];
    // SAFETY: the caller vouches for the device range; `v` is a live exclusive host buffer.
    unsafe { driver()?.copy(device, v.as_mut_ptr() as u64, src, len) }
        .map_err(|e| e.to_string())?;
    Ok(v)
}

/// Copies `src` into device memory at `dst`.
///
/// # Safety
/// `[dst, +src.len())` lies in a registered region of device `device`, kept valid and
/// writable by transfers while registered.
pub unsafe fn write_device(device: u32, dst: u64, src: &[u8]) -> Result<(), String> {
    // SAFETY: the caller vouches for the device range; `src` is a live host slice.
    unsafe { driver()?.copy(device, dst, src.as_ptr() as u64, src.len()) }
        .map_err(|e| e.to_string())
}

/// Copies `len` bytes from `src` (at `src_loc`) to `dst` (at `dst_loc`), where at least one
/// side is device memory.
///
/// # Safety
/// Both ranges lie in registered regions at the given locations, kept valid while registered.
pub unsafe fn copy(
    dst: u64,
    dst_loc: Location,
    src: u64,
    src_loc: Location,
    len: usize,
) -> Result<(), String> {
    let device = match (dst_loc, src_loc) {
        (Location::Cuda(d), _) | (Location::Host, Location::Cuda(d)) => d,
        (Location::Host, Location::Host) => return Err("no device memory in this copy".into()),
    };
    // SAFETY: the caller vouches for both ranges.
    unsafe { driver()?.copy(device, dst, src, len) }.map_err(|e| e.to_string())
}
