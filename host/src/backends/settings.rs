//! Reading the host config's settings: errors that name the file, key and
//! app; references for secrets; bounds on timeouts and counts.

use std::time::Duration;

use crate::secret::{REFERENCE_MARK, Secret, SecretResolver};

/// Builds errors that name where a setting came from.
pub(super) struct Origin<'a> {
    /// The host config's file (or what stands for it).
    pub(super) source: String,
    /// The app whose resources are being opened.
    pub(super) app: &'a str,
}

impl Origin<'_> {
    pub(super) fn err(&self, key: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: `{key}` (for app `{}`): {e}", self.source, self.app)
    }

    /// A timeout in milliseconds, `default` when unset. 0 is refused rather
    /// than read as "no timeout" or "fail at once": every wait the host makes
    /// on a server ends, and a typo should not silently break every call.
    pub(super) fn millis(
        &self,
        key: &str,
        value: Option<u64>,
        default: u64,
    ) -> anyhow::Result<Duration> {
        match value {
            None => Ok(Duration::from_millis(default)),
            Some(0) => Err(self.err(key, "is 0; it must be at least 1 (milliseconds)")),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    /// A count that must be at least 1 (a pool size, a prefetch), `default`
    /// when unset. 0 would stall every call, so it is refused, not clamped.
    pub(super) fn at_least_one<T>(
        &self,
        key: &str,
        value: Option<T>,
        default: T,
    ) -> anyhow::Result<T>
    where
        T: Copy + PartialEq + Default + std::fmt::Display,
    {
        match value {
            None => Ok(default),
            Some(n) if n == T::default() => Err(self.err(key, "is 0; it must be at least 1")),
            Some(n) => Ok(n),
        }
    }
}

/// Resolves a URL whose password, if any, must be a reference.
pub(super) async fn url_setting(
    origin: &Origin<'_>,
    key: &str,
    raw: &str,
    secrets: &SecretResolver,
) -> anyhow::Result<Secret> {
    if let Some(problem) = inline_credential(raw) {
        return Err(origin.err(key, problem));
    }
    secrets.resolve(raw).await.map_err(|m| origin.err(key, m))
}

/// The host a resolved service URL names (`scheme://[user[:pw]@]host[:port]…`),
/// its user info read up to the last `@`.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    // Past the last `@` first: a password may hold `/`, `?` or `#` (MQTT
    // and NATS clients read it so), and no part of it may be taken for
    // the host, which is logged.
    let after_user = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = after_user.split(['/', '?', '#']).next()?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// Warns when `url`, for a client of `service` that Berth builds without
/// TLS (Redis, RabbitMQ, MQTT), reaches beyond this machine: its password
/// and the apps' data cross the network in clear text. Written once a
/// second at most, since every app's load opens its backends.
pub(super) fn warn_if_unencrypted(key: &str, url: &Secret, service: &'static str) {
    let Some(host) = url_host(url.expose()) else {
        return;
    };
    if !super::is_loopback_host(host)
        && crate::audit::first_time(&format!("{service} {key} {host}"))
    {
        tracing::warn!(
            key,
            host,
            "{service} connections are not encrypted (Berth's client has no TLS yet): its password \
             and the apps' data cross the network in clear text; keep the server on a network you \
             trust, or reach it through a tunnel on this machine"
        );
    }
}

/// Query parameters through which a driver may take a credential (sqlx
/// reads `password`; the others are libpq's or other clients' names),
/// compared percent-decoded and without case.
const CREDENTIAL_PARAMETERS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "sslpassword",
    "token",
    "auth_token",
    "secret",
];

