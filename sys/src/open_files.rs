//! The process's open-files limit (`RLIMIT_NOFILE`). Every peer costs a few sockets, and the
//! soft limit many hosts start processes with (1024) is reached by a few hundred peers, while
//! the hard limit is usually far higher; Mooncake's engine raises soft to hard at start too.

use std::io;

/// `RLIMIT_NOFILE` as `(soft, hard)`.
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft `RLIMIT_NOFILE` to `soft`, keeping the hard limit (`soft` must not exceed
/// it: raising the hard limit needs privilege).
pub fn set_open_files_soft_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = open_files_limit()?;
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the valid `lim`; it changes a process attribute, no memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (no change if it is there already) and
/// returns the soft limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let (soft, hard) = open_files_limit()?;
    if soft < hard {
        set_open_files_soft_limit(hard)?;
    }
    Ok(open_files_limit()?.0)
}
