//! Metering and audit: every port call is counted per tenant (operations by
//! outcome, bytes in and out) and leaves one `berth::audit` event naming
//! tenant, component, port, operation, resource, outcome and duration —
//! never a payload.

use berth::metrics::METRICS;
use berth_tests::{TestApp, assert_success, guests, run, single_component_manifest};

#[test]
fn port_calls_are_metered_and_audited_per_tenant() {
    let ((), logs) = berth_tests::with_captured_logs("berth::audit=debug".into(), |rt| {
        rt.block_on(async {
            let t = TestApp::new(&single_component_manifest(
                "metered",
                guests::KV_GUEST,
                "[kv.cache]",
                "kv = [\"cache\"]",
            ));
            let app = t.load().await.unwrap();
            assert_success(&run(&app, "guest", &["conformance", "cache"]).await);
        })
    });
    let calls: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("berth::audit") && l.contains("call"))
        .collect();
    let has = |needles: &[&str]| calls.iter().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        has(&[
            "app=\"metered\"",
            "component=\"guest\"",
            "port=\"kv\"",
            "op=\"set\"",
            "resource=\"cache\"",
            "outcome=\"ok\"",
            "duration_us="
        ]),
        "{logs}"
    );
    assert!(
        has(&[
            "op=\"open\"",
            "resource=\"not-granted-bucket\"",
            "outcome=\"not-granted\""
        ]),
        "{logs}"
    );
    assert!(has(&["op=\"set\"", "outcome=\"invalid-input\""]), "{logs}");
    // Values and keys the guest wrote never reach the audit log.
    for payload in ["soon gone", "short-lived"] {
        assert!(!logs.contains(payload), "{payload:?} logged: {logs}");
    }

    let app = ("app", "metered");
    let ops = |outcome| {
        METRICS.get(
            "berth_port_operations_total",
            &[app, ("port", "kv"), ("outcome", outcome)],
        )
    };
    assert!(ops("ok") >= 15, "ok calls: {}", ops("ok"));
    assert!(ops("error") >= 2, "failed calls: {}", ops("error"));
    let bytes = |direction| {
        METRICS.get(
            "berth_port_bytes_total",
            &[app, ("port", "kv"), ("direction", direction)],
        )
    };
    // The guest writes and reads back a 256-byte value, among others.
    assert!(bytes("in") >= 256, "bytes in: {}", bytes("in"));
    assert!(bytes("out") >= 256, "bytes out: {}", bytes("out"));
    let text = METRICS.render();
    assert!(
        text.contains("# TYPE berth_port_operations_total counter"),
        "{text}"
    );
    assert!(
        text.contains(
            "berth_port_operations_total{app=\"metered\",component=\"guest\",port=\"kv\",outcome=\"ok\"}"
        ),
        "{text}"
    );
}
