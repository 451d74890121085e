//! Embedded blob adapter: one directory per container on the local disk.
//!
//! Objects are files under the container root; writes go to a temporary
//! file outside the root and are renamed into place on finish, so readers
//! never see partial objects and a dropped writer leaves nothing behind.
//! Keys are validated before they get here; in addition every path
//! component is checked not to be a symlink, so a link planted in the
//! directory cannot lead outside it.
//!
//! Keys are paths here but flat names on S3, so the two differ where one
//! key is a path prefix of another: a delete removes the directories it
//! leaves empty (so `a/b` gone does not block `a`), a key below an object
//! (`a/b` under the file `a`) is simply missing, and the one thing files
//! cannot hold, an object and a longer key below it at once, is refused as
//! `invalid-key` saying so.

use std::io::ErrorKind;
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
    /// What it may hold on disk, if bounded.
    room: Option<Arc<Room>>,
}

/// Start of the name of the file [`FsContainer::open`] renames into the
/// root to check the rename works. It contains `\`, which
/// [`super::validate_key`] refuses, so no key can name it (a probe can
/// neither overwrite an object nor be read as one) and a listing skips it.
const PROBE_PREFIX: &str = ".berth-probe\\";

/// Why a key is refused when a shorter key is a file where this one needs
/// a directory.
const PREFIX_CONFLICT: &str = "the key conflicts with an existing key that is its path prefix \
     (`a` exists, so `a/b` cannot); the file backend cannot store both";

/// Why a key is refused when longer keys live below it.
const EXTENSION_CONFLICT: &str = "the key conflicts with existing keys that are its path \
     extensions (`a/b` exists, so `a` cannot); the file backend cannot store both";

fn io_error(e: std::io::Error) -> BlobError {
    if is_missing(&e) {
        return BlobError::NotFound;
    }
    if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        // The operator's to fix, and worth retrying once they have (as
        // SQLite's full disk is `unavailable` too). The path is not
        // logged: it holds a tenant's key.
        static LAST_WARNING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if crate::ports::warning_due(&LAST_WARNING) {
            tracing::warn!(error = %e.kind(), "a file blob store is out of space (said at most once a minute)");
        }
        return BlobError::Unavailable(format!("the file store is out of space ({})", e.kind()));
    }
    BlobError::Other(format!("storage error: {}", e.kind()))
}

/// Whether `e` means there is no such object. `ENOTDIR` counts: `a/b` when
/// `a` is an object is a key nobody stored, as it would be on S3.
fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
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
    /// filesystem), URLs signed for `app`/`name` by `signer`, holding at
    /// most `max_bytes` (`[app_limits] store_mb`; what it holds is counted
    /// now, by walking `root`).
    pub fn open(
        root: PathBuf,
        tmp: PathBuf,
        app: &str,
        name: &str,
        signer: Arc<UrlSigner>,
        max_bytes: Option<u64>,
    ) -> Result<FsContainer, BlobError> {
        for dir in [&root, &tmp] {
            create_dir_durably(dir).map_err(|e| {
                BlobError::Unavailable(format!("cannot create blob directory: {}", e.kind()))
            })?;
        }
        probe_rename(&root, &tmp)?;
        sweep_leftovers(&tmp, LEFTOVER_AGE);
        let room = max_bytes.map(|max| Room::of(&root, max));
        Ok(FsContainer {
            root,
            tmp,
            app: app.into(),
            name: name.into(),
            signer,
            room,
        })
    }

    /// The file of `key`, refusing any symlink on the way.
    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        checked_path(&self.root, key)
    }

    /// Opens `key` for reading if it is a regular file. The returned info
    /// describes the opened file, not whatever the path names by now.
    pub async fn open_file(&self, key: &str) -> Result<(tokio::fs::File, ObjectInfo), BlobError> {
        let path = self.path_of(key)?;
        // Checked before opening: a directory is the inside of longer keys,
        // not an object, and opening a FIFO would block.
        let meta = tokio::fs::symlink_metadata(&path).await.map_err(io_error)?;
        if !meta.is_file() {
            return Err(BlobError::NotFound);
        }
        let file = tokio::fs::File::open(&path).await.map_err(io_error)?;
        // Checked again on the open file: a rename may have put another
        // file at the path in between, and size caps must hold for the
        // bytes that will actually be read.
        let meta = file.metadata().await.map_err(io_error)?;
        if !meta.is_file() {
            return Err(BlobError::NotFound);
        }
        Ok((file, info_of(key, &meta)))
    }

    fn new_writer(&self, key: &str) -> Result<FsWriter, BlobError> {
        // Refuses links now; `finish` checks again before the rename.
        self.path_of(key)?;
        let taken = match &self.room {
            Some(room) => room.take(room::OBJECT_OVERHEAD)?,
            None => Taken::default(),
        };
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let file = std::fs::File::create(&tmp).map_err(io_error)?;
        Ok(FsWriter {
            file: Some(tokio::fs::File::from_std(file)),
            tmp,
            key: key.to_string(),
            root: self.root.clone(),
            failed: false,
            room: self.room.clone(),
            taken,
        })
    }
}

