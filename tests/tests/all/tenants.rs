//! `berth serve`: several apps in one host, routed by path prefix, updated
//! and removed while serving; a failing update leaves the previous version
//! serving.

use std::path::Path;
use std::sync::Arc;

use berth::config::HostConfig;
use berth::tenants::Tenants;
use berth_tests::{engine, example_app};
use serde_json::Value;

/// Writes the example app into `dir` as app `name` with `greeting`.
fn write_app(dir: &Path, name: &str, greeting: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(example_app().manifest)
        .unwrap()
        .replace("name = \"users\"", &format!("name = \"{name}\""))
        .replace("Welcome to Berth", greeting);
    std::fs::write(dir.join("berth.toml"), text).unwrap();
    berth_tests::confine_components(dir);
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_routed_updated_and_removed() {
    let apps = tempfile::tempdir().unwrap();
    write_app(&apps.path().join("shop-a"), "shop-a", "Greeting A");
    write_app(&apps.path().join("shop-b"), "shop-b", "Greeting B");
    let tenants = Arc::new(Tenants::new(
        engine().clone(),
        HostConfig::default(),
        apps.path().to_path_buf(),
    ));
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    assert_eq!(tenants.app_names(), ["shop-a", "shop-b"]);
    // Each app's state lies beside the apps' directories, not in its own,
    // which its tenant writes.
    for app in ["shop-a", "shop-b"] {
        assert!(apps.path().join(".berth").join(app).join("sql").is_dir());
        assert!(!apps.path().join(app).join(".berth").exists());
    }

    let server = berth_tests::serve_tenants(tenants.clone()).await;
    let base = server.base.clone();

    let (status, stats) = get(&base, "/shop-a/stats").await;
    assert_eq!(
        (status, &stats["greeting"]),
        (200, &Value::from("Greeting A"))
    );
    let (status, stats) = get(&base, "/shop-b/stats").await;
    assert_eq!(
        (status, &stats["greeting"]),
        (200, &Value::from("Greeting B"))
    );
    assert_eq!(get(&base, "/stats").await.0, 404);
    assert_eq!(get(&base, "/shop-c/stats").await.0, 404);
    // A request with two `Host` lines reaches no app: a proxy in front
    // may have judged it by the other one.
    let addr = base.trim_start_matches("http://");
    let status_of = |head: &'static str| async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let one = "GET /shop-a/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let two = "GET /shop-a/stats HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(one).await, "HTTP/1.1 200 OK");
    assert_eq!(status_of(two).await, "HTTP/1.1 404 Not Found");

    // An update takes effect without a restart.
    write_app(&apps.path().join("shop-a"), "shop-a", "Greeting A2");
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    let (_, stats) = get(&base, "/shop-a/stats").await;
    assert_eq!(stats["greeting"], "Greeting A2");

    // A broken update is refused; the running version keeps serving.
    let manifest = apps.path().join("shop-a/berth.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("surprise = 1\n{text}")).unwrap();
    let errors = tenants.sync().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("update refused"), "{errors:?}");
    assert!(errors[0].contains("surprise"), "{errors:?}");
    let (status, stats) = get(&base, "/shop-a/stats").await;
    assert_eq!(
        (status, &stats["greeting"]),
        (200, &Value::from("Greeting A2"))
    );
    // Reported once, not on every scan.
    assert_eq!(tenants.sync().await, Vec::<String>::new());

    // An app claiming a name other than its directory's is refused: the
    // operator's directory names the app.
    write_app(&apps.path().join("c"), "shop-b", "Impostor");
    let errors = tenants.sync().await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not served from a directory named `shop-b`")),
        "{errors:?}"
    );
    let (_, stats) = get(&base, "/shop-b/stats").await;
    assert_eq!(stats["greeting"], "Greeting B");

    // State an earlier version kept in the app's own directory (beside its
    // URL-signing key) is not set aside for an empty store: the app is
    // refused until it is copied over, and loads at the next scan once it
    // is (here moved; the leftover URL-signing key does not matter).
    write_app(&apps.path().join("shop-d"), "shop-d", "Greeting D");
    std::fs::create_dir_all(apps.path().join("shop-d/.berth/shop-d/sql")).unwrap();
    std::fs::write(apps.path().join("shop-d/.berth/url-signing.key"), [7u8; 32]).unwrap();
    // A tenant's link there is not to be moved into the host's state.
    write_app(&apps.path().join("shop-e"), "shop-e", "Greeting E");
    std::fs::create_dir_all(apps.path().join("shop-e/.berth")).unwrap();
    std::os::unix::fs::symlink(
        apps.path().join(".berth/shop-a"),
        apps.path().join("shop-e/.berth/shop-e"),
    )
    .unwrap();
    // Nor is state behind a link in place of the `.berth` directory.
    write_app(&apps.path().join("shop-f"), "shop-f", "Greeting F");
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(elsewhere.path().join("shop-f/sql")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), apps.path().join("shop-f/.berth")).unwrap();
    let errors = tenants.sync().await;
    let err = error_of(&errors, "shop-f");
    assert!(
        err.contains("no directory") && !err.contains("rsync"),
        "{err}"
    );
    let err = error_of(&errors, "shop-d");
    assert!(err.contains("inside its own directory"), "{err}");
    assert!(err.contains("rsync -r --no-links"), "{err}");
    let err = error_of(&errors, "shop-e");
    assert!(
        err.contains("no directory") && !err.contains("rsync"),
        "{err}"
    );
    std::fs::rename(
        apps.path().join("shop-d/.berth/shop-d"),
        apps.path().join(".berth/shop-d"),
    )
    .unwrap();
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    assert!(tenants.app_names().contains(&"shop-d".to_string()));
    std::fs::remove_dir_all(apps.path().join("shop-d")).unwrap();
    std::fs::remove_dir_all(apps.path().join("shop-e")).unwrap();
    std::fs::remove_dir_all(apps.path().join("shop-f")).unwrap();

    // Removing an app's directory unmounts it.
    std::fs::remove_dir_all(apps.path().join("shop-b")).unwrap();
    std::fs::remove_dir_all(apps.path().join("c")).unwrap();
    tenants.sync().await;
    assert_eq!(get(&base, "/shop-b/stats").await.0, 404);
    assert_eq!(tenants.app_names(), ["shop-a"]);

    server.stop().await;
}

