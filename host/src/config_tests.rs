//! Tests of host config loading and validation.

use super::*;

#[test]
fn unknown_backend_type_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, "[kv.cache]\ntype = \"memcached\"\n").unwrap();
    let err = HostConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("host.toml"), "{err}");
    assert!(err.contains("memcached"), "{err}");
    std::fs::write(&path, "[kv.cache]\ntype = \"memory\"\nsize = 3\n").unwrap();
    let err = HostConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("size"), "{err}");
    std::fs::write(&path, "state_dir = \"s\"\n[kv.cache]\ntype = \"memory\"\n").unwrap();
    let ok = HostConfig::load(&path).unwrap();
    assert_eq!(ok.kv["cache"], KvConfig::Memory {});
    assert_eq!(ok.state_dir.unwrap(), dir.path().join("s"));
}

#[test]
fn relative_paths_are_relative_to_the_host_config_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(
        &path,
        "[engine]\ncache_dir = \"cache\"\n[kv.cache]\ntype = \"sqlite\"\npath = \"/abs/kv.db\"\n",
    )
    .unwrap();
    let ok = HostConfig::load(&path).unwrap();
    assert_eq!(ok.engine.cache_dir.unwrap(), dir.path().join("cache"));
    let kv = KvConfig::Sqlite {
        path: Some("/abs/kv.db".into()),
    };
    assert_eq!(ok.kv["cache"], kv);
    // A store's relative path would silently move its data: refused.
    for (text, key, fix) in [
        (
            "[sql.main]\ntype = \"sqlite\"\npath = \"db/{app}.db\"\n",
            "sql.main.path",
            "db/{app}.db",
        ),
        (
            "[kv.c]\ntype = \"sqlite\"\npath = \"c.db\"\n",
            "kv.c.path",
            "c.db",
        ),
        (
            "[blob.f]\ntype = \"fs\"\nroot = \"files/{app}\"\n",
            "blob.f.root",
            "files/{app}",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = HostConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}` is the relative path")),
            "{err}"
        );
        let absolute = dir.path().join(fix).display().to_string();
        assert!(err.contains(&absolute), "{err}");
    }
}

#[test]
fn email_and_aws_settings_are_checked_when_the_host_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    for (text, key) in [
        (
            "[email]\ntype = \"smtp\"\nhost = \"mail\"\nusername = \"u\"\npassword = \"hunter2\"\n",
            "email.password",
        ),
        (
            "[email]\ntype = \"smtp\"\nhost = \"mail\"\nusername = \"u\"\n",
            "username",
        ),
        (
            "[email]\ntype = \"smtp\"\nhost = \"mail\"\n[email.senders]\nshop = [\"not an address\"]\n",
            "email.senders.shop",
        ),
        (
            "[secrets.aws]\nregion = \"eu-west-1\"\nendpoint = \"localhost:4566\"\naccess_key_id = \"${env:A}\"\nsecret_access_key = \"${env:B}\"\n",
            "secrets.aws.endpoint",
        ),
        (
            "[secrets.aws]\nregion = \"\"\naccess_key_id = \"${env:A}\"\nsecret_access_key = \"${env:B}\"\n",
            "secrets.aws.region",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", HostConfig::load(&path).unwrap_err());
        assert!(err.contains(key), "{text}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    std::fs::write(
        &path,
        "[email]\ntype = \"smtp\"\nhost = \"mail\"\nusername = \"u\"\npassword = \"${env:P}\"\n[secrets.aws]\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:4566\"\naccess_key_id = \"${env:A}\"\nsecret_access_key = \"${env:B}\"\n",
    )
    .unwrap();
    HostConfig::load(&path).unwrap();
}

/// A wrongly typed setting of a backend section is named, with the
/// section's line, and its value is not repeated (it may be a secret).
#[test]
fn wrongly_typed_backend_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    for (text, key, line) in [
        (
            "listen = \"127.0.0.1:3000\"\n[email]\ntype = \"smtp\"\nhost = \"mail\"\nport = \"587\"\n",
            "`port`",
            "line 2,",
        ),
        (
            "[sql.main]\ntype = \"postgres\"\nurl = \"postgres://db/x\"\nmax_connections = \"s3cret\"\n",
            "`max_connections`",
            "line 1,",
        ),
        (
            "[kv.cache]\ntype = \"redis\"\nurl = 6379\n",
            "`url`",
            "line 1,",
        ),
        (
            "[blob.files]\ntype = \"s3\"\nbucket = \"b\"\npath_style = \"yes\"\n",
            "`path_style`",
            "line 1,",
        ),
        (
            "[messaging]\ntype = \"nats\"\nurl = \"nats://n\"\nprefetch = -1\n",
            "`prefetch`",
            "line 1,",
        ),
        (
            "[email]\ntype = \"smtp\"\nhost = \"mail\"\n[email.senders]\nshop = \"s3cret\"\n",
            "`senders.shop`",
            "line 1,",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", HostConfig::load(&path).unwrap_err());
        assert!(err.contains(key), "{text}: {err}");
        assert!(err.contains(line), "{text}: {err}");
        assert!(!err.contains("s3cret") && !err.contains("587"), "{err}");
    }
}

#[test]
fn mariadb_is_an_alias_of_mysql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    for ty in ["mysql", "mariadb"] {
        std::fs::write(
            &path,
            format!("[sql.main]\ntype = \"{ty}\"\nurl = \"mysql://u@db/app\"\n"),
        )
        .unwrap();
        let cfg = HostConfig::load(&path).unwrap();
        assert!(
            matches!(&cfg.sql["main"], SqlConfig::Mysql { url, .. } if url == "mysql://u@db/app"),
            "{ty}"
        );
    }
}

#[test]
fn out_of_range_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    for (text, key) in [
        (
            "[engine]\nmax_memory_mb = 9223372036854775807\n",
            "engine.max_memory_mb",
        ),
        ("[engine]\nmax_memory_mb = 4097\n", "engine.max_memory_mb"),
        ("[engine]\nmax_memory_mb = 0\n", "engine.max_memory_mb"),
        ("[engine]\nmax_instances = 0\n", "engine.max_instances"),
        ("[engine]\nmax_timeout_ms = 0\n", "engine.max_timeout_ms"),
        ("[engine]\nmax_concurrency = 0\n", "engine.max_concurrency"),
        (
            "[engine]\nmax_component_mb = 0\n",
            "engine.max_component_mb",
        ),
        ("[engine]\nmax_compile_ms = 0\n", "engine.max_compile_ms"),
        (
            "[engine]\nlong_running_workers = 0\n",
            "engine.long_running_workers",
        ),
        (
            "[engine]\nlong_running_workers = 9223372036854775807\n",
            "engine.long_running_workers",
        ),
        ("[engine]\nmax_handles = 15\n", "engine.max_handles"),
        (
            "[engine.max_payloads]\nsql_max_rows = 0\n",
            "engine.max_payloads.sql_max_rows",
        ),
        (
            "[engine.max_payloads]\nblob_max_chunk_mb = 65\n",
            "engine.max_payloads.blob_max_chunk_mb",
        ),
        (
            "[app_limits]\nemails_per_minute = 0\n",
            "app_limits.emails_per_minute",
        ),
        (
            "[app_limits]\nmessages_per_second = 0\n",
            "app_limits.messages_per_second",
        ),
        ("[app_limits]\nstore_mb = 0\n", "app_limits.store_mb"),
        (
            "[secrets.aws]\nregion = \"eu-west-1\"\naccess_key_id = \"${env:A}\"\n\
             secret_access_key = \"${env:B}\"\ntimeout_ms = 0\n",
            "secrets.aws.timeout_ms",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = HostConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("host.toml"), "{err}");
    }
    std::fs::write(&path, "[engine]\nmax_memory_mb = 4096\nmax_handles = 16\n").unwrap();
    let ok = HostConfig::load(&path).unwrap();
    assert_eq!(ok.engine_settings().max_memory_bytes, 4096 << 20);
    // A config built in code saturates instead of wrapping to a tiny cap.
    let engine = EngineConfig {
        max_memory_mb: Some(u64::MAX),
        ..Default::default()
    };
    let limits = crate::limits::ComponentLimits::default();
    assert_eq!(engine.cap(&limits).memory_bytes, limits.memory_bytes);
}

#[test]
fn syntax_errors_give_line_and_column_but_never_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    for (text, position, words) in [
        // An unterminated inline value.
        (
            "[app_config.shop]\ntoken = \"sk_live_canary\n",
            "line ",
            "string",
        ),
        // A misspelt key whose value is a secret.
        (
            "[engine]\nmax_instances = 1\npasword = \"sk_live_canary\"\n",
            "line 3",
            "pasword",
        ),
        // A value of the wrong type, which serde quotes.
        (
            "[engine]\nmax_instances = \"sk_live_canary\"\n",
            "line 2",
            "invalid type",
        ),
        // The same, with an escaped quote before the secret.
        (
            "[engine]\nmax_instances = \"a\\\"sk_live_canary\"\n",
            "line 2",
            "invalid type: string …",
        ),
        // A secret written without quotes, which serde repeats too.
        (
            "[engine]\nmax_instances = 1\n[sql.main]\ntype = \"postgres\"\nurl = 20240611\n",
            "line ",
            "invalid type: integer …, expected a string",
        ),
        (
            "[app_config.shop]\npin = 20240611.5\n",
            "line 2",
            "invalid type",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", HostConfig::load(&path).unwrap_err());
        assert!(
            !err.contains("sk_live_canary") && !err.contains("20240611"),
            "{err}"
        );
        assert!(err.contains(position) && err.contains(words), "{err}");
        assert!(err.contains("host.toml"), "{err}");
    }
    let manifest = dir.path().join("berth.toml");
    let text = "name = \"a\"\n[config]\nkey = \"sk_live_canary\n";
    let err = crate::manifest::Manifest::parse(text, &manifest).unwrap_err();
    let err = err.to_string();
    assert!(
        !err.contains("sk_live_canary") && err.contains("line "),
        "{err}"
    );
}

#[test]
fn zero_outbound_timeouts_are_refused_naming_the_key() {
    for key in [
        "connect_timeout_ms",
        "first_byte_timeout_ms",
        "between_bytes_timeout_ms",
    ] {
        let config: HostConfig = toml::from_str(&format!("[outbound]\n{key} = 0\n")).unwrap();
        let err = config.outbound.settings().unwrap_err();
        assert!(err.contains(&format!("`outbound.{key}` is 0")), "{err}");
        let config: HostConfig = toml::from_str(&format!("[outbound]\n{key} = 1\n")).unwrap();
        assert!(config.outbound.settings().is_ok());
    }
}

/// On `berth serve` the maxima the operator left unset take the tenant
/// defaults, and those it set stay: a tenant's manifest cannot grant
/// itself an hour per invocation because the host config is silent.
#[test]
fn berth_serve_caps_what_the_host_config_leaves_unset() {
    let mut engine = EngineConfig {
        max_handles: Some(500),
        ..Default::default()
    };
    engine.default_tenant_maxima();
    let (timeout_ms, concurrency, outbound_requests, _) = TENANT_MAXIMA;
    assert_eq!(engine.max_timeout_ms, Some(timeout_ms));
    assert_eq!(engine.max_concurrency, Some(concurrency));
    assert_eq!(engine.max_outbound_requests, Some(outbound_requests));
    assert_eq!(engine.max_handles, Some(500));
    let asked = crate::limits::ComponentLimits {
        timeout: std::time::Duration::from_secs(3600),
        concurrency: 100_000,
        ..Default::default()
    };
    let capped = engine.cap(&asked);
    assert_eq!(capped.timeout, std::time::Duration::from_millis(timeout_ms));
    assert_eq!(capped.concurrency, concurrency);
    assert_eq!(capped.handles, asked.handles.min(500));
}

/// Secrets Manager over plain HTTP is warned of unless it stays on this
/// machine (a local stand-in in development).
#[test]
fn plain_http_to_another_host_is_told_apart() {
    assert_eq!(plain_http_remote_host("https://sm.example.com"), None);
    assert_eq!(plain_http_remote_host("http://127.0.0.1:9000"), None);
    assert_eq!(plain_http_remote_host("http://[::1]:9000"), None);
    assert_eq!(plain_http_remote_host("http://LOCALHOST:4566"), None);
    assert_eq!(
        plain_http_remote_host("http://minio:9000").as_deref(),
        Some("minio")
    );
    assert_eq!(
        plain_http_remote_host("HTTP://10.0.0.5").as_deref(),
        Some("10.0.0.5")
    );
}

/// Values an operator may write literally (app config, upstream headers)
/// never show in a `Debug` of the host config.
#[test]
fn debug_of_the_host_config_shows_no_literal_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(
        &path,
        "[app_config.shop]\napi_key = \"canary-app-config\"\n[upstreams.pay]\nurl = \"https://user:canary-userinfo@pay.example.com/bot-canary-path\"\nheaders = { Authorization = \"Bearer canary-upstream\" }\n",
    )
    .unwrap();
    let host = HostConfig::load(&path).unwrap();
    let shown = format!("{host:?}");
    assert!(
        shown.contains("api_key") && shown.contains("Authorization"),
        "{shown}"
    );
    assert!(!shown.contains("canary"), "{shown}");
}

#[test]
fn each_embedded_store_is_bounded_on_serve_unless_set() {
    let limits = AppLimitsConfig::default();
    assert_eq!(
        limits.store_max_bytes(false),
        None,
        "berth up: the operator's app"
    );
    assert_eq!(
        limits.store_max_bytes(true),
        Some(u64::from(DEFAULT_TENANT_STORE_MB) << 20)
    );
    let set = AppLimitsConfig {
        store_mb: Some(2),
        ..Default::default()
    };
    assert_eq!(set.store_max_bytes(false), Some(2 << 20));
    assert_eq!(set.store_max_bytes(true), Some(2 << 20));
}
