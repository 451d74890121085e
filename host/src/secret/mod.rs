//! Secret values: resolved by the host, never printed.

pub mod aws;

use std::fmt;
use std::sync::Arc;

pub use aws::{AwsSecrets, AwsSecretsConfig};

/// A value that must not appear in logs or errors. `Debug` and `Display`
/// print `[redacted]`; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call only where the value is handed to its consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("canary-123");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "canary-123");
    }
}

/// `[secrets]` in the host config: secret stores beyond env and files.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// AWS Secrets Manager, for `${aws-sm:…}` references.
    pub aws: Option<AwsSecretsConfig>,
}

/// Resolves secret references in host-config values:
/// `${env:NAME}` (the host's environment, then the `.env` file),
/// `${file:/path}` (the file's content, without a trailing newline) and,
/// when `[secrets.aws]` is configured, `${aws-sm:id}` / `${aws-sm:id#field}`.
#[derive(Debug, Default, Clone)]
pub struct SecretResolver {
    dotenv: std::collections::HashMap<String, String>,
    aws: Option<Arc<AwsSecrets>>,
}

impl SecretResolver {
    /// A resolver that also reads `KEY=VALUE` lines of `dotenv` (if given
    /// and present): `#` comments, blank lines and optional quotes allowed.
    pub fn new(dotenv: Option<&std::path::Path>) -> Result<SecretResolver, String> {
        let mut map = std::collections::HashMap::new();
        if let Some(path) = dotenv.filter(|p| p.exists()) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| format!("{}:{}: expected KEY=VALUE", path.display(), n + 1))?;
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                map.insert(k.trim().to_string(), v.to_string());
            }
        }
        Ok(SecretResolver {
            dotenv: map,
            aws: None,
        })
    }

    /// Adds AWS Secrets Manager, configured by `config` whose credentials
    /// are themselves resolved (from env or files) by this resolver.
    pub async fn with_aws(mut self, config: &AwsSecretsConfig) -> Result<SecretResolver, String> {
        let mut keys = Vec::new();
        for (key, raw) in [
            ("access_key_id", &config.access_key_id),
            ("secret_access_key", &config.secret_access_key),
        ] {
            if !Self::is_reference(raw) {
                return Err(format!(
                    "`secrets.aws.{key}`: secrets are never inlined; reference it as ${{env:NAME}} or ${{file:/path}}"
                ));
            }
            keys.push(
                Box::pin(self.resolve(raw))
                    .await
                    .map_err(|m| format!("`secrets.aws.{key}`: {m}"))?,
            );
        }
        self.aws = Some(Arc::new(AwsSecrets::new(config, &keys[0], &keys[1])));
        Ok(self)
    }

    /// Whether `raw` contains a reference (so it holds no inline secret).
    pub fn is_reference(raw: &str) -> bool {
        raw.contains("${env:") || raw.contains("${file:") || raw.contains("${aws-sm:")
    }

    /// Replaces every reference in `raw`. The error names the reference,
    /// never a value.
    pub async fn resolve(&self, raw: &str) -> Result<Secret, String> {
        let mut out = String::new();
        let mut rest = raw;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {raw:?}"))?;
            let reference = &after[..end];
            let value = match reference.split_once(':') {
                Some(("env", name)) => std::env::var(name)
                    .ok()
                    .or_else(|| self.dotenv.get(name).cloned())
                    .ok_or_else(|| {
                        format!("environment variable {name} is not set (nor in the .env file)")
                    })?,
                Some(("file", path)) => std::fs::read_to_string(path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("cannot read secret file {path}: {}", e.kind()))?,
                Some(("aws-sm", id)) => match &self.aws {
                    Some(aws) => aws.get(id).await?.expose().to_owned(),
                    None => {
                        return Err(format!(
                            "`${{aws-sm:{id}}}` needs a [secrets.aws] section in the host config"
                        ));
                    }
                },
                _ => {
                    return Err(format!(
                        "unknown reference `${{{reference}}}`; use ${{env:NAME}}, ${{file:/path}} or ${{aws-sm:id}}"
                    ));
                }
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(Secret::new(out))
    }
}

#[cfg(test)]
mod resolver_tests {
    use super::*;

    #[tokio::test]
    async fn env_file_and_dotenv_references() {
        let dir = tempfile::tempdir().unwrap();
        let dotenv = dir.path().join(".env");
        std::fs::write(
            &dotenv,
            "# comment\nBERTH_T_DOT=\"from-dotenv\"\nexport BERTH_T_X=1\n",
        )
        .unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        let r = SecretResolver::new(Some(&dotenv)).unwrap();
        let raw = format!("u:${{file:{}}}@h/${{env:BERTH_T_DOT}}", file.display());
        assert_eq!(
            r.resolve(&raw).await.unwrap().expose(),
            "u:hunter2@h/from-dotenv"
        );
        let err = r
            .resolve("${env:BERTH_T_SURELY_MISSING}")
            .await
            .unwrap_err();
        assert!(err.contains("BERTH_T_SURELY_MISSING"));
        assert!(r.resolve("${vault:x}").await.is_err());
        let err = r.resolve("${aws-sm:db}").await.unwrap_err();
        assert!(err.contains("[secrets.aws]"), "{err}");
        assert!(SecretResolver::is_reference("${env:A}"));
        assert!(!SecretResolver::is_reference("plain"));
    }
}
