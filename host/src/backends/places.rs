//! Where an app's embedded stores live: its state directory, or the
//! operator's custom paths (checked and claimed by [`super::ownership`]),
//! or on a dry run a scratch directory; and, on `berth serve`, that none of
//! them lies where tenants write.

use std::path::{Path, PathBuf};

use super::ownership::{self, PathKind};
use super::settings::Origin;

/// Refuses, on `berth serve`, a state directory `state_root` where tenants
/// write: one that holds the directory of apps `apps`, or lies in it other
/// than under a dot-name (`.berth/`, the default), which no app can take,
/// or overlaps a release an app's directory there links to.
/// The app's default stores would otherwise lie in a tenant's directory.
pub fn check_state_beside_apps(state_root: &Path, apps: &Path) -> Result<(), String> {
    let root = ownership::resolved(state_root)?;
    let apps = ownership::resolved(apps)?;
    let releases = ownership::linked_app_directories(&apps);
    if !ownership::state_beside_apps(&root, &apps, &releases) {
        return Err(format!(
            "the state directory `{}` lies where tenants write (the directory of apps `{}`, or an app's directory in it); give `state_dir` outside it, or leave it out for `.berth/` there",
            state_root.display(),
            apps.display()
        ));
    }
    Ok(())
}

/// Where one app's embedded stores live.
pub(super) struct Places<'a> {
    /// The app's state directory, `<state>/<app>`, where the stores go by
    /// default; custom paths are kept apart from the state directory.
    pub(super) state: &'a Path,
    /// Where the stores are opened: `state`, or on a dry run its scratch
    /// directory ([`HostConfig::dry_run`]).
    pub(super) open_in: PathBuf,
    /// On `berth serve`, the app's own directory, which its tenant writes:
    /// no custom path may overlap it.
    pub(super) tenant_dir: Option<&'a Path>,
    /// The custom paths given so far, by key (`blob.files.root`…), as
    /// the system opens them: no two of one app may overlap either.
    pub(super) custom: std::sync::Mutex<Vec<(String, PathBuf)>>,
    /// The host's compiled-component cache (`[engine] cache_dir`): the
    /// host runs the native code it finds there, so no custom path may
    /// overlap it.
    pub(super) cache_dir: PathBuf,
}

impl Places<'_> {
    pub(super) fn dry_run(&self) -> bool {
        self.open_in != self.state
    }
}

/// The path of an embedded backend under `key` (`<section>.path` or
/// `<section>.root`): the host config's `custom` path, with `{app}` replaced
/// and claimed for the app (see [`ownership`]), or else `default` in the
/// app's state directory. A dry run checks a custom path without claiming
/// it, and answers a place in its scratch directory to open instead.
pub(super) fn embedded_path(
    origin: &Origin<'_>,
    key: &str,
    custom: Option<PathBuf>,
    kind: PathKind,
    places: &Places<'_>,
    default: &Path,
) -> anyhow::Result<PathBuf> {
    let Some(raw) = custom else {
        return Ok(places.open_in.join(default));
    };
    // A custom path that spells out the default is the default (the
    // rules for custom paths would refuse it, in the state directory):
    // compared as the system opens them, links and `..` followed.
    let spelt_out = ownership::substitute(&raw, origin.app).and_then(|p| ownership::resolved(&p));
    if let Ok(spelt_out) = spelt_out
        && ownership::resolved(&places.state.join(default)).is_ok_and(|d| d == spelt_out)
    {
        return Ok(places.open_in.join(default));
    }
    // Before the path is claimed: one refused must not stay the app's.
    if let Ok(path) = ownership::substitute(&raw, origin.app) {
        let path = path.components().collect::<PathBuf>();
        keep_off_the_cache(&path, &places.cache_dir).map_err(|m| origin.err(key, m))?;
        keep_custom_paths_apart(origin, key, &path, places)?;
    }
    let claim = !places.dry_run();
    let path = ownership::app_path(
        &raw,
        origin.app,
        kind,
        places.state,
        places.tenant_dir,
        claim,
    )
    .map_err(|m| origin.err(key, m))?;
    Ok(if claim {
        path
    } else {
        places.open_in.join("custom").join(key)
    })
}