/// The file of `key` under `root`, refusing any symlink on the way.
fn checked_path(root: &Path, key: &str) -> Result<PathBuf, BlobError> {
    let mut path = root.to_path_buf();
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

/// Checks that a file in `tmp` can be renamed into `root`, as every write
/// does. A rename cannot cross filesystems (`EXDEV`), so an operator's
/// `root` on another disk than the state directory would otherwise only
/// show when every write fails; this makes it fail at startup instead.
fn probe_rename(root: &Path, tmp: &Path) -> Result<(), BlobError> {
    let id = uuid::Uuid::new_v4();
    let from = tmp.join(format!("probe-{id}"));
    let to = root.join(format!("{PROBE_PREFIX}{id}"));
    // Writes are renamed from one into the other.
    let refused = |why: String| {
        BlobError::Other(format!(
            "the blob root {} cannot take writes from the temporary directory {}: {why}",
            root.display(),
            tmp.display()
        ))
    };
    std::fs::File::create(&from).map_err(|e| {
        refused(format!(
            "cannot create a file in the temporary directory ({})",
            e.kind()
        ))
    })?;
    match std::fs::rename(&from, &to) {
        Ok(()) => {
            // Left behind only if this fails; `walk` never lists it.
            let _ = std::fs::remove_file(&to);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&from);
            Err(refused(match e.kind() {
                ErrorKind::CrossesDevices => super::ACROSS_MOUNTS.to_string(),
                kind => format!("renaming a file into the root failed ({kind})"),
            }))
        }
    }
}

/// Reads a whole object whose opened file claims `size` bytes, refusing
/// more than `max`. At most `max + 1` bytes are read whatever `size` said,
/// since the file may still grow while it is read.
async fn read_capped<R>(file: R, size: u64, max: usize) -> Result<Vec<u8>, BlobError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    if size > max as u64 {
        return Err(BlobError::TooLarge(format!(
            "object is {size} bytes, `get` returns at most {max}; use `read`"
        )));
    }
    let mut out = Vec::with_capacity(size as usize);
    let mut limited = file.take((max as u64).saturating_add(1));
    limited.read_to_end(&mut out).await.map_err(io_error)?;
    if out.len() > max {
        return Err(BlobError::TooLarge(format!(
            "object grew past {max} bytes while being read, `get` returns at most {max}; use `read`"
        )));
    }
    Ok(out)
}

