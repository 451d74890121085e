//! Custom paths of the embedded backends in a host config that several apps
//! share: `{app}` in a path makes it per app; a path without it belongs to
//! the first app that uses it (its `<path>.berth-owner` marker), and every
//! other app is refused at load. Also: a Postgres `tenant_password_key` too
//! short to keep tenant passwords secret is refused.

use berth_tests::{
    TestApp, assert_success, dry_run, guests, host_config, run, single_component_manifest,
};

/// App `name` with one blob container `files`, granted to its component.
fn blob_app(name: &str) -> TestApp {
    TestApp::new(&single_component_manifest(
        name,
        guests::BLOB_GUEST,
        "[blob.files]",
        "blob = [\"files\"]",
    ))
}

/// App `name` with one bucket `cache`, granted to its component.
fn kv_app(name: &str) -> TestApp {
    TestApp::new(&single_component_manifest(
        name,
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ))
}

/// App `name` with one database `main`, granted to its component.
fn sql_app(name: &str) -> TestApp {
    TestApp::new(&single_component_manifest(
        name,
        guests::SQL_GUEST,
        "[sql.main]",
        "sql = [\"main\"]",
    ))
}

/// Loads `t` with host config `text`, expecting a refusal; its message.
async fn load_error(t: &TestApp, text: &str) -> String {
    match t.load_with(&host_config(t, text)).await {
        Ok(_) => panic!("the app loaded with:\n{text}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn blob_shared_root_refused_for_second_app_fs() {
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("shared");
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n",
        root.display().to_string()
    );
    let (a, b) = (blob_app("alpha"), blob_app("beta"));
    let first = a
        .load_with(&host_config(&a, &config))
        .await
        .expect("the first app claims the directory");
    let err = load_error(&b, &config).await;
    assert!(err.contains("blob.files.root"), "{err}");
    assert!(err.contains(&root.display().to_string()), "{err}");
    assert!(err.contains("`alpha`") && err.contains("`beta`"), "{err}");
    assert!(err.contains("{app}"), "the fix: {err}");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("shared.berth-owner")).unwrap(),
        "alpha\n"
    );
    // The owner loads again.
    drop(first);
    a.load_with(&host_config(&a, &config))
        .await
        .expect("the owner loads again");
}

/// One app's custom paths may not overlap each other either: grants are
/// per resource, so a component granted only `blob.files` must not reach
/// the app's SQL database, nor another container's objects, through a
/// root that holds them. Refused at load and by a check alike.
#[tokio::test]
async fn custom_paths_of_one_app_are_kept_apart_fs() {
    let t = TestApp::new(&single_component_manifest(
        "apart",
        guests::BLOB_GUEST,
        "[blob.files]\n[blob.other]\n[sql.main]",
        "blob = [\"files\"]",
    ));
    let srv = tempfile::tempdir().unwrap();
    let at = |rest: &str| format!("{}/{{app}}/{rest}", srv.path().display());
    let overlapping = [
        // The root holds the database.
        (at(""), at("main.db"), at("other")),
        // Two containers share a root.
        (at("files"), at("main.db"), at("files")),
        // One root lies in the other.
        (at("files"), at("main.db"), at("files/inner")),
    ];
    for (files, main, other) in overlapping {
        let config = format!(
            "[blob.files]\ntype = \"fs\"\nroot = {files:?}\n[blob.other]\ntype = \"fs\"\nroot = {other:?}\n[sql.main]\ntype = \"sqlite\"\npath = {main:?}\n"
        );
        let checked = match t.load_with(&dry_run(&t, host_config(&t, &config))).await {
            Ok(_) => panic!("the check passed overlapping paths: {config}"),
            Err(e) => format!("{e:#}"),
        };
        let loaded = load_error(&t, &config).await;
        for refused in [checked, loaded] {
            assert!(refused.contains("overlaps the path of `"), "{refused}");
            assert!(
                refused.contains("could reach the other's data"),
                "{refused}"
            );
        }
    }
    // A refused path was not claimed: the first case's root (the SQL
    // path, claimed first, holds no other app's data either way).
    assert!(
        !srv.path().join("apart.berth-owner").exists(),
        "the refused root stays unclaimed"
    );
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n[blob.other]\ntype = \"fs\"\nroot = {:?}\n[sql.main]\ntype = \"sqlite\"\npath = {:?}\n",
        at("files"),
        at("other"),
        at("main.db")
    );
    drop(
        t.load_with(&dry_run(&t, host_config(&t, &config)))
            .await
            .unwrap(),
    );
    drop(t.load_with(&host_config(&t, &config)).await.unwrap());
}