/// The status line of the answer to the raw request `head` sent to `base`.
async fn status_line(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// With `[serve] domain`, each app has an origin of its own,
/// `<app>.<domain>`, and is not reached by path prefix on any other host
/// name (the bare domain, an address, a name a proxy put in), where every
/// app would share one origin; unless the operator asks for it.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_on_a_domain_have_origins_of_their_own() {
    for (path_routing, by_path) in [(None, "404 Not Found"), (Some(true), "200 OK")] {
        let apps = tempfile::tempdir().unwrap();
        write_app(&apps.path().join("shop-a"), "shop-a", "Greeting A");
        // Host names are matched in lower case: this one could not be reached.
        write_app(&apps.path().join("Shop-B"), "Shop-B", "Greeting B");
        let mut host = HostConfig::default();
        host.serve.domain = Some("apps.test".into());
        host.serve.path_routing = path_routing;
        let tenants = Arc::new(Tenants::new(
            engine().clone(),
            host,
            apps.path().to_path_buf(),
        ));
        let errors = tenants.sync().await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            error_of(&errors, "Shop-B").contains("upper-case letters"),
            "{errors:?}"
        );
        let server = berth_tests::serve_tenants(tenants.clone()).await;
        let request = |host: &str, path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        };
        assert_eq!(
            status_line(&server.base, &request("shop-a.apps.test", "/stats")).await,
            "HTTP/1.1 200 OK"
        );
        for host in ["apps.test", "127.0.0.1", "proxy.internal"] {
            assert_eq!(
                status_line(&server.base, &request(host, "/shop-a/stats")).await,
                format!("HTTP/1.1 {by_path}"),
                "{host}, path_routing {path_routing:?}"
            );
        }
        server.stop().await;
    }
}

/// The error `Tenants::sync` reported for the app in directory `app`.
fn error_of(errors: &[String], app: &str) -> String {
    errors
        .iter()
        .find(|e| e.contains(&format!("/{app}/berth.toml")))
        .unwrap_or_else(|| panic!("no error for {app}: {errors:?}"))
        .clone()
}

