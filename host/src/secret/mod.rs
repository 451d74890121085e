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

/// The largest secret file read (a key, a password, a certificate).
const MAX_SECRET_FILE_BYTES: u64 = 1 << 20;

/// The contents of the secret file `path`, trailing newlines dropped. Only
/// a regular file of at most [`MAX_SECRET_FILE_BYTES`] is read: a FIFO
/// would block the load, and `/dev/zero` would never end.
fn read_secret_file(path: &str) -> Result<String, String> {
    let text = read_regular_file(std::path::Path::new(path), MAX_SECRET_FILE_BYTES)
        .map_err(|e| format!("cannot read secret file {path}: {e}"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The text of the regular file `path`, of at most `max` bytes. It is
/// opened without blocking and checked through the open handle: a check of
/// the path before opening it would let a FIFO swapped in meanwhile hang
/// the load (and on `berth serve` every app's load behind it).
fn read_regular_file(path: &std::path::Path, max: u64) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let failed = |e: std::io::Error| e.kind().to_string();
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    if !handle.metadata().map_err(failed)?.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    handle
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
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
/// `$${` stands for a literal `${`.
#[derive(Default, Clone)]
pub struct SecretResolver {
    /// The `.env` file's values: secrets, so never printed.
    dotenv: std::collections::HashMap<String, String>,
    aws: Option<Arc<AwsSecrets>>,
}

impl std::fmt::Debug for SecretResolver {
    /// The `.env` file's keys, never its values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.dotenv.keys().collect();
        keys.sort();
        f.debug_struct("SecretResolver")
            .field("dotenv_keys", &keys)
            .field("aws", &self.aws.is_some())
            .finish()
    }
}

/// What [`SecretResolver::mark_references`] writes for a reference: a
/// control character no host config value holds.
pub const REFERENCE_MARK: char = '\u{1}';

/// One piece of a value that may hold references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    /// Text taken as it is.
    Text(&'a str),
    /// What is between `${` and `}`; `at` is the byte offset of the `${`.
    Reference { at: usize, inner: &'a str },
    /// A `${` without a closing `}`, at this byte offset. Always the last
    /// piece.
    Unterminated(usize),
}

/// Splits `raw` into text and references. A `${` right after a `$` is the
/// escape `$${`: a literal `${`, with the extra `$` dropped.
fn pieces(raw: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = raw[at..].find("${") {
        let start = at + found;
        // Only a `$` not yet consumed counts (a piece before ends in `}` or
        // `{` anyway; the bound also keeps the index in range).
        if start > at && raw.as_bytes()[start - 1] == b'$' {
            out.push(Piece::Text(&raw[at..start]));
            out.push(Piece::Text("{"));
            at = start + 2;
            continue;
        }
        out.push(Piece::Text(&raw[at..start]));
        let after = start + 2;
        let Some(end) = raw[after..].find('}') else {
            out.push(Piece::Unterminated(start));
            return out;
        };
        out.push(Piece::Reference {
            at: start,
            inner: &raw[after..after + end],
        });
        at = after + end + 1;
    }
    out.push(Piece::Text(&raw[at..]));
    out
}

/// The scheme of an unknown reference (`vault` in `${vault:x}`), when it
/// is short and alphanumeric: enough to spot a typo, while an error about
/// a value that only happened to contain `${` repeats at most a short word
/// of it.
fn safe_scheme(inner: &str) -> Option<&str> {
    let (scheme, _) = inner.split_once(':')?;
    let short = !scheme.is_empty() && scheme.len() <= 16;
    (short && scheme.chars().all(|c| c.is_ascii_alphanumeric())).then_some(scheme)
}

/// Parses a `.env` file: `KEY=VALUE` lines, optionally after `export` and
/// whitespace; blank lines and `#` comment lines; a UTF-8 BOM at the start.
/// Keys are `[A-Za-z_][A-Za-z0-9_.]*`; a key given twice keeps its last
/// value, as shells and other `.env` readers do. See [`dotenv_value`] for
/// values. The error is the 1-based number of a malformed line: the line
/// itself may hold a secret.
fn parse_dotenv(text: &str) -> Result<std::collections::HashMap<String, String>, usize> {
    let mut map = std::collections::HashMap::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `export` only counts when whitespace (a space or a tab) follows,
        // so a key such as `exported=1` stays whole.
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        let (k, v) = line.split_once('=').ok_or(n + 1)?;
        let k = k.trim();
        let key_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !key_ok {
            return Err(n + 1);
        }
        let value = dotenv_value(v).ok_or(n + 1)?;
        if map.insert(k.to_string(), value).is_some() {
            tracing::warn!(
                key = k,
                line = n + 1,
                "a key of the .env file is given again; the later value counts"
            );
        }
    }
    Ok(map)
}

/// A `.env` value (the text after `=`): the inside of a `"…"` or `'…'`
/// quote, where a `#` is part of the value and a `# comment` after the
/// closing quote is dropped; otherwise the text up to a `#` that follows
/// whitespace (` #` starts a comment, `p#ss` is a value), trimmed.
///
/// In double quotes `\"`, `\\`, `\n`, `\r` and `\t` are escapes (any other
/// backslash stays as written); single quotes take the text as it is. The
/// closing quote is the first one (not escaped) followed by nothing or by a
/// comment, so a quote inside the value (`"a"b"`) stays in it. `None` for
/// a quote that is never closed: the value would silently be wrong.
fn dotenv_value(raw: &str) -> Option<String> {
    let v = raw.trim();
    let closes_at = |inner: &str, i: usize| {
        let rest = inner[i + 1..].trim_start();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(inner) = v.strip_prefix('\'') {
        let end = inner
            .match_indices('\'')
            .map(|(i, _)| i)
            .find(|&i| closes_at(inner, i))?;
        return Some(inner[..end].to_string());
    }
    if let Some(inner) = v.strip_prefix('"') {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                },
                '"' if closes_at(inner, i) => return Some(out),
                c => out.push(c),
            }
        }
        return None;
    }
    let cut = raw
        .char_indices()
        .find(|&(i, c)| c == '#' && raw[..i].ends_with(char::is_whitespace))
        .map_or(raw.len(), |(i, _)| i);
    Some(raw[..cut].trim().to_string())
}

