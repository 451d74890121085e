//! What makes the file backend's writes and deletes durable, and what
//! cleans up after a crash: directory syncs and the sweep of leftovers.

use std::io::ErrorKind;
use std::path::Path;

use super::io_error;
use crate::ports::blob::BlobError;

/// How long a temporary file goes unwritten before it is taken for the
/// leftover of a writer a crash cut off: a live writer's file is written
/// to at least once per invocation, and no invocation lasts an hour.
pub(super) const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the files in `tmp` not written to for `age`: writes a host
/// crash cut off, which no writer's drop will remove. Best effort; files
/// in use by writers of another version of the app are recent.
pub(super) fn sweep_leftovers(tmp: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|idle| idle >= age);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a blob write a crash left unfinished");
        }
    }
}

/// Creates `dir` and its missing parents, and syncs the directory above
/// each one it made: objects written into a container made at load must
/// not vanish with the container in a power loss.
pub(super) fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for made in missing {
        if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Makes a delete of `path` durable: syncs the nearest directory above it
/// that still exists, whose entry for the file (or for the emptied
/// directories removed under it) changed; otherwise a power loss could
/// bring the object back after `delete` returned.
pub(super) async fn sync_nearest_directory(root: &Path, path: &Path) -> Result<(), BlobError> {
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        match tokio::fs::File::open(d).await {
            Ok(handle) => return handle.sync_all().await.map_err(io_error),
            // Removed as emptied, here or by a concurrent delete.
            Err(e) if e.kind() == ErrorKind::NotFound => dir = d.parent(),
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(())
}

/// Makes the rename of `target` durable: the directory entries of the
/// object and of any directory made for it are on disk once each directory
/// from its parent up to `root` is synced (a synced file can otherwise
/// vanish with a power loss after `finish` returned).
pub(super) async fn sync_directories(root: &Path, target: &Path) -> Result<(), BlobError> {
    let mut dir = target.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        // Gone: a delete of the object since the rename took the directory
        // it emptied, and there is nothing left to make durable here.
        let handle = match tokio::fs::File::open(d).await {
            Ok(handle) => handle,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(e)),
        };
        handle.sync_all().await.map_err(io_error)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
