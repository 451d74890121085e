//! Small files the host keeps beside its data (the URL-signing key, owner
//! marks): created whole or not at all, across a crash or a power cut, and
//! never replaced once there.

use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Creates `path` holding `bytes`, with permissions `mode`, unless it
/// exists. The bytes are written and synced under a temporary name, then
/// linked into place: a link fails on an existing name, so of processes
/// racing to create it one does and the others find its whole content,
/// and a crash leaves either no file or all of it. The directory is synced
/// so the new name survives a power cut. `Ok(false)` when it existed.
pub fn create_once(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    // There already (the usual case at each load): nothing to write, even
    // where the directory is not the host's to write in.
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        // A filesystem without hard links (vfat, some network and FUSE
        // mounts): created under its own name, exclusively, as before.
        Err(_) => create_in_place(path, bytes, mode, dir),
    }
}

/// [`create_once`] without a link: exclusive, written and synced, but a
/// crash in between can leave the file short.
fn create_in_place(path: &Path, bytes: &[u8], mode: u32, dir: &Path) -> std::io::Result<bool> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(true)
}

/// Syncs directory `dir`, so the names created or renamed in it last.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_created_once_whole_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url-signing.key");
        assert!(create_once(&path, b"first", 0o600).unwrap());
        assert!(!create_once(&path, b"second", 0o600).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["url-signing.key"]);
        // Found there, it is not written again even where the directory
        // is not the host's to write in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let again = create_once(&path, b"third", 0o600);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!again.unwrap());
    }
}
