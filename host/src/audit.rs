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

/// `s` as a log line may show it: control characters (line breaks,
/// terminal escape sequences), Unicode line and paragraph separators and
/// bidirectional controls written as `\u{…}`, so that text a tenant chose
/// (a guest's log record or error, a manifest's key) can neither begin a
/// line of its own, posing as the host's, nor reorder one on screen.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        push_printable(&mut out, c);
    }
    std::borrow::Cow::Owned(out)
}

/// `s` in double quotes, with `"` and `\` escaped and what [`printable`]
/// escapes escaped, as a field value that nothing in it can end.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_printable(&mut out, c),
        }
    }
    out.push('"');
    out
}

fn push_printable(out: &mut String, c: char) {
    use std::fmt::Write as _;
    if hidden(c) {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    } else {
        out.push(c);
    }
}

/// Characters a log line must not show as they are.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_text_cannot_start_a_line_or_reorder_one() {
        assert_eq!(printable("plain text, é"), "plain text, é");
        assert_eq!(
            printable("ok\n2026-12-07T00:00:00Z  WARN berth::audit: refused"),
            "ok\\u{a}2026-12-07T00:00:00Z  WARN berth::audit: refused"
        );
        assert_eq!(printable("a\r\u{1b}[2Kb"), "a\\u{d}\\u{1b}[2Kb");
        assert_eq!(printable("x\u{2028}y\u{202e}z"), "x\\u{2028}y\\u{202e}z");
        assert_eq!(quoted("say \"hi\"\\\n"), "\"say \\\"hi\\\"\\\\\\u{a}\"");
    }
}
