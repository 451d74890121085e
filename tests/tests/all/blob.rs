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

/// `blob_max_object_mb` bounds what one writer writes in all, so chunks
/// within their own cap cannot fill the disk.
#[tokio::test]
async fn blob_writer_total_is_capped_fs() {
    let manifest = single_component_manifest(
        "blobcap",
        guests::BLOB_GUEST,
        "[blob.files]",
        "blob = [\"files\"]",
    ) + "[component.guest.limits]\nblob_max_object_mb = 1\n";
    let t = TestApp::new(&manifest);
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["object-cap", "files"]).await;
    assert_success(&out);
    assert!(out.stdout.contains("object cap holds"), "{}", out.stdout);
}

/// `[app_limits] store_mb` bounds what a file-backed container holds on
/// disk: the write past it is `too-large`, naming the setting, and a
/// delete makes room again (the guest checks both).
#[tokio::test]
async fn blob_store_room_is_bounded_fs() {
    let manifest = single_component_manifest(
        "blobroom",
        guests::BLOB_GUEST,
        "[blob.files]",
        "blob = [\"files\"]",
    );
    let t = TestApp::new(&manifest);
    let host = berth_tests::host_config(&t, "[app_limits]\nstore_mb = 1\n");
    let app = t.load_with(&host).await.unwrap();
    let out = run(&app, "guest", &["store-room", "files"]).await;
    assert_success(&out);
    assert!(out.stdout.contains("store room holds 3"), "{}", out.stdout);
    let kept = std::fs::read_dir(t.state_dir().join("blobroom/blob/files/room"))
        .unwrap()
        .count();
    assert_eq!(kept, 3, "two of the first three and the one put again");
}
