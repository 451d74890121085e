//! The HTTP trigger: outbound allow-list, limits answered with 503 JSON,
//! and a host that keeps serving through a misbehaving guest.

use berth_tests::{TestApp, guests, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTP server answering every request with `upstream ok`.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream ok")
                    .await;
            });
        }
    });
    port
}

fn app(allowed_port: u16) -> TestApp {
    TestApp::new(&format!(
        r#"
name = "httptest"
[component.web]
path = {path:?}
[component.web.grants]
http = ["http://127.0.0.1:{allowed_port}"]
[component.web.limits]
timeout_ms = 500
memory_mb = 32
[[trigger.http]]
route = "/..."
component = "web"
"#,
        path = guests::HTTP_GUEST
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn http_outbound_allow_list_and_limits() {
    let allowed = upstream().await;
    let other = upstream().await;
    let t = app(allowed);
    let server = serve(&t).await;
    let http = reqwest::Client::new();
    let base = &server.base;

    let hello = http.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.text().await.unwrap(), "hello from berth");

    let fetch = |port: u16| format!("{base}/fetch?url=http%3A%2F%2F127.0.0.1%3A{port}%2Fx");
    let ok = http.get(fetch(allowed)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "upstream 200: upstream ok");
    let denied = http.get(fetch(other)).send().await.unwrap();
    assert_eq!(denied.status(), 502);
    assert_eq!(denied.text().await.unwrap(), "error: HttpRequestDenied");

    // A spinning guest gets its time limit; the host answers 503 with JSON
    // naming the limit and keeps serving others meanwhile.
    let spinning = tokio::spawn({
        let url = format!("{base}/loop");
        async move { reqwest::get(url).await.unwrap() }
    });
    let during = http.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(during.status(), 200, "served while a neighbour spins");
    let spun = spinning.await.unwrap();
    assert_eq!(spun.status(), 503);
    let body: Value = spun.json().await.unwrap();
    assert_eq!(body["limit"], "time", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("time limit exceeded"),
        "{body}"
    );

    let hog = http.get(format!("{base}/memory")).send().await.unwrap();
    assert_eq!(hog.status(), 503);
    let body: Value = hog.json().await.unwrap();
    assert_eq!(body["limit"], "memory", "{body}");

    assert_eq!(
        http.get(format!("{base}/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop().await;
}
