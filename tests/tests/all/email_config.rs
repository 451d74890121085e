use berth_tests::{TestApp, assert_success, guests, run, single_component_manifest};

#[tokio::test]
async fn email_sent_to_file_sink() {
    let t = TestApp::new(&single_component_manifest(
        "mailtest",
        guests::EMAIL_GUEST,
        "",
        "email_senders = [\"app@berth.example\"]",
    ));
    let app = t.load().await.unwrap();
    assert_success(
        &run(
            &app,
            "guest",
            &["send", "app@berth.example", "user@example.org"],
        )
        .await,
    );
    let dir = t.state_dir().join("mailtest/email");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Only the valid message was written; the rejected ones left nothing.
    assert_eq!(files.len(), 1, "{files:?}");
    let eml = std::fs::read_to_string(&files[0]).unwrap();
    assert!(eml.contains("From: app@berth.example\r\n"), "{eml}");
    assert!(eml.contains("To: user@example.org\r\n"), "{eml}");
    assert!(eml.contains("Subject: Welcome\r\n"), "{eml}");
    assert!(eml.contains("Hello from Berth"), "{eml}");
    assert!(!eml.contains("evil@example.com"), "{eml}");
}

#[tokio::test]
async fn config_and_logging_embedded() {
    // `${env:…}` is resolved from the host environment at load; cargo sets
    // CARGO_PKG_NAME for test processes, so no test has to mutate the
    // environment.
    let t = TestApp::new(&single_component_manifest(
        "cfgtest",
        guests::CONFIG_GUEST,
        "[config]\ngreeting = \"hello\"\nsecret_token = \"${env:CARGO_PKG_NAME}\"\nnot_granted_key = \"hidden\"",
        "config = [\"greeting\", \"secret_token\"]",
    ));
    let app = t.load().await.unwrap();
    assert_success(&run(&app, "guest", &["check", env!("CARGO_PKG_NAME")]).await);
}

#[tokio::test]
async fn config_missing_env_reference_names_key() {
    let t = TestApp::new(&single_component_manifest(
        "cfgtest",
        guests::CONFIG_GUEST,
        "[config]\ntoken = \"${env:BERTH_TEST_SURELY_UNSET_VAR}\"",
        "",
    ));
    let err = t.load().await.err().expect("load fails").to_string();
    assert!(
        err.contains("config.token") && err.contains("BERTH_TEST_SURELY_UNSET_VAR"),
        "{err}"
    );
}
