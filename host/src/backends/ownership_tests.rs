//! Tests of the custom paths' rules (see `ownership.rs`).

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
    let state = dir.path().join("state/bob");
    let err = app_path(&raw, "bob", PathKind::Directory, &state, None, true).unwrap_err();
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
fn paths_inside_other_apps_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/shop");
    // In this process: `/srv/{app}` for app `avatars` holds the
    // `/srv/avatars/{app}` of app `shop`, whichever comes first.
    let inner = dir.path().join("srv/avatars/{app}");
    let outer = dir.path().join("srv/{app}");
    app_path(&inner, "shop", PathKind::Directory, &state, None, true).unwrap();
    let err = app_path(&outer, "avatars", PathKind::Directory, &state, None, true).unwrap_err();
    assert!(err.contains("overlaps") && err.contains("`shop`"), "{err}");
    let other = dir.path().join("other/{app}");
    app_path(&other, "avatars", PathKind::Directory, &state, None, true).unwrap();
    let inside = dir.path().join("other/avatars/{app}");
    let err = app_path(&inside, "shop", PathKind::Directory, &state, None, true).unwrap_err();
    assert!(err.contains("`avatars`"), "{err}");

    // Claimed by an earlier process (a marker only): found below a
    // directory claimed for the first time, and above a path.
    let earlier = dir.path().join("earlier/avatars/shop");
    claim(&earlier, "shop", "fix").unwrap();
    std::fs::create_dir_all(&earlier).unwrap();
    let err = keep_apart(&dir.path().join("earlier"), "avatars", &state).unwrap_err();
    assert!(err.contains(&earlier.display().to_string()), "{err}");
    assert!(keep_apart(&dir.path().join("earlier"), "shop", &state).is_ok());
    let err = keep_apart(&earlier.join("deeper"), "avatars", &state).unwrap_err();
    assert!(err.contains("`shop`"), "{err}");
    // `..` and links are resolved before paths are compared.
    std::os::unix::fs::symlink(dir.path().join("earlier"), dir.path().join("link")).unwrap();
    let err = keep_apart(&dir.path().join("link/avatars/shop/x"), "avatars", &state);
    assert!(err.is_err());
    let err = keep_apart(&dir.path().join("x/../earlier/avatars/shop/y"), "a", &state);
    assert!(err.is_err());
}

#[test]
fn a_link_is_no_custom_path_even_with_a_trailing_slash() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("data"), dir.path().join("link")).unwrap();
    let state = dir.path().join("state/shop");
    for raw in ["link/", "link/."] {
        let raw = PathBuf::from(format!("{}/{raw}", dir.path().display()));
        let err = app_path(&raw, "shop", PathKind::Directory, &state, None, true).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }
    assert!(!dir.path().join("link.berth-owner").exists());
}

#[test]
fn dot_dot_after_a_link_leaves_the_links_target() {
    let dir = tempfile::tempdir().unwrap();
    let state_root = dir.path().join("state");
    let own = state_root.join("shop");
    std::fs::create_dir_all(state_root.join("other/blob")).unwrap();
    std::fs::create_dir_all(dir.path().join("srv")).unwrap();
    std::os::unix::fs::symlink(state_root.join("other/blob"), dir.path().join("srv/link")).unwrap();
    // The system opens `<state>/other/x`, not `srv/x`.
    let err = keep_apart(&dir.path().join("srv/link/../x"), "shop", &own).unwrap_err();
    assert!(
        err.contains("among the files the host keeps there"),
        "{err}"
    );
    assert!(keep_apart(&dir.path().join("srv/x/../y"), "shop", &own).is_ok());
}

#[test]
fn sqlite_side_file_names_are_no_database_paths() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/shop-wal");
    let raw = dir.path().join("db/{app}");
    for app in ["shop-wal", "shop-shm", "shop-journal"] {
        let err = app_path(&raw, app, PathKind::File, &state, None, true).unwrap_err();
        assert!(err.contains("side files"), "{err}");
    }
    assert!(app_path(&raw, "shop-wal", PathKind::Directory, &state, None, true).is_ok());
    assert!(app_path(&raw, "shop", PathKind::File, &state, None, true).is_ok());
}

#[test]
fn a_directory_too_big_to_search_is_refused() {
    const ENTRIES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/avatars");
    let big = dir.path().join("srv/shop");
    std::fs::create_dir_all(&big).unwrap();
    let srv = dir.path().join("srv");
    // Exactly as many entries as are read are all checked.
    for i in 1..ENTRIES {
        std::fs::File::create(big.join(i.to_string())).unwrap();
    }
    assert!(keep_apart_searching(&srv, "avatars", &state, ENTRIES).is_ok());
    std::fs::File::create(big.join("one-more")).unwrap();
    // The marker beside the big directory is found all the same.
    claim(&big, "shop", "fix").unwrap();
    let err = keep_apart_searching(&srv, "avatars", &state, ENTRIES).unwrap_err();
    assert!(err.contains("overlaps") && err.contains("`shop`"), "{err}");
    std::fs::remove_file(dir.path().join("srv/shop.berth-owner")).unwrap();
    let err = keep_apart_searching(&srv, "avatars", &state, ENTRIES).unwrap_err();
    assert!(err.contains("too many to check"), "{err}");
    assert!(err.contains("more than 100 entries"), "{err}");
}