/// Refuses a custom path `path` equal to, inside or holding the host's
/// compiled-component cache `cache_dir`: an app that could write there
/// (through a blob container, say) could plant an artifact the host then
/// loads as native code. Compared as written and as the system opens them.
pub(super) fn keep_off_the_cache(path: &Path, cache_dir: &Path) -> Result<(), String> {
    let both = |p: &Path| {
        let resolved = ownership::resolved(p).unwrap_or_else(|_| p.to_path_buf());
        let absolute = std::path::absolute(p)
            .map(|a| a.components().collect::<PathBuf>())
            .unwrap_or_else(|_| p.to_path_buf());
        [resolved, absolute]
    };
    let caches = both(cache_dir);
    for written in both(path) {
        if caches
            .iter()
            .any(|cache| written.starts_with(cache) || cache.starts_with(&written))
        {
            return Err(format!(
                "`{}` overlaps the host's compiled-component cache `{}` ([engine] cache_dir), whose native code the host runs, so no app may write there; give a path outside it",
                path.display(),
                cache_dir.display()
            ));
        }
    }
    Ok(())
}

/// Refuses, on `berth serve`, a compiled-component cache `cache_dir` where
/// tenants write (see [`check_state_beside_apps`]): a tenant could plant
/// an artifact there that the host loads as native code.
pub fn check_cache_beside_apps(cache_dir: &Path, apps: &Path) -> Result<(), String> {
    let cache = ownership::resolved(cache_dir)?;
    let apps = ownership::resolved(apps)?;
    let releases = ownership::linked_app_directories(&apps);
    if !ownership::state_beside_apps(&cache, &apps, &releases) {
        return Err(format!(
            "the compiled-component cache `{}` ([engine] cache_dir) lies where tenants write (the directory of apps `{}`, or an app's directory in it), and the host runs the native code it finds there; give `cache_dir` outside it",
            cache_dir.display(),
            apps.display()
        ));
    }
    Ok(())
}

/// Refuses a custom path `path` (under `key`) equal to, inside or holding
/// another of the same app's: grants are per resource, so a component
/// granted a blob container whose root holds the app's SQLite file, or
/// another container's root, could read and replace their data.
fn keep_custom_paths_apart(
    origin: &Origin<'_>,
    key: &str,
    path: &Path,
    places: &Places<'_>,
) -> anyhow::Result<()> {
    // As the system opens them: a link must not hide an overlap.
    let resolved = ownership::resolved(path).unwrap_or_else(|_| path.to_path_buf());
    let mut custom = places
        .custom
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((other, _)) = custom
        .iter()
        .find(|(_, p)| p.starts_with(&resolved) || resolved.starts_with(p))
    {
        return Err(origin.err(
            key,
            format!(
                "`{}` overlaps the path of `{other}`: one is or lies inside the other, so a component granted one could reach the other's data; give each its own path",
                path.display()
            ),
        ));
    }
    custom.push((key.to_string(), resolved));
    Ok(())
}

/// On a dry run, what a load's rename probe (in the file blob store) would
/// find out about a custom blob `root` (`raw`, checked by
/// [`embedded_path`] already): whether it lies on the filesystem of the
/// app's temporary directory, since a write is renamed from one into the
/// other. Each is judged by its nearest existing directory, where a load
/// would create it.
pub(super) fn check_blob_root_filesystem(
    origin: &Origin<'_>,
    key: &str,
    raw: &Path,
    places: &Places<'_>,
) -> anyhow::Result<()> {
    let Ok(root) = ownership::substitute(raw, origin.app) else {
        return Ok(());
    };
    let tmp = places.state.join("tmp");
    match (mount_of(&root), mount_of(&tmp)) {
        (Some(a), Some(b)) if !a.renames_to(&b) => Err(origin.err(
            key,
            format!(
                "the blob root {} cannot take writes from the temporary directory {}: {}",
                root.display(),
                tmp.display(),
                crate::ports::blob::ACROSS_MOUNTS
            ),
        )),
        _ => Ok(()),
    }
}

/// On a dry run, what a load would find out first (creating the app's
/// state directory `state` and writing its stores there): whether the
/// nearest existing directory on its way is a directory this user may
/// write into.
pub(super) fn check_state_writable(state: &Path) -> anyhow::Result<()> {
    // A relative path's ancestors end at "", not at the working directory.
    let state = std::path::absolute(state).unwrap_or_else(|_| state.to_path_buf());
    let state = state.as_path();
    let Some(existing) = state
        .ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
    else {
        return Ok(());
    };
    if !std::fs::metadata(existing).is_ok_and(|m| m.is_dir()) {
        anyhow::bail!(
            "cannot create state directory {}: `{}` is no directory",
            state.display(),
            existing.display()
        );
    }
    if !writable(existing) {
        anyhow::bail!(
            "cannot {} state directory {}: this user may not write into `{}`",
            if existing == state { "use" } else { "create" },
            state.display(),
            existing.display()
        );
    }
    Ok(())
}

