//! Serving: graceful shutdown (drain, then cancel), a header read timeout,
//! a clean 503 when the
//! host's instance slots are all in use, keep-alive and HTTP/2, bodies
//! streamed both ways, and the compiled-component cache rebuilt when it is
//! stale or damaged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::app::App;
use berth::config::HostConfig;
use berth::engine::{EngineSettings, HostEngine};
use berth_tests::{TestApp, guests, host_config, serve_with};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};

/// An app serving `guests/http_guest` at `/...` with `limits` (TOML lines).
fn web_app(limits: &str) -> TestApp {
    berth_tests::http_guest_app("serving", "http = [\"http://127.0.0.1:9\"]", limits)
}

async fn get(url: String) -> reqwest::Result<(u16, String)> {
    let response = reqwest::Client::new().get(url).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// A client that trickles a request's headers (slowloris) loses its
/// connection after the header read timeout (hyper applies none unless it
/// is given a timer); so does one that sends nothing at all, or only the
/// start of an HTTP/2 preface, before which hyper cannot tell the protocol
/// and applies no timeout of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_never_finished_loses_its_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t = web_app("");
    let server = serve_with(&t, HostConfig::default()).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let starts: [&[u8]; 3] = [
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-slow: ",
        b"",
        b"PRI * HTTP/2.0\r\n",
    ];
    let clients = starts.map(|start| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.write_all(start).await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
                .await
                .expect("the server closes the connection within a minute");
            assert!(matches!(read, Ok(0) | Err(_)), "{start:?}: {read:?}");
            (start, started.elapsed())
        })
    });
    let timeout = berth::triggers::http::HEADER_READ_TIMEOUT;
    for client in clients {
        let (start, waited) = client.await.unwrap();
        assert!(
            waited >= timeout - Duration::from_secs(1)
                && waited < timeout + Duration::from_secs(10),
            "{start:?}: closed after {waited:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests_then_cancels_the_rest() {
    let t = web_app("timeout_ms = 30000");
    let host = host_config(&t, "[serve]\nshutdown_grace_ms = 1500\n");
    let mut server = serve_with(&t, host).await;
    let short = tokio::spawn(get(format!("{}/sleep?ms=700", server.base)));
    let long = tokio::spawn(get(format!("{}/sleep?ms=20000", server.base)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let began = Instant::now();
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No longer accepting: the listener is closed.
    let addr = server.base.trim_start_matches("http://").to_string();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "a new connection was accepted after shutdown began"
    );
    // The request that fits in the grace period finishes normally.
    let (status, body) = short.await.unwrap().expect("drained request answered");
    assert_eq!((status, body.as_str()), (200, "slept 700 ms"));
    // The one that does not is cancelled once the grace period is over, and
    // the server ends then, long before the request would have.
    let cut = long.await.unwrap();
    assert!(cut.is_err(), "the long request should be cut: {cut:?}");
    server.stop().await;
    let ended = began.elapsed();
    assert!(
        ended >= Duration::from_millis(1400) && ended < Duration::from_secs(10),
        "shutdown took {ended:?} with a 1.5 s grace period"
    );
}

/// Serves `t` on an engine of its own with `max_instances` slots; returns
/// the base URL, the engine and the server task.
async fn serve_on_small_engine(
    t: &TestApp,
    max_instances: u32,
) -> (String, HostEngine, tokio::task::JoinHandle<()>) {
    let engine = HostEngine::new(EngineSettings {
        max_instances,
        max_memory_bytes: 64 << 20,
        cache_dir: berth_tests::engine().settings().cache_dir.clone(),
        ..EngineSettings::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut host = HostConfig::default();
    host.state_dir = Some(t.state_dir());
    let manifest = berth::manifest::Manifest::load(&t.manifest).unwrap();
    let app = Arc::new(App::load(&engine, manifest, &host).await.unwrap());
    let handler = Arc::new(berth::triggers::http::HttpHandler::new(app).unwrap());
    let served = tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        berth::triggers::http::serve(handler, listener, forever, Duration::ZERO)
            .await
            .unwrap();
    });
    (base, engine, served)
}

/// A client that gives up before the response head takes its invocation
/// with it: the instance slot comes back at once, not at the guest's time
/// limit.
#[tokio::test]
async fn an_abandoned_request_gives_its_instance_slot_back() {
    let t = web_app("concurrency = 50\ntimeout_ms = 30000");
    let (base, engine, served) = serve_on_small_engine(&t, 2).await;
    let url = format!("{base}/sleep?ms=20000");
    let request = tokio::spawn(async move { reqwest::get(url).await });
    // The invocation runs, holding one of the two slots...
    let waited = Instant::now();
    while engine.free_instance_slots() > 1 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the request never took a slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...until its client gives up, dropping its connection.
    request.abort();
    assert!(
        request.await.is_err_and(|e| e.is_cancelled()),
        "the client gave up"
    );
    let waited = Instant::now();
    while engine.free_instance_slots() < 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the abandoned invocation still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    served.abort();
}

#[tokio::test]
async fn at_capacity_requests_get_a_quick_503_and_slots_come_back() {
    let t = web_app("concurrency = 50");
    let (base, engine, served) = serve_on_small_engine(&t, 2).await;
    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(format!("{base}/sleep?ms=1500"))))
        .collect();
    let waited = Instant::now();
    while engine.free_instance_slots() > 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "slots never filled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The third request is refused at once, not queued behind the others.
    let asked = Instant::now();
    let (status, body) = get(format!("{base}/hello")).await.unwrap();
    let answered = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["limit"], "instances", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("host at capacity"),
        "{body}"
    );
    assert!(
        answered < Duration::from_millis(1000),
        "the refusal waited for a slot: {answered:?}"
    );
    assert!(
        berth::metrics::METRICS.get(
            "berth_limits_exceeded_total",
            &[("app", "serving"), ("limit", "instances")]
        ) >= 1
    );
    for request in busy {
        let (status, body) = request.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 1500 ms"));
    }
    // Finished instances give their slots back.
    let (status, body) = get(format!("{base}/hello")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from berth"));
    assert_eq!(engine.free_instance_slots(), 2);
    served.abort();
}

