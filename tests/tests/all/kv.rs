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
