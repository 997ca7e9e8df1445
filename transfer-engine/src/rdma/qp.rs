//! Reliable-connected queue pairs: creation and the RESET→INIT→RTR→RTS transitions.
//!
//! Attributes follow what works on real NICs and on rxe: READ needs `max_dest_read_atomic`
//! (responder) and `max_read_atomic` (requester) of at least 1, the GRH carries the chosen GID
//! index, the path MTU is the smaller of the two ports' active MTUs. rxe never reports
//! transport retry errors, so the engine's deadlines, not these timeouts, bound every request.

use mooncake_sys::verbs::ibverbs::address::{AddressHandleAttribute, Gid};
use mooncake_sys::verbs::ibverbs::device_context::Mtu;
use mooncake_sys::verbs::ibverbs::queue_pair::{
    GenericQueuePair, QueuePair, QueuePairAttribute, QueuePairState,
};
use mooncake_sys::verbs::ibverbs::AccessFlags;

use super::nic::Nic;
use super::wire::DeviceAddr;

/// Access rights of registered memory and of queue pairs.
pub fn access() -> AccessFlags {
    AccessFlags::LocalWrite | AccessFlags::RemoteRead | AccessFlags::RemoteWrite
}

/// Validates an MTU enum value received from a peer.
pub fn mtu_from(raw: u32) -> Result<Mtu, String> {
    if (1..=5).contains(&raw) {
        Ok(Mtu::from(raw))
    } else {
        Err(format!("invalid path MTU value {raw}"))
    }
}

/// A fresh 24-bit packet sequence number.
pub fn random_psn() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() & 0x00ff_ffff) as u32
}

/// Creates an RC queue pair on `nic` (send queue only) and moves it to INIT.
pub fn create(nic: &Nic) -> Result<GenericQueuePair, String> {
    let mut qp: GenericQueuePair = nic
        .pd
        .create_qp_builder()
        .setup_max_send_wr(nic.sq_depth)
        .setup_max_recv_wr(1)
        .setup_max_send_sge(1)
        .setup_max_recv_sge(1)
        .setup_send_cq(nic.cq.clone())
        .setup_recv_cq(nic.cq.clone())
        .build()
        .map_err(|e| format!("{}: create queue pair: {e}", nic.dev.name))?
        .into();
    let mut attr = QueuePairAttribute::new();
    attr.setup_state(QueuePairState::Init)
        .setup_pkey_index(0)
        .setup_port(nic.dev.port)
        .setup_access_flags(access());
    qp.modify(&attr)
        .map_err(|e| format!("{}: queue pair to INIT: {e}", nic.dev.name))?;
    Ok(qp)
}

/// Connects `qp` to the remote queue pair `remote_qpn` on `remote` and makes it ready to send.
pub fn connect(
    qp: &mut GenericQueuePair,
    nic: &Nic,
    remote: &DeviceAddr,
    remote_qpn: u32,
    remote_psn: u32,
    local_psn: u32,
    mtu: u32,
) -> Result<(), String> {
    let mut ah = AddressHandleAttribute::new();
    ah.setup_dest_lid(remote.lid)
        .setup_port(nic.dev.port)
        .setup_service_level(0)
        .setup_grh_src_gid_index(nic.dev.gid_index as u8)
        .setup_grh_dest_gid(&Gid { raw: remote.gid })
        .setup_grh_hop_limit(64);
    let mut rtr = QueuePairAttribute::new();
    rtr.setup_state(QueuePairState::ReadyToReceive)
        .setup_path_mtu(mtu_from(mtu)?)
        .setup_dest_qp_num(remote_qpn)
        .setup_rq_psn(remote_psn & 0x00ff_ffff)
        .setup_max_dest_read_atomic(nic.read_atomic)
        .setup_min_rnr_timer(12)
        .setup_address_vector(&ah);
    qp.modify(&rtr)
        .map_err(|e| format!("{}: queue pair to RTR: {e}", nic.dev.name))?;
    let mut rts = QueuePairAttribute::new();
    rts.setup_state(QueuePairState::ReadyToSend)
        .setup_sq_psn(local_psn & 0x00ff_ffff)
        .setup_timeout(14)
        .setup_retry_cnt(7)
        .setup_rnr_retry(7)
        .setup_max_read_atomic(nic.read_atomic);
    qp.modify(&rts)
        .map_err(|e| format!("{}: queue pair to RTS: {e}", nic.dev.name))
}

/// Moves `qp` to ERROR: the device stops touching the memory of its work requests, and
/// the ones still queued complete as flushed.
pub fn to_error(qp: &mut GenericQueuePair) {
    let mut attr = QueuePairAttribute::new();
    attr.setup_state(QueuePairState::Error);
    if let Err(e) = qp.modify(&attr) {
        tracing::warn!(error = %e, "moving a queue pair to ERROR failed");
    }
}