/// Writes an app serving the `http_guest` at `/...` with `limits`.
fn write_http_app(dir: &Path, name: &str, limits: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("berth.toml"),
        format!(
            "name = \"{name}\"\n[component.web]\npath = {:?}\n[component.web.grants]\nhttp = [\"https://example.com\"]\n[component.web.limits]\n{limits}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n",
            berth_tests::guests::HTTP_GUEST
        ),
    )
    .unwrap();
    berth_tests::confine_components(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_noisy_neighbour_does_not_starve_others() {
    let apps = tempfile::tempdir().unwrap();
    write_http_app(
        &apps.path().join("attacker"),
        "attacker",
        "timeout_ms = 1000\nmemory_mb = 32\nconcurrency = 8",
    );
    write_http_app(&apps.path().join("victim"), "victim", "timeout_ms = 5000");
    let tenants = Arc::new(Tenants::new(
        engine().clone(),
        HostConfig::default(),
        apps.path().to_path_buf(),
    ));
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    let server = berth_tests::serve_tenants(tenants.clone()).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();

    // The attacker spins and allocates to its limits, far past its slots.
    let mut attack = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (http, base) = (http.clone(), base.clone());
        let path = if i % 3 == 0 { "memory" } else { "loop" };
        attack.spawn(async move {
            http.get(format!("{base}/attacker/{path}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
    }
    // Meanwhile the victim keeps being served.
    let mut ok = 0;
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..40 {
        let started = std::time::Instant::now();
        let response = http
            .get(format!("{base}/victim/hello"))
            .send()
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        if response.status() == 200 && response.text().await.unwrap() == "hello from berth" {
            ok += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    while let Some(status) = attack.join_next().await {
        statuses.push(status.unwrap());
    }
    eprintln!("victim: {ok}/40 ok, slowest {slowest:?}; attacker statuses {statuses:?}");
    assert_eq!(
        ok, 40,
        "every victim request succeeds while the attacker runs"
    );
    // Every attacker request ended with a limit: time, memory or concurrency.
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");

    server.stop().await;
}

#[tokio::test]
async fn tenants_manifests_cannot_read_the_host_environment() {
    let apps = tempfile::tempdir().unwrap();
    let dir = apps.path().join("nosy");
    write_http_app(&dir, "nosy", "");
    let manifest = dir.join("berth.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("{text}\n[config]\nkey = \"${{env:HOME}}\"\n"),
    )
    .unwrap();
    let tenants = Tenants::new(
        engine().clone(),
        HostConfig::default(),
        apps.path().to_path_buf(),
    );
    let errors = tenants.sync().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("config.key"), "{errors:?}");
    assert!(errors[0].contains("[app_config.nosy]"), "{errors:?}");
    assert!(tenants.app_names().is_empty());
}

/// On `berth serve` a tenant is granted a named upstream, and so spends
/// its credential, only when the operator lists the tenant in the
/// upstream's `apps`; a tenant's own manifest is not enough.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_get_only_the_upstreams_listed_for_them() {
    let apps = tempfile::tempdir().unwrap();
    // `aaa` is loaded first and calls itself `shop`.
    for (dir, name) in [("shop", "shop"), ("thief", "thief"), ("aaa", "shop")] {
        let dir = apps.path().join(dir);
        write_http_app(&dir, name, "");
        let manifest = dir.join("berth.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("http = [\"https://example.com\"]", "upstreams = [\"pay\"]");
        std::fs::write(&manifest, text).unwrap();
    }
    let host_file = apps.path().join("host.toml");
    let host_with = |apps_line: &str| {
        std::fs::write(
            &host_file,
            format!(
                "[upstreams.pay]\nurl = \"https://api.example.com\"\nheaders = {{ Authorization = \"Bearer t\" }}\n{apps_line}"
            ),
        )
        .unwrap();
        HostConfig::load(&host_file).unwrap()
    };

    // Without `apps`, no tenant may be granted it.
    let tenants = Tenants::new(engine().clone(), host_with(""), apps.path().to_path_buf());
    let errors = tenants.sync().await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.contains("`upstreams.pay.apps`"))
            .count(),
        2,
        "{errors:?}"
    );
    assert!(tenants.app_names().is_empty());

    // Listed, `shop` is; `thief`, which grants itself the same, is not.
    let tenants = Tenants::new(
        engine().clone(),
        host_with("apps = [\"shop\"]\n"),
        apps.path().to_path_buf(),
    );
    let errors = tenants.sync().await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("app `thief`") && e.contains("`upstreams.pay.apps`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("aaa") && e.contains("not served from a directory named `shop`")),
        "{errors:?}"
    );
    assert_eq!(tenants.app_names(), ["shop"]);
    assert!(
        tenants
            .app("shop")
            .unwrap()
            .manifest
            .file
            .ends_with("shop/berth.toml")
    );
}

/// On `berth serve` a database every app declaring it would share (Postgres
/// with shared tenancy, MySQL) opens only for the apps the operator lists:
/// a tenant declaring the same logical name does not reach its tables.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_open_shared_databases_only_when_listed() {
    let apps = tempfile::tempdir().unwrap();
    for name in ["shop", "thief"] {
        berth_tests::write_tenant_app(apps.path(), name, "", "", "");
    }
    let host_file = apps.path().join("host.toml");
    // Nothing listens on port 1: an app that passes the check fails to
    // connect instead.
    let errors_with = |section: &str| {
        let text = format!("[sql.main]\n{section}connect_timeout_ms = 300\n");
        std::fs::write(&host_file, text).unwrap();
        let host = HostConfig::load(&host_file).unwrap();
        let dir = apps.path().to_path_buf();
        async move {
            let tenants = Tenants::new(engine().clone(), host, dir);
            let errors = tenants.sync().await;
            assert!(tenants.app_names().is_empty(), "{errors:?}");
            (error_of(&errors, "shop"), error_of(&errors, "thief"))
        }
    };
    for server in [
        "type = \"postgres\"\nurl = \"postgres://app@127.0.0.1:1/db\"\n",
        "type = \"mysql\"\nurl = \"mysql://app@127.0.0.1:1/db\"\n",
    ] {
        let (shop, thief) = errors_with(server).await;
        for error in [&shop, &thief] {
            assert!(error.contains("`sql.main.apps`"), "{error}");
            assert!(error.contains("on `berth serve`"), "{error}");
        }
        let (shop, thief) = errors_with(&format!("{server}apps = [\"shop\"]\n")).await;
        assert!(!shop.contains("apps"), "{shop}");
        assert!(shop.contains("cannot connect"), "{shop}");
        assert!(
            thief.contains("`sql.main.apps`") && thief.contains("does not list app `thief`"),
            "{thief}"
        );
    }
}

/// On `berth serve` a tenant sends through the operator's SMTP relay only
/// as the senders the operator lists for it; granting itself another
/// address in its own manifest is refused at load, before any connection.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_send_only_as_the_senders_listed_for_them() {
    let apps = tempfile::tempdir().unwrap();
    for (name, sender) in [
        ("shop", "orders@shop.test"),
        ("thief", "ceo@shop.test"),
        ("quiet", "a@quiet.test"),
    ] {
        let grants = format!("email_senders = [{sender:?}]");
        berth_tests::write_tenant_app(apps.path(), name, &grants, "", "");
    }
    // Nothing listens on port 1: an app that passes the sender check fails
    // to connect instead.
    let host_file = apps.path().join("host.toml");
    std::fs::write(
        &host_file,
        "[email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\ntimeout_ms = 2000\nsenders = { shop = [\"@shop.test\"], thief = [\"news@thief.test\"] }\n",
    )
    .unwrap();
    let host = HostConfig::load(&host_file).unwrap();
    let tenants = Tenants::new(engine().clone(), host, apps.path().to_path_buf());
    let errors = tenants.sync().await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        error_of(&errors, "shop").contains("cannot connect"),
        "{errors:?}"
    );
    let thief = error_of(&errors, "thief");
    assert!(thief.contains("`email.senders.thief`"), "{thief}");
    assert!(thief.contains("\"ceo@shop.test\""), "{thief}");
    let quiet = error_of(&errors, "quiet");
    assert!(quiet.contains("`email.senders.quiet`"), "{quiet}");
    assert!(quiet.contains("on `berth serve`"), "{quiet}");

    // A malformed entry fails the host config's load, naming its key.
    std::fs::write(
        &host_file,
        "[email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = 1\nsenders = { shop = [\"shop.test\"] }\n",
    )
    .unwrap();
    let err = format!("{:#}", HostConfig::load(&host_file).unwrap_err());
    assert!(
        err.contains("`email.senders.shop`") && err.contains("\"shop.test\""),
        "{err}"
    );
}

