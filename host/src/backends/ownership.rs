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
/// `{app}` replaced by the app's name ([`substitute`]), kept apart from
/// every other app's data ([`keep_apart`]; `own_state` is the app's state
/// directory, `<state>/<app>`; `tenant_dir`, on `berth serve`, the app's
/// own directory, which its tenant writes), then claimed for the app
/// ([`claim`]), or on a dry run (`claim` false) only checked against an
/// existing claim. Call it before the backend opens the path. Errors are
/// messages for the caller to prefix with the host-config file and key.
pub(super) fn app_path(
    raw: &Path,
    app: &str,
    kind: PathKind,
    own_state: &Path,
    tenant_dir: Option<&Path>,
    claim: bool,
) -> Result<PathBuf, String> {
    // Components, not text: `/srv/avatars/` and `/srv/avatars/.` are
    // `/srv/avatars`, whose link-ness and marker are what is checked.
    let path: PathBuf = substitute(raw, app)?.components().collect();
    if kind == PathKind::File {
        refuse_sqlite_side_file(&path)?;
    }
    let resolved = keep_apart(&path, app, own_state)?;
    if let Some(dir) = tenant_dir {
        refuse_tenant_directory(&path, &resolved, dir, own_state)?;
    }
    let fix = suggestion(raw, kind);
    if !claim {
        return match owner_of(&path)? {
            Some(owner) if owner != app => Err(claimed_by_other(&path, &owner, app, &fix)),
            _ => Ok(path),
        };
    }
    self::claim(&path, app, &fix)?;
    remember_claim(resolved, app);
    Ok(path)
}

