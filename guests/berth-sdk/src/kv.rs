//! Key-value storage and caching: byte values with TTLs, counters and
//! compare-and-swap, in buckets granted by the manifest (`kv = ["cache"]`).
//!
//! ```no_run
//! use std::time::Duration;
//! use berth_sdk::{kv::Bucket, Result};
//!
//! fn remember(session: &str, user: &str) -> Result<Option<String>> {
//!     let sessions = Bucket::open("sessions")?;
//!     let previous = sessions.get_string(session)?;
//!     sessions.set_with_ttl(session, user, Duration::from_secs(3600))?;
//!     Ok(previous)
//! }
//! # fn main() {}
//! ```

use std::time::Duration;

use crate::raw::berth::infra::kv as raw;
use crate::{Error, Result};

pub use raw::{Error as KvError, KeyPage};

/// A key-value bucket granted to the component.
pub struct Bucket {
    bucket: raw::Bucket,
}

impl Bucket {
    /// Opens the bucket `name`; [`KvError::NotGranted`] if not granted.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self {
            bucket: raw::Bucket::open(name)?,
        })
    }

    /// The value of `key`, if set and not expired.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.bucket.get(key)?)
    }

    /// The value of `key` as UTF-8 text.
    pub fn get_string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|_| Error::Decode(format!("the value of `{key}` is not UTF-8")))
            })
            .transpose()
    }

    /// Sets `key` without expiry.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        Ok(self.bucket.set(key, value.as_ref(), None)?)
    }

    /// Sets `key` to expire after `ttl` (millisecond precision).
    pub fn set_with_ttl(&self, key: &str, value: impl AsRef<[u8]>, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(self.bucket.set(key, value.as_ref(), Some(ms))?)
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.bucket.delete(key)?)
    }

    /// Whether `key` is set.
    pub fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.bucket.exists(key)?)
    }

    /// Atomically adds `delta` to the decimal integer at `key` (0 if unset);
    /// returns the new value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        Ok(self.bucket.increment(key, delta)?)
    }

    /// Sets `key` to `new` only if it currently holds `expected` (`None`:
    /// only if unset); whether it was set.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<bool> {
        Ok(self.bucket.compare_and_swap(key, expected, new.as_ref())?)
    }

    /// Every key starting with `prefix`, read page by page.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.bucket.list_keys(prefix, cursor.as_deref(), 1000)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The generated bucket, for what this wrapper does not cover.
    pub fn raw(&self) -> &raw::Bucket {
        &self.bucket
    }
}