/// The handle and payload limits a manifest sets apply to its instances:
/// a smaller handle limit stops a hoarder sooner, a smaller value cap
/// refuses a value the default would take.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_handle_and_payload_limits_from_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    berth_tests::write_tenant_app(
        dir.path(),
        "tight",
        "kv = [\"cache\"]\npublish = [\"jobs\"]\nemail_senders = [\"app@tight.test\"]",
        "handles = 100\nkv_max_value_kb = 1",
        "",
    );
    let tenants = Arc::new(Tenants::new(
        engine().clone(),
        HostConfig::default(),
        dir.path().to_path_buf(),
    ));
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    let server = berth_tests::serve_tenants(tenants.clone()).await;
    let base = server.base.clone();

    let (status, body) = get(&base, "/tight/handles").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["limit"], "handles");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("100 handles"),
        "{body}"
    );
    let text = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    assert_eq!(text("/tight/kv-set?bytes=1024").await, "ok");
    let refused = text("/tight/kv-set?bytes=1025").await;
    assert!(
        refused.contains("InvalidInput") && refused.contains("at most 1024"),
        "{refused}"
    );

    server.stop().await;
}

/// Tenants `greedy` (long time limit, high concurrency) and `calm`, served
/// under the host config `host_toml`.
async fn greedy_and_calm(
    host_toml: &str,
) -> (tempfile::TempDir, Arc<Tenants>, berth_tests::Server) {
    let apps = tempfile::tempdir().unwrap();
    write_http_app(
        &apps.path().join("greedy"),
        "greedy",
        "timeout_ms = 10000\nconcurrency = 100",
    );
    write_http_app(&apps.path().join("calm"), "calm", "");
    let host_file = apps.path().join("host.toml");
    std::fs::write(&host_file, host_toml).unwrap();
    let tenants = Arc::new(Tenants::new(
        engine().clone(),
        HostConfig::load(&host_file).unwrap(),
        apps.path().to_path_buf(),
    ));
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    let server = berth_tests::serve_tenants(tenants.clone()).await;
    (apps, tenants, server)
}

