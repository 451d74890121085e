//! The compiled components kept: in memory, the ones loaded lately (by
//! digest, shared between apps); on disk, the cache, its entries written
//! whole or not at all, other engines' entries of a component removed, and
//! the cache kept within its size by removing the entries used least
//! lately.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::component::Component;

/// `$BERTH_CACHE_DIR`, else `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`,
/// else (a service without a home) `/var/cache/berth`: never the shared
/// temporary directory, where another user could have made it first.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("berth")
}

/// Makes the cache directory `dir` if it is missing (owner-only), and
/// refuses one another user owns or others may write to: its files are
/// mapped and run as the host's own native code, trusted as they are
/// (wasmtime checks their header, not their code). `false`: no cache is
/// used (every load compiles), as when the directory cannot be made or a
/// directory above it lets another user put other files in its place.
pub(super) fn secure_cache_dir(dir: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        // As before: no cache (each load compiles), not no host.
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the compiled-component cache; components are compiled at every load");
        return Ok(false);
    }
    if let Some(why) = unsafe_ancestor(dir) {
        tracing::warn!(dir = %dir.display(), "the compiled-component cache is not used, as another user could replace it: {why}; components are compiled at every load (set [engine] cache_dir or BERTH_CACHE_DIR to a directory only this user and root can change)");
        return Ok(false);
    }
    let meta = std::fs::metadata(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the compiled-component cache `{}`: {e}",
            dir.display()
        )
    })?;
    if !meta.is_dir() || meta.uid() != effective_uid() {
        anyhow::bail!(
            "the compiled-component cache `{}` must be a directory of this user's (it is owned by \
             uid {}): its files run as the host's own code; set [engine] cache_dir or \
             BERTH_CACHE_DIR to one",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        // Ours, made by an older Berth under the umask: others' write
        // taken away, not the host refused.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            anyhow::anyhow!(
                "the compiled-component cache `{}` may be written by others (mode {:o}) and \
                 cannot be made owner-only: {e}",
                dir.display(),
                meta.mode() & 0o7777
            )
        })?;
        tracing::warn!(dir = %dir.display(), "the compiled-component cache could be written by others; it was made owner-only");
    }
    Ok(true)
}

/// Why another user (not root) could swap `dir` for a directory of theirs,
/// if one could: a directory above it, as given or with its links
/// followed, that such a user owns, that others may write to without the
/// sticky bit (with it, as on `/tmp`, only an entry's owner may move the
/// entry), or that a group other than this process's own may write to
/// (a home under a umask of 002 is its user's private group's). One that
/// cannot be checked counts as unsafe.
fn unsafe_ancestor(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let given = match std::path::absolute(dir) {
        Ok(path) => path,
        Err(e) => return Some(format!("`{}` cannot be made absolute: {e}", dir.display())),
    };
    let followed = match std::fs::canonicalize(dir) {
        Ok(path) => path,
        Err(e) => return Some(format!("`{}` cannot be resolved: {e}", dir.display())),
    };
    let (uid, gid) = (effective_uid(), effective_gid());
    let mut above = given
        .ancestors()
        .skip(1)
        .chain(followed.ancestors().skip(1));
    above.find_map(|ancestor| {
        let meta = match std::fs::metadata(ancestor) {
            Ok(meta) => meta,
            Err(e) => return Some(format!("`{}` cannot be checked: {e}", ancestor.display())),
        };
        let (mode, sticky) = (meta.mode(), meta.mode() & 0o1000 != 0);
        let group_may_write = mode & 0o020 != 0 && meta.gid() != gid;
        if meta.uid() != 0 && meta.uid() != uid {
            Some(format!(
                "`{}` is owned by uid {}",
                ancestor.display(),
                meta.uid()
            ))
        } else if (mode & 0o002 != 0 || group_may_write) && !sticky {
            Some(format!(
                "`{}` may be written by others (mode {:o}, group {}, no sticky bit)",
                ancestor.display(),
                mode & 0o7777,
                meta.gid()
            ))
        } else {
            None
        }
    })
}

#[expect(unsafe_code, reason = "geteuid(2) takes nothing and cannot fail")]
fn effective_uid() -> u32 {
    // SAFETY: no arguments, no memory; always succeeds.
    unsafe { libc::geteuid() }
}

#[expect(unsafe_code, reason = "getegid(2) takes nothing and cannot fail")]
fn effective_gid() -> u32 {
    // SAFETY: no arguments, no memory; always succeeds.
    unsafe { libc::getegid() }
}

/// Components kept for reuse by digest (the most recently used
/// [`LOADED_COMPONENTS_KEPT`]); an app holds its own reference, so evicting
/// one here never unloads it.
#[derive(Default)]
pub(super) struct LoadedComponents {
    by_digest: std::collections::HashMap<String, (Component, u64)>,
    uses: u64,
}

/// How many distinct components the in-memory reuse keeps.
const LOADED_COMPONENTS_KEPT: usize = 256;

impl LoadedComponents {
    pub(super) fn get(&mut self, digest: &str) -> Option<Component> {
        self.uses += 1;
        let uses = self.uses;
        self.by_digest.get_mut(digest).map(|(c, used)| {
            *used = uses;
            c.clone()
        })
    }

