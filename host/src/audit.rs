//! Audit events: every security-relevant refusal, as one `tracing` event
//! under the target `berth::audit` (filter with `BERTH_LOG=berth::audit=warn`
//! or route that target to its own sink), naming the tenant (app), the
//! component, what was refused and the name involved — never a secret or
//! a payload.

/// Records that `component` of `app` was refused `what` (for example
/// `sql.not-granted`, `http.denied`, `limit.memory`) on `subject` (the
/// logical name, destination or limit).
pub fn refused(app: &str, component: &str, what: &str, subject: &str) {
    if !WRITTEN.admit(app, std::time::Instant::now()) {
        return;
    }
    let subject = bounded(subject);
    tracing::warn!(target: "berth::audit", app, component, what, subject, "refused");
}

/// Refusals written per app and second: past it they are counted, and the
/// count written once the second is over. A guest asking for what it was
/// not granted in a loop would otherwise write a warning per call into the
/// log every tenant shares.
pub const MAX_REFUSALS_PER_SECOND: u32 = 1000;

/// The refusals written this second, by app.
static WRITTEN: Written = Written::new(Kind::Refusals);

/// Whether a warning of the host's about `app` that its guests or clients
/// can cause at will (a failed invocation, a publish past the app's rate)
/// is written now: at most [`MAX_APP_WARNINGS_PER_SECOND`] per app, the
/// rest counted and the count written once the second is over, so no
/// tenant (nor an anonymous client of one) floods the log every tenant
/// shares.
pub fn app_warning_due(app: &str) -> bool {
    WARNINGS.admit(app, std::time::Instant::now())
}

/// Whether a warning about a configuration (`what`: the setting, the
/// server, the app) is written now: the first time in the process only, as
/// an app's every load or reload would write it again. At most 4,096
/// distinct ones are remembered; past that, none is written.
pub fn first_time(what: &str) -> bool {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(Default::default);
    seen.len() < 4096 && seen.insert(what.to_owned())
}

/// Whether a warning of the host's about `what` that guests of any app
/// can cause at will (a shared budget used up, an error a statement can
/// raise) is written now: once a second at most per `what`.
pub fn host_warning_due(what: &'static str) -> bool {
    static LAST: std::sync::Mutex<Vec<(&str, u64)>> = std::sync::Mutex::new(Vec::new());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    match last.iter_mut().find(|(w, _)| *w == what) {
        Some((_, second)) if *second == now => false,
        Some((_, second)) => {
            *second = now;
            true
        }
        None => {
            last.push((what, now));
            true
        }
    }
}

/// Warnings about one app written per second (see [`app_warning_due`]).
pub const MAX_APP_WARNINGS_PER_SECOND: u32 = 20;

/// The warnings about apps written this second, by app.
static WARNINGS: Written = Written::new(Kind::Warnings);

/// What a [`Written`] counts.
#[derive(Clone, Copy)]
enum Kind {
    Refusals,
    Warnings,
}

/// Per app: when its second began, the events written in it, and those
/// not written.
struct Written(
    std::sync::Mutex<std::collections::BTreeMap<String, (std::time::Instant, u32, u64)>>,
    Kind,
);

impl Written {
    const fn new(kind: Kind) -> Self {
        Written(
            std::sync::Mutex::new(std::collections::BTreeMap::new()),
            kind,
        )
    }

    fn per_second(&self) -> u32 {
        match self.1 {
            Kind::Refusals => MAX_REFUSALS_PER_SECOND,
            Kind::Warnings => MAX_APP_WARNINGS_PER_SECOND,
        }
    }

    /// Whether one more refusal of `app` is written at `now`.
    fn admit(&self, app: &str, now: std::time::Instant) -> bool {
        let second = std::time::Duration::from_secs(1);
        let mut apps = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !apps.contains_key(app) {
            // Apps quiet for a minute are forgotten: the map holds the
            // apps refused lately only (their counts written first).
            if apps.len() >= 4096 {
                apps.retain(|app, (began, _, dropped)| {
                    self.report(app, std::mem::take(dropped));
                    now.duration_since(*began) < 60 * second
                });
            }
            apps.insert(app.to_string(), (now, 0, 0));
        }
        let Some((began, written, dropped)) = apps.get_mut(app) else {
            return true;
        };
        if now.duration_since(*began) >= second {
            self.report(app, *dropped);
            (*began, *written, *dropped) = (now, 0, 0);
        }
        if *written >= self.per_second() {
            *dropped += 1;
            count_writer();
            return false;
        }
        *written += 1;
        true
    }

    /// Writes the counts of the apps whose second is over: an app that
    /// went quiet after a burst gets its count written too, not only when
    /// it is next refused.
    fn write_counts(&self, now: std::time::Instant) {
        let mut apps = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (app, (began, written, dropped)) in apps.iter_mut() {
            if *dropped > 0 && now.duration_since(*began) >= std::time::Duration::from_secs(1) {
                self.report(app, *dropped);
                (*began, *written, *dropped) = (now, 0, 0);
            }
        }
    }

    /// Writes that `dropped` events about `app` were counted, not written.
    fn report(&self, app: &str, dropped: u64) {
        if dropped == 0 {
            return;
        }
        let per_second = self.per_second();
        match self.1 {
            Kind::Refusals => {
                tracing::warn!(target: "berth::audit", app, dropped, per_second, "refusals of the app past the most written per second were counted, not written")
            }
            Kind::Warnings => tracing::warn!(
                app,
                dropped,
                per_second,
                "warnings about the app past the most written per second were counted, not written"
            ),
        }
    }
}

/// Starts, once, the thread that writes the counts of events not written
/// (see [`Written::write_counts`]) every second.
fn count_writer() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let started = std::thread::Builder::new()
            .name("berth-audit-counts".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    let now = std::time::Instant::now();
                    WRITTEN.write_counts(now);
                    WARNINGS.write_counts(now);
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the thread writing counts of events not written; they are written with the app's next event");
        }
    });
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
    fn refusals_past_the_rate_are_counted_not_written() {
        for (written, most) in [
            (Written::new(Kind::Refusals), MAX_REFUSALS_PER_SECOND),
            (Written::new(Kind::Warnings), MAX_APP_WARNINGS_PER_SECOND),
        ] {
            let start = std::time::Instant::now();
            let admitted = (0..most + 5)
                .filter(|_| written.admit("loud", start))
                .count();
            assert_eq!(admitted, most as usize);
            assert!(written.admit("quiet", start), "other apps are not affected");
            let later = start + std::time::Duration::from_secs(1);
            written.write_counts(later);
            let counts = written.0.lock().unwrap();
            assert_eq!(
                counts["loud"].2, 0,
                "the count was written, once the second was over"
            );
            drop(counts);
            assert!(written.admit("loud", later), "a new second");
        }
    }

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