/// Whether this process may create entries in directory `dir`.
#[expect(unsafe_code, reason = "faccessat(2) on a NUL-terminated path")]
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true; // no such path can exist; the load says what is wrong
    };
    // With the effective ids and capabilities (`AT_EACCESS`), as the load's
    // own calls would be judged, not the real ones `access` uses.
    // SAFETY: `path` is a NUL-terminated string that outlives the call,
    // which only reads it.
    let judged = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    match judged {
        0 => true,
        // Older seccomp profiles refuse the `faccessat2` call glibc makes
        // for it: judge with the real ids then, rather than refuse.
        _ => {
            matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM | libc::ENOSYS)
        )
            // SAFETY: as above.
            && unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } == 0
        }
    }
}

/// Where a path lies, as far as `rename(2)` is concerned: it cannot
/// cross filesystems, nor two mounts of one filesystem (bind mounts share
/// a device number, so the device alone would pass them).
#[derive(Debug, PartialEq)]
struct Mount {
    device: u64,
    /// `None` where the kernel does not tell (`statx` before Linux 5.8).
    id: Option<u64>,
}

impl Mount {
    /// Whether a file can be renamed from `self` into `other`.
    fn renames_to(&self, other: &Mount) -> bool {
        self.device == other.device
            && match (self.id, other.id) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// The mount of `path`'s nearest existing ancestor (itself included).
fn mount_of(path: &Path) -> Option<Mount> {
    use std::os::unix::fs::MetadataExt as _;
    let path = std::path::absolute(path).ok()?;
    path.ancestors().find_map(|p| {
        let device = std::fs::metadata(p).ok()?.dev();
        Some(Mount {
            device,
            id: mount_id(p),
        })
    })
}

/// The id of the mount `path` lies on (following links), if the kernel
/// gives it.
#[expect(unsafe_code, reason = "statx(2) on a NUL-terminated path")]
fn mount_id(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statx` is plain integers, for which all zeroes is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stx` a buffer of
    // the right type, both outliving the call.
    let done = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    (done == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

#[cfg(test)]
mod tests {

    #[test]
    fn renames_cross_neither_devices_nor_mounts() {
        use super::Mount;
        let at = |device, id| Mount { device, id };
        assert!(at(1, Some(7)).renames_to(&at(1, Some(7))));
        assert!(!at(1, Some(7)).renames_to(&at(1, Some(8))), "a bind mount");
        assert!(!at(1, None).renames_to(&at(2, None)));
        assert!(
            at(1, None).renames_to(&at(1, Some(8))),
            "unknown: the device decides"
        );
        let here = std::env::temp_dir();
        assert_eq!(
            super::mount_of(&here),
            super::mount_of(&here.join("not/yet/made"))
        );
        assert!(
            super::mount_id(&here).is_some(),
            "Linux 5.8+ gives mount ids"
        );
    }
    #[test]
    fn custom_paths_stay_off_the_compiled_component_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::os::unix::fs::symlink(&cache, dir.path().join("link")).unwrap();
        for refused in [
            cache.clone(),
            cache.join("shop"),
            dir.path().to_path_buf(),
            dir.path().join("link/shop"),
            dir.path().join("other/../cache"),
        ] {
            let err = super::keep_off_the_cache(&refused, &cache).unwrap_err();
            assert!(err.contains("compiled-component cache"), "{err}");
        }
        for accepted in [dir.path().join("blobs"), dir.path().join("cache-shop")] {
            assert_eq!(super::keep_off_the_cache(&accepted, &cache), Ok(()));
        }
        // On serve, the cache itself must not lie where tenants write.
        let apps = dir.path().join("apps");
        std::fs::create_dir_all(&apps).unwrap();
        let err = super::check_cache_beside_apps(&apps.join("cache"), &apps).unwrap_err();
        assert!(err.contains("[engine] cache_dir"), "{err}");
        assert!(super::check_cache_beside_apps(&apps.join(".cache"), &apps).is_ok());
        assert!(super::check_cache_beside_apps(&cache, &apps).is_ok());
    }

    #[test]
    fn state_directories_where_tenants_write_are_refused_on_serve() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("apps");
        let release = dir.path().join("releases/blog-v3");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::create_dir_all(&apps).unwrap();
        std::os::unix::fs::symlink(&release, apps.join("blog")).unwrap();
        for refused in [
            dir.path().to_path_buf(),
            apps.clone(),
            apps.join("state"),
            apps.join("blog"),
            release.join("state"),
        ] {
            let err = super::check_state_beside_apps(&refused, &apps).unwrap_err();
            assert!(err.contains("where tenants write"), "{err}");
        }
        for accepted in [apps.join(".berth"), dir.path().join("state")] {
            let checked = super::check_state_beside_apps(&accepted, &apps);
            assert!(checked.is_ok(), "{}: {checked:?}", accepted.display());
        }
    }
}
