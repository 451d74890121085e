//! Embedded blob adapter: one directory per container on the local disk.
//!
//! Objects are files under the container root; writes go to a temporary
//! file outside the root and are renamed into place on finish, so readers
//! never see partial objects and a dropped writer leaves nothing behind.
//! Keys are validated before they get here; in addition every path
//! component is checked not to be a symlink, so a link planted in the
//! directory cannot lead outside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::url::UrlSigner;
use super::{BlobBackend, BlobError, BlobReader, BlobWriter, ObjectInfo, ObjectPage};

/// A container stored in a directory.
pub struct FsContainer {
    root: PathBuf,
    tmp: PathBuf,
    app: String,
    name: String,
    signer: Arc<UrlSigner>,
}

fn io_error(e: std::io::Error) -> BlobError {
    match e.kind() {
        std::io::ErrorKind::NotFound => BlobError::NotFound,
        _ => BlobError::Other(format!("storage error: {}", e.kind())),
    }
}

fn info_of(key: &str, meta: &std::fs::Metadata) -> ObjectInfo {
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ObjectInfo {
        key: key.to_string(),
        size: meta.len(),
        modified_ms,
    }
}

impl FsContainer {
    /// A container rooted at `root`, with temporary files in `tmp` (same
    /// filesystem), URLs signed for `app`/`name` by `signer`.
    pub fn open(
        root: PathBuf,
        tmp: PathBuf,
        app: &str,
        name: &str,
        signer: Arc<UrlSigner>,
    ) -> Result<FsContainer, BlobError> {
        for dir in [&root, &tmp] {
            std::fs::create_dir_all(dir).map_err(|e| {
                BlobError::Unavailable(format!("cannot create blob directory: {}", e.kind()))
            })?;
        }
        Ok(FsContainer {
            root,
            tmp,
            app: app.into(),
            name: name.into(),
            signer,
        })
    }

    /// The file of `key`, refusing any symlink on the way.
    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        let mut path = self.root.clone();
        for segment in key.split('/') {
            path.push(segment);
            if let Ok(meta) = std::fs::symlink_metadata(&path)
                && meta.file_type().is_symlink()
            {
                return Err(BlobError::InvalidKey(
                    "key leads through a symbolic link".into(),
                ));
            }
        }
        Ok(path)
    }

    /// Opens `key` for reading if it is a regular file.
    pub async fn open_file(&self, key: &str) -> Result<(tokio::fs::File, ObjectInfo), BlobError> {
        let path = self.path_of(key)?;
        let meta = tokio::fs::symlink_metadata(&path).await.map_err(io_error)?;
        if !meta.is_file() {
            return Err(BlobError::NotFound);
        }
        let file = tokio::fs::File::open(&path).await.map_err(io_error)?;
        Ok((file, info_of(key, &meta)))
    }

    fn new_writer(&self, key: &str) -> Result<FsWriter, BlobError> {
        let target = self.path_of(key)?;
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let file = std::fs::File::create(&tmp).map_err(io_error)?;
        Ok(FsWriter {
            file: Some(tokio::fs::File::from_std(file)),
            tmp,
            target,
            key: key.to_string(),
            root: self.root.clone(),
        })
    }
}

#[async_trait]
impl BlobBackend for FsContainer {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<ObjectInfo, BlobError> {
        let mut w = Box::new(self.new_writer(key)?);
        w.write(&data).await?;
        w.finish().await
    }

