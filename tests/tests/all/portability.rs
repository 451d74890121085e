//! Components built against standard WASI interfaces only, as for other
//! hosts, run on Berth unchanged with the same grants and isolation as
//! Berth's own ports.

use berth_tests::{TestApp, guests, pong_server, run, single_component_manifest};

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

/// Runs `guests/std_kv_guest` against bucket `cache` as `decl` (manifest)
/// and `host` (host config) serve it.
async fn standard_keyvalue_script(decl: &str, host: &str) -> String {
    let t = TestApp::new(&single_component_manifest(
        &berth_tests::unique("stdkv"),
        guests::STD_KV_GUEST,
        &format!("{decl}\n[kv.secret]\nmemory = true"),
        "kv = [\"cache\"]",
    ));
    let app = t
        .load_with(&berth_tests::host_config(&t, host))
        .await
        .expect("a component importing only wasi:keyvalue loads");
    let out = run(&app, "guest", &["cache", "secret"]).await;
    berth_tests::assert_success(&out);
    out.stdout
}

fn assert_keyvalue_script(stdout: &str) {
    for (version, p) in [("0.2.0-draft", "d1-"), ("0.2.0-draft2", "d2-")] {
        let lines: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{version} ")))
            .take(10)
            .collect();
        assert_eq!(
            lines,
            [
                "open-denied Error::AccessDenied".to_string(),
                "get 1".into(),
                "exists true".into(),
                "exists-after-delete false".into(),
                "get-after-delete none".into(),
                format!("get-many {p}k1=v1,none,{p}k2=v2"),
                format!("list-keys {p}k1,{p}k2"),
                "increment 5".into(),
                "increment 10".into(),
                "after-delete-many none".into(),
            ],
            "{stdout}"
        );
    }
    let cas: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("0.2.0-draft2 cas-"))
        .collect();
    assert_eq!(
        cas,
        [
            "0.2.0-draft2 cas-current none",
            "0.2.0-draft2 cas-swap true",
            "0.2.0-draft2 cas-current x",
            "0.2.0-draft2 cas-stale failed, now y",
            "0.2.0-draft2 cas-retry true",
            "0.2.0-draft2 cas-final z",
        ],
        "{stdout}"
    );
}

#[tokio::test]
async fn standard_wasi_keyvalue_both_drafts_memory() {
    assert_keyvalue_script(&standard_keyvalue_script("[kv.cache]\nmemory = true", "").await);
}

