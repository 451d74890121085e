//! The `config` port: a component reads its own granted configuration keys.
//!
//! Values come from the manifest's `[config]` table; a value may reference
//! the host environment as `${env:NAME}`, and `BERTH_CONFIG_<KEY>` in the
//! host environment overrides a key. Values are resolved once, when the app
//! loads, and kept as [`Secret`]s so they never reach a log line. Tenants'
//! manifests (`berth serve`) get neither: see [`host_env`].

pub mod host;
pub mod wasi;

use std::collections::BTreeMap;

use crate::secret::Secret;

/// The host-environment lookup [`resolve`] uses. For tenants' manifests
/// (`berth serve`) it finds nothing: their `${env:…}` references are
/// refused at load, and a `BERTH_CONFIG_<KEY>` override the operator set
/// for one app would otherwise reach any tenant declaring the same key.
/// The operator sets a tenant's values with `[app_config.<app>]` instead.
pub fn host_env(tenant_manifests: bool) -> impl Fn(&str) -> Option<String> {
    move |name| {
        if tenant_manifests {
            None
        } else {
            std::env::var(name).ok()
        }
    }
}

/// Resolves every manifest config value. `env` looks up host environment
/// variables (injected for tests).
///
/// # Errors
/// Names the key and the missing variable when a reference cannot be
/// resolved.
pub fn resolve(
    values: &BTreeMap<String, String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Secret>, String> {
    let mut out = BTreeMap::new();
    // Keys differing only in case or `-` against `_` share one override:
    // one variable would set both, granted to different components maybe.
    let mut overridden_by: BTreeMap<String, &str> = BTreeMap::new();
    for (key, raw) in values {
        let override_var = format!(
            "BERTH_CONFIG_{}",
            key.to_ascii_uppercase().replace('-', "_")
        );
        if let Some(other) = overridden_by.insert(override_var.clone(), key) {
            return Err(format!(
                "config.{other} and config.{key} would both be set by {override_var}; give them names that differ otherwise than in case or in `-` against `_`"
            ));
        }
        let value = match env(&override_var) {
            Some(v) => v,
            None => interpolate(raw, &env).map_err(|missing| match missing {
                Some(var) => format!("config.{key}: environment variable {var} is not set (referenced as ${{env:{var}}})"),
                None => format!("config.{key}: a `${{env:` reference is not closed by `}}`"),
            })?,
        };
        out.insert(key.clone(), Secret::new(value));
    }
    Ok(out)
}

/// Replaces each `${env:NAME}` in `raw`. The error is the first missing
/// name, or `None` for a reference never closed (a load error too, rather
/// than text that silently holds `${env:…`).
fn interpolate(raw: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, Option<String>> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after.find('}').ok_or(None)?;
        let name = &after[..end];
        out.push_str(&env(name).ok_or_else(|| Some(name.to_string()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sharing_an_override_are_refused() {
        let values: BTreeMap<String, String> = [("api-token", "a"), ("API_TOKEN", "b")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into_iter()
            .collect();
        let err = resolve(&values, |_| None).unwrap_err();
        assert!(err.contains("BERTH_CONFIG_API_TOKEN"), "{err}");
    }

    #[test]
    fn env_references_and_overrides() {
        let env = |k: &str| match k {
            "TOKEN" => Some("t0k".to_string()),
            "BERTH_CONFIG_MODE" => Some("prod".to_string()),
            _ => None,
        };
        let values = BTreeMap::from([
            ("auth".to_string(), "Bearer ${env:TOKEN}".to_string()),
            ("mode".to_string(), "dev".to_string()),
            ("plain".to_string(), "x".to_string()),
        ]);
        let r = resolve(&values, env).unwrap();
        assert_eq!(r["auth"].expose(), "Bearer t0k");
        assert_eq!(r["mode"].expose(), "prod");
        assert_eq!(r["plain"].expose(), "x");
        let missing = BTreeMap::from([("k".to_string(), "${env:NOPE}".to_string())]);
        let err = resolve(&missing, env).unwrap_err();
        assert!(err.contains("config.k") && err.contains("NOPE"), "{err}");
        let open = BTreeMap::from([("k".to_string(), "a ${env:TOKEN".to_string())]);
        let err = resolve(&open, env).unwrap_err();
        assert!(
            err.contains("config.k") && err.contains("not closed"),
            "{err}"
        );
    }

    #[test]
    fn tenants_get_no_environment_overrides() {
        // PATH stands for any variable set in the host's environment.
        if std::env::var("PATH").is_ok() {
            assert!(host_env(false)("PATH").is_some());
        }
        assert_eq!(host_env(true)("PATH"), None);
        let values = BTreeMap::from([("path".to_string(), "mine".to_string())]);
        let tenant = resolve(&values, host_env(true)).unwrap();
        assert_eq!(tenant["path"].expose(), "mine");
        // The same key, with an override set, for an operator's manifest.
        let operator = resolve(&values, |k: &str| {
            (k == "BERTH_CONFIG_PATH").then(|| "operator's".to_string())
        })
        .unwrap();
        assert_eq!(operator["path"].expose(), "operator's");
    }
}
