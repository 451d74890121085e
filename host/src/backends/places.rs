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

#[cfg(test)]
mod tests {
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
