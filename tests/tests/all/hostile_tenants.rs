//! The hostile-tenant suite: two tenants served by one `berth serve` host,
//! one attacking the host and its neighbour through every port, one
//! checking that its data and its service stay untouched. Each attack must
//! end in a clear error for the attacker (a typed port error, or a 503/500
//! naming the limit or the trap) and nothing at all for the victim.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth::config::HostConfig;
use berth::metrics::METRICS;
use berth::tenants::Tenants;
use berth_tests::{engine, guests};

const VICTIM_DATA: &str = "victim-data";
const ATTACKER_DATA: &str = "attacker-data";

/// A served `berth serve` host and its HTTP client.
struct Host {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Host {
    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the host answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

/// Writes app `name` serving `tenant_guest` at `/...`; `extra` adds
/// manifest lines (more declarations, components or triggers).
fn write_tenant(apps: &Path, name: &str, grants: &str, limits: &str, extra: &str) {
    let dir = apps.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!(
        r#"name = "{name}"
[sql.main]
[kv.cache]
[blob.files]
[config]
greeting = "hello"
token = "not the secret"
{extra}
[component.tenant]
path = {path:?}
[component.tenant.grants]
sql = ["main"]
blob = ["files"]
config = ["greeting"{token}]
{grants}
[component.tenant.limits]
{limits}
[[trigger.http]]
route = "/..."
component = "tenant"
"#,
        path = guests::TENANT_GUEST,
        token = if name == "victim" { ", \"token\"" } else { "" },
    );
    std::fs::write(dir.join("berth.toml"), manifest).unwrap();
}

/// Apps that must be refused at load, each with the words its error names.
fn write_refused_apps(apps: &Path) -> Vec<(&'static str, &'static str)> {
    // Imports every port but is granted none of them.
    let dir = apps.join("forbidden");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        format!(
            "name = \"forbidden\"\n[component.tenant]\npath = {:?}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"tenant\"\n",
            guests::TENANT_GUEST
        ),
    )
    .unwrap();
    // Not a component at all.
    let dir = apps.join("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        "name = \"garbage\"\n[component.tenant]\npath = \"app.wasm\"\n",
    )
    .unwrap();
    // A precompiled artifact: native code the host did not produce.
    let dir = apps.join("precompiled");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = std::fs::read(guests::HTTP_GUEST).unwrap();
    let native = engine().engine().precompile_component(&wasm).unwrap();
    std::fs::write(dir.join("app.wasm"), native).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        "name = \"precompiled\"\n[component.tenant]\npath = \"app.wasm\"\n",
    )
    .unwrap();
    vec![
        ("forbidden", "imports `berth:infra/sql@0.1.0`"),
        ("garbage", "cannot compile component"),
        ("precompiled", "not a WebAssembly file"),
    ]
}

