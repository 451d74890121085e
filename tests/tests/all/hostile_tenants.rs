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
use berth_tests::{engine, guests, write_tenant_app};

const VICTIM_DATA: &str = "victim-data";
const ATTACKER_DATA: &str = "attacker-data";

/// A served `berth serve` host and its HTTP client.
struct Host {
    server: berth_tests::Server,
    http: reqwest::Client,
}

impl Host {
    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.server.base))
            .send()
            .await
            .expect("the host answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

/// Apps that must be refused at load, each with the words its error names.
/// `victim` is another tenant's app, already written.
fn write_refused_apps(apps: &Path, victim: &str) -> Vec<(&'static str, &'static str)> {
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
    berth_tests::confine_components(&dir);
    // Another tenant's code (any file outside the app's directory), named
    // by its path or through a link: it would run under this app's grants
    // and config.
    let dir = apps.join("outsider");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        format!(
            "name = \"outsider\"\n[component.tenant]\npath = \"../{victim}/{}\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"tenant\"\n",
            Path::new(guests::TENANT_GUEST).file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let dir = apps.join("linked");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(guests::HTTP_GUEST, dir.join("app.wasm")).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        "name = \"linked\"\n[component.tenant]\npath = \"app.wasm\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"tenant\"\n",
    )
    .unwrap();
    // A hard link to a file elsewhere (another tenant's, say): in this
    // directory by name only.
    let dir = apps.join("hardlinked");
    std::fs::create_dir_all(&dir).unwrap();
    let theirs = apps.with_file_name("elsewhere.wasm");
    std::fs::copy(guests::TENANT_GUEST, &theirs).unwrap();
    std::fs::hard_link(&theirs, dir.join("app.wasm")).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        "name = \"hardlinked\"\n[component.tenant]\npath = \"app.wasm\"\n",
    )
    .unwrap();
    // A FIFO nobody writes to, which would block the open for ever.
    let dir = apps.join("fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("app.wasm"))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(
        dir.join("berth.toml"),
        "name = \"fifo\"\n[component.tenant]\npath = \"app.wasm\"\n",
    )
    .unwrap();
    // A manifest the host would read (and hold) at every rescan.
    let dir = apps.join("bloated");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        format!("name = \"bloated\"\n# {}\n", "x".repeat(1 << 20)),
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
        ("outsider", "outside the app's directory"),
        ("linked", "outside the app's directory"),
        ("fifo", "not a regular file"),
        ("hardlinked", "is a hard link"),
        ("bloated", "larger than 1024 KiB"),
    ]
}

