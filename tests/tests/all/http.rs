//! The HTTP trigger and outbound HTTP: allow-list, resolved-address checks,
//! timeouts, size cap, redirects, named upstreams with host-held
//! credentials, limits answered with 503 JSON, and a host that keeps
//! serving through a misbehaving guest.

use std::sync::{Arc, Mutex};

use berth::config::HostConfig;
use berth_tests::{TestApp, guests, host_config, serve, serve_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTP server: every request head it receives is recorded, and
/// `respond` gives the raw bytes to answer it with (`None`: never answer).
struct Upstream {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(respond: fn(&str) -> Option<Vec<u8>>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let answer = respond(&head);
                    recorded.lock().unwrap().push(head);
                    match answer {
                        Some(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                        }
                        None => tokio::time::sleep(std::time::Duration::from_secs(30)).await,
                    }
                });
            }
        });
        Upstream { port, heads }
    }

    fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A server answering every request with `upstream ok`.
async fn upstream() -> u16 {
    Upstream::start(|_| Some(ok("upstream ok"))).await.port
}

/// A host config that lets guests reach loopback test servers.
fn loopback_allowed(t: &TestApp, extra: &str) -> HostConfig {
    host_config(
        t,
        &format!("[outbound]\nallow_private = [\"127.0.0.0/8\"]\n{extra}"),
    )
}

/// `GET`s `url` through the guest's `/fetch` route.
async fn fetch(base: &str, url: &str, header: Option<&str>) -> (u16, String) {
    let mut query = vec![("url", url)];
    query.extend(header.map(|h| ("header", h)));
    fetch_query(base, &query).await
}

/// [`fetch`] with `path` as the raw `path-with-query` the guest sets, to
/// test what the host puts on the wire.
async fn fetch_path(base: &str, url: &str, path: &str) -> (u16, String) {
    fetch_query(base, &[("url", url), ("path", path)]).await
}

async fn fetch_query(base: &str, query: &[(&str, &str)]) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{base}/fetch"))
        .query(query)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn web_app(grants: &str) -> TestApp {
    berth_tests::http_guest_app("outbound", grants, "")
}

