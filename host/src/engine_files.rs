//! Reading the component file an app names: bounded, a regular file,
//! within the app's own directory on `berth serve`, and a component.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Opens the component file at `path`, refusing anything but a regular
/// file of at most `max` bytes (and, with `root`, one lying in that
/// directory). Opened once, without waiting (a FIFO without a writer would
/// block the open for ever); where the file lies is read from the open
/// file itself, so a link swapped after a check cannot lead elsewhere.
pub(super) fn open_component(
    path: &Path,
    max: u64,
    root: Option<&Path>,
) -> anyhow::Result<(std::fs::File, FileIdentity)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read component {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read component {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("component {} is not a regular file", path.display());
    }
    if let Some(root) = root {
        check_within(&file, path, root)?;
    }
    if meta.len() > max {
        return Err(too_large(path, max));
    }
    Ok((file, FileIdentity::of(&meta)))
}

/// Reads `file`, opened by [`open_component`], with a bound: a file that
/// grew since it was opened cannot make the host read more than `max`.
pub(super) fn read_opened(file: std::fs::File, path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read component {}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(too_large(path, max));
    }
    Ok(bytes)
}

fn too_large(path: &Path, max: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "component {} is larger than this host accepts: at most {} MiB ([engine] max_component_mb)",
        path.display(),
        max >> 20
    )
}

/// What tells a file's contents apart without reading them: its inode, and
/// the size and times every write changes. The change time cannot be set
/// by whoever writes the file, so a rewrite that puts back the size and
/// modification time is still told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileIdentity {
    inode: (u64, u64),
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt as _;
        FileIdentity {
            inode: (meta.dev(), meta.ino()),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The SHA-256 of component files read lately, by [`FileIdentity`]: a
/// reload whose components did not change (a tenant's manifest edited, a
/// rescan) need not read and hash them again, up to 256 MiB each.
#[derive(Default)]
pub(super) struct KnownDigests(std::sync::Mutex<DigestsByInode>);

type DigestsByInode = std::collections::HashMap<(u64, u64), (FileIdentity, String)>;

/// How many files [`KnownDigests`] remembers before it starts afresh.
const KNOWN_DIGESTS_KEPT: usize = 4096;

/// Seconds a file's last change must be past before its digest is
/// remembered: file times tick coarsely (a few milliseconds), so a file
/// written again within the tick it was read in could keep its times. A
/// change that old has surely ticked past.
const SETTLED_AFTER_SECS: i64 = 2;

impl KnownDigests {
    /// The digest of the file `identity` names, if it was read as it is.
    pub(super) fn get(&self, identity: &FileIdentity) -> Option<String> {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(&identity.inode)
            .filter(|(was, _)| was == identity)
            .map(|(_, digest)| digest.clone())
    }

    /// Remembers `digest` of the file `identity` names, read just now,
    /// unless it changed too lately to be told apart from a next change.
    pub(super) fn remember(&self, identity: FileIdentity, digest: String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now.saturating_sub(identity.changed.0) <= SETTLED_AFTER_SECS {
            return;
        }
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_DIGESTS_KEPT {
            known.clear();
        }
        known.insert(identity.inode, (identity, digest));
    }
}

/// Refuses anything that is not a WebAssembly component with a message that
/// says what it is instead.
pub(super) fn check_is_component(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!(
            "not a WebAssembly file (no `\\0asm` header); expected a component built for wasm32-wasip2"
        );
    }
    // Layer field: 0 for core modules, 1 for components.
    if bytes[6..8] == [0, 0] {
        bail!(
            "this is a core WebAssembly module, not a component; build it for wasm32-wasip2 or wrap it with `wasm-tools component new`"
        );
    }
    Ok(())
}

/// Refuses open `file` (opened as `path`) unless it lies in directory
/// `root`, every link followed.
fn check_within(file: &std::fs::File, path: &Path, root: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let outside = || {
        anyhow::anyhow!(
            "component {} lies outside the app's directory {}: an app served by `berth serve` runs components from its own directory only",
            path.display(),
            root.display()
        )
    };
    let root = std::fs::canonicalize(root).map_err(|_| outside())?;
    let actual = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .with_context(|| format!("cannot tell where component {} lies", path.display()))?;
    if !actual.starts_with(&root) {
        return Err(outside());
    }
    let links = file.metadata().map(|m| m.nlink()).unwrap_or(0);
    if links > 1 {
        // A hard link has no one place: it may be another tenant's file
        // too, whatever directory this name lies in.
        anyhow::bail!(
            "component {} is a hard link ({links} names): an app served by `berth serve` runs components that are its own files only",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(len: u64, changed_secs_ago: i64) -> FileIdentity {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        FileIdentity {
            inode: (1, 2),
            len,
            modified: (now - 100, 0),
            changed: (now - changed_secs_ago, 0),
        }
    }

    #[test]
    fn a_digest_is_known_only_for_the_file_as_it_was_read() {
        let known = KnownDigests::default();
        let read = identity(10, 60);
        assert_eq!(known.get(&read), None);
        known.remember(read.clone(), "d".into());
        assert_eq!(known.get(&read).as_deref(), Some("d"));
        // Written since: another size or change time is another file.
        assert_eq!(
            known.get(&FileIdentity {
                len: 11,
                ..read.clone()
            }),
            None
        );
        let changed = (read.changed.0 + 30, 0);
        assert_eq!(known.get(&FileIdentity { changed, ..read }), None);
        // Changed a moment ago: a next write could keep its times.
        let fresh = KnownDigests::default();
        let just_written = identity(10, 0);
        fresh.remember(just_written.clone(), "d".into());
        assert_eq!(fresh.get(&just_written), None);
    }

    #[test]
    fn only_a_bounded_regular_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let (file, _) = open_component(&path, 100, Some(dir.path())).unwrap();
        assert_eq!(read_opened(file, &path, 100).unwrap().len(), 100);
        let err = open_component(&path, 99, None).unwrap_err().to_string();
        assert!(err.contains("larger than this host accepts"), "{err}");
        let err = open_component(dir.path(), 100, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
