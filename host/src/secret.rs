//! Secret values: resolved by the host, never printed.

use std::fmt;

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

/// Resolves secret references in host-config values:
/// `${env:NAME}` (the host's environment, then the `.env` file) and
/// `${file:/path}` (the file's content, without a trailing newline).
#[derive(Debug, Default, Clone)]
pub struct SecretResolver {
    dotenv: std::collections::HashMap<String, String>,
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
        Ok(SecretResolver { dotenv: map })
    }

    /// Whether `raw` contains a reference (so it holds no inline secret).
    pub fn is_reference(raw: &str) -> bool {
        raw.contains("${env:") || raw.contains("${file:")
    }

    /// Replaces every reference in `raw`. The error names the reference,
    /// never a value.
    pub fn resolve(&self, raw: &str) -> Result<Secret, String> {
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
                _ => {
                    return Err(format!(
                        "unknown reference `${{{reference}}}`; use ${{env:NAME}} or ${{file:/path}}"
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

    #[test]
    fn env_file_and_dotenv_references() {
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
        assert_eq!(r.resolve(&raw).unwrap().expose(), "u:hunter2@h/from-dotenv");
        let err = r.resolve("${env:BERTH_T_SURELY_MISSING}").unwrap_err();
        assert!(err.contains("BERTH_T_SURELY_MISSING"));
        assert!(r.resolve("${vault:x}").is_err());
        assert!(SecretResolver::is_reference("${env:A}"));
        assert!(!SecretResolver::is_reference("plain"));
    }
}
