//! What `berth serve` checks of a tenant's directory before it loads the
//! app: that the directory bears the app's name, and that no state an
//! earlier version left inside it is in the way.

use super::*;

/// Refuses a tenant's manifest (`berth serve`) that is not in a directory
/// named as its app. A tenant names itself in its own manifest, but the
/// directory is the operator's: everything the host keys by app name (its
/// state directory and `{app}` paths, its Postgres role and schema, the
/// operator's `[app_config.<app>]` values and upstream credentials, its
/// routes) must follow the operator's name. Otherwise a tenant could take
/// another's name, loaded first after a restart, and with it that app's
/// data and credentials.
pub(crate) fn check_tenant_directory(manifest: &Manifest) -> anyhow::Result<()> {
    // The path as found (`Manifest::load` makes it absolute), not with
    // symlinks resolved: `/srv/apps/shop -> /releases/shop-v42` serves
    // `shop`.
    let dir = manifest
        .file
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str());
    if dir != Some(manifest.name.as_str()) {
        bail!(
            "{}: app `{}` is not served from a directory named `{}`: on `berth serve` an app's directory names it, so that no tenant can take another's name (and with it that app's state, database role, config values and credentials)",
            manifest.file.display(),
            manifest.name,
            manifest.name
        );
    }
    Ok(())
}

/// On `berth serve` an app's state lies outside its own directory (see
/// [`HostConfig::state_root`]), and never where tenants write. State an
/// earlier version left inside it (by default, without `state_dir`) is
/// not silently set aside for empty stores: the app is refused until the
/// operator copies it over. Its tenant could write there, so the advice
/// copies regular files only, never links, which could lead the app into
/// another app's data. (Not on a dry run: a developer's `berth up` state
/// beside the manifest is no concern of `berth check --tenant`.) Nor
/// may the engine's compiled-component cache `engine_cache` lie where
/// tenants write.
pub(super) fn check_tenant_state(
    host: &HostConfig,
    manifest: &Manifest,
    state_dir: &Path,
    engine_cache: &Path,
) -> anyhow::Result<()> {
    let apps = manifest.dir().parent().unwrap_or(manifest.dir());
    crate::backends::check_state_beside_apps(&host.state_root(manifest), apps)
        .and_then(|()| crate::backends::check_cache_beside_apps(engine_cache, apps))
        .map_err(|m| anyhow::anyhow!("{}: {m}", host.source()))?;
    let left = left_state(manifest);
    let Ok(meta) = std::fs::symlink_metadata(&left) else {
        return Ok(());
    };
    if host.state_dir.is_some() || host.dry_run.is_some() || state_dir.exists() {
        return Ok(());
    }
    let linked_parent = left
        .parent()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.file_type().is_symlink());
    if !meta.is_dir() || linked_parent {
        bail!(
            "{}: app `{}` has `{}`, inside its own directory, where earlier versions of `berth serve` kept its state; it is no directory of its own (a link, or behind one, that its tenant may have made): remove it",
            manifest.file.display(),
            manifest.name,
            left.display(),
        );
    }
    // Copied aside, then renamed into place at once: the next scan loads
    // the app as soon as its state directory exists.
    let aside = state_dir.with_file_name(format!(".{}.copy", manifest.name));
    bail!(
        "{}: app `{}` has state in `{}`, inside its own directory, where `berth serve` no longer keeps it (the app's tenant writes there); copy its regular files over, never its links (which its tenant may have made), e.g. `mkdir -p {aside} && rsync -r --no-links {} {aside}/ && mv {aside}/{} {} && rmdir {aside}`, then remove it; or remove it if it holds none of the app's data",
        manifest.file.display(),
        manifest.name,
        left.display(),
        left.display(),
        manifest.name,
        state_dir.display(),
        aside = aside.display(),
    )
}

/// Where versions before the state moved out of an app's directory kept
/// the app's state on `berth serve` (by default).
pub(crate) fn left_state(manifest: &Manifest) -> PathBuf {
    manifest.dir().join(".berth").join(&manifest.name)
}
