//! Process limits the router needs for itself (issue 16, many clients). Every client
//! connection holds one file descriptor, and every pooled backend one more; Linux's
//! default soft limit of 1,024 descriptors would refuse the 1,021st client with
//! `EMFILE` at `accept`. The soft limit may be raised up to the hard limit by any
//! process without privileges, so the router does that once at start, before any
//! socket is opened (as PgBouncer documents for its `max_client_conn`; it relies on the
//! service manager's `LimitNOFILE`, which sets the hard limit, too).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The descriptor limits before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now in force (the hard limit when raising it succeeded).
    pub now: u64,
    /// The hard limit (raising it needs privileges; the service manager sets it).
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit. On failure the limit
/// is left as it was (the router still runs, with fewer possible clients).
pub fn raise_nofile_limit() -> nix::Result<NofileLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileLimit {
        before: soft,
        now,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let limit = raise_nofile_limit().expect("getrlimit/setrlimit");
        assert_eq!(limit.now, limit.hard);
        assert!(limit.now >= limit.before);
    }
}
