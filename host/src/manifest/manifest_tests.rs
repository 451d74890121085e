//! Tests of manifest parsing and validation.

use super::*;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new("/app/berth.toml"))
}

pub(super) const GOOD: &str = r#"
name = "shop"
[config]
greeting = "hi"
[sql.main]
[kv.cache]
memory = true
[component.api]
path = "api.wasm"
[component.api.grants]
sql = ["main"]
kv = ["cache"]
config = ["greeting"]
http = ["https://api.example.com"]
[component.api.limits]
memory_mb = 64
timeout_ms = 1500
[[trigger.http]]
route = "/..."
component = "api"
"#;

/// A manifest declares bounded numbers of components, resources and
/// grants; a long grant against many declarations is checked a lookup
/// a name (it was a walk of every declaration per name).
#[test]
fn manifests_are_bounded() {
    let mut many = String::from("name = \"big\"\n");
    for i in 0..=MAX_COMPONENTS {
        many.push_str(&format!("[component.c{i}]\npath = \"c.wasm\"\n"));
    }
    let err = parse(&many).unwrap_err().to_string();
    assert!(err.contains("at most 256"), "{err}");

    let mut wide = String::from("name = \"wide\"\n");
    for i in 0..MAX_RESOURCES {
        wide.push_str(&format!("[sql.d{i:05}]\n"));
    }
    let last = format!("\"d{:05}\"", MAX_RESOURCES - 1);
    let grants = vec![last.as_str(); MAX_GRANTS].join(", ");
    wide.push_str(&format!(
        "[component.api]\npath = \"api.wasm\"\n[component.api.grants]\nsql = [{grants}]\n"
    ));
    assert!(parse(&wide).is_ok());
    let too_many = wide.replace(
        &format!("sql = [{grants}]"),
        &format!("sql = [{grants}, {last}]"),
    );
    let err = parse(&too_many).unwrap_err().to_string();
    assert!(err.contains("at most 1024"), "{err}");
    // An unknown name's error lists a few of the declared, not all.
    let unknown = wide.replace(&format!("sql = [{grants}]"), "sql = [\"nope\"]");
    let err = parse(&unknown).unwrap_err().to_string();
    assert!(
        err.contains("d00000") && err.contains('…') && err.len() < 1000,
        "{err}"
    );
}

#[test]
fn parses_a_good_manifest() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.name, "shop");
    let api = &m.components["api"];
    assert_eq!(api.path, Path::new("/app/api.wasm"));
    assert_eq!(api.limits.memory_bytes, 64 << 20);
    assert_eq!(api.limits.timeout, std::time::Duration::from_millis(1500));
    assert!(m.kv["cache"].memory);
    assert_eq!(m.http_triggers[0].component, "api");
}

#[test]
fn unknown_key_names_file_and_key() {
    let err = parse(&GOOD.replace("memory_mb = 64", "memory_mib = 64")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/app/berth.toml"), "{msg}");
    assert!(msg.contains("memory_mib"), "{msg}");
}

#[test]
fn unknown_logical_name_names_key() {
    let err = parse(&GOOD.replace("sql = [\"main\"]", "sql = [\"mian\"]")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("component.api.grants.sql"), "{msg}");
    assert!(msg.contains("\"mian\""), "{msg}");
    assert!(msg.contains("declared: main"), "{msg}");
}

#[test]
fn trigger_of_unknown_component_is_refused() {
    let err = parse(&GOOD.replace("component = \"api\"", "component = \"apx\"")).unwrap_err();
    assert!(
        err.to_string().contains("trigger.http[0].component"),
        "{err}"
    );
}

/// A route no request could reach is refused, naming its key.
#[test]
fn unreachable_routes_are_refused() {
    let with_route = |route: &str| GOOD.replace("route = \"/...\"", &format!("route = {route:?}"));
    for (route, why) in [
        ("users", "must start with `/`"),
        ("/users?id=1", "without `?` or `#`"),
        ("/caf\u{e9}", "visible ASCII"),
        ("/a b", "visible ASCII"),
        ("/a/.../b", "`...` other than at its end"),
        ("/_berth/blob/x", "the host's own"),
    ] {
        let err = parse(&with_route(route)).unwrap_err().to_string();
        assert!(
            err.contains("trigger.http[0].route") && err.contains(why),
            "{route}: {err}"
        );
    }
    assert!(parse(&with_route("/files/...")).is_ok());
    assert!(parse(&with_route("/a%20b")).is_ok());
    let twice = format!("{GOOD}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"api\"\n");
    let err = parse(&twice).unwrap_err().to_string();
    assert!(
        err.contains("trigger.http[1].route") && err.contains("defined twice"),
        "{err}"
    );
}

#[test]
fn bad_names_and_limits_are_refused() {
    assert!(parse(&GOOD.replace("[sql.main]", "[sql.\"../x\"]")).is_err());
    let err = parse(&GOOD.replace("memory_mb = 64", "memory_mb = 0")).unwrap_err();
    assert!(err.to_string().contains("limits.memory_mb"), "{err}");
    let err = parse(&GOOD.replace("https://api.example.com", "ftp://x")).unwrap_err();
    assert!(err.to_string().contains("grants.http"), "{err}");
    for (setting, key) in [
        ("handles = 0", "limits.handles"),
        ("kv_max_value_kb = 0", "limits.kv_max_value_kb"),
        ("blob_max_chunk_mb = 65", "limits.blob_max_chunk_mb"),
        ("sql_max_rows = 2000000", "limits.sql_max_rows"),
    ] {
        let text = GOOD.replace("memory_mb = 64", &format!("memory_mb = 64\n{setting}"));
        let err = parse(&text).unwrap_err();
        assert!(err.to_string().contains(key), "{setting}: {err}");
    }
}

#[test]
fn payload_limits_are_set_in_their_units() {
    let text = GOOD.replace(
        "memory_mb = 64",
        "memory_mb = 64\nhandles = 50\nkv_max_value_kb = 2\nblob_max_put_mb = 3\nemail_max_recipients = 5",
    );
    let m = parse(&text).unwrap();
    let limits = &m.components.values().next().unwrap().limits;
    assert_eq!(limits.handles, 50);
    assert_eq!(limits.payloads.kv_max_value_bytes, 2048);
    assert_eq!(limits.payloads.blob_max_put_bytes, 3 << 20);
    assert_eq!(limits.payloads.email_max_recipients, 5);
    assert_eq!(
        limits.payloads.sql_max_rows, 10_000,
        "unset keeps the default"
    );
}