    pub(super) fn insert(&mut self, digest: String, component: Component) {
        self.uses += 1;
        if self.by_digest.len() >= LOADED_COMPONENTS_KEPT {
            let oldest = self
                .by_digest
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| d.clone());
            if let Some(oldest) = oldest {
                self.by_digest.remove(&oldest);
            }
        }
        self.by_digest.insert(digest, (component, self.uses));
    }
}

/// Removes the artifacts of `digest` compiled by other engines than the
/// one that wrote `current`.
pub(super) fn remove_stale_artifacts(dir: &Path, digest: &str, current: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{digest}-");
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path != current && name.starts_with(&prefix) && name.ends_with(".cwasm") {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a stale compiled component")
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot remove a stale compiled component")
                }
            }
        }
    }
}

/// Writes `path` through a temporary file in its directory and a rename,
/// so a reader never finds it half written.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    // A write cut short (a full disk) must not leave tens of megabytes
    // behind at every compile, nor a rename that failed.
    // Synced before the rename: after a power cut the entry is whole or
    // absent, never a short file under the entry's name.
    let written = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(&tmp)
    .and_then(|mut file| {
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Marks the cache entry `path` used now: its modification time is what
/// [`trim_cache`] goes by (access times are often not kept).
pub(super) fn mark_used(path: &Path) {
    let marked = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = marked {
        tracing::debug!(path = %path.display(), error = %e, "cannot mark a compiled component used");
    }
}

/// Removes the entries of the cache in `dir` used least lately (see
/// [`mark_used`]) until it holds at most `max` bytes, never `current`, the
/// entry just written. Without it, tenants shipping new components (each
/// change of a component's bytes is one) would fill the disk the host
/// runs on. An entry removed while an app uses it costs a compile at the
/// next start, nothing now: the running code is mapped, and a mapped
/// file stays until it is unmapped.
pub(super) fn trim_cache(dir: &Path, current: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut held = 0u64;
    let mut removable = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            remove_if_abandoned(&entry);
            continue;
        }
        if path.extension().is_none_or(|e| e != "cwasm") {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        held = held.saturating_add(meta.len());
        if path != current {
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            removable.push((used, meta.len(), path));
        }
    }
    if held <= max {
        return;
    }
    removable.sort();
    let mut removed = 0usize;
    for (_, len, path) in removable {
        if held <= max {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                held = held.saturating_sub(len);
                removed += 1;
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove a compiled component from the cache")
            }
        }
    }
    tracing::info!(
        dir = %dir.display(),
        removed,
        held_mib = held >> 20,
        "the compiled-component cache passed [engine] cache_max_mb; its entries used least lately were removed"
    );
}

/// Removes a temporary file of [`write_atomically`] untouched for an hour:
/// left by a process killed as it wrote an entry (one written now is
/// younger), it would hold its megabytes for good, outside the bound.
fn remove_if_abandoned(entry: &std::fs::DirEntry) {
    let untouched = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|idle| idle > std::time::Duration::from_secs(3600));
    if untouched {
        let _ = std::fs::remove_file(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_others_may_write_to_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/berth");
        assert!(secure_cache_dir(&made).unwrap(), "usable");
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "made owner-only");
        // One an older Berth made under the umask is made owner-only.
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(secure_cache_dir(&made).unwrap());
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "others' write taken away");
    }

    #[test]
    fn a_cache_under_a_directory_others_may_change_is_not_used() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let below = shared.join("mine/berth");
        assert!(
            !secure_cache_dir(&below).unwrap(),
            "others could swap `mine`"
        );
        // Reached through a link from a safe place: still not used.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&below, &link).unwrap();
        assert!(
            !secure_cache_dir(&link).unwrap(),
            "the link's target is unsafe"
        );
        // The sticky bit (as on /tmp) keeps others from moving `mine`.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(secure_cache_dir(&below).unwrap());
        assert!(secure_cache_dir(&link).unwrap());
        // Writable by this process's own group: used.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(secure_cache_dir(&below).unwrap(), "the process's own group");
        // By another group (only a privileged test run can make one).
        let other_group = effective_gid().wrapping_add(1);
        if std::os::unix::fs::chown(&shared, None, Some(other_group)).is_ok() {
            assert!(!secure_cache_dir(&below).unwrap(), "another group");
        }
    }

    #[test]
    fn the_cache_keeps_within_its_size_by_removing_the_least_used() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |name: &str, age_s: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::now() - std::time::Duration::from_secs(age_s))
                .unwrap();
            path
        };
        let oldest = entry("a-e.cwasm", 300);
        let used_lately = entry("b-e.cwasm", 200);
        let middle = entry("c-e.cwasm", 100);
        let current = entry("d-e.cwasm", 400);
        std::fs::write(dir.path().join("other.txt"), vec![0u8; 1000]).unwrap();
        mark_used(&used_lately);
        trim_cache(dir.path(), &current, 250);
        assert!(!oldest.exists() && !middle.exists());
        assert!(used_lately.exists(), "used lately");
        assert!(current.exists(), "just written, though the oldest");
        assert!(dir.path().join("other.txt").exists(), "not an entry");
        trim_cache(dir.path(), &current, 1000);
        assert!(used_lately.exists(), "within the size: nothing removed");
        // A write abandoned an hour ago goes, one under way stays.
        let abandoned = entry(".tmp-1", 7200);
        let writing = entry(".tmp-2", 5);
        trim_cache(dir.path(), &current, 1000);
        assert!(!abandoned.exists() && writing.exists());
    }
}