#[test]
fn a_dry_run_checks_claims_without_making_any() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/shop");
    let raw = dir.path().join("srv/{app}");
    let path = app_path(&raw, "shop", PathKind::Directory, &state, None, false).unwrap();
    assert_eq!(path, dir.path().join("srv/shop"));
    assert!(
        !dir.path().join("srv").exists(),
        "a dry run creates nothing"
    );
    let shared = dir.path().join("shared");
    claim(&shared, "bank", "fix").unwrap();
    let err = app_path(&shared, "shop", PathKind::Directory, &state, None, false).unwrap_err();
    assert!(err.contains("belongs to app `bank`"), "{err}");
    assert!(app_path(&shared, "bank", PathKind::Directory, &state, None, false).is_ok());
}

#[test]
fn on_serve_no_path_overlaps_the_tenants_directory() {
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    let own = apps.join("shop");
    std::fs::create_dir_all(&own).unwrap();
    let state = dir.path().join("state/shop");
    for raw in [
        apps.join("{app}/uploads"),
        apps.join("{app}"),
        apps.join("blog/uploads"),
        apps.join("{app}-files"),
        apps.clone(),
    ] {
        let err =
            app_path(&raw, "shop", PathKind::Directory, &state, Some(&own), true).unwrap_err();
        assert!(err.contains("which tenants write"), "{err}");
    }
    // The host's state directory may lie in the directory of apps (the
    // default on `berth serve`); its own rules apply there.
    let state_in_apps = apps.join(".berth/shop");
    let main_db = state_in_apps.join("main.db");
    assert!(
        app_path(
            &main_db,
            "shop",
            PathKind::File,
            &state_in_apps,
            Some(&own),
            true
        )
        .is_ok()
    );
    let err = app_path(
        &apps.join(".berth"),
        "shop",
        PathKind::Directory,
        &state_in_apps,
        Some(&own),
        true,
    )
    .unwrap_err();
    assert!(err.contains("holds the host's state directory"), "{err}");
    // An app's directory that is a link to a release elsewhere: that
    // release is the tenant's too.
    let release = dir.path().join("releases/blog-v3");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(&release, apps.join("blog")).unwrap();
    for (app, own_dir) in [("blog", apps.join("blog")), ("shop", own.clone())] {
        let uploads = release.join("uploads");
        let err = app_path(
            &uploads,
            app,
            PathKind::Directory,
            &state,
            Some(&own_dir),
            true,
        )
        .unwrap_err();
        assert!(err.contains("which tenants write"), "{app}: {err}");
    }
    // A state directory that is the directory of apps, or one of its
    // apps' directories, gives no leave to paths in it.
    for state_root in [apps.clone(), own.clone()] {
        let own_state = state_root.join("shop");
        let path = own_state.join("main.db");
        let err =
            app_path(&path, "shop", PathKind::File, &own_state, Some(&own), true).unwrap_err();
        assert!(
            err.contains("which tenants write"),
            "{}: {err}",
            state_root.display()
        );
    }
    let elsewhere = dir.path().join("srv/{app}");
    assert!(
        app_path(
            &elsewhere,
            "shop",
            PathKind::Directory,
            &state,
            Some(&own),
            true
        )
        .is_ok()
    );
}

#[test]
fn a_link_is_no_custom_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("data"), dir.path().join("link")).unwrap();
    let state = dir.path().join("state/shop");
    let err = keep_apart(&dir.path().join("link"), "shop", &state).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn the_state_directory_is_no_custom_path() {
    let dir = tempfile::tempdir().unwrap();
    let state_root = dir.path().join("state");
    let own = state_root.join("shop");
    std::fs::create_dir_all(&own).unwrap();
    for (path, says) in [
        (dir.path().to_path_buf(), "holds the host's state directory"),
        (state_root.clone(), "holds the host's state directory"),
        (
            state_root.join("other/blob"),
            "among the files the host keeps there",
        ),
        (
            state_root.join("url-signing.key"),
            "among the files the host keeps there",
        ),
    ] {
        let err = keep_apart(&path, "shop", &own).unwrap_err();
        assert!(err.contains(says), "{}: {err}", path.display());
    }
    // In the app's own state directory, nothing the host keeps there
    // (its other stores, temporary files, mail, the broker's queue).
    for path in [
        own.clone(),
        own.join("tmp"),
        own.join("tmp/x"),
        own.join("sql/main.db"),
        own.join("messaging.db-wal"),
        own.join("email"),
    ] {
        let err = keep_apart(&path, "shop", &own).unwrap_err();
        assert!(
            err.contains("among the files the host keeps there"),
            "{err}"
        );
    }
    for path in [
        own.join("main.db"),
        own.join("custom/files"),
        own.join("tmpfiles"),
    ] {
        assert!(
            keep_apart(&path, "shop", &own).is_ok(),
            "{}",
            path.display()
        );
    }
    assert!(keep_apart(&dir.path().join("srv/shop"), "shop", &own).is_ok());
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
    let state = dir.path().join("state/alice");
    let a = app_path(&raw, "alice", PathKind::Directory, &state, None, true).unwrap();
    let b = app_path(&raw, "bob", PathKind::Directory, &state, None, true).unwrap();
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
