//! Load-time checking of what a component imports against what its manifest
//! grants. A component that imports a port it was not granted, or anything
//! the host does not provide, is refused before it ever runs, with a message
//! naming the import.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::manifest::Grants;

/// WASI packages linked for every component (they grant nothing by
/// themselves: no preopens, no sockets, no environment).
const ALWAYS_LINKED: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:http/types",
];

/// Checks every import of `component` against `grants`.
///
/// # Errors
/// A message naming the first import that is not granted or not provided.
pub fn check_imports(
    engine: &Engine,
    component: &Component,
    component_name: &str,
    grants: &Grants,
) -> Result<(), String> {
    let ty = component.component_type();
    for (import, _) in ty.imports(engine) {
        check_import(import, grants)
            .map_err(|why| format!("component `{component_name}` imports `{import}`, {why}"))?;
    }
    Ok(())
}

fn check_import(import: &str, grants: &Grants) -> Result<(), String> {
    let unversioned = import.split('@').next().unwrap_or(import);
    if ALWAYS_LINKED.iter().any(|p| unversioned.starts_with(p)) {
        return Ok(());
    }
    if let Some(iface) = unversioned.strip_prefix("berth:infra/") {
        let version = import.split_once('@').map(|(_, v)| v).unwrap_or("");
        if !version.starts_with("0.1.") {
            return Err(format!(
                "but this host provides berth:infra@0.1.x (the import asks for version {version:?})"
            ));
        }
        let (granted, grant_key) = match iface {
            "sql" => (!grants.sql.is_empty(), "sql"),
            "kv" => (!grants.kv.is_empty(), "kv"),
            "blob" => (!grants.blob.is_empty(), "blob"),
            "messaging" => (!grants.publish.is_empty(), "publish"),
            "email" => (!grants.email_senders.is_empty(), "email_senders"),
            // Types only, logging and the component's own config are always
            // available (config answers `not-granted` per key).
            "messaging-types" | "logging" | "config" => (true, ""),
            _ => return Err("which Berth does not provide".to_string()),
        };
        return if granted {
            Ok(())
        } else {
            Err(format!(
                "but its manifest grants nothing for it (add `{grant_key} = [...]` under the component's `grants`)"
            ))
        };
    }
    if unversioned == "wasi:config/store" {
        let version = import.split_once('@').map(|(_, v)| v).unwrap_or("");
        let provided = crate::ports::config::wasi::VERSIONS;
        // Like `berth:infra/config`: always linked, answering per key.
        return if provided.contains(&version) {
            Ok(())
        } else {
            Err(format!(
                "but this host provides wasi:config@{} (the import asks for version {version:?})",
                provided.join(" and @")
            ))
        };
    }
    if let Some(iface) = unversioned.strip_prefix("wasi:keyvalue/") {
        let version = import.split_once('@').map(|(_, v)| v).unwrap_or("");
        let provided = crate::ports::kv::wasi::VERSIONS;
        if !matches!(iface, "store" | "atomics" | "batch") || !provided.contains(&version) {
            return Err(format!(
                "but this host provides wasi:keyvalue/{{store,atomics,batch}}@{}",
                provided.join(" and @")
            ));
        }
        // The same grant as `berth:infra/kv`.
        return if grants.kv.is_empty() {
            Err("but its manifest grants no bucket (add `kv = [...]` under the component's `grants`)".to_string())
        } else {
            Ok(())
        };
    }
    if unversioned == "wasi:http/outgoing-handler" {
        return if grants.http.is_empty() && grants.upstreams.is_empty() {
            Err("but its manifest grants no outbound HTTP destinations (add `http = [\"https://host\"]` or `upstreams = [\"name\"]` under the component's `grants`)".to_string())
        } else {
            Ok(())
        };
    }
    Err("which Berth does not provide".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_base_is_always_allowed() {
        let g = Grants::default();
        for i in [
            "wasi:cli/environment@0.2.4",
            "wasi:sockets/tcp@0.2.0",
            "wasi:http/types@0.2.4",
        ] {
            assert!(check_import(i, &g).is_ok(), "{i}");
        }
    }

    #[test]
    fn ports_need_grants() {
        let mut g = Grants::default();
        let err = check_import("berth:infra/sql@0.1.0", &g).unwrap_err();
        assert!(err.contains("sql = [...]"), "{err}");
        g.sql.push("main".into());
        assert!(check_import("berth:infra/sql@0.1.0", &g).is_ok());
        assert!(check_import("berth:infra/logging@0.1.0", &g).is_ok());
        assert!(check_import("wasi:http/outgoing-handler@0.2.0", &g).is_err());
    }

    #[test]
    fn standard_config_versions_are_linked() {
        let g = Grants::default();
        assert!(check_import("wasi:config/store@0.2.0-rc.1", &g).is_ok());
        assert!(check_import("wasi:config/store@0.2.0-draft-2024-09-27", &g).is_ok());
        let err = check_import("wasi:config/store@0.2.0-draft", &g).unwrap_err();
        assert!(
            err.contains("0.2.0-rc.1 and @0.2.0-draft-2024-09-27"),
            "{err}"
        );
    }

    #[test]
    fn standard_keyvalue_needs_a_bucket_grant() {
        let mut g = Grants::default();
        let err = check_import("wasi:keyvalue/store@0.2.0-draft2", &g).unwrap_err();
        assert!(err.contains("kv = [...]"), "{err}");
        g.kv = vec!["cache".into()];
        for import in [
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:keyvalue/atomics@0.2.0-draft",
            "wasi:keyvalue/batch@0.2.0-draft2",
        ] {
            assert!(check_import(import, &g).is_ok(), "{import}");
        }
        assert!(check_import("wasi:keyvalue/watcher@0.2.0-draft", &g).is_err());
        assert!(check_import("wasi:keyvalue/store@0.1.0", &g).is_err());
    }

    #[test]
    fn unknown_and_wrong_versions_are_refused() {
        let g = Grants::default();
        assert!(
            check_import("acme:evil/backdoor", &g)
                .unwrap_err()
                .contains("does not provide")
        );
        assert!(check_import("berth:infra/logging@0.2.0", &g).is_err());
        assert!(check_import("berth:infra/shell@0.1.0", &g).is_err());
    }
}
