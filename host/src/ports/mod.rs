//! The infrastructure ports served to guests.
//!
//! Every port has the same shape:
//! - `mod.rs`: the backend trait (`Arc<dyn …Backend>`, chosen per logical
//!   name at app load), the typed error, shared validation;
//! - `host.rs`: the WIT glue: grant checks, limits, resource-table
//!   bookkeeping, and the one place where a backend error becomes a
//!   guest-visible WIT error (full error logged host-side, a sanitized message
//!   to the guest);
//! - one file per technology (`sqlite.rs`, `memory.rs`, `fs.rs`, …) that
//!   never sees wasmtime types and maps its library's errors at its seam.

pub mod blob;
pub mod config;
pub mod email;
pub mod kv;
pub mod logging;
pub mod messaging;
pub mod sql;

/// Whether a warning kept in `last` (ms since the Unix epoch of the last
/// one given) is due again: at most one a minute, so a store that fails
/// every call (a full disk) says so without flooding the log.
pub(crate) fn warning_due(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    let now = unix_millis();
    let before = last.load(Ordering::Relaxed);
    now.saturating_sub(before) >= 60_000
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The backend serving logical name `name`, if the component's grants
/// (`granted`) include it: the one grant check of every port's `open`.
pub(crate) fn granted_backend<B: ?Sized>(
    granted: &[String],
    backends: &std::collections::HashMap<String, std::sync::Arc<B>>,
    name: &str,
) -> Option<std::sync::Arc<B>> {
    if granted.iter().any(|g| g == name) {
        backends.get(name).cloned()
    } else {
        None
    }
}

/// Joins an error and its sources into one line for the host log, at most
/// [`MAX_LOGGED_ERROR_BYTES`] of it, escaped: a port's error can repeat
/// what the guest sent (`no such table: "x\n2026-… WARN …"`), which must
/// not start a line of its own in the host's log.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    crate::audit::printable(truncate(&out, MAX_LOGGED_ERROR_BYTES)).into_owned()
}

/// The longest port error [`error_chain`] logs.
const MAX_LOGGED_ERROR_BYTES: usize = 4096;

/// The case name of a guest error (`NotGranted(..)` → `not-granted`), for
/// metrics and audit events: derived from its `Debug` form so that no
/// payload inside the case is ever recorded.
pub(crate) fn error_case(error: &impl std::fmt::Debug) -> String {
    // Generated types print as `Error::NotGranted("…")`: keep the case.
    // Only the first characters are formatted, however long the message.
    let mut head = Prefix(String::new());
    let _ = std::fmt::Write::write_fmt(&mut head, format_args!("{error:?}"));
    let debug = head.0;
    let path = debug
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .next()
        .unwrap_or_default();
    let name = path.rsplit("::").next().unwrap_or_default();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Keeps the first 64 bytes written to it, then refuses the rest (which
/// stops the formatting).
struct Prefix(String);

impl std::fmt::Write for Prefix {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let kept = truncate(s, 64 - self.0.len());
        self.0.push_str(kept);
        if kept.len() < s.len() {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

impl crate::state::InstanceState {
    /// Records one finished port call: counters and the audit event (see
    /// [`crate::metrics::ComponentCounters::port_call`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn meter<T, E: std::fmt::Debug>(
        &self,
        port: crate::metrics::Port,
        op: &'static str,
        resource: &str,
        started: crate::metrics::Started,
        result: &Result<T, E>,
        bytes_in: usize,
        bytes_out: impl FnOnce(&T) -> usize,
    ) {
        let (error, bytes_out) = match result {
            Ok(v) => (None, bytes_out(v)),
            Err(e) => (Some(error_case(e)), 0),
        };
        self.env.counters.port_call(crate::metrics::PortCall {
            port,
            op,
            resource,
            error: error.as_deref(),
            started,
            bytes_in,
            bytes_out,
        });
    }
}

/// Milliseconds since the Unix epoch, by the wall clock: for times stored
/// (object modification times, when a queued message becomes visible).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decodes `%XX` escapes. Returns `None` for a broken escape or for a
/// result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    #[allow(dead_code)]
    enum Sample {
        NotGranted(String),
        Timeout,
    }

    #[test]
    fn a_repeated_warning_is_due_once_a_minute() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let last = AtomicU64::new(0);
        assert!(super::warning_due(&last), "the first is due");
        assert!(!super::warning_due(&last), "the next, at once, is not");
        last.store(super::unix_millis() - 60_001, Ordering::Relaxed);
        assert!(super::warning_due(&last), "a minute later it is again");
    }

    #[test]
    fn error_case_names_the_case_only() {
        assert_eq!(
            super::error_case(&Sample::NotGranted("secret-db".into())),
            "not-granted"
        );
        assert_eq!(super::error_case(&Sample::Timeout), "timeout");
        let generated = |_: ()| "Error::InvalidKey(\"../x\")";
        struct Shown(&'static str);
        impl std::fmt::Debug for Shown {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        assert_eq!(super::error_case(&Shown(generated(()))), "invalid-key");
    }

    /// A port error repeating the guest's text is logged on one line,
    /// bounded.
    #[test]
    fn logged_error_chains_are_escaped_and_bounded() {
        let forged = std::io::Error::other("no such table: x\n2026-12-07 WARN berth::audit: x");
        let logged = super::error_chain(&forged);
        assert!(!logged.contains('\n'), "{logged}");
        assert!(logged.contains("x\\u{a}2026"), "{logged}");
        let long = std::io::Error::other("y".repeat(10_000));
        assert_eq!(
            super::error_chain(&long).len(),
            super::MAX_LOGGED_ERROR_BYTES
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%2Fb%40c").as_deref(), Some("a/b@c"));
        assert_eq!(super::percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(super::percent_decode("%"), None);
        assert_eq!(super::percent_decode("%4"), None);
        assert_eq!(super::percent_decode("%+1"), None);
        assert_eq!(super::percent_decode("%ff"), None);
    }
}
