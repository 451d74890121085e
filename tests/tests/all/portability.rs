//! Components built against standard WASI interfaces only, as for other
//! hosts, run on Berth unchanged with the same grants and isolation as
//! Berth's own ports.

use berth_tests::{TestApp, guests, run, single_component_manifest};

#[tokio::test]
async fn standard_wasi_config_both_versions_read_granted_keys_only() {
    let t = TestApp::new(&single_component_manifest(
        "stdconfig",
        guests::STD_CONFIG_GUEST,
        "[config]\ngreeting = \"hello\"\nempty = \"\"\nsecret = \"hidden-value\"",
        "config = [\"greeting\", \"empty\"]",
    ));
    let app = t
        .load()
        .await
        .expect("a component importing only wasi:config loads");
    let out = run(
        &app,
        "guest",
        &["greeting", "empty", "secret", "undeclared"],
    )
    .await;
    berth_tests::assert_success(&out);
    for version in ["0.2.0-rc.1", "0.2.0-draft-2024-09-27"] {
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{version} ")))
            .collect();
        assert_eq!(
            lines,
            [
                format!("{version} get greeting = hello"),
                format!("{version} get empty = "),
                format!(
                    "{version} get secret error config key `secret` is not granted to this component"
                ),
                format!(
                    "{version} get undeclared error config key `undeclared` is not granted to this component"
                ),
                format!("{version} get-all empty=,greeting=hello"),
            ],
            "{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("hidden-value"), "{}", out.stdout);
    // Metered like the Berth port: 4 gets and a get-all per version.
    assert_eq!(
        berth::metrics::METRICS.get(
            "berth_port_operations_total",
            &[("app", "stdconfig"), ("port", "config")]
        ),
        10
    );
}