/// The largest `.env` file read.
const MAX_DOTENV_BYTES: u64 = 1 << 20;

impl SecretResolver {
    /// A resolver that also reads `KEY=VALUE` lines of `dotenv` (if given
    /// and present): `export`, `#` comments (whole lines, after whitespace
    /// in an unquoted value, or after a quoted value), blank lines, optional
    /// quotes and a leading BOM allowed.
    pub fn new(dotenv: Option<&std::path::Path>) -> Result<SecretResolver, String> {
        let dotenv = match dotenv.filter(|p| p.exists()) {
            Some(path) => {
                // Not a FIFO or device, which would hang or flood the load.
                let text = read_regular_file(path, MAX_DOTENV_BYTES).map_err(|e| {
                    format!(
                        "cannot read {} ({e}): it must be a regular file of at most {MAX_DOTENV_BYTES} bytes",
                        path.display()
                    )
                })?;
                parse_dotenv(&text)
                    .map_err(|n| format!("{}:{n}: expected KEY=VALUE", path.display()))?
            }
            None => std::collections::HashMap::new(),
        };
        Ok(SecretResolver { dotenv, aws: None })
    }

    /// Adds AWS Secrets Manager, configured by `config` whose credentials
    /// are themselves resolved (from env or files) by this resolver.
    pub async fn with_aws(mut self, config: &AwsSecretsConfig) -> Result<SecretResolver, String> {
        let timeout = config.timeout()?;
        let mut keys = Vec::new();
        for (key, raw) in [
            ("access_key_id", &config.access_key_id),
            ("secret_access_key", &config.secret_access_key),
        ] {
            if !Self::is_only_references(raw) {
                return Err(format!(
                    "`secrets.aws.{key}`: secrets are never inlined; reference it as ${{env:NAME}} or ${{file:/path}}, with no text around it"
                ));
            }
            keys.push(
                Box::pin(self.resolve(raw))
                    .await
                    .map_err(|m| format!("`secrets.aws.{key}`: {m}"))?,
            );
        }
        self.aws = Some(Arc::new(AwsSecrets::new(
            config, timeout, &keys[0], &keys[1],
        )));
        Ok(self)
    }

