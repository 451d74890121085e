use berth_tests::{TestApp, assert_success, guests, run, single_component_manifest};

#[tokio::test]
async fn blob_conformance_fs() {
    let t = TestApp::new(&single_component_manifest(
        "blobtest",
        guests::BLOB_GUEST,
        "[blob.files]",
        "blob = [\"files\"]",
    ));
    let app = t.load().await.unwrap();
    assert_success(&run(&app, "guest", &["conformance", "files"]).await);
    // Objects live in the app's directory; nothing escaped it, and no
    // temporary file of the aborted writer is left.
    let root = t.state_dir().join("blobtest/blob/files");
    assert_eq!(
        std::fs::metadata(root.join("big/object")).unwrap().len(),
        8 << 20
    );
    assert!(!t.dir.path().join("escape").exists());
    assert_eq!(
        std::fs::read_dir(t.state_dir().join("blobtest/tmp"))
            .unwrap()
            .count(),
        0
    );
}
