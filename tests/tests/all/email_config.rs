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

#[test]
fn config_and_logging_embedded() {
    // `${env:…}` is resolved from the host environment at load; cargo sets
    // CARGO_PKG_NAME for test processes, so no test has to mutate the
    // environment.
    let ((), logs) = berth_tests::with_captured_logs("berth::guest=trace".into(), |rt| {
        rt.block_on(async {
            let t = TestApp::new(&single_component_manifest(
                "cfgtest",
                guests::CONFIG_GUEST,
                "[config]\ngreeting = \"hello\"\nsecret_token = \"${env:CARGO_PKG_NAME}\"\nnot_granted_key = \"hidden\"",
                "config = [\"greeting\", \"secret_token\"]",
            ));
            let app = t.load().await.unwrap();
            assert_success(&run(&app, "guest", &["check", env!("CARGO_PKG_NAME")]).await);
        })
    });
    // One record per level reached the host's log at that level, with the
    // app, the component and the guest's fields.
    for level in ["trace", "debug", "info", "warn", "error"] {
        let text = format!("text=\"config_guest {level} record\"");
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(&text)).collect();
        assert!(
            matches!(lines.as_slice(), [line]
                if line.contains(&level.to_uppercase())
                    && line.contains("berth::guest")
                    && line.contains("app=cfgtest")
                    && line.contains("component=guest")
                    && line.contains(&format!("level_name=\\\"{level}\\\""))),
            "{level}: {lines:?}\n{logs}"
        );
    }
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

/// A Secrets Manager client for the test's own setup and cleanup.
async fn secrets_manager(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::config::Builder::new()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

#[tokio::test]
async fn config_secrets_manager_aws() {
    // The S3 server of the test services (moto) also speaks Secrets Manager.
    let Some(endpoint) = berth_tests::service("BERTH_TEST_S3_ENDPOINT") else {
        return;
    };
    let sm = secrets_manager(&endpoint).await;
    let (json_id, plain_id) = (
        berth_tests::unique("berth/db"),
        berth_tests::unique("berth/token"),
    );
    let password = berth_tests::unique("pw");
    sm.create_secret()
        .name(&json_id)
        .secret_string(format!(r#"{{"user":"app","password":"{password}"}}"#))
        .send()
        .await
        .unwrap();
    sm.create_secret()
        .name(&plain_id)
        .secret_string("plain-value")
        .send()
        .await
        .unwrap();

    let t = TestApp::new(&single_component_manifest(
        "cfgtest",
        guests::CONFIG_GUEST,
        "[config]\ngreeting = \"hello\"\nsecret_token = \"set by the operator\"",
        "config = [\"greeting\", \"secret_token\"]",
    ));
    let keys = t.state_dir().with_file_name("aws-key");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    std::fs::write(&keys, "testing\n").unwrap();
    let host = |value: &str| {
        berth_tests::host_config(
            &t,
            &format!(
                "[secrets.aws]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
                 access_key_id = \"${{file:{k}}}\"\nsecret_access_key = \"${{file:{k}}}\"\n\
                 [app_config.cfgtest]\nsecret_token = \"{value}\"\n",
                k = keys.display()
            ),
        )
    };

    // A field of a JSON secret reaches the guest through the config port.
    let app = t
        .load_with(&host(&format!("${{aws-sm:{json_id}#password}}")))
        .await
        .unwrap();
    assert_success(&run(&app, "guest", &["check", &password]).await);
    // A whole string secret, inside a larger value.
    let app = t
        .load_with(&host(&format!("Bearer ${{aws-sm:{plain_id}}}")))
        .await
        .unwrap();
    assert_success(&run(&app, "guest", &["check", "Bearer plain-value"]).await);

    // A missing secret or field fails the load, naming the reference and
    // never a value.
    for (reference, expect) in [
        (
            format!("${{aws-sm:{json_id}-missing}}"),
            "ResourceNotFoundException",
        ),
        (format!("${{aws-sm:{json_id}#nope}}"), "has no field `nope`"),
    ] {
        let err = t
            .load_with(&host(&reference))
            .await
            .err()
            .expect("load fails")
            .to_string();
        assert!(err.contains("app_config.cfgtest.secret_token"), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains(&password), "{err}");
    }

    for id in [json_id, plain_id] {
        sm.delete_secret()
            .secret_id(id)
            .force_delete_without_recovery(true)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn operator_config_must_name_declared_keys() {
    let t = TestApp::new(&single_component_manifest(
        "cfgtest",
        guests::CONFIG_GUEST,
        "[config]\ngreeting = \"hello\"",
        "config = [\"greeting\"]",
    ));
    let host = berth_tests::host_config(&t, "[app_config.cfgtest]\ngreting = \"typo\"\n");
    let err = t
        .load_with(&host)
        .await
        .err()
        .expect("load fails")
        .to_string();
    assert!(err.contains("app_config.cfgtest.greting"), "{err}");
    assert!(err.contains("declares no config key"), "{err}");
}

#[tokio::test]
async fn email_rate_limited_per_app() {
    let app = |name: &str| {
        TestApp::new(&single_component_manifest(
            name,
            guests::EMAIL_GUEST,
            "",
            "email_senders = [\"app@berth.example\"]",
        ))
    };
    let (ta, tb) = (app("mail-a"), app("mail-b"));
    let limits = "[app_limits]\nemails_per_minute = 1\n";
    let a = ta
        .load_with(&berth_tests::host_config(&ta, limits))
        .await
        .unwrap();
    let b = tb
        .load_with(&berth_tests::host_config(&tb, limits))
        .await
        .unwrap();
    let send = ["send", "app@berth.example", "user@example.org"];
    assert_success(&run(&a, "guest", &send).await);
    // The second message of the minute is refused to app A only.
    let refused = run(&a, "guest", &send).await;
    assert!(refused.status.is_err(), "second send must fail");
    let output = format!("{}{:?}", refused.stderr, refused.status);
    assert!(output.contains("RateLimited"), "{output}");
    assert_success(&run(&b, "guest", &send).await);
    let hits = |app| {
        berth::metrics::METRICS.get(
            "berth_limits_exceeded_total",
            &[("app", app), ("limit", "email_rate")],
        )
    };
    assert_eq!((hits("mail-a"), hits("mail-b")), (1, 0));
}