/// Removes the directories between the just deleted `file` and `root` that
/// are now empty, so a deleted `a/b` leaves no `a/` behind to block a later
/// `put("a")` (S3 has no directories, so there it succeeds). Stops at the
/// first that cannot be removed: usually not empty, because another key
/// lives below it. `root` itself stays.
async fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        if tokio::fs::remove_dir(d).await.is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Makes `target` ready for the rename that publishes an object: its
/// directories exist and it is neither a directory nor a link.
async fn prepare_target(root: &Path, target: &Path) -> Result<(), BlobError> {
    if let Some(parent) = target.parent()
        && parent.starts_with(root)
        && let Err(e) = tokio::fs::create_dir_all(parent).await
    {
        return Err(match e.kind() {
            // A file where a directory must be (`EEXIST` on the last
            // directory, `ENOTDIR` below it): a shorter key is an object.
            ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
                BlobError::InvalidKey(PREFIX_CONFLICT.into())
            }
            _ => io_error(e),
        });
    }
    match tokio::fs::symlink_metadata(target).await {
        Ok(m) if m.file_type().is_symlink() => {
            Err(BlobError::InvalidKey("key names a symbolic link".into()))
        }
        Ok(m) if m.is_dir() => match tokio::fs::remove_dir(target).await {
            // An empty directory holds no key (an older delete, or a
            // concurrent one, left it): the object takes its place.
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            // Not empty: longer keys live below it.
            Err(_) => Err(BlobError::InvalidKey(EXTENSION_CONFLICT.into())),
        },
        _ => Ok(()),
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
        let (file, info) = self.open_file(key).await?;
        read_capped(file, info.size, max_bytes).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path_of(key)?;
        let (room, file) = (self.room.clone(), path.clone());
        // One blocking step, finished even if this call is dropped: the
        // removal and the room's count change together.
        let removed = tokio::task::spawn_blocking(move || remove_object(room.as_deref(), &file))
            .await
            .map_err(|e| BlobError::Other(format!("delete failed: {e}")))?;
        match removed.map_err(io_error)? {
            true => {
                remove_empty_parents(&self.root, &path).await;
                sync_nearest_directory(&self.root, &path).await?;
                Ok(true)
            }
            false => Ok(false),
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
            listing::page(&root, &prefix, after.as_deref(), limit).map_err(io_error)
        })
        .await
        .map_err(|e| BlobError::Other(format!("listing failed: {e}")))?
    }

    async fn write(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(self.new_writer(key)?))
    }

    async fn read(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError> {
        let (file, info) = self.open_file(key).await?;
        Ok(Box::new(FsReader {
            file,
            size: info.size,
        }))
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

struct FsWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    key: String,
    root: PathBuf,
    /// A write failed: the temporary file may miss some of what was
    /// written before it (tokio reports a background write's error on the
    /// next call), so the object can no longer be completed.
    failed: bool,
    /// The container's room, if bounded, and what this writer took of
    /// it: given back unless the object is completed.
    room: Option<Arc<Room>>,
    taken: Taken,
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.check()?;
        let file = self.file.as_mut().ok_or(BlobError::Closed)?;
        if let Some(room) = &self.room {
            self.taken.add(room.take(chunk.len() as u64)?);
        }
        let written = file.write_all(chunk).await;
        self.failed = written.is_err();
        written.map_err(io_error)
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        self.check()?;
        let mut file = self.file.take().ok_or(BlobError::Closed)?;
        file.flush().await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        // Re-check for links created since the writer opened.
        let target = checked_path(&self.root, &self.key)?;
        let mut attempt = 1;
        loop {
            prepare_target(&self.root, &target).await?;
            let taken = std::mem::take(&mut self.taken);
            let (room, tmp, to) = (self.room.clone(), self.tmp.clone(), target.clone());
            // One blocking step, finished even if this call is dropped: the
            // rename and the room's count change together.
            let renamed = tokio::task::spawn_blocking(move || {
                replace_object(room.as_deref(), &tmp, &to, taken)
            })
            .await
            .map_err(|e| BlobError::Other(format!("finishing the object failed: {e}")))?;
            let e = match renamed {
                Ok(()) => break,
                Err((e, taken)) => {
                    self.taken = taken;
                    e
                }
            };
            match e.kind() {
                // A concurrent delete removed the directory it had emptied
                // between its creation above and the rename: create it again.
                ErrorKind::NotFound if attempt < 3 => attempt += 1,
                // Another writer made the path a file or a directory after
                // the checks above.
                ErrorKind::NotADirectory => {
                    return Err(BlobError::InvalidKey(PREFIX_CONFLICT.into()));
                }
                ErrorKind::IsADirectory | ErrorKind::DirectoryNotEmpty => {
                    return Err(BlobError::InvalidKey(EXTENSION_CONFLICT.into()));
                }
                _ => return Err(io_error(e)),
            }
        }
        sync_directories(&self.root, &target).await?;
        let meta = tokio::fs::metadata(&target).await.map_err(io_error)?;
        Ok(info_of(&self.key, &meta))
    }
}

impl FsWriter {
    /// Refuses to go on after a failed write, as the S3 writer does after a
    /// lost part: a retried chunk must not publish an object with a hole.
    fn check(&self) -> Result<(), BlobError> {
        match self.failed {
            true => Err(BlobError::Other(
                "an earlier write failed; start a new writer".into(),
            )),
            false => Ok(()),
        }
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Finished writers renamed the file away; unfinished ones are aborted.
        let _ = std::fs::remove_file(&self.tmp);
        // And `taken` gives its room back as it drops.
    }
}

/// Renames the complete object `tmp` to `target`, replacing the object
/// there: what `taken` holds becomes the new object's, and the replaced
/// one's room is given back. Blocking.
fn replace_object(
    room: Option<&Room>,
    tmp: &Path,
    target: &Path,
    taken: Taken,
) -> Result<(), (std::io::Error, Taken)> {
    let _change = room.map(Room::changing);
    let replaced = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_file() => Some(meta.len()),
        _ => None,
    };
    match std::fs::rename(tmp, target) {
        Ok(()) => {
            if let (Some(room), Some(len)) = (room, replaced) {
                room.object_gone(len);
            }
            taken.keep();
            Ok(())
        }
        Err(e) => Err((e, taken)),
    }
}

/// Removes the object at `path`, if it is one, giving its room back:
/// whether it was there. Blocking.
fn remove_object(room: Option<&Room>, path: &Path) -> std::io::Result<bool> {
    let _change = room.map(Room::changing);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => match std::fs::remove_file(path) {
            Ok(()) => {
                if let Some(room) = room {
                    room.object_gone(meta.len());
                }
                Ok(true)
            }
            // A concurrent delete was first.
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(false),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

struct FsReader {
    file: tokio::fs::File,
    /// The open file's size.
    size: u64,
}

#[async_trait]
impl BlobReader for FsReader {
    fn size(&self) -> Option<u64> {
        Some(self.size)
    }

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

#[path = "fs_listing.rs"]
mod listing;

#[path = "fs_durable.rs"]
mod durable;

#[path = "fs_room.rs"]
mod room;
use durable::{
    LEFTOVER_AGE, create_dir_durably, sweep_leftovers, sync_directories, sync_nearest_directory,
};
use room::{Room, Taken};

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
