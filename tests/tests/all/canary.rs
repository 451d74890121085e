//! A canary secret, planted in every backend's credentials, never appears
//! in an error or a log line while every backend fails to start: wrong
//! password against the real Redis and SMTP servers, credentials refused
//! (403) by an S3 server and by Secrets Manager, unreachable Postgres, S3
//! and NATS.

use berth_tests::{TestApp, guests, host_config, service};

const CANARY: &str = "canary-7f3a9c1e-do-not-leak";

fn manifest() -> String {
    format!(
        "name = \"canary\"\n[config]\ntoken = \"x\"\n[sql.main]\n[kv.cache]\n[blob.files]\n[component.guest]\npath = {:?}\n[component.guest.grants]\nkv = [\"cache\"]\nemail_senders = [\"app@berth.example\"]\n",
        guests::KV_GUEST
    )
}

#[test]
fn secret_canary_never_leaks_from_failing_backends() {
    let Some(redis_url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let Some(smtp) = service("BERTH_TEST_SMTP") else {
        return;
    };
    let Some(s3_auth) = service("BERTH_TEST_S3_AUTH_ENDPOINT") else {
        return;
    };
    let Some(amqp) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    let amqp_hostport = amqp
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let (smtp_host, smtp_port) = smtp.rsplit_once(':').unwrap();
    let redis_hostport = redis_url.trim_start_matches("redis://").to_string();
    let t = TestApp::new(&manifest());
    let secret = t.dir.path().join("canary");
    std::fs::write(&secret, CANARY).unwrap();
    let s = secret.display();
    // One host config per failing backend, each with the canary as its
    // secret, and what its error must say.
    let configs = [
        (
            format!(
                "[sql.main]\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/test\"\npassword = \"${{file:{s}}}\"\nconnect_timeout_ms = 1000\n"
            ),
            "cannot connect at startup",
        ),
        (
            format!(
                "[kv.cache]\ntype = \"redis\"\nurl = \"redis://:${{file:{s}}}@{redis_hostport}\"\n"
            ),
            "cannot connect at startup",
        ),
        (
            format!(
                "[blob.files]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\npath_style = true\naccess_key_id = \"${{file:{s}}}\"\nsecret_access_key = \"${{file:{s}}}\"\ntimeout_ms = 1000\n"
            ),
            "cannot connect at startup",
        ),
        (
            format!(
                "[blob.files]\ntype = \"s3\"\nendpoint = {s3_auth:?}\nbucket = \"b\"\npath_style = true\naccess_key_id = \"${{file:{s}}}\"\nsecret_access_key = \"${{file:{s}}}\"\ntimeout_ms = 3000\n"
            ),
            "refused the credentials",
        ),
        (
            format!(
                "[secrets.aws]\nregion = \"us-east-1\"\nendpoint = {s3_auth:?}\naccess_key_id = \"${{file:{s}}}\"\nsecret_access_key = \"${{file:{s}}}\"\n[app_config.canary]\ntoken = \"${{aws-sm:db}}\"\n"
            ),
            "cannot read AWS secret `db`",
        ),
        (
            format!(
                "[email]\ntype = \"smtp\"\nhost = {smtp_host:?}\nport = {smtp_port}\ntls = \"none\"\nusername = \"berth\"\npassword = \"${{file:{s}}}\"\n"
            ),
            "the mail server offers no login the host can use",
        ),
        (
            format!(
                "[messaging]\ntype = \"nats\"\nurl = \"nats://berth:${{file:{s}}}@127.0.0.1:1\"\ntimeout_ms = 1000\n"
            ),
            "cannot connect at startup",
        ),
        (
            // A real RabbitMQ refusing the wrong password.
            format!(
                "[messaging]\ntype = \"rabbitmq\"\nurl = \"amqp://guest:${{file:{s}}}@{amqp_hostport}/%2f\"\ntimeout_ms = 3000\n"
            ),
            "cannot connect at startup",
        ),
        (
            format!(
                "[messaging]\ntype = \"mqtt\"\nurl = \"mqtt://berth:${{file:{s}}}@127.0.0.1:1\"\ntimeout_ms = 1000\n"
            ),
            "cannot connect at startup",
        ),
    ];
    // The host's own log pipeline at its most verbose setting.
    let (errors, logs) = berth_tests::with_captured_logs(berth::cli::log_filter("trace"), |rt| {
        let mut errors = Vec::new();
        for (config, expected) in &configs {
            let host = host_config(&t, config);
            let started = std::time::Instant::now();
            let err = rt
                .block_on(t.load_with(&host))
                .err()
                .expect("every backend must fail to start");
            eprintln!("failed in {:?}: {err:#}", started.elapsed());
            errors.push((format!("{err:#} / {err:?}"), *expected));
            // The host config itself never prints the resolved value either.
            assert!(!format!("{host:?}").contains(CANARY));
        }
        errors
    });
    for (e, expected) in &errors {
        assert!(!e.contains(CANARY), "an error leaks the canary: {e}");
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
    }
    assert!(!logs.is_empty(), "the failures were logged");
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(CANARY))
        .take(5)
        .collect();
    assert!(leaks.is_empty(), "log lines leak the canary: {leaks:#?}");
}