/// Where the URL `raw` writes a credential out instead of referencing it:
/// its userinfo's password, or a query parameter named like a credential.
/// Each must be a reference as a whole, so `postgres://app:pw@${env:HOST}/db`
/// is refused although it holds a reference. The answer is the error's
/// text: it names the place, never the value.
fn inline_credential(raw: &str) -> Option<String> {
    // The mark stands for a reference below, so a URL holding it as text
    // could pass a written-out value for one. No URL holds it.
    if raw.contains(REFERENCE_MARK) {
        return Some(
            "the URL holds the control character U+0001, which no URL holds; remove it".into(),
        );
    }
    let marked = SecretResolver::mark_references(raw);
    let referenced = |part: &str| part.chars().all(|c| c == REFERENCE_MARK);
    let (_, rest) = marked.split_once("://")?;
    // The authority ends where the path, query or fragment starts (a
    // password with an unescaped `/`, `?` or `#` is no URL's: the driver
    // refuses it, and it reaches no server); the userinfo ends at its last
    // `@`.
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let password = authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    if password.is_some_and(|p| !referenced(p)) {
        return Some(written_out("password"));
    }
    let query = tail
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or_default());
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Drivers decode the names (`pass%77ord` is `password`); one that
        // does not decode is no driver's name.
        let name = crate::ports::percent_decode(name).unwrap_or_default();
        if let Some(known) = CREDENTIAL_PARAMETERS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(&name))
            && !referenced(value)
        {
            return Some(written_out(&format!("`{known}` parameter")));
        }
    }
    None
}

/// Resolves the URL of a client that reads its user info up to the URL's
/// last `@`, wherever it is (NATS and MQTT: there a password may hold an
/// unescaped `/`, `?` or `#`, which [`inline_credential`] takes for the
/// end of the authority): what lies before that `@` must be references
/// too. With `tokens` (NATS's `nats://TOKEN@host`), user info without a
/// `:` is a token, which must be a reference as a password must.
pub(super) async fn url_setting_to_last_at(
    origin: &Origin<'_>,
    key: &str,
    raw: &str,
    secrets: &SecretResolver,
    tokens: bool,
) -> anyhow::Result<Secret> {
    if let Some(problem) = inline_before_last_at(raw, tokens) {
        return Err(origin.err(key, problem));
    }
    url_setting(origin, key, raw, secrets).await
}

/// Where the URL `raw`, its user info read up to its last `@`, writes out
/// a password (or, with `tokens`, a token: user info without a `:`).
fn inline_before_last_at(raw: &str, tokens: bool) -> Option<String> {
    let marked = SecretResolver::mark_references(raw);
    let referenced = |part: &str| part.chars().all(|c| c == REFERENCE_MARK);
    let (_, rest) = marked.split_once("://")?;
    let (userinfo, _) = rest.rsplit_once('@')?;
    match userinfo.split_once(':') {
        Some((_, password)) if !referenced(password) => Some(written_out("password")),
        None if tokens && !referenced(userinfo) => Some(written_out("token")),
        _ => None,
    }
}

/// Resolves a secret setting, which must be a reference.
pub(super) async fn secret_setting(
    origin: &Origin<'_>,
    key: &str,
    raw: &str,
    secrets: &SecretResolver,
) -> anyhow::Result<Secret> {
    if !SecretResolver::is_only_references(raw) {
        return Err(origin.err(
            key,
            "secrets are never inlined; reference it as ${env:NAME} or ${file:/path}, with no text around it",
        ));
    }
    secrets.resolve(raw).await.map_err(|m| origin.err(key, m))
}

/// Resolves `<key>.password` when it is given.
pub(super) async fn optional_secret(
    origin: &Origin<'_>,
    key: &str,
    password: Option<String>,
    secrets: &SecretResolver,
) -> anyhow::Result<Option<Secret>> {
    match password {
        Some(p) => Ok(Some(
            secret_setting(origin, &format!("{key}.password"), &p, secrets).await?,
        )),
        None => Ok(None),
    }
}

/// Says plainly that a startup failure was a connection failure.
pub(super) fn connection_failure(e: impl std::fmt::Display) -> String {
    format!("cannot connect at startup: {e}")
}

/// The error of a SQL database that cannot start: a setting the adapter
/// refuses before connecting (`invalid input`: a malformed URL, a MySQL URL
/// without its database, pool sizes) is named as a setting, and a right the
/// server denies the host's login (a `role-per-app` provisioning) as such,
/// not as a connection that failed.
pub(super) fn sql_startup_failure(e: crate::ports::sql::SqlError) -> String {
    match e {
        crate::ports::sql::SqlError::InvalidInput(why) => format!("invalid setting: {why}"),
        crate::ports::sql::SqlError::Denied(why) => {
            format!("the server denied the host's login a right it needs: {why}")
        }
        other => connection_failure(other),
    }
}

