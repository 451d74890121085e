//! `berth wit`: the WIT a guest author needs, from the binary itself, so
//! bindings can be generated in any language without cloning this
//! repository. The files are compiled in from `wit/`; a test checks the
//! list matches that directory.

use std::path::Path;

use anyhow::Context as _;

/// The `berth:infra` package: file name and text.
pub const BERTH_INFRA: &[(&str, &str)] = &[
    ("blob.wit", include_str!("../../../wit/blob.wit")),
    ("config.wit", include_str!("../../../wit/config.wit")),
    ("email.wit", include_str!("../../../wit/email.wit")),
    ("kv.wit", include_str!("../../../wit/kv.wit")),
    ("logging.wit", include_str!("../../../wit/logging.wit")),
    ("messaging.wit", include_str!("../../../wit/messaging.wit")),
    ("sql.wit", include_str!("../../../wit/sql.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// The standard packages Berth also serves (`docs/portability.md`): path
/// under `wit/std/` and text.
pub const STANDARD: &[(&str, &str)] = &[
    (
        "config-0.2.0-rc.1/store.wit",
        include_str!("../../../wit/std/config-0.2.0-rc.1/store.wit"),
    ),
    (
        "config-0.2.0-draft-2024-09-27/store.wit",
        include_str!("../../../wit/std/config-0.2.0-draft-2024-09-27/store.wit"),
    ),
    (
        "keyvalue-0.2.0-draft/keyvalue.wit",
        include_str!("../../../wit/std/keyvalue-0.2.0-draft/keyvalue.wit"),
    ),
    (
        "keyvalue-0.2.0-draft2/keyvalue.wit",
        include_str!("../../../wit/std/keyvalue-0.2.0-draft2/keyvalue.wit"),
    ),
];

// `WASI`: the `wasi:*` 0.2 packages of wasmtime-wasi-http (cli, http, io,
// …), which `berth:infra` worlds of guests include; written by build.rs.
include!(concat!(env!("OUT_DIR"), "/wasi_wit.rs"));

/// Writes `berth:infra` into `out/`, the standard packages into
/// `out/std/` and the WASI packages into `out/wasi/`, or, without `out`,
/// prints every file after a `// ==> <path> <==` line.
pub fn wit(out: Option<&Path>) -> anyhow::Result<()> {
    if WASI.is_empty() {
        anyhow::bail!(
            "this berth was built without the WASI WIT (wasmtime-wasi-http was not in cargo's source cache), which the berth:infra worlds include; build berth with its sources at hand"
        );
    }
    let files = BERTH_INFRA
        .iter()
        .map(|(name, text)| (name.to_string(), *text))
        .chain(
            STANDARD
                .iter()
                .map(|(name, text)| (format!("std/{name}"), *text)),
        )
        .chain(
            WASI.iter()
                .map(|(name, text)| (format!("wasi/{name}"), *text)),
        );
    match out {
        None => {
            for (path, text) in files {
                say!("// ==> {path} <==\n{text}");
            }
        }
        Some(dir) => {
            for (path, text) in files {
                let path = dir.join(path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            say!(
                "berth: wrote the berth:infra WIT to {dir}, the standard packages Berth serves to {dir}/std/ and the WASI packages to {dir}/wasi/ (e.g. wit-bindgen rust --world berth:infra/ports {dir}; a world of your own that includes WASI worlds takes {dir}/wasi/*.wit and {dir} as its deps/)",
                dir = dir.display()
            );
        }
    }
    Ok(())
}
