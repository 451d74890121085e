//! When the Postgres adapter pings a pooled connection before lending it.
//!
//! sqlx can ping every connection as it is lent (`test_before_acquire`),
//! which costs each statement a second round trip to the server. sqlx
//! already pings each connection as it comes back, so a connection that
//! was just in use is known to work; what can end one is time spent idle
//! (a server restart, an idle timeout, a firewall) or the server ending
//! sessions (`pg_terminate_backend`, a failover). So a connection is pinged
//! only when it has been idle a while, or, for a short time after a call
//! found its connection gone, every time: a server restart then costs the
//! app the calls already on their way to a lost connection (a retriable
//! `unavailable`, at most one per pooled connection), not a failed call for
//! every lost connection that would be lent later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::SqlError;

/// A connection idle at least this long is pinged before it is lent.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long after a lost connection every connection is pinged.
const PING_ALL_FOR: Duration = Duration::from_secs(10);

/// One pool's record of lost connections. Cheap to clone.
#[derive(Clone)]
pub struct PoolCheck(Arc<Lost>);

struct Lost {
    /// The origin of `ping_all_until_ms`.
    created: Instant,
    /// Milliseconds from `created` until which every connection is pinged.
    ping_all_until_ms: AtomicU64,
}

impl Default for PoolCheck {
    fn default() -> Self {
        PoolCheck(Arc::new(Lost {
            created: Instant::now(),
            ping_all_until_ms: AtomicU64::new(0),
        }))
    }
}

impl PoolCheck {
    /// Whether a connection idle for `idle_for` is pinged before it is lent.
    pub fn should_ping(&self, idle_for: Duration) -> bool {
        idle_for >= PING_IF_IDLE_FOR
            || self.now_ms() < self.0.ping_all_until_ms.load(Ordering::Relaxed)
    }

    /// Passes a call's result on, noting a lost connection (`unavailable`:
    /// the server is unreachable or ended the session). A server short of
    /// resources answered on its connection, so it is not one: pinging
    /// every connection would only add to its load.
    pub fn note<T>(&self, result: Result<T, SqlError>) -> Result<T, SqlError> {
        // A server short of resources (`ShortOfResources`) answered: its
        // connection is not lost.
        if let Err(SqlError::Unavailable(_)) = &result {
            let until = self
                .now_ms()
                .saturating_add(PING_ALL_FOR.as_millis() as u64);
            self.0.ping_all_until_ms.fetch_max(until, Ordering::Relaxed);
        }
        result
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_connections_are_lent_unpinged_until_one_is_lost() {
        let check = PoolCheck::default();
        assert!(!check.should_ping(Duration::ZERO));
        assert!(!check.should_ping(Duration::from_millis(999)));
        assert!(check.should_ping(PING_IF_IDLE_FOR));
        // Other errors are the statement's, not the connection's.
        let _ = check.note::<()>(Err(SqlError::Timeout));
        let _ = check.note::<()>(Err(SqlError::Syntax("x".into())));
        // Nor is a server short of resources (class 53): it answered.
        let _ = check.note::<()>(Err(SqlError::ShortOfResources("53200".into())));
        assert!(!check.should_ping(Duration::ZERO));
        let _ = check
            .clone()
            .note::<()>(Err(SqlError::Unavailable("gone".into())));
        assert!(
            check.should_ping(Duration::ZERO),
            "every connection, for a while"
        );
        assert_eq!(check.note(Ok(7)), Ok(7));
    }
}