/// Refuses a path that overlaps the directory of apps of `berth serve`
/// (the parent of `tenant_dir`, the app's own): tenants write there, and
/// could turn a part of the path into a link to another app's data after
/// it was checked, or add an app by writing a manifest. The path as
/// written and as resolved are both compared with the directory as named
/// and as resolved, and with every app directory there that is a link to
/// a release elsewhere. The host's state directory may lie in the
/// directory of apps under a dot-name no app can take (`.berth/`, the
/// default on `berth serve`): tenants do not write it, and [`keep_apart`]
/// rules paths in it.
fn refuse_tenant_directory(
    path: &Path,
    resolved: &Path,
    tenant_dir: &Path,
    own_state: &Path,
) -> Result<(), String> {
    let absolute = |p: &Path| {
        std::path::absolute(p)
            .map(|p| p.components().collect::<PathBuf>())
            .map_err(|e| format!("cannot resolve `{}`: {e}", p.display()))
    };
    let apps = absolute(tenant_dir)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let releases = linked_app_directories(&apps);
    let apps_both = [self::resolved(&apps)?, apps];
    let mut tenants_write = apps_both.to_vec();
    tenants_write.extend(releases.iter().cloned());
    let state_root = own_state.parent().unwrap_or(own_state);
    let state_roots = [self::resolved(state_root)?, absolute(state_root)?];
    let beside = |root: &Path| {
        apps_both
            .iter()
            .all(|apps| state_beside_apps(root, apps, &releases))
    };
    for written in [absolute(path)?, resolved.to_path_buf()] {
        let in_state = state_roots
            .iter()
            .any(|root| written.starts_with(root) && beside(root));
        let overlaps = tenants_write
            .iter()
            .find(|dir| (written.starts_with(dir) && !in_state) || dir.starts_with(&written));
        if let Some(dir) = overlaps {
            return Err(format!(
                "`{}` overlaps `{}`, which tenants write (a link placed there could lead the path into another app's data); give a path outside the directory of apps",
                path.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Whether a state directory `root` lies where no tenant writes: it
/// neither holds nor lies in `apps`, the directory of apps, but under a
/// dot-name there (app names have no dot), and it is apart from every
/// release an app's directory links to (`releases`).
pub(super) fn state_beside_apps(root: &Path, apps: &Path, releases: &[PathBuf]) -> bool {
    let dot_named = root.strip_prefix(apps).is_ok_and(|below| {
        below
            .components()
            .next()
            .is_some_and(|first| first.as_os_str().as_bytes().starts_with(b"."))
    });
    let clear_of_apps = !apps.starts_with(root) && (!root.starts_with(apps) || dot_named);
    clear_of_apps
        && releases
            .iter()
            .all(|release| !root.starts_with(release) && !release.starts_with(root))
}

/// The targets of the app directories in `apps` that are links (to a
/// release elsewhere, say), which their tenants write too. Dot-names are
/// no apps' (a `.berth` linked to another disk is the host's).
pub(super) fn linked_app_directories(apps: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(apps) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| e.path().canonicalize().ok())
        .collect()
}

/// The app a marker says owns `path`, if it has one.
fn owner_of(path: &Path) -> Result<Option<String>, String> {
    let marker = marker_of(path)?;
    if marker.exists() {
        read_owner(&marker).map(Some)
    } else {
        Ok(None)
    }
}

/// The error for app `app` asking for `path`, which `owner` owns.
fn claimed_by_other(path: &Path, owner: &str, app: &str, fix: &str) -> String {
    format!(
        "`{}` belongs to app `{}` (its marker `{}` says so), so app `{app}` may not use it; give each app its own path, e.g. `{fix}`",
        path.display(),
        owner.escape_debug(),
        marker_of(path).unwrap_or_default().display(),
    )
}

/// What the host keeps in an app's state directory `<state>/<app>/`: the
/// default places of its stores, its blob writes in progress (which the
/// host removes once a day old), its sent mail and the embedded broker's
/// queue (`messaging.db`, with SQLite's side files and a lock).
const HOST_MANAGED: [&str; 6] = ["sql", "kv", "blob", "tmp", "email", "messaging.db*"];

/// Whether `path` lies in `own_state` (an app's state directory) without
/// holding or lying in anything the host keeps there ([`HOST_MANAGED`]).
fn beside_the_hosts_own(path: &Path, own_state: &Path) -> bool {
    let Ok(below) = path.strip_prefix(own_state) else {
        return false;
    };
    let Some(first) = below.components().next() else {
        return false; // the app's state directory itself
    };
    let first = first.as_os_str().as_bytes();
    !HOST_MANAGED
        .iter()
        .any(|managed| match managed.strip_suffix('*') {
            Some(stem) => first.starts_with(stem.as_bytes()),
            None => first == managed.as_bytes(),
        })
}

/// The files SQLite keeps beside a database `x`: `x-wal`, `x-shm` and
/// `x-journal`.
const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Refuses a database path named like another database's side file:
/// with `/srv/db/{app}`, app `shop-wal` would get `/srv/db/shop-wal`, app
/// `shop`'s write-ahead log.
fn refuse_sqlite_side_file(path: &Path) -> Result<(), String> {
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    match SQLITE_SIDE_FILES
        .iter()
        .find(|suffix| name.ends_with(suffix.as_bytes()))
    {
        Some(suffix) => Err(format!(
            "`{}` ends in `{suffix}`, as SQLite names the side files of another database; give the database a name that does not",
            path.display()
        )),
        None => Ok(()),
    }
}

/// Paths claimed in this process, resolved, with their apps. The markers
/// show who owns a path, but not that a path holds another app's deep in
/// its tree; this list does, for every app this process loaded.
static CLAIMED: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// How many levels down, and how many entries at most, a directory about
/// to be claimed for the first time is searched for other apps' markers.
const SEARCH_DEPTH: usize = 3;
const SEARCH_ENTRIES: usize = 100_000;

fn claimed() -> std::sync::MutexGuard<'static, Vec<(PathBuf, String)>> {
    // The list holds no invariant a panic could break.
    CLAIMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remember_claim(path: PathBuf, app: &str) {
    let mut claimed = claimed();
    if !claimed.iter().any(|(p, a)| *p == path && a == app) {
        claimed.push((path, app.to_owned()));
    }
}

/// Refuses a custom path of `app` that would reach what is not the app's:
///
/// - the host's state directory (every app's state and the URL-signing
///   key): a path that holds it, or lies in it outside `own_state`, or in
///   `own_state` holds or lies in what the host keeps there
///   ([`HOST_MANAGED`]);
/// - another app's claimed path, one inside the other: `/srv/avatars`
///   for app `avatars` holds `/srv/avatars/shop` of app `shop` (the same
///   path is [`claim`]'s to refuse). Found by the markers of the path's
///   parents, by the paths this process claimed, and, for a directory
///   claimed for the first time, by the markers in it, [`SEARCH_DEPTH`]
///   levels down.
///
/// Paths are compared after `.` and `..` are resolved, and the links of
/// their existing part. Returns the path so resolved.
pub(super) fn keep_apart(path: &Path, app: &str, own_state: &Path) -> Result<PathBuf, String> {
    keep_apart_searching(path, app, own_state, SEARCH_ENTRIES)
}

/// [`keep_apart`], reading at most `entries` in the search for markers.
fn keep_apart_searching(
    path: &Path,
    app: &str,
    own_state: &Path,
    entries: usize,
) -> Result<PathBuf, String> {
    // A link as the last component would leave the marker beside the
    // link and the data elsewhere, where no marker is looked for.
    let absolute = std::path::absolute(path)
        .map_err(|e| format!("cannot resolve `{}`: {e}", path.display()))?;
    if std::fs::symlink_metadata(&absolute).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!(
            "`{}` is a symbolic link; give the path it points to",
            path.display()
        ));
    }
    let own_state = resolved(own_state)?;
    let resolved = resolved(path)?;
    if let Some(state_root) = own_state.parent() {
        if state_root.starts_with(&resolved) {
            return Err(format!(
                "`{}` holds the host's state directory `{}` (every app's data and the URL-signing key); give the app a path outside it",
                path.display(),
                state_root.display()
            ));
        }
        if resolved.starts_with(state_root) && !beside_the_hosts_own(&resolved, &own_state) {
            return Err(format!(
                "`{}` lies in the host's state directory `{}`, among the files the host keeps there (every other app's, and in app `{app}`'s own `{}`: {}); give a path outside the state directory, or one under a new name in `{}`",
                path.display(),
                state_root.display(),
                own_state.display(),
                HOST_MANAGED.join(", "),
                own_state.display()
            ));
        }
    }
    for (other, owner) in claimed().iter() {
        let nested =
            other != &resolved && (other.starts_with(&resolved) || resolved.starts_with(other));
        // A path handed on (its data and marker removed) is no one's now.
        if owner != app && nested && marker_names(other, owner) {
            return Err(overlap(path, other, owner));
        }
    }
    for parent in resolved.ancestors().skip(1) {
        if parent.parent().is_none() {
            break;
        }
        let marker = marker_of(parent)?;
        if marker.exists() {
            let owner = read_owner(&marker)?;
            if owner != app {
                return Err(overlap(path, parent, &owner));
            }
        }
    }
    if resolved.is_dir() && !marker_of(&resolved)?.exists() {
        let mut budget = entries;
        if !search_markers(path, &resolved, app, SEARCH_DEPTH, &mut budget)? {
            return Err(format!(
                "`{}` holds more than {entries} entries within {SEARCH_DEPTH} levels, too many to check that no other app's data lies in it; give app `{app}` an empty directory, or one with fewer entries",
                path.display()
            ));
        }
    }
    Ok(resolved)
}

/// The error for `path`, which holds or lies in `other`, of app `owner`.
fn overlap(path: &Path, other: &Path, owner: &str) -> String {
    format!(
        "`{}` overlaps `{}`, which belongs to app `{}`: one lies inside the other, so each app could reach the other's data; give each app a path of its own that holds no other",
        path.display(),
        other.display(),
        owner.escape_debug()
    )
}

/// Whether the marker of `path` still names `owner`.
fn marker_names(path: &Path, owner: &str) -> bool {
    marker_of(path)
        .ok()
        .and_then(|m| std::fs::read_to_string(m).ok())
        .is_some_and(|text| text.trim() == owner)
}

/// Looks for markers of apps other than `app` in `dir`, `depth` levels
/// down, reading at most `budget` entries; `false` when there were more,
/// so the search is incomplete. Links are not followed. Each directory's own entries are checked
/// before any below it, so a marker beside a big directory is not missed
/// for the entries in it. A directory this process cannot read is
/// skipped: no backend of it can reach what is inside either.
fn search_markers(
    path: &Path,
    dir: &Path,
    app: &str,
    depth: usize,
    budget: &mut usize,
) -> Result<bool, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(true);
    };
    let mut below = Vec::new();
    for entry in entries.flatten() {
        if *budget == 0 {
            return Ok(false);
        }
        *budget -= 1;
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        if kind.is_file() && name.as_bytes().ends_with(MARKER_SUFFIX.as_bytes()) {
            let owner = read_owner(&entry.path())?;
            if owner != app {
                let claimed = &name.as_bytes()[..name.len() - MARKER_SUFFIX.len()];
                let claimed = dir.join(std::ffi::OsStr::from_bytes(claimed));
                return Err(overlap(path, &claimed, &owner));
            }
        } else if kind.is_dir() && depth > 1 {
            below.push(entry.path());
        }
    }
    for dir in below {
        if !search_markers(path, &dir, app, depth - 1, budget)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `path` absolute, as the system opens it: each link followed where it
/// stands, so a `..` after a link leaves the link's target, not the link
/// (`/srv/link/../x` with `link -> /a/b` is `/a/x`). Past the existing
/// part, `.` and `..` are taken as written.
pub(super) fn resolved(path: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let absolute = std::path::absolute(path)
        .map_err(|e| format!("cannot resolve `{}`: {e}", path.display()))?;
    let mut real = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                real.pop();
            }
            Component::CurDir => {}
            Component::Normal(name) => {
                real.push(name);
                // Only the last part can be new: what precedes it was
                // made free of links by the steps before.
                if let Ok(canonical) = real.canonicalize() {
                    real = canonical;
                }
            }
            other => real.push(other),
        }
    }
    Ok(real)
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
    // Created whole or not at all: an empty marker, which a crash between
    // creating and writing it used to leave, refused every app for good.
    match crate::state_file::create_once(&marker, format!("{app}\n").as_bytes(), 0o644) {
        Ok(true) => Ok(()),
        Ok(false) => {
            let owner = read_owner(&marker)?;
            if owner == app {
                Ok(())
            } else {
                Err(claimed_by_other(path, &owner, app, fix))
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
#[path = "ownership_tests.rs"]
mod tests;