#[tokio::test]
async fn blob_root_per_app_placeholder_fs() {
    let shared = tempfile::tempdir().unwrap();
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n",
        format!("{}/{{app}}", shared.path().display())
    );
    let (a, b) = (blob_app("alpha"), blob_app("beta"));
    let app_a = a
        .load_with(&host_config(&a, &config))
        .await
        .expect("alpha loads");
    let _app_b = b
        .load_with(&host_config(&b, &config))
        .await
        .expect("beta loads");
    for name in ["alpha", "beta"] {
        assert!(shared.path().join(name).is_dir(), "{name}'s directory");
        assert_eq!(
            std::fs::read_to_string(shared.path().join(format!("{name}.berth-owner"))).unwrap(),
            format!("{name}\n")
        );
    }
    // alpha's objects land in its own directory only.
    assert_success(&run(&app_a, "guest", &["conformance", "files"]).await);
    assert_eq!(
        std::fs::metadata(shared.path().join("alpha/big/object"))
            .unwrap()
            .len(),
        8 << 20
    );
    assert_eq!(
        std::fs::read_dir(shared.path().join("beta"))
            .unwrap()
            .count(),
        0
    );
}

/// A blob root on another filesystem than the state directory fails a dry
/// run (`berth check`) as it fails a load, though the check opens its
/// stores in a scratch directory, where a rename always works: each
/// root's nearest existing directory is compared with the state's.
/// `/dev/shm` is a tmpfs of its own on Linux.
#[tokio::test]
async fn blob_root_on_another_filesystem_fails_the_check_fs() {
    use std::os::unix::fs::MetadataExt as _;
    let other = tempfile::tempdir_in("/dev/shm").expect("this test needs a writable /dev/shm");
    let t = blob_app("faraway");
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(other.path()),
        dev(t.dir.path()),
        "this test needs /dev/shm and the temporary directory on two filesystems"
    );
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n",
        other.path().join("{app}/files").display().to_string()
    );
    let checking = dry_run(&t, host_config(&t, &config));
    let checked = match t.load_with(&checking).await {
        Ok(_) => panic!("the check passed a root on another filesystem"),
        Err(e) => format!("{e:#}"),
    };
    assert!(checked.contains("blob.files.root"), "{checked}");
    assert_eq!(
        std::fs::read_dir(other.path()).unwrap().count(),
        0,
        "the check created nothing"
    );
    let loaded = load_error(&t, &config).await;
    for refused in [checked, loaded] {
        assert!(refused.contains("blob.files"), "{refused}");
        assert!(refused.contains("different filesystems"), "{refused}");
    }

    // On the state directory's filesystem, both pass.
    let near = tempfile::tempdir_in(t.dir.path()).unwrap();
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n",
        near.path().join("{app}/files").display().to_string()
    );
    let checking = dry_run(&t, host_config(&t, &config));
    drop(t.load_with(&checking).await.unwrap());
    drop(t.load_with(&host_config(&t, &config)).await.unwrap());
}

