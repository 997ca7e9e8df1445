//! Completion events: sleeping until a completion queue has work instead of polling it.
//!
//! `sideway` creates completion channels and binds CQs to them, but has no call to arm a CQ
//! or to take its events; those come from `rdma-mummy-sys`, which loads libibverbs at run
//! time like the rest of the verbs. The pattern: poll the CQ until empty, [`arm`] it, poll
//! once more (a completion may have landed before the arming), then [`wait`].

use std::io;
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::Duration;

use rdma_mummy_sys::{ibv_ack_cq_events, ibv_cq, ibv_get_cq_event, ibv_req_notify_cq};
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, CompletionQueue};

/// Asks for one event on the CQ's channel when the next completion lands in `cq`.
pub fn arm(cq: &BasicCompletionQueue) -> io::Result<()> {
    // SAFETY: `cq` is a live CQ (the borrow keeps it and its device context alive);
    // req_notify_cq only calls the provider's op on it.
    let rc = unsafe { ibv_req_notify_cq(cq.cq().as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits up to `timeout` for an event on `channel` (which must be non-blocking), then takes
/// and acknowledges every event queued there. Returns whether any came.
pub fn wait(channel: &CompletionChannel, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: channel.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call; the fd is the live
    // channel's, kept open by the borrow.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Ok(false);
    }
    let mut got = false;
    loop {
        let mut cq: *mut ibv_cq = ptr::null_mut();
        let mut ctx: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: the channel is live (borrowed) and non-blocking, so this returns at once
        // (-1 with EAGAIN when drained); both out-pointers point at locals.
        let rc = unsafe { ibv_get_cq_event(channel.comp_channel().as_ptr(), &mut cq, &mut ctx) };
        if rc != 0 || cq.is_null() {
            break;
        }
        // SAFETY: `cq` was just returned with one event, which is acknowledged exactly once
        // (destroying a CQ waits for all of its events to be acknowledged).
        unsafe { ibv_ack_cq_events(cq, 1) };
        got = true;
    }
    Ok(got)
}