/// A raw HTTP connection to `base`: HTTP/2 with prior knowledge, or
/// HTTP/1.1 (keep-alive).
async fn connect(
    base: &str,
    http2: bool,
) -> Box<dyn FnMut(hyper::Request<BoxBody>) -> ResponseFuture + Send> {
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    if http2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        Box::new(move |req| Box::pin(send.send_request(req)))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let send = Arc::new(tokio::sync::Mutex::new(send));
        Box::new(move |req| {
            let send = send.clone();
            Box::pin(async move {
                let mut send = send.lock().await;
                send.ready().await?;
                send.send_request(req).await
            })
        })
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
type ResponseFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>
            + Send,
    >,
>;

fn request(method: &str, path: &str, body: BoxBody) -> hyper::Request<BoxBody> {
    hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(body)
        .unwrap()
}

fn empty() -> BoxBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

#[tokio::test]
async fn keep_alive_http2_and_bodies_streamed_both_ways() {
    // 16 MiB of guest memory, a 48 MiB body: only streaming gets it through.
    let t = web_app("memory_mb = 16\ntimeout_ms = 60000");
    let server = serve_with(&t, HostConfig::default()).await;

    for http2 in [false, true] {
        let mut send = connect(&server.base, http2).await;
        // Several requests over one connection (keep-alive, or one HTTP/2
        // connection's streams).
        for _ in 0..3 {
            let response = send(request("GET", "/hello", empty())).await.unwrap();
            let expected = if http2 {
                hyper::Version::HTTP_2
            } else {
                hyper::Version::HTTP_11
            };
            assert_eq!(response.version(), expected);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello from berth");
        }

        const CHUNK: usize = 256 << 10;
        const CHUNKS: usize = 192;
        let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);
        let mut sent = Sha256::new();
        for i in 0..CHUNKS {
            sent.update(chunk(i));
        }
        let frames = futures::stream::iter(
            (0..CHUNKS).map(move |i| Ok::<_, std::io::Error>(Frame::data(chunk(i)))),
        );
        let response = send(request(
            "POST",
            "/echo",
            BodyExt::boxed(StreamBody::new(frames)),
        ))
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let (mut received, mut bytes, mut frames) = (Sha256::new(), 0usize, 0usize);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received.update(&data);
                bytes += data.len();
                frames += 1;
            }
        }
        assert_eq!(bytes, CHUNK * CHUNKS, "http2={http2}");
        assert_eq!(received.finalize(), sent.clone().finalize());
        assert!(frames > 1, "the response arrived in one piece");
    }
    server.stop().await;
}

#[test]
fn compiled_cache_is_validated_and_rebuilt_when_stale_or_damaged() {
    let cache = tempfile::tempdir().unwrap();
    let fresh_engine = || {
        HostEngine::new(EngineSettings {
            max_instances: 4,
            max_memory_bytes: 64 << 20,
            cache_dir: cache.path().to_path_buf(),
            ..EngineSettings::default()
        })
        .unwrap()
    };
    let wasm = std::path::Path::new(guests::HTTP_GUEST);
    let digest = hex_digest(&std::fs::read(wasm).unwrap());
    let filter = tracing_subscriber::EnvFilter::new("berth=warn");
    // Loaded on the test's thread (`load_component_blocking`, the same
    // cache path without the blocking pool) so the captured log sees it.
    let ((), log) = berth_tests::with_captured_logs(filter, |rt| {
        rt.block_on(async {
            let engine = fresh_engine();
            let artifact = engine.artifact_path(&digest);
            // An artifact of another engine configuration for the same bytes.
            let stale = cache
                .path()
                .join(format!("{digest}-0123456789abcdef.cwasm"));
            std::fs::write(&stale, b"compiled by another engine").unwrap();

            // First load: compiled and written under this engine's name; the
            // stale artifact of the same bytes is removed.
            engine.load_component_blocking(wasm).unwrap();
            let good = std::fs::read(&artifact).expect("artifact written");
            assert!(!stale.exists(), "stale artifact kept");

            // A damaged artifact is refused by the header check and rebuilt.
            std::fs::write(&artifact, &good[..good.len() / 2]).unwrap();
            fresh_engine().load_component_blocking(wasm).unwrap();
            assert_eq!(
                std::fs::read(&artifact).unwrap().len(),
                good.len(),
                "not rebuilt"
            );

            // An artifact compiled by an engine of another configuration,
            // under this engine's name, fails wasmtime's compatibility check
            // and is rebuilt.
            let mut other = wasmtime::Config::new();
            other.epoch_interruption(false);
            let other = wasmtime::Engine::new(&other).unwrap();
            let foreign = other
                .precompile_component(&std::fs::read(wasm).unwrap())
                .unwrap();
            std::fs::write(&artifact, &foreign).unwrap();
            fresh_engine().load_component_blocking(wasm).unwrap();
            assert_ne!(std::fs::read(&artifact).unwrap(), foreign, "not rebuilt");

            // What was rebuilt loads from the cache without complaint (the
            // warnings are counted below) and runs.
            let rebuilt = fresh_engine().load_component_blocking(wasm).unwrap();
            assert!(rebuilt.component_type().exports(engine.engine()).count() > 0);
        })
    });
    assert_eq!(
        log.matches("discarding unusable cached component").count(),
        2,
        "{log}"
    );
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