fn app(allowed_port: u16) -> TestApp {
    berth_tests::http_guest_app(
        "httptest",
        &format!("http = [\"http://127.0.0.1:{allowed_port}\"]"),
        "timeout_ms = 500\nmemory_mb = 32",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn http_outbound_allow_list_and_limits() {
    let allowed = upstream().await;
    let other = upstream().await;
    let t = app(allowed);
    let server = serve_with(&t, loopback_allowed(&t, "")).await;
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
    // Both requests are counted for the tenant: one sent, one refused.
    let egress = |outcome| {
        berth::metrics::METRICS.get(
            "berth_egress_requests_total",
            &[("app", "httptest"), ("outcome", outcome)],
        )
    };
    assert!(egress("sent") >= 1, "sent: {}", egress("sent"));
    assert!(egress("refused") >= 1, "refused: {}", egress("refused"));

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

#[tokio::test(flavor = "multi_thread")]
async fn http_outbound_refuses_special_addresses_in_every_spelling() {
    let target = Upstream::start(|_| Some(ok("reached"))).await;
    let p = target.port;
    let spellings = berth_tests::special_address_urls(p);
    let grants = format!("http = {spellings:?}");
    let t = web_app(&grants);
    let server = serve(&t).await;
    for url in &spellings {
        let (status, body) = fetch(&server.base, &format!("{url}/latest/meta-data"), None).await;
        assert_eq!(status, 502, "{url}: {body}");
        assert_eq!(body, "error: DestinationIpProhibited", "{url}");
    }
    // A trailing dot changes nothing (the allow-list's `localhost` is
    // `localhost.`); user info is refused as such.
    for (url, refused) in [
        (
            format!("http://localhost.:{p}/x"),
            "error: DestinationIpProhibited",
        ),
        (
            format!("http://user@127.0.0.1:{p}/x"),
            "error: HttpRequestUriInvalid",
        ),
    ] {
        let (status, body) = fetch(&server.base, &url, None).await;
        assert_eq!(status, 502, "{url}: {body}");
        assert_eq!(body, refused, "{url}");
    }
    assert_eq!(
        target.requests(),
        Vec::<String>::new(),
        "no request reached loopback"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_outbound_timeouts_size_cap_and_no_redirects() {
    let silent = Upstream::start(|_| None).await;
    let big = Upstream::start(|_| Some(ok(&"x".repeat(4096)))).await;
    let chunked = Upstream::start(|_| {
        let chunk = format!("{:x}\r\n{}\r\n", 2048, "y".repeat(2048));
        Some(
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n"
            )
            .into_bytes(),
        )
    })
    .await;
    let secret = Upstream::start(|_| Some(ok("secret"))).await;
    let redirect = Upstream::start(|_| {
        Some(b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec())
    })
    .await;
    // A 304 declares the length of the resource it does not send.
    let not_modified = Upstream::start(|_| {
        Some(
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 4096\r\nconnection: close\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    // So may a 204 (against RFC 9110, but servers do).
    let no_content = Upstream::start(|_| {
        Some(
            b"HTTP/1.1 204 No Content\r\ncontent-length: 4096\r\nconnection: close\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let urls = [
        &silent,
        &big,
        &chunked,
        &secret,
        &redirect,
        &not_modified,
        &no_content,
    ]
    .map(|u| format!("http://127.0.0.1:{}", u.port));
    let t = web_app(&format!("http = {urls:?}"));
    let host = loopback_allowed(
        &t,
        "first_byte_timeout_ms = 300\nmax_response_bytes = 3000\n",
    );
    let server = serve_with(&t, host).await;
    let base = &server.base;

    let started = std::time::Instant::now();
    let (status, body) = fetch(base, &format!("{}/", urls[0]), None).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "error: ConnectionReadTimeout")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let (status, body) = fetch(base, &format!("{}/", urls[1]), None).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "error: HttpResponseBodySize(Some(4096))")
    );

    // Without a length up front, the body fails once it passes the cap.
    let (status, body) = fetch(base, &format!("{}/", urls[2]), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("yyyy"), "{body}");

    let (status, body) = fetch(base, &format!("{}/", urls[4]), None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 302: "),
        "not followed"
    );
    let (status, body) = fetch(base, &format!("{}/", urls[5]), None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 304: "),
        "a bodiless response is not held to the size cap"
    );
    let (status, body) = fetch(base, &format!("{}/", urls[6]), None).await;
    assert_eq!((status, body.as_str()), (200, "upstream 204: "));
    // The answer to a HEAD declares the length a GET would get.
    let (status, body) = fetch_query(
        base,
        &[("url", &format!("{}/", urls[1])), ("method", "HEAD")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "upstream 200: "));
    assert_eq!(secret.requests().len(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_named_upstream_adds_credentials_the_guest_never_sees() {
    const TOKEN: &str = "tok-4f9a1c-canary";
    let api = Upstream::start(|head| {
        let authorized = head
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
        Some(match authorized {
            true => ok("paid"),
            false => b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_vec(),
        })
    })
    .await;
    let t = web_app(r#"upstreams = ["pay", "down"]"#);
    let token_file = t.state_dir().with_file_name("token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let host = host_config(
        &t,
        &format!(
            "[upstreams.pay]\nurl = \"http://127.0.0.1:{}/api/v1\"\nheaders = {{ Authorization = \"Bearer ${{file:{t}}}\" }}\n\
             [upstreams.down]\nurl = \"http://127.0.0.1:1\"\nheaders = {{ X-Api-Key = \"${{file:{t}}}\" }}\n",
            api.port,
            t = token_file.display()
        ),
    );
    let server = serve_with(&t, host).await;

    // The guest tries to forge the header; the host's value wins.
    let (status, body) = fetch(
        &server.base,
        "http://pay.upstream/charge?amount=5",
        Some("authorization:Bearer forged"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "upstream 200: paid"));
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    let head = &requests[0];
    assert!(
        head.starts_with("GET /api/v1/charge?amount=5 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: 127.0.0.1:{}", api.port)),
        "{head}"
    );
    assert!(!head.contains("forged"), "{head}");
    assert!(!body.contains(TOKEN));

    // A path not in origin form never reaches the wire: a server, or a
    // proxy in front of it, would route by it, credential and all.
    for path in [
        "http://evil.example/steal",
        "evil.example:443",
        "@evil.example/x",
    ] {
        let (status, body) = fetch_path(&server.base, "http://pay.upstream/", path).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.starts_with("error: "), "{path}: {body}");
    }
    assert_eq!(api.requests().len(), 1);

    // Nor does a path some server could resolve above the base path, in
    // any spelling; the refusal names nothing of the upstream.
    for path in [
        "/../admin",
        "/..;/admin",
        "/a%2f..%2fadmin",
        "/%252e%252e/admin",
    ] {
        let (status, body) = fetch_path(&server.base, "http://pay.upstream/", path).await;
        assert_eq!(
            (status, body.as_str()),
            (502, "error: HttpRequestDenied"),
            "{path}"
        );
    }
    assert_eq!(api.requests().len(), 1);

    // A failing upstream's error carries no credential.
    let (status, body) = fetch(&server.base, "http://down.upstream/x", None).await;
    assert_eq!((status, body.as_str()), (502, "error: ConnectionRefused"));

    // Upstreams are reached only by name and only when granted; the
    // allow-list grants nothing here, so the raw address is refused.
    let (status, body) = fetch(&server.base, "http://other.upstream/x", None).await;
    assert_eq!((status, body.as_str()), (502, "error: HttpRequestDenied"));
    let raw = format!("http://127.0.0.1:{}/api/v1/charge", api.port);
    let (status, body) = fetch(&server.base, &raw, None).await;
    assert_eq!((status, body.as_str()), (502, "error: HttpRequestDenied"));
    assert_eq!(api.requests().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn http_upstream_grant_must_exist_in_host_config() {
    let t = web_app(r#"upstreams = ["pay"]"#);
    let err = t
        .load_with(&host_config(&t, "[outbound]\n"))
        .await
        .err()
        .expect("load fails")
        .to_string();
    assert!(err.contains("upstream `pay`"), "{err}");
    assert!(err.contains("host.toml"), "{err}");
    assert!(err.contains("berth.toml"), "{err}");

    // An upstream that lists the apps it serves serves no other.
    let listed = "[upstreams.pay]\nurl = \"https://api.example.com\"\napps = [\"billing\"]\n";
    let err = t
        .load_with(&host_config(&t, listed))
        .await
        .err()
        .expect("load fails")
        .to_string();
    assert!(err.contains("`upstreams.pay.apps`"), "{err}");
    assert!(err.contains("app `outbound`"), "{err}");

    let bad = host_config(&t, "[outbound]\nallow_private = [\"intranet\"]\n");
    let err = web_app(r#"http = ["https://example.com"]"#)
        .load_with(&bad)
        .await
        .err()
        .expect("load fails")
        .to_string();
    assert!(err.contains("outbound.allow_private"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_concurrency_and_outbound_request_limits() {
    let up = upstream().await;
    let t = TestApp::new(&format!(
        r#"
name = "limited"
[component.web]
path = {path:?}
[component.web.grants]
http = ["http://127.0.0.1:{up}"]
[component.web.limits]
timeout_ms = 700
concurrency = 1
outbound_requests = 2
[[trigger.http]]
route = "/..."
component = "web"
"#,
        path = guests::HTTP_GUEST
    ));
    let server = serve_with(&t, loopback_allowed(&t, "")).await;
    let base = server.base.clone();

    // Two requests per invocation are fine; the third is refused.
    let url = format!("http://127.0.0.1:{up}/x");
    let twice = reqwest::Client::new()
        .get(format!("{base}/fetch"))
        .query(&[("url", url.as_str()), ("times", "2")])
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 200);
    let thrice = reqwest::Client::new()
        .get(format!("{base}/fetch"))
        .query(&[("url", url.as_str()), ("times", "3")])
        .send()
        .await
        .unwrap();
    assert_eq!(thrice.status(), 502);
    let body = thrice.text().await.unwrap();
    assert!(body.contains("outbound request limit reached"), "{body}");
    assert!(
        berth::metrics::METRICS.get(
            "berth_limits_exceeded_total",
            &[("app", "limited"), ("limit", "outbound_requests")]
        ) >= 1
    );

    // While one instance spins, the only slot is taken: 503 at once.
    let spinning = tokio::spawn({
        let url = format!("{base}/loop");
        async move { reqwest::get(url).await.unwrap().status() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let busy = reqwest::get(format!("{base}/hello")).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(300));
    assert_eq!(busy.status(), 503);
    let body: Value = busy.json().await.unwrap();
    assert_eq!(body["limit"], "concurrency", "{body}");
    assert_eq!(
        spinning.await.unwrap(),
        503,
        "the spinner hit its time limit"
    );
    // The slot is free again.
    let after = reqwest::get(format!("{base}/hello")).await.unwrap();
    assert_eq!(after.status(), 200);
    server.stop().await;

    // Each limit hit was counted, and the admin listener exposes it.
    let metrics = &berth::metrics::METRICS;
    let limited = |limit| {
        metrics.get(
            "berth_limits_exceeded_total",
            &[("app", "limited"), ("limit", limit)],
        )
    };
    assert!(limited("concurrency") >= 1);
    assert!(limited("time") >= 1);
    let ok = metrics.get(
        "berth_invocations_total",
        &[("app", "limited"), ("trigger", "http"), ("outcome", "ok")],
    );
    assert!(ok >= 3, "{ok}");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let admin_task = tokio::spawn(berth::admin::serve(admin, ready));
    let text = reqwest::get(format!("{admin_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "berth_limits_exceeded_total{app=\"limited\",component=\"web\",limit=\"concurrency\"}"
        ),
        "{text}"
    );
    let health = reqwest::get(format!("{admin_url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    admin_task.abort();
}

#[tokio::test]
async fn limits_capped_by_host_maxima() {
    let t = TestApp::new(&format!(
        r#"
name = "greedy"
[component.web]
path = {path:?}
[component.web.grants]
http = ["https://example.com"]
[component.web.limits]
memory_mb = 4096
timeout_ms = 3600000
concurrency = 100000
outbound_requests = 100000
handles = 1000000
sql_max_rows = 1000000
kv_max_value_kb = 524288
"#,
        path = guests::HTTP_GUEST
    ));
    let host = host_config(
        &t,
        "[engine]\nmax_memory_mb = 64\nmax_timeout_ms = 2000\nmax_concurrency = 4\nmax_outbound_requests = 3\nmax_handles = 500\n[engine.max_payloads]\nsql_max_rows = 100\nkv_max_value_kb = 64\nblob_max_chunk_mb = 1\n",
    );
    let app = t.load_with(&host).await.unwrap();
    let limits = &app.component("web").unwrap().env.limits;
    assert_eq!(limits.memory_bytes, 64 << 20);
    assert_eq!(limits.timeout, std::time::Duration::from_secs(2));
    assert_eq!(limits.concurrency, 4);
    assert_eq!(limits.outbound_requests, 3);
    assert_eq!(limits.handles, 500);
    assert_eq!(limits.payloads.sql_max_rows, 100);
    assert_eq!(limits.payloads.kv_max_value_bytes, 64 << 10);
    // Below the host's maximum the default stays: 4 MiB chunks capped to 1.
    assert_eq!(limits.payloads.blob_max_chunk_bytes, 1 << 20);
    assert_eq!(limits.payloads.message_max_bytes, 1 << 20);
}
