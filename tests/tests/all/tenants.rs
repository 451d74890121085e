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
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_routed_updated_and_removed() {
    let apps = tempfile::tempdir().unwrap();
    write_app(&apps.path().join("a"), "shop-a", "Greeting A");
    write_app(&apps.path().join("b"), "shop-b", "Greeting B");
    let tenants = Arc::new(Tenants::new(
        engine().clone(),
        HostConfig::default(),
        apps.path().to_path_buf(),
    ));
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    assert_eq!(tenants.app_names(), ["shop-a", "shop-b"]);

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

    // An update takes effect without a restart.
    write_app(&apps.path().join("a"), "shop-a", "Greeting A2");
    assert_eq!(tenants.sync().await, Vec::<String>::new());
    let (_, stats) = get(&base, "/shop-a/stats").await;
    assert_eq!(stats["greeting"], "Greeting A2");

    // A broken update is refused; the running version keeps serving.
    let manifest = apps.path().join("a/berth.toml");
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

    // A second app claiming a served name is refused.
    write_app(&apps.path().join("c"), "shop-b", "Impostor");
    let errors = tenants.sync().await;
    assert!(
        errors.iter().any(|e| e.contains("already served")),
        "{errors:?}"
    );
    let (_, stats) = get(&base, "/shop-b/stats").await;
    assert_eq!(stats["greeting"], "Greeting B");

    // Removing an app's directory unmounts it.
    std::fs::remove_dir_all(apps.path().join("b")).unwrap();
    std::fs::remove_dir_all(apps.path().join("c")).unwrap();
    tenants.sync().await;
    assert_eq!(get(&base, "/shop-b/stats").await.0, 404);
    assert_eq!(tenants.app_names(), ["shop-a"]);

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
