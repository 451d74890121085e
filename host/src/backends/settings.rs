//! Reading the host config's settings: errors that name the file, key and
//! app; references for secrets; bounds on timeouts and counts.

use std::time::Duration;

use crate::secret::{Secret, SecretResolver};

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
    let userinfo = raw
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(u, _)| u);
    if userinfo.is_some_and(|u| u.contains(':')) && !SecretResolver::is_reference(raw) {
        return Err(origin.err(key, "the URL holds an inline password; reference it as ${env:NAME} or ${file:/path} instead"));
    }
    secrets.resolve(raw).await.map_err(|m| origin.err(key, m))
}

/// Resolves a secret setting, which must be a reference.
pub(super) async fn secret_setting(
    origin: &Origin<'_>,
    key: &str,
    raw: &str,
    secrets: &SecretResolver,
) -> anyhow::Result<Secret> {
    if !SecretResolver::is_reference(raw) {
        return Err(origin.err(
            key,
            "secrets are never inlined; reference it as ${env:NAME} or ${file:/path}",
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
