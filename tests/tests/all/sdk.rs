//! The Rust guest SDK (`guests/berth-sdk`), through `guests/sdk_example`:
//! typed rows and the repository helper, transactions, routing and errors,
//! and the kv, blob, config and outbound HTTP wrappers, on the embedded
//! backends.

use berth_tests::{TestApp, guests, pong_server, serve_with};

fn sdk_example_app(upstream_port: u16) -> TestApp {
    TestApp::new(&format!(
        r#"name = "sdk-example"
[sql.main]
[kv.counters]
[blob.files]
[config]
upstream_url = "http://127.0.0.1:{upstream_port}"
secret = "not for this component"

[component.web]
path = {path:?}
[component.web.grants]
sql = ["main"]
kv = ["counters"]
blob = ["files"]
config = ["upstream_url"]
http = ["http://127.0.0.1:{upstream_port}"]

[[trigger.http]]
route = "/..."
component = "web"
"#,
        path = guests::SDK_EXAMPLE
    ))
}

#[tokio::test]
async fn sdk_example_uses_repository_routing_and_every_port() {
    let upstream = pong_server().await;
    let t = sdk_example_app(upstream);
    let host = berth_tests::host_config(&t, "[outbound]\nallow_private = [\"127.0.0.0/8\"]\n");
    let server = serve_with(&t, host).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let send = |method: reqwest::Method, path: &str, body: &str| {
        http.request(method, url(path)).body(body.to_owned()).send()
    };
    use reqwest::Method;

    // Repository: insert, find, list, delete.
    let created = send(Method::POST, "/users", "Ada, ada@example.com")
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let ada: serde_json::Value = created.json().await.unwrap();
    assert_eq!(ada["name"], "Ada");
    let id = ada["id"].as_i64().expect("an id");
    let found = send(Method::GET, &format!("/users/{id}"), "")
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    assert_eq!(found.json::<serde_json::Value>().await.unwrap(), ada);

    // A transaction: all lines or none.
    let batch = send(
        Method::POST,
        "/users/batch",
        "Bob,bob@example.com\nCy,cy@example.com\n",
    )
    .await
    .unwrap();
    assert_eq!(batch.status(), 201);
    assert_eq!(batch.text().await.unwrap(), r#"{"created":2}"#);
    let failed = send(
        Method::POST,
        "/users/batch",
        "Dee,dee@example.com\nAda again,ada@example.com\n",
    )
    .await
    .unwrap();
    assert_eq!(
        failed.status(),
        500,
        "a unique violation is not the client's input error"
    );
    let malformed = send(
        Method::POST,
        "/users/batch",
        "Eve,eve@example.com\nno email here\n",
    )
    .await
    .unwrap();
    assert_eq!(malformed.status(), 400);
    assert!(
        malformed
            .text()
            .await
            .unwrap()
            .contains("is not `name,email`")
    );
    let all: Vec<serde_json::Value> = send(Method::GET, "/users", "")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = all.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["Ada", "Bob", "Cy"],
        "the failed batches left nothing behind"
    );

    let deleted = send(Method::DELETE, &format!("/users/{id}"), "")
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = send(Method::GET, &format!("/users/{id}"), "")
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let again = send(Method::DELETE, &format!("/users/{id}"), "")
        .await
        .unwrap();
    assert_eq!(again.status(), 404);

    // Routing errors.
    let bad_id = send(Method::GET, "/users/seven", "").await.unwrap();
    assert_eq!(bad_id.status(), 400);
    assert_eq!(
        send(Method::GET, "/nowhere", "").await.unwrap().status(),
        404
    );
    assert_eq!(
        send(Method::PATCH, "/users", "").await.unwrap().status(),
        405
    );

    // Key-value.
    let visits = || async {
        let response = send(Method::GET, "/visits", "").await.unwrap();
        response.text().await.unwrap().parse::<i64>().unwrap()
    };
    let first = visits().await;
    let second = visits().await;
    assert_eq!(second, first + 1);

    // Blob.
    let put = send(Method::PUT, "/files/note.txt", "hello blob")
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(put.text().await.unwrap(), r#"{"size":10}"#);
    let got = send(Method::GET, "/files/note.txt", "").await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.unwrap(), "hello blob");
    assert_eq!(
        send(Method::GET, "/files/absent.txt", "")
            .await
            .unwrap()
            .status(),
        404
    );

    // Config: granted, and not granted.
    let value = send(Method::GET, "/config/upstream_url", "").await.unwrap();
    assert_eq!(
        value.text().await.unwrap(),
        format!("http://127.0.0.1:{upstream}")
    );
    let secret = send(Method::GET, "/config/secret", "").await.unwrap();
    assert_eq!(secret.status(), 403);
    assert!(
        !secret
            .text()
            .await
            .unwrap()
            .contains("not for this component")
    );

    // Outbound HTTP.
    let proxied = send(Method::GET, "/upstream", "").await.unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(proxied.text().await.unwrap(), "200 pong");

    server.stop().await;
}

/// Every example in the SDK's documentation compiles for `wasm32-wasip2`,
/// and those that are not `no_run` run, under `berth run` itself.
#[test]
fn sdk_doc_examples_compile_and_run_under_berth() {
    let berth = crate::cli::berth();
    let runner = format!(
        "target.wasm32-wasip2.runner=[{:?}, \"run\"]",
        berth.get_program().to_string_lossy()
    );
    let target_dir = std::path::Path::new(guests::GUESTS_RELEASE_DIR).join("../../sdk-doctest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(std::path::Path::new(guests::REPO_ROOT).join("guests"))
        .args([
            "test",
            "--doc",
            "-p",
            "berth-sdk",
            "--target",
            "wasm32-wasip2",
            "--config",
        ])
        .arg(&runner)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("BERTH_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 12, "expected at least 12 doc examples:\n{stdout}");
}