    /// Whether `raw` is made of references only, with no inline text (so it
    /// holds no inline secret): `${env:A}` or `${env:A}${file:/b}`, not
    /// `hunter2${env:EMPTY}`.
    pub fn is_only_references(raw: &str) -> bool {
        let marked = Self::mark_references(raw);
        !marked.is_empty() && marked.chars().all(|c| c == REFERENCE_MARK) && Self::is_reference(raw)
    }

    /// Whether `raw` contains a reference (so it holds no inline secret).
    /// An escaped `$${env:…}` is literal text, not a reference.
    pub fn is_reference(raw: &str) -> bool {
        pieces(raw).iter().any(|p| {
            matches!(p, Piece::Reference { inner, .. }
                if matches!(inner.split_once(':'), Some(("env" | "file" | "aws-sm", _))))
        })
    }

    /// `raw` with each reference written as [`REFERENCE_MARK`] and the
    /// rest as it is, so a caller can see where references stand (a URL's
    /// password must be one as a whole, not merely share the URL with one).
    pub fn mark_references(raw: &str) -> String {
        let mut out = String::with_capacity(raw.len());
        for piece in pieces(raw) {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Reference { .. } => out.push(REFERENCE_MARK),
                Piece::Unterminated(at) => out.push_str(&raw[at..]),
            }
        }
        out
    }

    /// Replaces every reference in `raw`; `$${` gives a literal `${`.
    ///
    /// `raw` may itself be an inline secret that merely contains `${` (a
    /// generated password), so errors never repeat it: they name a known
    /// reference (`${env:NAME}` names `NAME`), a byte offset, or the scheme
    /// of an unknown reference when that is short and alphanumeric.
    pub async fn resolve(&self, raw: &str) -> Result<Secret, String> {
        let mut out = String::new();
        for piece in pieces(raw) {
            let (at, reference) = match piece {
                Piece::Text(text) => {
                    out.push_str(text);
                    continue;
                }
                Piece::Unterminated(at) => {
                    return Err(format!(
                        "unterminated `${{` at byte {at}; write `$${{` for a literal `${{`"
                    ));
                }
                Piece::Reference { at, inner } => (at, inner),
            };
            let value = match reference.split_once(':') {
                Some(("env", name)) => std::env::var(name)
                    .ok()
                    .or_else(|| self.dotenv.get(name).cloned())
                    .ok_or_else(|| {
                        format!("environment variable {name} is not set (nor in the .env file)")
                    })?,
                // Relative, it would be read from wherever the host was
                // started (`/` under systemd), not beside the config.
                Some(("file", path)) if !std::path::Path::new(path).is_absolute() => {
                    return Err(format!(
                        "`${{file:…}}` at byte {at} names a relative path; give the secret file's absolute path"
                    ));
                }
                Some(("file", path)) => read_secret_file(path)?,
                Some(("aws-sm", id)) => match &self.aws {
                    Some(aws) => aws.get(id).await?.expose().to_owned(),
                    None => {
                        return Err(format!(
                            "`${{aws-sm:{id}}}` needs a [secrets.aws] section in the host config"
                        ));
                    }
                },
                _ => {
                    let what = match safe_scheme(reference) {
                        Some(scheme) => format!("unknown reference scheme `{scheme}`"),
                        None => "unknown reference".to_string(),
                    };
                    return Err(format!(
                        "{what} at byte {at}; use ${{env:NAME}}, ${{file:/path}} or ${{aws-sm:id}}, or write `$${{` for a literal `${{`"
                    ));
                }
            };
            out.push_str(&value);
        }
        Ok(Secret::new(out))
    }
}

#[cfg(test)]
#[path = "resolver_tests.rs"]
mod resolver_tests;