    async fn get(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, BlobError> {
        let (mut file, info) = self.open_file(key).await?;
        if info.size > max_bytes as u64 {
            return Err(BlobError::TooLarge(format!(
                "object is {} bytes, `get` returns at most {max_bytes}; use `read`",
                info.size
            )));
        }
        let mut out = Vec::with_capacity(info.size as usize);
        file.read_to_end(&mut out).await.map_err(io_error)?;
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path_of(key)?;
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_file() => {
                tokio::fs::remove_file(&path).await.map_err(io_error)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn stat(&self, key: &str) -> Result<ObjectInfo, BlobError> {
        Ok(self.open_file(key).await?.1)
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ObjectPage, BlobError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let after = after.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            walk(&root, "", &mut all).map_err(io_error)?;
            all.retain(|o: &ObjectInfo| {
                o.key.starts_with(&prefix) && after.as_deref().is_none_or(|a| o.key.as_str() > a)
            });
            all.sort_by(|a, b| a.key.cmp(&b.key));
            let more = all.len() > limit;
            all.truncate(limit);
            let cursor = if more {
                all.last().map(|o| o.key.clone())
            } else {
                None
            };
            Ok(ObjectPage {
                objects: all,
                cursor,
            })
        })
        .await
        .map_err(|e| BlobError::Other(format!("listing failed: {e}")))?
    }

    async fn write(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(self.new_writer(key)?))
    }

    async fn read(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError> {
        let (file, _) = self.open_file(key).await?;
        Ok(Box::new(FsReader { file }))
    }

    async fn url(&self, key: &str, expires_secs: u32) -> Result<String, BlobError> {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(self
            .signer
            .url(&self.app, &self.name, key, now + u64::from(expires_secs)))
    }
}

/// Collects regular files below `dir`, skipping symlinks.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let meta = entry.metadata()?; // does not follow symlinks
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if meta.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if meta.is_file() {
            out.push(info_of(&key, &meta));
        }
    }
    Ok(())
}

struct FsWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    target: PathBuf,
    key: String,
    root: PathBuf,
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let file = self.file.as_mut().ok_or(BlobError::Closed)?;
        file.write_all(chunk).await.map_err(io_error)
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        let mut file = self.file.take().ok_or(BlobError::Closed)?;
        file.flush().await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        if let Some(parent) = self.target.parent() {
            // Re-check for links created since the writer opened.
            if parent.starts_with(&self.root) {
                tokio::fs::create_dir_all(parent).await.map_err(io_error)?;
            }
        }
        match tokio::fs::symlink_metadata(&self.target).await {
            Ok(m) if m.is_dir() || m.file_type().is_symlink() => {
                return Err(BlobError::InvalidKey(
                    "key names a directory or link".into(),
                ));
            }
            _ => {}
        }
        tokio::fs::rename(&self.tmp, &self.target)
            .await
            .map_err(io_error)?;
        let meta = tokio::fs::metadata(&self.target).await.map_err(io_error)?;
        Ok(info_of(&self.key, &meta))
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Finished writers renamed the file away; unfinished ones are aborted.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

struct FsReader {
    file: tokio::fs::File,
}

#[async_trait]
impl BlobReader for FsReader {
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        let mut buf = vec![0; max];
        let mut filled = 0;
        while filled < max {
            let n = self.file.read(&mut buf[filled..]).await.map_err(io_error)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(dir: &Path) -> FsContainer {
        let signer = Arc::new(UrlSigner::new(b"k".to_vec(), "http://localhost:3000"));
        FsContainer::open(dir.join("root"), dir.join("tmp"), "app", "c", signer).unwrap()
    }

    #[tokio::test]
    async fn planted_symlink_cannot_lead_outside() {
        let dir = tempfile::tempdir().unwrap();
        let c = container(dir.path());
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("root/link"))
            .unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("root/dirlink")).unwrap();
        assert!(c.get("link", 100).await.is_err());
        assert!(c.get("dirlink/secret", 100).await.is_err());
        assert!(c.put("dirlink/new", b"x".to_vec()).await.is_err());
        assert!(!dir.path().join("new").exists());
        let listed = c.list("", None, 10).await.unwrap();
        assert!(listed.objects.is_empty(), "{listed:?}");
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = container(dir.path());
        let mut w = c.write("a/b").await.unwrap();
        w.write(b"partial").await.unwrap();
        drop(w);
        assert_eq!(c.stat("a/b").await.unwrap_err(), BlobError::NotFound);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
