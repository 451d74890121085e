use std::time::{Duration, Instant};

use berth::limits::LimitExceeded;
use berth::triggers::InvocationError;
use berth_tests::{TestApp, assert_success, guests, run, single_component_manifest};

async fn load_err(manifest: &str) -> String {
    let t = TestApp::new(manifest);
    format!(
        "{:#}",
        t.load().await.err().expect("the app must be refused")
    )
}

#[tokio::test]
async fn manifest_malformed_toml_names_file_and_line() {
    let err = load_err("name = \"x\"\n[component.a\npath = 1").await;
    assert!(err.contains("berth.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[tokio::test]
async fn manifest_unknown_key_names_key() {
    let err = load_err(&single_component_manifest(
        "x",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]\nsqll = [\"main\"]",
    ))
    .await;
    assert!(err.contains("berth.toml") && err.contains("sqll"), "{err}");
}

#[tokio::test]
async fn manifest_unknown_logical_name_names_key() {
    let err = load_err(&single_component_manifest(
        "x",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cahce\"]",
    ))
    .await;
    assert!(
        err.contains("component.guest.grants.kv") && err.contains("cahce"),
        "{err}"
    );
}

#[tokio::test]
async fn component_missing_file_is_named() {
    let err = load_err(&single_component_manifest(
        "x",
        "/nonexistent/app.wasm",
        "",
        "",
    ))
    .await;
    assert!(err.contains("/nonexistent/app.wasm"), "{err}");
}

#[tokio::test]
async fn component_invalid_bytes_are_refused() {
    let t = TestApp::new(&single_component_manifest("x", "junk.wasm", "", ""));
    std::fs::write(t.dir.path().join("junk.wasm"), b"definitely not wasm").unwrap();
    let err = format!("{:#}", t.load().await.err().unwrap());
    assert!(err.contains("not a WebAssembly file"), "{err}");
}

#[tokio::test]
async fn core_module_instead_of_component_is_refused() {
    let t = TestApp::new(&single_component_manifest("x", "core.wasm", "", ""));
    std::fs::write(t.dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = format!("{:#}", t.load().await.err().unwrap());
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

#[tokio::test]
async fn ungranted_import_is_refused_at_load() {
    // The SQL guest imports berth:infra/sql but this manifest grants no database.
    let err = load_err(&single_component_manifest(
        "x",
        guests::SQL_GUEST,
        "[sql.main]",
        "",
    ))
    .await;
    assert!(err.contains("imports `berth:infra/sql@0.1.0`"), "{err}");
    assert!(err.contains("grants nothing"), "{err}");
}

fn hostile(limits: &str) -> TestApp {
    let manifest = format!(
        "{}[component.guest.limits]\n{limits}\n",
        single_component_manifest(
            "hostile",
            guests::HOSTILE_GUEST,
            "[sql.main]\n[config]\ngreeting = \"hi\"",
            "sql = [\"main\"]\nconfig = [\"greeting\"]"
        )
    );
    TestApp::new(&manifest)
}

/// After a guest misbehaved, the same app still serves a well-behaved call.
async fn still_serving(app: &berth::app::App) {
    assert_success(&run(app, "guest", &["not-granted-sql"]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_stopped_at_deadline() {
    let t = hostile("timeout_ms = 300");
    let app = t.load().await.unwrap();
    let started = Instant::now();
    let out = run(&app, "guest", &["loop"]).await;
    assert_eq!(
        out.status,
        Err(InvocationError::Limit(LimitExceeded::Timeout(
            Duration::from_millis(300)
        )))
    );
    assert!(
        out.status
            .unwrap_err()
            .to_string()
            .contains("time limit exceeded")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped near its deadline, took {:?}",
        started.elapsed()
    );
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loop_of_host_calls_stopped_at_deadline() {
    let t = hostile("timeout_ms = 300");
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["host-call-loop"]).await;
    assert!(
        matches!(
            out.status,
            Err(InvocationError::Limit(LimitExceeded::Timeout(_)))
        ),
        "{:?}",
        out.status
    );
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_growth_past_limit_is_stopped() {
    let t = hostile("memory_mb = 32");
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["memory"]).await;
    match &out.status {
        Err(InvocationError::Limit(LimitExceeded::Memory { limit, .. })) => {
            assert_eq!(*limit, 32 << 20)
        }
        other => panic!("expected the memory limit, got {other:?}"),
    }
    assert!(
        out.status
            .unwrap_err()
            .to_string()
            .contains("memory limit exceeded")
    );
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_traps_cleanly() {
    let t = hostile("");
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["recursion"]).await;
    let err = out.status.expect_err("stack overflow traps");
    assert!(matches!(err, InvocationError::Trap(_)), "{err:?}");
    still_serving(&app).await;
}

#[tokio::test]
async fn ungranted_logical_name_gets_not_granted() {
    let t = hostile("");
    let app = t.load().await.unwrap();
    still_serving(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_handles_are_stopped_at_the_handle_limit() {
    let t = hostile("");
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["handles"]).await;
    let err = out.status.expect_err("the handle limit traps the instance");
    assert_eq!(err, InvocationError::Limit(LimitExceeded::Handles(10_000)));
    assert_eq!(err.limit_name(), Some("handles"));
    assert!(err.to_string().contains("handle limit exceeded"), "{err}");
    assert!(!out.stdout.contains("holding"), "{}", out.stdout);
    still_serving(&app).await;
}

#[test]
fn refusals_and_limits_are_audited() {
    let ((), logs) = berth_tests::with_captured_logs("berth::audit=warn".into(), |rt| {
        rt.block_on(async {
            let t = hostile("memory_mb = 32");
            let app = t.load().await.unwrap();
            assert_success(&run(&app, "guest", &["not-granted-sql"]).await);
            assert!(run(&app, "guest", &["memory"]).await.status.is_err());
        })
    });
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("berth::audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("app=\"hostile\"")
            && l.contains("component=\"guest\"")
            && l.contains("what=\"sql.not-granted\"")
            && l.contains("subject=\"forbidden\"")),
        "{logs}"
    );
    assert!(
        audit.iter().any(|l| l.contains("what=\"limit.memory\"")),
        "{logs}"
    );
}

/// A component larger than the host accepts is refused before it is read
/// whole, and one that compiles for longer than the host allows is refused
/// (its compile runs on a blocking thread, off the serving threads).
#[tokio::test]
async fn oversized_and_slow_to_compile_components_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wasm");
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.resize(2 << 20, 0);
    std::fs::write(&big, bytes).unwrap();
    let settings = berth::engine::EngineSettings {
        max_instances: 4,
        max_memory_bytes: 64 << 20,
        cache_dir: dir.path().join("cache"),
        max_component_bytes: 1 << 20,
        max_compile_time: std::time::Duration::from_millis(1),
        ..berth::engine::EngineSettings::default()
    };
    let engine = berth::engine::HostEngine::new(settings).unwrap();
    let err = engine.load_component(&big).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("at most 1 MiB ([engine] max_component_mb)"),
        "{err}"
    );
    // A device or FIFO named as the component is never read.
    let err = engine
        .load_component(std::path::Path::new("/dev/zero"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");

    // A fresh cache: the users API compiles for well over a millisecond.
    let api = std::path::Path::new(guests::USERS_API);
    let err = engine.load_component(api).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("took longer than 1ms ([engine] max_compile_ms)"),
        "{err}"
    );
    // Its bytes are refused at once from then on, and the compile it
    // abandoned runs on but leaves nothing a later load would take.
    let err = format!("{:#}", engine.load_component(api).await.unwrap_err());
    assert!(err.contains("refused without compiling it again"), "{err}");
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let artifacts = std::fs::read_dir(dir.path().join("cache"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(artifacts, 0, "an abandoned compile wrote the cache");
}
