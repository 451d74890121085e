//! Audit events: every security-relevant refusal, as one `tracing` event
//! under the target `berth::audit` (filter with `BERTH_LOG=berth::audit=warn`
//! or route that target to its own sink), naming the tenant (app), the
//! component, what was refused and the name involved — never a secret or
//! a payload.

/// Records that `component` of `app` was refused `what` (for example
/// `sql.not-granted`, `http.denied`, `limit.memory`) on `subject` (the
/// logical name, destination or limit).
pub fn refused(app: &str, component: &str, what: &str, subject: &str) {
    let subject = bounded(subject);
    tracing::warn!(target: "berth::audit", app, component, what, subject, "refused");
}

/// Longest name an audit event records; guests choose these strings.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// `s` cut to [`MAX_SUBJECT_BYTES`] at a character boundary.
pub fn bounded(s: &str) -> &str {
    crate::ports::truncate(s, MAX_SUBJECT_BYTES)
}
