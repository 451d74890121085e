//! Blob and file storage: objects in containers granted by the manifest
//! (`blob = ["files"]`), whole or streamed in chunks.
//!
//! ```no_run
//! use berth_sdk::{blob::Container, Result};
//!
//! fn archive(report: &[u8]) -> Result<u64> {
//!     let files = Container::open("files")?;
//!     let mut writer = files.writer("reports/today.csv")?;
//!     for chunk in report.chunks(64 * 1024) {
//!         writer.write(chunk)?;
//!     }
//!     Ok(writer.finish()?.size)
//! }
//! # fn main() {}
//! ```

use crate::raw::berth::infra::blob as raw;
use crate::Result;

pub use raw::{Error as BlobError, ObjectInfo, ObjectPage};

/// A blob container granted to the component.
pub struct Container {
    container: raw::Container,
}

impl Container {
    /// Opens the container `name`; [`BlobError::NotGranted`] if not granted.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self {
            container: raw::Container::open(name)?,
        })
    }

    /// Writes the object `key` whole.
    pub fn put(&self, key: &str, data: impl AsRef<[u8]>) -> Result<ObjectInfo> {
        Ok(self.container.put(key, data.as_ref())?)
    }

    /// Reads the object `key` whole; [`BlobError::NotFound`] if absent.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.container.get(key)?)
    }

    /// Reads the object `key`, or `None` if it does not exist.
    pub fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.container.get(key) {
            Ok(data) => Ok(Some(data)),
            Err(BlobError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.container.delete(key)?)
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.container.exists(key)?)
    }

    /// Size and modification time of `key`.
    pub fn stat(&self, key: &str) -> Result<ObjectInfo> {
        Ok(self.container.stat(key)?)
    }

    /// Every object whose key starts with `prefix`, read page by page.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.container.list(prefix, cursor.as_deref(), 1000)?;
            objects.extend(page.objects);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(objects),
            }
        }
    }

    /// Starts a streamed write of `key`; it exists once [`Writer::finish`]
    /// returns.
    pub fn writer(&self, key: &str) -> Result<Writer> {
        Ok(Writer {
            writer: self.container.write(key)?,
        })
    }

    /// Starts a streamed read of `key`.
    pub fn reader(&self, key: &str) -> Result<Reader> {
        Ok(Reader {
            reader: self.container.read(key)?,
        })
    }

    /// A URL that lets a client fetch `key` for `expires_secs` seconds.
    pub fn url(&self, key: &str, expires_secs: u32) -> Result<String> {
        Ok(self.container.url(key, expires_secs)?)
    }
}

/// A streamed write started by [`Container::writer`]. Dropped without
/// `finish`, nothing is stored.
pub struct Writer {
    writer: raw::Writer,
}

impl Writer {
    /// Appends `chunk`.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        Ok(self.writer.write(chunk)?)
    }

    /// Stores the object.
    pub fn finish(self) -> Result<ObjectInfo> {
        Ok(self.writer.finish()?)
    }
}

/// A streamed read started by [`Container::reader`].
pub struct Reader {
    reader: raw::Reader,
}

impl Reader {
    /// The next chunk of at most `max_bytes`, or `None` at the end.
    pub fn next_chunk(&mut self, max_bytes: u32) -> Result<Option<Vec<u8>>> {
        let chunk = self.reader.read(max_bytes)?;
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}
