//! Versions of apps that failed to load, and when each is tried again.

use std::time::{Duration, Instant};

use super::Fingerprint;

/// A version of an app that failed to load. What refused it may pass
/// (a server down while the host started, a secret store timing out), so
/// the same version is tried again, first after [`RETRY_REFUSED_FIRST`],
/// then at doubling intervals up to [`RETRY_REFUSED_MOST`].
#[derive(Debug, Clone)]
pub(super) struct Refused {
    pub(super) fingerprint: Fingerprint,
    retry_at: Instant,
    backoff: Duration,
}

/// When a refused version is first tried again.
const RETRY_REFUSED_FIRST: Duration = Duration::from_secs(30);
/// The longest a refused version waits to be tried again.
const RETRY_REFUSED_MOST: Duration = Duration::from_secs(300);

impl Refused {
    /// `fingerprint` refused now, after `earlier` (the same directory's
    /// last refusal, if any): the wait doubles while the version is the same.
    pub(super) fn after(fingerprint: Fingerprint, earlier: Option<&Refused>) -> Refused {
        let backoff = match earlier {
            Some(e) if e.fingerprint == fingerprint => (e.backoff * 2).min(RETRY_REFUSED_MOST),
            _ => RETRY_REFUSED_FIRST,
        };
        Refused {
            fingerprint,
            retry_at: Instant::now() + backoff,
            backoff,
        }
    }

    /// Whether `fingerprint` is this version, not yet due to be tried again.
    pub(super) fn holds(&self, fingerprint: &Fingerprint) -> bool {
        self.fingerprint == *fingerprint && Instant::now() < self.retry_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(manifest: &str) -> Fingerprint {
        Fingerprint {
            manifest: manifest.as_bytes().to_vec(),
            components: vec![],
            left_state: false,
            state_paths: None,
        }
    }

    #[test]
    fn a_refused_version_is_tried_again_later_and_less_often() {
        let first = Refused::after(version("a"), None);
        assert_eq!(first.backoff, RETRY_REFUSED_FIRST);
        assert!(first.holds(&version("a")), "not due yet");
        assert!(
            !first.holds(&version("b")),
            "another version is tried at once"
        );
        let mut last = first;
        for _ in 0..5 {
            last = Refused::after(version("a"), Some(&last));
        }
        assert_eq!(last.backoff, RETRY_REFUSED_MOST, "doubling, up to the most");
        assert_eq!(
            Refused::after(version("b"), Some(&last)).backoff,
            RETRY_REFUSED_FIRST,
            "a changed version starts over"
        );
        let due = Refused {
            retry_at: Instant::now() - Duration::from_millis(1),
            ..last
        };
        assert!(!due.holds(&version("a")), "due: tried again");
    }
}
