//! The `blob` port: object storage behind logical container names, with
//! chunked reads and writes for large objects.

pub mod fs;
pub mod host;
pub mod s3;
pub mod url;

use async_trait::async_trait;

/// Why a blob operation failed, as adapters report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The logical name is not granted.
    #[error("container {0:?} is not granted to this component")]
    NotGranted(String),
    /// Malformed key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// No such object.
    #[error("object not found")]
    NotFound,
    /// Size limit hit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Handle already finished.
    #[error("the writer or reader is already finished")]
    Closed,
    /// Store unreachable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The instance already holds this many open writers.
    #[error("at most {0} blob writers may be open at once per instance; finish or drop one")]
    TooManyWriters(usize),
    /// The instance already holds this many open readers.
    #[error("at most {0} blob readers may be open at once per instance; drop one")]
    TooManyReaders(usize),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What is known about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, ms since the Unix epoch.
    pub modified_ms: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectPage {
    /// Objects in ascending key order.
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts.
    pub cursor: Option<String>,
}

/// A logical container as served by one store. Keys reaching an adapter
/// have been checked by [`validate_key`].
#[async_trait]
pub trait BlobBackend: Send + Sync {
    /// Stores a whole object.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<ObjectInfo, BlobError>;
    /// Reads a whole object of at most `max_bytes`.
    async fn get(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, BlobError>;
    /// Removes an object; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, BlobError>;
    /// Size and time of an object.
    async fn stat(&self, key: &str) -> Result<ObjectInfo, BlobError>;
    /// Objects whose key starts with `prefix`, after `after`, at most `limit`.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ObjectPage, BlobError>;
    /// Starts a chunked write; the object appears on `finish`.
    async fn write(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// Opens a chunked read.
    async fn read(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError>;
    /// A URL serving `key` for `expires_secs`.
    async fn url(&self, key: &str, expires_secs: u32) -> Result<String, BlobError>;
    /// The largest object a writer can store, and why, where the store
    /// sets one below any `blob_max_object_mb` (S3: its part count).
    fn largest_object(&self) -> Option<(u64, String)> {
        None
    }
}

/// An object being written. Dropping it unfinished discards it.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends a chunk.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError>;
    /// Publishes the object.
    async fn finish(self: Box<Self>) -> Result<ObjectInfo, BlobError>;
}

/// An object being read.
#[async_trait]
pub trait BlobReader: Send {
    /// Up to `max` further bytes; empty at the end.
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError>;

    /// The length of the object this reader reads, where the store said:
    /// the version being read, whatever replaced it since.
    fn size(&self) -> Option<u64>;
}

/// Why a file blob root cannot take the writes it is given: each is
/// written in the temporary directory, then renamed into the root, and a
/// rename crosses neither filesystems nor mounts.
pub(crate) const ACROSS_MOUNTS: &str = "they are on different filesystems, or on different mounts of one (a bind mount), and a rename crosses neither; the root must be on the temporary directory's filesystem and mount (the state directory's)";

/// Longest `/`-separated segment of a key, in bytes: the usual file name
/// limit (`NAME_MAX`), so that every key that passes [`validate_key`] can
/// be stored by the file backend too, and all backends refuse the same keys.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Checks a guest-supplied key: relative, `/`-separated, no `.`/`..` or
/// empty segments, no segment over [`MAX_SEGMENT_BYTES`], no backslash,
/// control characters or XML's non-characters, at most `max_bytes`.
pub fn validate_key(key: &str, max_bytes: usize) -> Result<(), BlobError> {
    let bad = |why: &str| Err(BlobError::InvalidKey(why.to_string()));
    if key.is_empty() {
        return bad("key is empty");
    }
    if key.len() > max_bytes {
        return Err(BlobError::InvalidKey(format!(
            "key is longer than {max_bytes} bytes"
        )));
    }
    if key.starts_with('/') {
        return bad("key must be relative (no leading `/`)");
    }
    if key.contains('\\') {
        return bad("key must not contain `\\`");
    }
    if key.chars().any(is_unlistable) {
        return bad("key must not contain control characters or U+FFFE/U+FFFF");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("key must not contain empty, `.` or `..` segments");
    }
    if let Some(segment) = key.split('/').find(|s| s.len() > MAX_SEGMENT_BYTES) {
        return Err(BlobError::InvalidKey(format!(
            "key has a {}-byte segment; each `/`-separated segment may have at most {MAX_SEGMENT_BYTES} bytes",
            segment.len()
        )));
    }
    Ok(())
}

/// A character no key may hold: a control character, or U+FFFE and U+FFFF,
/// which are no XML character (S3 would store such a key, and every list
/// page holding it would fail to parse).
pub fn is_unlistable(c: char) -> bool {
    c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}'
}

/// Checks a listing prefix: like a key, but may be empty or end with `/`,
/// and its last segment, unless it ends with `/`, may be `.` or `..`: such
/// a prefix begins keys such as `.env` or `photos/..x`.
pub fn validate_prefix(prefix: &str, max_bytes: usize) -> Result<(), BlobError> {
    if prefix.is_empty() {
        return Ok(());
    }
    if let Some(directory) = prefix.strip_suffix('/') {
        return validate_key(directory, max_bytes);
    }
    let (directory, partial) = match prefix.rsplit_once('/') {
        Some((directory, partial)) => (Some(directory), partial),
        None => (None, prefix),
    };
    // The same length, so every other rule applies as before.
    let partial = match partial {
        "." => "x",
        ".." => "xx",
        other => other,
    };
    match directory {
        Some(directory) => validate_key(&format!("{directory}/{partial}"), max_bytes),
        None => validate_key(partial, max_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_spellings_are_refused() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/./b",
            "a//b",
            "a\\b",
            "nul\0",
            "tab\tx",
            "a/..",
            "..",
            "a\u{FFFE}",
            "a\u{FFFF}b",
        ] {
            assert!(validate_key(key, 1024).is_err(), "{key:?}");
        }
        assert!(validate_key(&"k".repeat(1025), 1024).is_err());
        for key in [
            "a",
            "users/1/avatar",
            "dots.in.name",
            "ünïcode/ok",
            "..hidden",
            "a\u{FFFD}\u{10FFFF}",
        ] {
            assert!(validate_key(key, 1024).is_ok(), "{key:?}");
        }
        assert!(validate_prefix("", 1024).is_ok());
        assert!(validate_prefix("dir/", 1024).is_ok());
        assert!(validate_prefix("../", 1024).is_err());
        // A last segment that does not end with `/` may begin a key.
        for prefix in [".", "..", "photos/.", "a/..", ".env", "dir/sub"] {
            assert!(validate_prefix(prefix, 1024).is_ok(), "{prefix:?}");
        }
        for prefix in [
            "./", "a/../", "a/./b", "../x", "/abs", "a//b", "a\\.", "a/\0",
        ] {
            assert!(validate_prefix(prefix, 1024).is_err(), "{prefix:?}");
        }
    }

    #[test]
    fn segments_longer_than_a_file_name_are_refused() {
        let longest = "s".repeat(MAX_SEGMENT_BYTES);
        let over = "s".repeat(MAX_SEGMENT_BYTES + 1);
        assert!(validate_key(&longest, 1024).is_ok());
        // Long keys are fine as long as each segment is short enough.
        assert!(validate_key(&format!("{longest}/{longest}/{longest}"), 1024).is_ok());
        for key in [over.clone(), format!("a/{over}"), format!("{over}/a")] {
            match validate_key(&key, 1024) {
                Err(BlobError::InvalidKey(m)) => assert!(m.contains("255"), "{m}"),
                other => panic!("{} bytes: {other:?}", key.len()),
            }
        }
        // Counted in bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(validate_key(&"é".repeat(128), 1024).is_err());
        assert!(validate_key(&"é".repeat(127), 1024).is_ok());
        assert!(validate_prefix(&format!("{over}/"), 1024).is_err());
    }
}

/// How the host serves a logical container (`[blob.<name>]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(remote = "Self", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BlobConfig {
    /// A local directory; `root` defaults to `<state>/<app>/blob/<name>`.
    Fs {
        /// Directory.
        root: Option<std::path::PathBuf>,
    },
    /// An S3 bucket (AWS or S3-compatible). Objects of container `<name>` of
    /// app `<app>` are stored under `<prefix>berth/<app>/<name>/`, so apps
    /// and containers may share a bucket.
    S3 {
        /// Endpoint URL of an S3-compatible server; AWS when absent.
        endpoint: Option<String>,
        /// Region used for signing; default `us-east-1`.
        region: Option<String>,
        /// Bucket; must exist.
        bucket: String,
        /// Prepended to every key; default empty.
        prefix: Option<String>,
        /// Path-style addressing (`<endpoint>/<bucket>/<key>`), which most
        /// S3-compatible servers need; default `false`.
        path_style: Option<bool>,
        /// Access key id: a secret reference, e.g. `${env:AWS_ACCESS_KEY_ID}`.
        access_key_id: String,
        /// Secret access key: a secret reference, e.g.
        /// `${env:AWS_SECRET_ACCESS_KEY}` or `${file:/run/secrets/s3}`.
        secret_access_key: String,
        /// Multipart part size in MiB (5 to 1024: half the host's 2 GiB
        /// budget of writer buffers), also the most a writer buffers;
        /// default 8.
        part_size_mb: Option<u64>,
        /// Connect timeout, and time from sending a request (including a
        /// whole part's upload) to its response headers, in ms; default 30000.
        timeout_ms: Option<u64>,
    },
}

crate::config::by_type::deserialize_by_type!(BlobConfig);