/// Two 3-second requests to `greedy`, each holding an instance; each task
/// gives the status it got.
fn two_slow_requests(base: &str) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..2)
        .map(|_| {
            let url = format!("{base}/greedy/sleep?ms=3000");
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status().as_u16() })
        })
        .collect()
}

/// A tenant runs at most `[app_limits] max_instances` instances at once,
/// whatever its components' own concurrency, its old and new versions
/// together across a reload; other tenants keep being served.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_get_a_share_of_the_instance_slots_that_a_reload_keeps() {
    let (apps, tenants, server) = greedy_and_calm("[app_limits]\nmax_instances = 2\n").await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let slow = two_slow_requests(&base);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let third = http
        .get(format!("{base}/greedy/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status().as_u16(), 503);
    assert!(third.text().await.unwrap().contains("app_instances"));
    // Its new version counts what the old one still runs.
    let manifest = apps.path().join("greedy/berth.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}# reloaded\n")).unwrap();
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    let after = http
        .get(format!("{base}/greedy/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status().as_u16(), 503, "the reload kept the count");
    let (status, _) = get(&base, "/calm/hello").await;
    assert_eq!(status, 200, "other tenants are served");
    for request in slow {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(get(&base, "/greedy/hello").await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_an_app_memory_budget_that_instances_give_back() {
    // An instance of this guest holds a little over 1 MiB of linear
    // memory: two fit in 3 MiB, a third does not.
    let (_apps, _tenants, server) = greedy_and_calm("[app_limits]\nmemory_mb = 3\n").await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let slow = two_slow_requests(&base);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let third = http
        .get(format!("{base}/greedy/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status().as_u16(), 503);
    let body = third.text().await.unwrap();
    assert!(body.contains("app_memory"), "{body}");
    let (status, _) = get(&base, "/calm/hello").await;
    assert_eq!(status, 200, "other tenants have budgets of their own");
    for request in slow {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        get(&base, "/greedy/hello").await.0,
        200,
        "instances gone gave their memory back"
    );
    server.stop().await;
}
