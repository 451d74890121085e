//! An instance's outbound requests on their way and responses still open:
//! a warm instance holding one is not reused (see
//! `InstanceState::holds_port_resources`), so no socket outlives the
//! message that opened it. A request counts from `send_request` until its
//! future ends (its response head or its failure is in) or is dropped;
//! the response body (`connect::CappedBody`) holds a count of its own until
//! it ends, fails, or is dropped with the guest's response. Dropping the
//! body is synchronous, unlike the abort of the task driving the
//! connection, so that task is not what is counted. A request the guest
//! gave up on may so count for a moment after: its instance is then
//! dropped rather than reused, the safe side.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the open responses of one instance.
#[derive(Debug, Default, Clone)]
pub struct OpenResponses(Arc<AtomicUsize>);

impl OpenResponses {
    /// How many are open now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// One more open response, counted until the guard is dropped.
    pub(super) fn open(&self) -> Open {
        self.0.fetch_add(1, Ordering::SeqCst);
        Open(self.0.clone())
    }
}

/// One open response's count, given back when dropped.
pub(super) struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_counts_until_its_guard_goes() {
        let open = OpenResponses::default();
        let (first, second) = (open.open(), open.open());
        assert_eq!(open.count(), 2);
        drop(first);
        assert_eq!(open.count(), 1);
        drop(second);
        assert_eq!(open.count(), 0);
    }
}