async fn start(apps: &Path, host: HostConfig) -> (Arc<Tenants>, Host, Vec<String>) {
    let tenants = Arc::new(Tenants::new(engine().clone(), host, apps.to_path_buf()));
    let errors = tenants.sync().await;
    let host = Host {
        server: berth_tests::serve_tenants(tenants.clone()).await,
        http: reqwest::Client::new(),
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

/// Where the two tenants' logical resources live.
struct Backends {
    /// Host-config lines mapping `main`, `cache`, `received`, `files` and
    /// messaging to their backends (empty: the embedded defaults).
    host_toml: String,
    /// The `/escapes` query: which SQL escapes to try (SQLite's by default).
    escapes: String,
    /// The size of each tenant's Postgres pool, to flood (none: SQLite).
    pg_pool: Option<usize>,
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tenant_suite_embedded() {
    let (victim, attacker) = ("victim".to_owned(), "attacker".to_owned());
    let backends = Backends {
        host_toml: String::new(),
        escapes: String::new(),
        pg_pool: None,
    };
    suite(&victim, &attacker, &backends).await;
}

/// Runs every attack of `attacker` against the host and against `victim`.
async fn suite(victim: &str, attacker: &str, backends: &Backends) {
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    let canary = format!("canary-{}", berth_tests::unique("secret"));
    let canary_file = dir.path().join("victim-token");
    std::fs::write(&canary_file, &canary).unwrap();
    let host_toml = dir.path().join("host.toml");
    std::fs::write(
        &host_toml,
        format!(
            "{}\n[app_config.{victim}]\ntoken = \"${{file:{}}}\"\n",
            backends.host_toml,
            canary_file.display()
        ),
    )
    .unwrap();
    let host = HostConfig::load(&host_toml).unwrap();

    // Only the victim is granted its secret config key `token`.
    write_tenant_app(
        &apps,
        victim,
        "kv = [\"cache\"]\npublish = [\"notes\"]\nemail_senders = [\"app@victim.test\"]\nconfig = [\"greeting\", \"token\"]",
        "timeout_ms = 5000",
        "",
    );
    // Outbound HTTP to special addresses in every spelling, through the
    // attacker's own web component (all on its allow-list, to show that the
    // address check, not the list, refuses them). Nothing listens behind
    // the port: a connection attempt would fail differently.
    let p = 9; // discard
    let ssrf = berth_tests::special_address_urls(p);
    write_tenant_app(
        &apps,
        attacker,
        "kv = [\"cache\", \"received\"]\npublish = [\"jobs\"]\nemail_senders = [\"app@attacker.test\"]\nconfig = [\"greeting\"]",
        "timeout_ms = 2000\nmemory_mb = 32",
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
[component.web]
path = {web:?}
[component.web.grants]
http = {ssrf:?}
[[trigger.http]]
route = "/fetch"
component = "web"
"#,
            worker = guests::MESSAGING_HANDLER,
            web = guests::HTTP_GUEST,
        ),
    );
    let refused = write_refused_apps(&apps, victim);
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
        host.get(&format!("/{victim}/seed?v={VICTIM_DATA}")).await,
        (200, "seeded".into())
    );
    assert_eq!(
        host.get(&format!("/{attacker}/seed?v={ATTACKER_DATA}"))
            .await,
        (200, "seeded".into())
    );
    let (status, config) = host.get(&format!("/{victim}/config")).await;
    assert!(
        status == 200 && config.contains(&canary),
        "the victim reads its own secret: {config}"
    );

    // The victim keeps checking its data while the attacks run.
    let attacking = Arc::new(AtomicBool::new(true));
    let probe = tokio::spawn({
        let (http, base, attacking) = (
            host.http.clone(),
            host.server.base.clone(),
            attacking.clone(),
        );
        let victim = victim.to_owned();
        async move {
            let (mut ok, mut total, mut slowest) = (0, 0, Duration::ZERO);
            while attacking.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = http
                    .get(format!("{base}/{victim}/check?v={VICTIM_DATA}"))
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
        let (status, body) = host.get(&format!("/{attacker}/{route}")).await;
        assert_eq!(status, 503, "{route}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["limit"], limit, "{route}: {body}");
        attacker_bodies.push(body);
    }
    // Traps: stack exhaustion and a list claiming 1 GiB the guest's memory
    // does not hold; the host reads nothing outside the guest's memory.
    for route in ["recursion", "big-list"] {
        let (status, body) = host.get(&format!("/{attacker}/{route}")).await;
        assert_eq!(status, 500, "{route}: {body}");
        assert!(body.contains("error"), "{route}: {body}");
        // The trap's details (a wasm backtrace naming the guest's
        // functions) stay in the host log.
        assert!(
            !body.contains("backtrace") && !body.contains("wasm"),
            "{route}: {body}"
        );
        attacker_bodies.push(body);
    }

    // A value past the payload cap (1 MiB) is refused and counted.
    let (status, body) = host.get(&format!("/{attacker}/kv-set?bytes=2000000")).await;
    assert!(status == 200 && body.contains("InvalidInput"), "{body}");
    attacker_bodies.push(body);

    // A trap while holding a transaction and half-written blob: both are
    // undone, the attacker's own data is as it was.
    let (status, body) = host.get(&format!("/{attacker}/trap-holding")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        host.get(&format!("/{attacker}/trap-reached")).await,
        (200, "reached".into()),
        "the trap came with the transaction and the writer held"
    );
    assert_eq!(
        host.get(&format!("/{attacker}/check?v={ATTACKER_DATA}"))
            .await,
        (200, "intact".into())
    );
    // A trap while handling a message: it stays unacked and is redelivered.
    let (status, body) = host
        .get(&format!("/{attacker}/publish?payload=trap-once"))
        .await;
    assert!(status == 200 && body.starts_with("published"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, count) = host.get(&format!("/{attacker}/received")).await;
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
    let (status, body) = host.get(&format!("/{attacker}/traversal")).await;
    assert_eq!(status, 200, "{body}");
    all_refused("blob traversal", &body, |l| l.contains("InvalidKey("));
    assert_eq!(body.lines().count(), 21, "every key was tried: {body}");
    attacker_bodies.push(body);

    // SQL escapes out of its own database file.
    let (status, body) = host
        .get(&format!("/{attacker}/escapes?{}", backends.escapes))
        .await;
    assert_eq!(status, 200, "{body}");
    all_refused("sql escapes", &body, |l| l.contains("::Denied("));
    attacker_bodies.push(body);

    // Names that are not its own, on every port.
    let (status, body) = host.get(&format!("/{attacker}/names")).await;
    assert_eq!(status, 200, "{body}");
    all_refused("foreign names", &body, |l| {
        l.contains("NotGranted(") || l.contains("InvalidInput(")
    });
    attacker_bodies.push(body);

    // Header injection and senders it was not granted.
    let (status, body) = host.get(&format!("/{attacker}/email")).await;
    assert_eq!(status, 200, "{body}");
    all_refused("email", &body, |l| {
        l.contains("InvalidMessage(") || l.contains("SenderNotGranted(")
    });
    assert!(
        body.contains("victim's sender: Error::SenderNotGranted"),
        "{body}"
    );
    attacker_bodies.push(body);

    // SSRF: every spelling of a special address, a trailing dot and user
    // info are refused before anything is sent.
    let mut urls: Vec<String> = ssrf
        .iter()
        .map(|u| format!("{u}/latest/meta-data"))
        .collect();
    urls.push(format!("http://localhost.:{p}/x"));
    urls.push(format!("http://user@127.0.0.1:{p}/x"));
    for url in &urls {
        let encoded: String = url
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = host.get(&format!("/{attacker}/fetch?url={encoded}")).await;
        assert_eq!(status, 502, "{url}: {body}");
        // The name with a trailing dot is the name (allowed, and its
        // address refused); user info is refused as such.
        let expected = if url.contains('@') {
            "error: HttpRequestUriInvalid"
        } else {
            "error: DestinationIpProhibited"
        };
        assert!(body.starts_with(expected), "{url}: {body}");
        attacker_bodies.push(body);
    }

    // Connection flood: more queries holding a connection than its pool
    // has; the excess gets the `connections` limit, the victim's own pool
    // is untouched.
    if let Some(pool) = backends.pg_pool {
        let mut holds = tokio::task::JoinSet::new();
        for _ in 0..pool + 2 {
            let (http, url) = (
                host.http.clone(),
                format!("{}/{attacker}/pg-hold", host.server.base),
            );
            holds.spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() });
        }
        let mut outcomes = Vec::new();
        while let Some(outcome) = holds.join_next().await {
            outcomes.push(outcome.unwrap());
        }
        let limited = outcomes
            .iter()
            .filter(|o| o.contains("limit `connections` reached"))
            .count();
        assert_eq!(limited, 2, "{outcomes:?}");
        assert_eq!(
            outcomes.iter().filter(|o| *o == "ok").count(),
            pool,
            "{outcomes:?}"
        );
    }

    // Config: only its own keys; the victim's token is not among them.
    let (status, body) = host.get(&format!("/{attacker}/config")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("token: Error::NotGranted"), "{body}");
    attacker_bodies.push(body);

    attacking.store(false, Ordering::Relaxed);
    let (ok, total, slowest) = probe.await.unwrap();
    eprintln!("victim during the attacks: {ok}/{total} checks intact, slowest {slowest:?}");
    assert!(total >= 10, "the victim probe ran: {total}");
    assert_eq!(ok, total, "every victim check succeeded while under attack");
    assert_eq!(
        host.get(&format!("/{victim}/check?v={VICTIM_DATA}")).await,
        (200, "intact".into())
    );

    // The victim's secret reached no attacker answer, whatever the path.
    for body in &attacker_bodies {
        assert!(!body.contains(&canary), "canary leaked: {body}");
    }
    // Every limit hit is counted for the attacker, none for the victim.
    for limit in ["time", "memory", "handles", "payload"] {
        let hits = |app| {
            METRICS.get(
                "berth_limits_exceeded_total",
                &[("app", app), ("limit", limit)],
            )
        };
        assert!(hits(attacker) >= 1, "{limit} not counted");
        assert_eq!(hits(victim), 0, "{limit} counted for the victim");
    }

    host.server.stop().await;
}

/// The same suite with every logical resource on a real server: Postgres
/// with a role and schema per tenant, Redis, S3 and NATS JetStream.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_tenant_suite_real_servers() {
    let (Some(pg), Some(redis_url), Some(s3_endpoint), Some(nats)) = (
        berth_tests::service("BERTH_TEST_POSTGRES_URL"),
        berth_tests::service("BERTH_TEST_REDIS_URL"),
        berth_tests::service("BERTH_TEST_S3_ENDPOINT"),
        berth_tests::service("BERTH_TEST_NATS_URL"),
    ) else {
        return;
    };
    let (victim, attacker) = (
        berth_tests::unique("victim"),
        berth_tests::unique("attacker"),
    );
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, value).unwrap();
        format!("${{file:{}}}", path.display())
    };
    let s3 = berth_tests::s3_client(&s3_endpoint);
    let bucket = berth_tests::unique("berth-hostile-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let prefix = berth_tests::unique("hostile");
    let redis_bucket = |name: &str| {
        format!("[kv.{name}]\ntype = \"redis\"\nurl = {redis_url:?}\nprefix = \"{prefix}:\"\n")
    };
    let host_toml = format!(
        "[sql.main]\ntype = \"postgres\"\nurl = {pg:?}\ntenancy = \"role-per-app\"\ntenant_password_key = \"{key}\"\nmax_connections = 4\nconnect_timeout_ms = 300\n\
         {cache}{received}\
         [blob.files]\ntype = \"s3\"\nendpoint = {s3_endpoint:?}\nbucket = {bucket:?}\npath_style = true\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret_key}\"\n\
         [messaging]\ntype = \"nats\"\nurl = {nats:?}\nack_wait_ms = 5000\n",
        key = secret("tenant-key", "hostile-suite-tenant-key"),
        cache = redis_bucket("cache"),
        received = redis_bucket("received"),
        id = secret("s3-id", "test"),
        secret_key = secret("s3-secret", "test"),
    );
    let victim_role = berth::ports::sql::pg_tenancy::tenant_role(&victim, "main");
    let backends = Backends {
        host_toml,
        escapes: format!("dialect=postgres&other={victim_role}"),
        pg_pool: Some(4),
    };
    suite(&victim, &attacker, &backends).await;

    // Cleanup: the tenants' roles and schemas, keys, objects and streams.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg)
        .await
        .unwrap();
    for app in [&victim, &attacker] {
        let role = berth::ports::sql::pg_tenancy::tenant_role(app, "main");
        for statement in [
            format!("DROP SCHEMA IF EXISTS \"{role}\" CASCADE"),
            format!("DROP ROLE IF EXISTS \"{role}\""),
        ] {
            sqlx::query(&statement).execute(&mut admin).await.unwrap();
        }
    }
    berth_tests::redis_delete_prefix(&redis_url, &format!("{prefix}:")).await;
    berth_tests::delete_bucket(&s3, &bucket).await;
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    for app in [&victim, &attacker] {
        // The victim never publishes, so it may have no stream.
        let _ = jetstream.delete_stream(format!("BERTH_{app}")).await;
    }
}
