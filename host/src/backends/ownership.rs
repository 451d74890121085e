//! Custom paths of the embedded backends: `[blob.<name>] root`,
//! `[kv.<name>] path` and `[sql.<name>] path`. A host-config section applies
//! to its logical name in every app the host loads, so a path given there
//! would be shared by every app granted that name. Two rules keep apps apart:
//!
//! - `{app}` in such a path is replaced by the app's name, so
//!   `/srv/avatars/{app}` is a directory per app;
//! - a path (after that replacement) belongs to the first app that uses it.
//!   A marker file beside it, `<path>.berth-owner` (`/srv/avatars` has
//!   `/srv/avatars.berth-owner`), holds that app's name; any other app is
//!   refused. The marker is created once and never overwritten.

use std::ffi::OsString;
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The placeholder a custom path may hold, replaced by the app's name.
pub(super) const APP_PLACEHOLDER: &str = "{app}";

/// Appended to a custom path to name its ownership marker.
pub(super) const MARKER_SUFFIX: &str = ".berth-owner";

/// How often an empty marker is read again before it is refused: another
/// host or app may have created it and not yet written its name.
const MARKER_READS: u32 = 5;

/// The wait between two reads of an empty marker.
const MARKER_RETRY: Duration = Duration::from_millis(20);

/// What a custom path names; it only shapes the fix an error suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathKind {
    /// A directory (a blob container's `root`).
    Directory,
    /// A file (a SQLite database's `path`).
    File,
}

/// The path app `app` uses for the custom path `raw` of the host config:
/// `{app}` replaced by the app's name ([`substitute`]), then claimed for the
/// app ([`claim`]). Call it before the backend opens the path. Errors are
/// messages for the caller to prefix with the host-config file and key.
pub(super) fn app_path(raw: &Path, app: &str, kind: PathKind) -> Result<PathBuf, String> {
    let path = substitute(raw, app)?;
    claim(&path, app, &suggestion(raw, kind))?;
    Ok(path)
}

/// `raw` with every `{app}` replaced by `app`. Any other `{` or `}` is an
/// error, so a typo such as `{name}` or `{App}` is not taken literally.
/// `app` must be a manifest's app name (`[A-Za-z0-9_-]`, checked when the
/// manifest is parsed and again here), so it adds no `/` or `..`.
pub(super) fn substitute(raw: &Path, app: &str) -> Result<PathBuf, String> {
    let safe = !app.is_empty()
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !safe {
        return Err(format!("app name {app:?} cannot be put in a path"));
    }
    let placeholder = APP_PLACEHOLDER.as_bytes();
    let mut rest = raw.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(rest.len() + app.len());
    while let Some((&first, tail)) = rest.split_first() {
        if rest.starts_with(placeholder) {
            out.extend_from_slice(app.as_bytes());
            rest = &rest[placeholder.len()..];
        } else if first == b'{' || first == b'}' {
            return Err(format!(
                "`{}`: `{{` and `}}` may only form the placeholder `{{app}}` (the app's name)",
                raw.display()
            ));
        } else {
            out.push(first);
            rest = tail;
        }
    }
    Ok(PathBuf::from(OsString::from_vec(out)))
}

/// The ownership marker of `path`: `<path>.berth-owner`, beside it (a
/// trailing `/` or `/.` is ignored, so the marker is never inside a
/// directory it guards).
pub(super) fn marker_of(path: &Path) -> Result<PathBuf, String> {
    let Some(name) = path.file_name() else {
        return Err(format!(
            "`{}` must end in a file or directory name",
            path.display()
        ));
    };
    let mut marker = name.to_os_string();
    marker.push(MARKER_SUFFIX);
    Ok(path.with_file_name(marker))
}

/// Claims `path` for `app`. Without a marker, one is created (with its
/// parent directory) holding `app`; `create_new` makes two apps racing for
/// the path agree on one owner. A marker naming `app` is accepted; one
/// naming another app is an error naming the path, the owner and `fix`.
pub(super) fn claim(path: &Path, app: &str, fix: &str) -> Result<(), String> {
    let marker = marker_of(path)?;
    if let Some(dir) = marker.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory `{}`: {e}", dir.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(mut file) => {
            let written = file
                .write_all(format!("{app}\n").as_bytes())
                .and_then(|()| file.sync_all());
            if let Err(e) = written {
                drop(file);
                // An empty marker would refuse every app; leave none.
                let _ = std::fs::remove_file(&marker);
                return Err(format!("cannot write `{}`: {e}", marker.display()));
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let owner = read_owner(&marker)?;
            if owner == app {
                Ok(())
            } else {
                Err(format!(
                    "`{}` belongs to app `{}` (its marker `{}` says so), so app `{app}` may not use it; give each app its own path, e.g. `{fix}`",
                    path.display(),
                    owner.escape_debug(),
                    marker.display(),
                ))
            }
        }
        Err(e) => Err(format!("cannot create `{}`: {e}", marker.display())),
    }
}

