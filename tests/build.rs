//! Builds the guest components of `guests/` for `wasm32-wasip2` with a
//! nested cargo into a target directory under `OUT_DIR`, and writes
//! `guests.rs` with a constant holding the path of each `.wasm` (the pattern
//! of wasmtime's test-programs), so `cargo test` alone is enough.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest artifacts the tests use: (constant name, file stem).
const GUESTS: &[(&str, &str)] = &[
    ("SQL_GUEST", "sql_guest"),
    ("KV_GUEST", "kv_guest"),
    ("BLOB_GUEST", "blob_guest"),
    ("MESSAGING_GUEST", "messaging_guest"),
    ("MESSAGING_HANDLER", "messaging_handler"),
    ("EMAIL_GUEST", "email_guest"),
    ("CONFIG_GUEST", "config_guest"),
    ("HOSTILE_GUEST", "hostile_guest"),
    ("USERS_API", "users_api"),
    ("WELCOME_WORKER", "welcome_worker"),
    ("HTTP_GUEST", "http_guest"),
    ("TENANT_GUEST", "tenant_guest"),
    ("BENCH_GUEST", "bench_guest"),
    ("BENCH_HANDLER", "bench_handler"),
    ("CPU_GUEST", "cpu_guest"),
    ("STD_CONFIG_GUEST", "std_config_guest"),
    ("STD_KV_GUEST", "std_kv_guest"),
    ("SDK_EXAMPLE", "sdk_example"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let guests = root.join("guests");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("guests-target");

    watch(&guests);
    watch(&root.join("wit"));
    ensure_wasm_target();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's settings are for the host, not for guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the guests");
    assert!(
        status.success(),
        "building the guests for wasm32-wasip2 failed (see the output above)"
    );

    let release = target_dir.join("wasm32-wasip2").join("release");
    let mut consts = String::new();
    for (name, stem) in GUESTS {
        let path = release.join(format!("{stem}.wasm"));
        assert!(
            path.exists(),
            "guest artifact {} is missing",
            path.display()
        );
        consts.push_str(&format!(
            "/// Path of the built `{stem}` component.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    consts.push_str(&format!(
        "/// The repository root.\npub const REPO_ROOT: &str = {:?};\n",
        root.display().to_string()
    ));
    consts.push_str(&format!(
        "/// Where the guests were built.\npub const GUESTS_RELEASE_DIR: &str = {:?};\n",
        release.display().to_string()
    ));
    let (python_http, python_ports) = build_python_guests(&root, &out_dir).unzip();
    consts.push_str(&format!(
        "/// `guests/python_http` built with componentize-py, if it was found.\npub const PYTHON_HTTP: Option<&str> = {python_http:?};\n/// `guests/python_ports` built with componentize-py, if it was found.\npub const PYTHON_PORTS: Option<&str> = {python_ports:?};\n"
    ));
    std::fs::write(out_dir.join("guests.rs"), consts).expect("cannot write guests.rs");
}

/// Builds the Python guests with componentize-py (`BERTH_COMPONENTIZE_PY`
/// or `componentize-py` on the `PATH`) against the WASI WIT of the
/// wasmtime-wasi-http crate Berth links, found in cargo's source cache:
/// `guests/python_http` from `wasi:http` alone, `guests/python_ports` from
/// the Berth WIT, those WASI packages and its `world.wit` assembled into one
/// directory. Without the tool both are skipped with a warning (`.ci/run`
/// installs it).
fn build_python_guests(root: &Path, out_dir: &Path) -> Option<(String, String)> {
    println!("cargo:rerun-if-env-changed=BERTH_COMPONENTIZE_PY");
    println!("cargo:rerun-if-env-changed=PATH");
    let tool = std::env::var_os("BERTH_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("componentize-py"))
                .find(|p| p.is_file())
        });
    let Some(tool) = tool else {
        println!(
            "cargo:warning=componentize-py not found: the Python guests are not built and their tests report themselves skipped"
        );
        return None;
    };
    let Some(wasi) = wasi_http_wit(root) else {
        println!(
            "cargo:warning=the WASI WIT of wasmtime-wasi-http is not in cargo's source cache: the Python guests are not built"
        );
        return None;
    };
    let http = componentize(
        &tool,
        &root.join("guests/python_http"),
        &wasi,
        "wasi:http/proxy",
        &out_dir.join("python_http.wasm"),
    );

    // One package directory: berth:infra, its world, the WASI packages.
    let wit = out_dir.join("python-ports-wit");
    let _ = std::fs::remove_dir_all(&wit);
    std::fs::create_dir_all(wit.join("deps")).expect("cannot create the Python WIT directory");
    let copy_wit = |from: &Path, to: &Path| {
        for entry in std::fs::read_dir(from)
            .expect("cannot read a WIT directory")
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "wit") {
                std::fs::copy(&path, to.join(entry.file_name())).expect("cannot copy WIT");
            }
        }
    };
    copy_wit(&root.join("wit"), &wit);
    copy_wit(&wasi.join("deps"), &wit.join("deps"));
    std::fs::copy(
        root.join("guests/python_ports/world.wit"),
        wit.join("python-world.wit"),
    )
    .expect("cannot copy guests/python_ports/world.wit");
    let ports = componentize(
        &tool,
        &root.join("guests/python_ports"),
        &wit,
        "berth:infra/python-command",
        &out_dir.join("python_ports.wasm"),
    );
    Some((http, ports))
}

/// `componentize-py -d <wit> -w <world> componentize app -o <out>` in `dir`.
fn componentize(tool: &Path, dir: &Path, wit: &Path, world: &str, out: &Path) -> String {
    let status = Command::new(tool)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize", "app", "-o"])
        .arg(out)
        .status()
        .expect("cannot run componentize-py");
    assert!(
        status.success(),
        "componentize-py failed to build {}",
        dir.display()
    );
    out.display().to_string()
}

/// `<cargo home>/registry/src/*/wasmtime-wasi-http-<locked version>/wit`.
fn wasi_http_wit(root: &Path) -> Option<PathBuf> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasmtime-wasi-http\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))?
        .trim_end_matches('"')
        .to_string();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    std::fs::read_dir(cargo_home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|index| {
            index
                .path()
                .join(format!("wasmtime-wasi-http-{version}/wit"))
        })
        .find(|wit| wit.is_dir())
}

/// Re-runs the build when any guest source, manifest or WIT file changes.
fn watch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "__pycache__" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// rustup does not add the targets of `rust-toolchain.toml` to a toolchain
/// that is already installed, so the target is checked and added here.
fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(out) = installed else {
        println!("cargo:warning=rustup not found; assuming the wasm32-wasip2 target is installed");
        return;
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return;
    }
    println!(
        "cargo:warning=the wasm32-wasip2 target is missing; running `rustup target add wasm32-wasip2`"
    );
    let ok = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; run it yourself"
    );
}
