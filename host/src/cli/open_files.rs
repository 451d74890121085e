//! The process's limit on open files, raised at startup.

/// Raises the soft limit on open files to the hard one. Every tenant's
/// connections, blob readers and writers and SQLite files share the
/// process's descriptors, and the soft limit is often 1,024 (systemd's
/// default), which a few busy apps reach; the hard limit is what the
/// operator allows.
#[expect(unsafe_code, reason = "getrlimit/setrlimit on a local struct")]
pub(super) fn raise_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let wanted = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `wanted` is a valid `rlimit`; raising the soft limit up to
    // the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        tracing::debug!(soft = limit.rlim_cur, "cannot raise the open-files limit");
    }
}

/// The soft limit on open files, after [`raise_limit`].
#[expect(unsafe_code, reason = "getrlimit on a local struct")]
pub(crate) fn soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the call's duration.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}