/// The error for a credential written out at `place` in a URL.
fn written_out(place: &str) -> String {
    format!(
        "the URL holds an inline {place}; reference it as ${{env:NAME}} or ${{file:/path}} instead"
    )
}

/// The operator's S3 key prefix for a container (`[blob.<name>] prefix`),
/// checked: empty, or segments ending in `/`, none of them empty, `.`,
/// `..` or `berth`, at most 256 bytes of printable text. A prefix such as
/// `berth/shop/a/` would put every app's container inside app `shop`'s
/// container `a`.
pub(super) fn s3_prefix(prefix: String) -> Result<String, String> {
    if prefix.is_empty() {
        return Ok(prefix);
    }
    let Some(body) = prefix.strip_suffix('/') else {
        return Err(format!(
            "{prefix:?} must end with `/` (e.g. \"{prefix}/\"); a Berth before 2026-12-07 took it as it was, so objects written then lie under \"{prefix}berth/…\": move them under \"{prefix}/berth/…\" as you add the `/`"
        ));
    };
    if prefix.len() > 256 || prefix.chars().any(|c| c.is_control() || c == '\\') {
        return Err("must be at most 256 bytes, without control characters or `\\`".into());
    }
    match body
        .split('/')
        .find(|segment| matches!(*segment, "" | "." | ".." | "berth"))
    {
        Some(segment) => Err(format!(
            "{prefix:?} holds the segment {segment:?}: a prefix may not hold an empty, `.`, `..` or `berth` segment (Berth puts each app's container under `<prefix>berth/<app>/<name>/`)"
        )),
        None => Ok(prefix),
    }
}