/// The app name a marker holds, reading an empty marker again a few times
/// (its creator may not have written it yet).
fn read_owner(marker: &Path) -> Result<String, String> {
    for attempt in 1..=MARKER_READS {
        let text = std::fs::read_to_string(marker)
            .map_err(|e| format!("cannot read `{}`: {e}", marker.display()))?;
        let owner = text.trim();
        if !owner.is_empty() {
            return Ok(owner.to_string());
        }
        if attempt < MARKER_READS {
            std::thread::sleep(MARKER_RETRY);
        }
    }
    Err(format!(
        "`{}` names no app; remove it if no app owns the path",
        marker.display()
    ))
}

/// The per-app spelling of `raw` an error suggests: `<raw>/{app}` for a
/// directory, `<dir>/{app}/<file>` for a file.
fn suggestion(raw: &Path, kind: PathKind) -> String {
    let path = match (kind, raw.parent(), raw.file_name()) {
        (PathKind::File, Some(dir), Some(file)) => dir.join(APP_PLACEHOLDER).join(file),
        _ => raw.join(APP_PLACEHOLDER),
    };
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_marker_is_created_for_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/avatars");
        claim(&root, "alice", "fix").unwrap();
        let marker = dir.path().join("nested/avatars.berth-owner");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "alice\n");
        // Only the marker: the backend creates the path itself.
        assert!(!root.exists());
    }

    #[test]
    fn same_app_is_accepted_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("main.db");
        claim(&db, "alice", "fix").unwrap();
        claim(&db, "alice", "fix").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("main.db.berth-owner")).unwrap(),
            "alice\n"
        );
    }

    #[test]
    fn other_app_is_refused_naming_both_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("avatars");
        let raw = root.clone();
        claim(&root, "alice", &suggestion(&raw, PathKind::Directory)).unwrap();
        let err = app_path(&raw, "bob", PathKind::Directory).unwrap_err();
        assert!(err.contains("`alice`"), "{err}");
        assert!(err.contains("`bob`"), "{err}");
        assert!(err.contains(&root.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("{}/{{app}}", root.display())),
            "{err}"
        );
        // The marker is never overwritten.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("avatars.berth-owner")).unwrap(),
            "alice\n"
        );
    }

    #[test]
    fn trailing_slash_keeps_the_marker_beside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = PathBuf::from(format!("{}/avatars/", dir.path().display()));
        assert_eq!(
            marker_of(&root).unwrap(),
            dir.path().join("avatars.berth-owner")
        );
        assert!(marker_of(Path::new("/")).is_err());
    }

    #[test]
    fn placeholder_gives_each_app_its_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("{app}");
        let a = app_path(&raw, "alice", PathKind::Directory).unwrap();
        let b = app_path(&raw, "bob", PathKind::Directory).unwrap();
        assert_eq!(a, dir.path().join("alice"));
        assert_eq!(b, dir.path().join("bob"));
        assert_eq!(
            substitute(Path::new("/db/{app}/x-{app}.db"), "shop_1").unwrap(),
            Path::new("/db/shop_1/x-shop_1.db")
        );
        assert_eq!(
            substitute(Path::new("/srv/avatars"), "shop").unwrap(),
            Path::new("/srv/avatars")
        );
    }

    #[test]
    fn other_braces_are_refused() {
        for raw in [
            "/srv/{name}",
            "/srv/{App}",
            "/srv/{app",
            "/srv/app}",
            "/srv/{}",
        ] {
            let err = substitute(Path::new(raw), "shop").unwrap_err();
            assert!(err.contains(raw) && err.contains("{app}"), "{raw}: {err}");
        }
        assert!(substitute(Path::new("/srv/{app}"), "../etc").is_err());
        assert!(substitute(Path::new("/srv/{app}"), "").is_err());
    }

    #[test]
    fn file_suggestion_puts_the_app_in_the_directory() {
        assert_eq!(
            suggestion(Path::new("/var/lib/berth/main.db"), PathKind::File),
            "/var/lib/berth/{app}/main.db"
        );
        assert_eq!(
            suggestion(Path::new("/srv/avatars"), PathKind::Directory),
            "/srv/avatars/{app}"
        );
    }
}
