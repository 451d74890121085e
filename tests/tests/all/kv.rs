use berth_tests::{TestApp, assert_success, guests, run, single_component_manifest};

async fn conformance(decl: &str) {
    let t = TestApp::new(&single_component_manifest(
        "kvtest",
        guests::KV_GUEST,
        decl,
        "kv = [\"cache\"]",
    ));
    let app = t.load().await.unwrap();
    assert_success(&run(&app, "guest", &["conformance", "cache"]).await);
}

#[tokio::test]
async fn kv_conformance_sqlite() {
    conformance("[kv.cache]").await;
}

#[tokio::test]
async fn kv_conformance_memory() {
    conformance("[kv.cache]\nmemory = true").await;
}

/// `[app_limits] store_mb` bounds an SQLite bucket's file: the `set` past
/// it is `invalid-input`, naming the setting, a delete makes room again
/// (the guest checks each), and the file stays within the bound.
#[tokio::test]
async fn kv_store_bound_sqlite() {
    let t = TestApp::new(&single_component_manifest(
        "kvbound",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let host = berth_tests::host_config(&t, "[app_limits]\nstore_mb = 1\n");
    let app = t.load_with(&host).await.unwrap();
    let out = run(&app, "guest", &["fill", "cache"]).await;
    assert_success(&out);
    assert!(out.stdout.contains("bucket filled after"), "{}", out.stdout);
    let file = t.state_dir().join("kvbound/kv/cache.db");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 1 << 20, "{} holds {size} bytes", file.display());
}

#[tokio::test]
async fn kv_sqlite_survives_reload() {
    let t = TestApp::new(&single_component_manifest(
        "kvtest",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    {
        let app = t.load().await.unwrap();
        app.backends.kv["cache"]
            .set("persisted", b"yes".to_vec(), None)
            .await
            .unwrap();
    }
    let app = t.load().await.unwrap();
    assert_eq!(
        app.backends.kv["cache"].get("persisted").await.unwrap(),
        Some(b"yes".to_vec())
    );
}