/// The operator's Redis key prefix for a bucket (`[kv.<name>] prefix`),
/// checked: without `berth:`, at most 256 bytes of printable text. Berth
/// puts each app's bucket under `<prefix>berth:<app>:<name>:`, so a prefix
/// holding `berth:` (`berth:` itself, for bucket `sessions` of app
/// `cache`) would put one app's bucket inside another's (app `berth`'s
/// bucket `cache` of the bucket without a prefix).
pub(super) fn redis_prefix(prefix: String) -> Result<String, String> {
    if prefix.len() > 256 || prefix.chars().any(char::is_control) {
        return Err("must be at most 256 bytes, without control characters".into());
    }
    if prefix.contains("berth:") {
        return Err(format!(
            "{prefix:?} holds `berth:`: Berth puts each app's bucket under `<prefix>berth:<app>:<name>:`, so this prefix could reach another app's keys; leave `berth:` out"
        ));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_hosts_are_read_past_the_user_info() {
        for (url, host) in [
            ("redis://:pw@cache.internal:6379/0", Some("cache.internal")),
            ("amqp://u:p@ss@10.0.0.5/%2f", Some("10.0.0.5")),
            (
                "mqtt://u:p@x/y#z@broker.internal:1883",
                Some("broker.internal"),
            ),
            ("redis://u:a/b@cache:6379", Some("cache")),
            ("mqtt://[::1]:1883", Some("::1")),
            ("redis://127.0.0.1", Some("127.0.0.1")),
            ("redis://", None),
            ("not a url", None),
        ] {
            assert_eq!(super::url_host(url), host, "{url}");
        }
    }

    use super::{inline_before_last_at, inline_credential, redis_prefix, s3_prefix, written_out};

    #[test]
    fn redis_prefixes_cannot_reach_into_another_apps_bucket() {
        for fine in ["", "tenants:", "a-b:c:", "berth"] {
            assert_eq!(redis_prefix(fine.into()).as_deref(), Ok(fine));
        }
        for bad in ["berth:", "x:berth:", "eu-berth:1", "a\nb"] {
            assert!(redis_prefix(bad.into()).is_err(), "{bad:?}");
        }
        assert!(redis_prefix("a".repeat(257)).is_err());
    }

    #[test]
    fn s3_prefixes_cannot_reach_into_another_apps_place() {
        for fine in ["", "tenants/", "a/b-c/", "berthx/"] {
            assert_eq!(s3_prefix(fine.into()).as_deref(), Ok(fine));
        }
        for (bad, why) in [
            ("berth/shop/a/", "\"berth\""),
            ("x/berth/", "\"berth\""),
            ("a//", "\"\""),
            ("/a/", "\"\""),
            ("a/../", "\"..\""),
            ("./", "\".\""),
            ("tenants", "must end with `/`"),
            ("a\\b/", "control characters"),
            ("a\nb/", "control characters"),
        ] {
            let refused = s3_prefix(bad.into()).unwrap_err();
            assert!(refused.contains(why), "{bad:?}: {refused}");
        }
        assert!(s3_prefix(format!("{}/", "a".repeat(256))).is_err());
    }

    #[test]
    fn a_token_in_the_user_info_must_be_a_reference() {
        let token = |url: &str| inline_before_last_at(url, true).is_some();
        assert!(token("nats://s3cret@h:4222"));
        assert!(token("nats://s3cret${env:REST}@h:4222"));
        assert!(!token("nats://${env:NATS_TOKEN}@h:4222"));
        assert!(!token("nats://${file:/run/secrets/token}@h:4222"));
        assert!(!token("nats://u:${env:P}@h:4222"));
        assert!(!token("nats://h:4222"));
        // MQTT's user info without a `:` is a user name, not a token.
        assert!(inline_before_last_at("mqtt://berth@h", false).is_none());
    }

    /// NATS and MQTT read user info up to the URL's last `@`: a password
    /// holding `/`, `?` or `#` there, which ends the authority for every
    /// other driver's check, is still one written out.
    #[test]
    fn a_password_up_to_the_last_at_must_be_a_reference() {
        for (url, tokens) in [
            ("mqtt://berth:Zm9v/YmFy@broker:1883", false),
            ("mqtt://berth:a?b#c@broker", false),
            ("nats://app:ab/cd@h:4222", true),
            ("nats://tok/en@h:4222", true),
            ("nats://h:4222/x@y", true),
        ] {
            let found = inline_before_last_at(url, tokens).expect(url);
            assert!(!found.contains("YmFy") && !found.contains("en@"), "{found}");
            assert!(
                inline_credential(url).is_none(),
                "the general check reads {url} otherwise"
            );
        }
        assert!(inline_before_last_at("mqtt://berth:${env:P}@broker", false).is_none());
        assert!(inline_before_last_at("nats://${env:U}:${env:P}@h", true).is_none());
    }

    #[test]
    fn written_out_credentials_are_found_whatever_else_is_referenced() {
        for (url, place) in [
            ("postgres://u:inline-pw@127.0.0.1/test", "password"),
            ("postgres://u:pw@${env:DB_HOST}/db", "password"),
            ("postgres://u:pw${env:REST}@h/db", "password"),
            ("redis://:s3cret@h:6379", "password"),
            ("postgres://u@h/db?pass%77ord=pw", "`password` parameter"),
            ("postgres://u:\u{1}@h/db", "control character"),
            (
                "postgres://u@h/db?sslmode=require&password=pw",
                "`password` parameter",
            ),
            (
                "postgres://u@${env:H}/db?PassWord=pw",
                "`password` parameter",
            ),
            (
                "postgres://u@h/db?sslpassword=pw#frag",
                "`sslpassword` parameter",
            ),
            ("nats://h:4222?token=t", "`token` parameter"),
        ] {
            let expected = match place {
                "control character" => {
                    "the URL holds the control character U+0001, which no URL holds; remove it"
                        .to_string()
                }
                place => written_out(place),
            };
            assert_eq!(inline_credential(url), Some(expected), "{url}");
        }
    }

    #[test]
    fn referenced_or_absent_credentials_pass() {
        for url in [
            "${env:DATABASE_URL}",
            "postgres://u:${env:PW}@h/db",
            "postgres://u:${file:/run/secrets/pw}@${env:HOST}/db",
            "redis://:${env:A}${env:B}@h:6379",
            "postgres://u@h/db",
            "postgres://u:@h/db",
            "postgres://h/db?sslmode=require&application_name=x",
            "postgres://h/db?password=${env:PW}",
            "postgres://h/db?password=",
            "postgres://u:${env:PW}@h/d@b",
            "nats://127.0.0.1:4222",
            "memory",
        ] {
            assert_eq!(inline_credential(url), None, "{url}");
        }
    }
}