#[tokio::test]
async fn standard_wasi_keyvalue_both_drafts_sqlite() {
    assert_keyvalue_script(&standard_keyvalue_script("[kv.cache]", "").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_wasi_keyvalue_both_drafts_redis() {
    let Some(url) = berth_tests::service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    // A fresh prefix per run: the script's keys start from nothing.
    let prefix = berth_tests::unique("stdkv");
    let host = format!("[kv.cache]\ntype = \"redis\"\nurl = {url:?}\nprefix = \"{prefix}:\"\n");
    assert_keyvalue_script(&standard_keyvalue_script("[kv.cache]", &host).await);
    assert!(!berth_tests::redis_keys(&url, &prefix).await.is_empty());
    berth_tests::redis_delete_prefix(&url, &prefix).await;
}

/// The host's bounds on the standard interface (`std_kv_guest … limits`):
/// at most 16 compare-and-swap handles open, each holding a value in host
/// memory; no `get-many` answer larger than the component's memory (a key
/// asked for many times would multiply it); `draft` listings whose
/// counting cursor goes on from where the last page ended, one call a
/// page, and walk at most 16 pages a call towards a cursor they did not
/// give, then return an empty page to go on from.
#[tokio::test]
async fn standard_wasi_keyvalue_limits_memory() {
    let t = TestApp::new(&format!(
        "name = \"stdkvlimits\"\n[kv.cache]\nmemory = true\n[component.guest]\npath = {:?}\n[component.guest.grants]\nkv = [\"cache\"]\n[component.guest.limits]\nmemory_mb = 16\n",
        guests::STD_KV_GUEST
    ));
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["cache", "secret", "limits"]).await;
    berth_tests::assert_success(&out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "limits cas-17th Error::Other(\"at most 16 compare-and-swap handles may be open at once; drop one first\")",
            "limits cas-after-drop true",
            "limits get-many-17-mib Error::Other(\"the values asked for take more than the component's memory limit (16777216 bytes); ask for fewer keys at a time\")",
            "limits get-many-8-mib Ok(8)",
            "limits draft-list 17000 keys in 17 calls, sorted true",
            "limits draft-list-from-16500 500 keys in 2 calls, first Some(\"k16500\")",
            "limits draft-list-from-max 0 keys in 2 calls",
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn standard_wasi_keyvalue_needs_the_bucket_grant() {
    let t = TestApp::new(&single_component_manifest(
        "stdkvnogrant",
        guests::STD_KV_GUEST,
        "[kv.cache]",
        "",
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(t.load()).err().expect("refused at load");
    assert!(
        format!("{err:#}").contains("imports `wasi:keyvalue/"),
        "{err:#}"
    );
}

/// The component a guest toolchain built, or `None` (the test reports
/// itself skipped) when the tool was not found, which
/// `BERTH_TEST_REQUIRE_TOOLCHAINS` (set by `.ci/run`) turns into a failure.
fn toolchain_guest(tool: &str, wasm: Option<&'static str>) -> Option<&'static str> {
    let built = berth_tests::toolchain_found(
        &format!("{tool} (when the tests were built)"),
        wasm.is_some(),
    );
    wasm.filter(|_| built)
}

/// Serves `wasm`, a `wasi:http` proxy built from the standard WIT alone by
/// another toolchain, and checks its answer, `hello from <lang> at <path>`.
async fn standard_http_proxy_serves_unchanged(wasm: &str, lang: &str) {
    // Its world imports `outgoing-handler`, so the manifest grants a
    // destination; the component itself is unchanged.
    let t = TestApp::new(&format!(
        "name = \"{lang}\"\n[component.web]\npath = {wasm:?}\n[component.web.grants]\nhttp = [\"https://api.example.com\"]\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n"
    ));
    let server = berth_tests::serve(&t).await;
    let response = reqwest::get(format!("{}/hello/there?x=1", server.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        format!("hello from {lang} at /hello/there?x=1")
    );
    server.stop().await;
}

#[tokio::test]
async fn componentize_py_http_proxy_serves_unchanged() {
    if let Some(wasm) = toolchain_guest("componentize-py", guests::PYTHON_HTTP) {
        standard_http_proxy_serves_unchanged(wasm, "python").await;
    }
}

#[tokio::test]
async fn componentize_js_http_proxy_serves_unchanged() {
    if let Some(wasm) = toolchain_guest("componentize-js", guests::JS_HTTP) {
        standard_http_proxy_serves_unchanged(wasm, "js").await;
    }
}

/// Runs `wasm`, a command using the sql, kv, blob and config ports and
/// outbound HTTP, and checks its one line per port. `secret_error` is how
/// the language names the `not-granted` config error.
async fn guest_uses_every_port_and_outbound_http(wasm: &str, secret_error: &str) {
    let port = pong_server().await;
    let t = TestApp::new(&single_component_manifest(
        "ports",
        wasm,
        "[sql.main]\n[kv.cache]\n[blob.files]\n[config]\ngreeting = \"hello\"\nsecret = \"hidden-value\"",
        &format!(
            "sql = [\"main\"]\nkv = [\"cache\"]\nblob = [\"files\"]\nconfig = [\"greeting\"]\nhttp = [\"http://127.0.0.1:{port}\"]"
        ),
    ));
    let host = berth_tests::host_config(&t, "[outbound]\nallow_private = [\"127.0.0.0/8\"]\n");
    let app = t.load_with(&host).await.expect("the component loads");
    let out = run(&app, "guest", &[&format!("127.0.0.1:{port}")]).await;
    berth_tests::assert_success(&out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "sql 1:ada",
            "kv hi 2",
            "blob hello blob 10",
            "config hello",
            &format!("config-secret {secret_error}"),
            "http 200 pong",
        ],
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stdout.contains("hidden-value") && !out.stderr.contains("hidden-value"));
}

#[tokio::test]
async fn python_guest_uses_every_port_and_outbound_http() {
    if let Some(wasm) = toolchain_guest("componentize-py", guests::PYTHON_PORTS) {
        guest_uses_every_port_and_outbound_http(wasm, "Error_NotGranted").await;
    }
}

#[tokio::test]
async fn js_guest_uses_every_port_and_outbound_http() {
    if let Some(wasm) = toolchain_guest("componentize-js", guests::JS_PORTS) {
        guest_uses_every_port_and_outbound_http(wasm, "not-granted").await;
    }
}

#[tokio::test]
async fn c_guest_uses_every_port_and_outbound_http() {
    if let Some(wasm) = toolchain_guest("clang-14, wit-bindgen and wasm-tools", guests::C_PORTS) {
        guest_uses_every_port_and_outbound_http(wasm, "not-granted").await;
    }
}