async fn start(apps: &Path, host: HostConfig) -> (Arc<Tenants>, Host, Vec<String>) {
    let tenants = Arc::new(Tenants::new(engine().clone(), host, apps.to_path_buf()));
    let errors = tenants.sync().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(berth::triggers::http::serve(
        tenants.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let host = Host {
        base,
        http: reqwest::Client::new(),
        stop: Some(stop),
        served,
    };
    (tenants, host, errors)
}

/// Every line of `body` satisfies `refused`, and there is at least one.
fn all_refused(what: &str, body: &str, refused: impl Fn(&str) -> bool) {
    assert!(!body.is_empty(), "{what}: empty answer");
    for line in body.lines() {
        assert!(refused(line), "{what}: not refused: {line}\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tenant_suite_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    let canary = format!("canary-{}", berth_tests::unique("secret"));
    let canary_file = dir.path().join("victim-token");
    std::fs::write(&canary_file, &canary).unwrap();
    let host_toml = dir.path().join("host.toml");
    std::fs::write(
        &host_toml,
        format!(
            "[app_config.victim]\ntoken = \"${{file:{}}}\"\n",
            canary_file.display()
        ),
    )
    .unwrap();
    let host = HostConfig::load(&host_toml).unwrap();

    write_tenant(
        &apps,
        "victim",
        "kv = [\"cache\"]\npublish = [\"notes\"]\nemail_senders = [\"app@victim.test\"]",
        "timeout_ms = 5000",
        "",
    );
    write_tenant(
        &apps,
        "attacker",
        "kv = [\"cache\", \"received\"]\npublish = [\"jobs\"]\nemail_senders = [\"app@attacker.test\"]",
        "timeout_ms = 1000\nmemory_mb = 32",
        &format!(
            r#"[kv.received]
[component.worker]
path = {worker:?}
[component.worker.grants]
kv = ["received"]
[[trigger.message]]
topic = "jobs"
component = "worker"
max_deliveries = 3
"#,
            worker = guests::MESSAGING_HANDLER
        ),
    );
    let refused = write_refused_apps(&apps);
    let (_tenants, host, errors) = start(&apps, host).await;

    // Forbidden imports, invalid binaries and foreign native code are
    // refused at load, each with an error naming it; the others serve.
    assert_eq!(errors.len(), refused.len(), "{errors:#?}");
    for (app, words) in &refused {
        assert!(
            errors.iter().any(|e| e.contains(app) && e.contains(words)),
            "{app}: {words:?} in {errors:#?}"
        );
    }

    assert_eq!(
        host.get(&format!("/victim/seed?v={VICTIM_DATA}")).await,
        (200, "seeded".into())
    );
    assert_eq!(
        host.get(&format!("/attacker/seed?v={ATTACKER_DATA}")).await,
        (200, "seeded".into())
    );
    let (status, config) = host.get("/victim/config").await;
    assert!(
        status == 200 && config.contains(&canary),
        "the victim reads its own secret: {config}"
    );

    // The victim keeps checking its data while the attacks run.
    let attacking = Arc::new(AtomicBool::new(true));
    let probe = tokio::spawn({
        let (http, base, attacking) = (host.http.clone(), host.base.clone(), attacking.clone());
        async move {
            let (mut ok, mut total, mut slowest) = (0, 0, Duration::ZERO);
            while attacking.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = http
                    .get(format!("{base}/victim/check?v={VICTIM_DATA}"))
                    .send()
                    .await;
                total += 1;
                if let Ok(r) = r
                    && r.status() == 200
                    && r.text().await.unwrap_or_default() == "intact"
                {
                    ok += 1;
                }
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, total, slowest)
        }
    });

    let mut attacker_bodies = Vec::new();
    // Limits: each ends the instance with a 503 naming the limit.
    for (route, limit) in [
        ("loop", "time"),
        ("host-call-loop", "time"),
        ("memory", "memory"),
        ("handles", "handles"),
    ] {
        let (status, body) = host.get(&format!("/attacker/{route}")).await;
        assert_eq!(status, 503, "{route}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["limit"], limit, "{route}: {body}");
        attacker_bodies.push(body);
    }
    // Traps: stack exhaustion and a list claiming 1 GiB the guest's memory
    // does not hold; the host reads nothing outside the guest's memory.
    for route in ["recursion", "big-list"] {
        let (status, body) = host.get(&format!("/attacker/{route}")).await;
        assert_eq!(status, 500, "{route}: {body}");
        assert!(body.contains("error"), "{route}: {body}");
        attacker_bodies.push(body);
    }

    // A trap while holding a transaction and half-written blob: both are
    // undone, the attacker's own data is as it was.
    let (status, body) = host.get("/attacker/trap-holding").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        host.get(&format!("/attacker/check?v={ATTACKER_DATA}"))
            .await,
        (200, "intact".into())
    );
    // A trap while handling a message: it stays unacked and is redelivered.
    let (status, body) = host.get("/attacker/publish?payload=trap-once").await;
    assert!(status == 200 && body.starts_with("published"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, count) = host.get("/attacker/received").await;
        if count == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trapped message not redelivered: count {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Keys that try to leave the container are invalid, in every spelling.
    let (status, body) = host.get("/attacker/traversal").await;
    assert_eq!(status, 200, "{body}");
    all_refused("blob traversal", &body, |l| l.contains("InvalidKey("));
    assert_eq!(body.lines().count(), 21, "every key was tried: {body}");
    attacker_bodies.push(body);

    // SQL escapes out of its own database file.
    let (status, body) = host.get("/attacker/escapes").await;
    assert_eq!(status, 200, "{body}");
    all_refused("sql escapes", &body, |l| l.contains("::Denied("));
    attacker_bodies.push(body);

    // Names that are not its own, on every port.
    let (status, body) = host.get("/attacker/names").await;
    assert_eq!(status, 200, "{body}");
    all_refused("foreign names", &body, |l| {
        l.contains("NotGranted(") || l.contains("InvalidInput(")
    });
    attacker_bodies.push(body);

    // Header injection and senders it was not granted.
    let (status, body) = host.get("/attacker/email").await;
    assert_eq!(status, 200, "{body}");
    all_refused("email", &body, |l| {
        l.contains("InvalidMessage(") || l.contains("SenderNotGranted(")
    });
    assert!(
        body.contains("victim's sender: Error::SenderNotGranted"),
        "{body}"
    );
    attacker_bodies.push(body);

    // Config: only its own keys; the victim's token is not among them.
    let (status, body) = host.get("/attacker/config").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("token: Error::NotGranted"), "{body}");
    attacker_bodies.push(body);

    attacking.store(false, Ordering::Relaxed);
    let (ok, total, slowest) = probe.await.unwrap();
    eprintln!("victim during the attacks: {ok}/{total} checks intact, slowest {slowest:?}");
    assert!(total >= 10, "the victim probe ran: {total}");
    assert_eq!(ok, total, "every victim check succeeded while under attack");
    assert_eq!(
        host.get(&format!("/victim/check?v={VICTIM_DATA}")).await,
        (200, "intact".into())
    );

    // The victim's secret reached no attacker answer, whatever the path.
    for body in &attacker_bodies {
        assert!(!body.contains(&canary), "canary leaked: {body}");
    }
    // Every limit hit is counted for the attacker, none for the victim.
    for limit in ["time", "memory", "handles"] {
        let hits = |app| {
            METRICS.get(
                "berth_limits_exceeded_total",
                &[("app", app), ("limit", limit)],
            )
        };
        assert!(hits("attacker") >= 1, "{limit} not counted");
        assert_eq!(hits("victim"), 0, "{limit} counted for the victim");
    }

    let mut host = host;
    let _ = host.stop.take().map(|s| s.send(()));
    host.served.await.unwrap().unwrap();
}