/// A bind mount of the state directory's own filesystem is as far for a
/// rename as another filesystem (`EXDEV`), though it has the same device
/// number: a blob root on one fails the check as it fails the load.
/// Mounting needs root (CI's case); elsewhere the test reports itself
/// skipped, unless `BERTH_TEST_REQUIRE_SERVICES=1`.
#[tokio::test]
async fn blob_root_on_a_bind_mount_fails_the_check_fs() {
    use std::os::unix::fs::MetadataExt as _;
    let t = blob_app("bound");
    let (source, target) = (t.dir.path().join("source"), t.dir.path().join("mounted"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    let Some(_mount) = BindMount::new(&source, &target) else {
        return;
    };
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    assert_eq!(
        dev(&target),
        dev(t.dir.path()),
        "one filesystem, two mounts"
    );
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n",
        target.join("{app}/files").display().to_string()
    );
    let checking = dry_run(&t, host_config(&t, &config));
    let checked = match t.load_with(&checking).await {
        Ok(_) => panic!("the check passed a root on a bind mount"),
        Err(e) => format!("{e:#}"),
    };
    assert_eq!(
        std::fs::read_dir(&source).unwrap().count(),
        0,
        "the check created nothing"
    );
    let loaded = load_error(&t, &config).await;
    for refused in [checked, loaded] {
        assert!(refused.contains("blob.files"), "{refused}");
        assert!(refused.contains("different mounts of one"), "{refused}");
    }

    // The same directory through the state directory's own mount passes.
    let config = format!(
        "[blob.files]\ntype = \"fs\"\nroot = {:?}\n",
        source.join("{app}/files").display().to_string()
    );
    let checking = dry_run(&t, host_config(&t, &config));
    drop(t.load_with(&checking).await.unwrap());
    drop(t.load_with(&host_config(&t, &config)).await.unwrap());
}

/// `source` bind-mounted on `target` until dropped; `None` (the test
/// reports itself skipped) where this user may not mount.
struct BindMount(std::path::PathBuf);

impl BindMount {
    fn new(source: &std::path::Path, target: &std::path::Path) -> Option<BindMount> {
        let mounted = std::process::Command::new("mount")
            .arg("--bind")
            .args([source, target])
            .output()
            .expect("the mount command runs");
        if mounted.status.success() {
            return Some(BindMount(target.to_path_buf()));
        }
        assert!(
            std::env::var("BERTH_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "cannot bind-mount ({}) but BERTH_TEST_REQUIRE_SERVICES=1 requires it",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        eprintln!("SKIPPED: cannot bind-mount (needs root)");
        None
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        // Lazily: a file the app still holds open must not keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A state directory a load could not create fails a dry run (`berth
/// check`) too, though the check opens its stores in a scratch directory:
/// here a file stands where a directory on its way should be.
#[tokio::test]
async fn state_directory_that_cannot_be_made_fails_the_check() {
    let t = blob_app("stateless");
    let file = t.dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let mut host = host_config(&t, "");
    host.state_dir = Some(file.join("state"));
    let checking = dry_run(&t, host.clone());
    for config in [checking, host] {
        let refused = match t.load_with(&config).await {
            Ok(_) => panic!("loaded with a state directory under a file"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            refused.contains("cannot create state directory"),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn kv_shared_path_refused_for_second_app_sqlite() {
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("shared.db");
    let config = format!(
        "[kv.cache]\ntype = \"sqlite\"\npath = {:?}\n",
        db.display().to_string()
    );
    let (a, b) = (kv_app("alpha"), kv_app("beta"));
    let _first = a
        .load_with(&host_config(&a, &config))
        .await
        .expect("the first app claims the file");
    let err = load_error(&b, &config).await;
    assert!(err.contains("kv.cache.path"), "{err}");
    assert!(err.contains("`alpha`") && err.contains("`beta`"), "{err}");
    assert!(
        err.contains(&format!("{}/{{app}}/shared.db", shared.path().display())),
        "the fix: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.path().join("shared.db.berth-owner")).unwrap(),
        "alpha\n"
    );
}

/// A custom path that spells out the default place is the default: no
/// marker is made, and the rule that keeps custom paths out of the host's
/// part of the state directory does not refuse it. Another name there is
/// refused.
#[tokio::test]
async fn sql_path_spelling_out_the_default_is_the_default_sqlite() {
    let t = sql_app("spelt");
    let config = |file: &str| {
        let path = t.state_dir().join(format!("{{app}}/sql/{file}"));
        format!(
            "[sql.main]\ntype = \"sqlite\"\npath = {:?}\n",
            path.display().to_string()
        )
    };
    let app = t
        .load_with(&host_config(&t, &config("main.db")))
        .await
        .expect("the default place loads");
    assert_success(&run(&app, "guest", &["conformance", "main"]).await);
    let db = t.state_dir().join("spelt/sql/main.db");
    assert!(db.exists());
    assert!(!db.with_file_name("main.db.berth-owner").exists());
    let err = load_error(&t, &config("other.db")).await;
    assert!(err.contains("sql.main.path"), "{err}");
    assert!(
        err.contains("among the files the host keeps there"),
        "{err}"
    );
}

#[tokio::test]
async fn sql_path_bad_placeholder_refused_sqlite() {
    let shared = tempfile::tempdir().unwrap();
    let t = sql_app("alpha");
    let err = load_error(
        &t,
        &format!(
            "[sql.main]\ntype = \"sqlite\"\npath = {:?}\n",
            format!("{}/{{name}}.db", shared.path().display())
        ),
    )
    .await;
    assert!(err.contains("sql.main.path"), "{err}");
    assert!(err.contains("{name}") && err.contains("{app}"), "{err}");
    assert_eq!(std::fs::read_dir(shared.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn sql_short_tenant_key_refused_postgres() {
    // Refused before any connection, so no server is needed.
    let t = sql_app("alpha");
    let key = t.dir.path().join("tenant-key");
    std::fs::write(&key, "short-key\n").unwrap();
    let err = load_error(
        &t,
        &format!(
            "[sql.main]\ntype = \"postgres\"\nurl = \"postgres://berth@127.0.0.1:1/tenants\"\ntenancy = \"role-per-app\"\ntenant_password_key = \"${{file:{}}}\"\n",
            key.display()
        ),
    )
    .await;
    assert!(err.contains("sql.main.tenant_password_key"), "{err}");
    assert!(err.contains("16"), "{err}");
    assert!(!err.contains("short-key"), "the key leaked: {err}");
}
