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
    ("OUTBOUND_HANDLER", "outbound_handler"),
    ("EMAIL_GUEST", "email_guest"),
    ("CONFIG_GUEST", "config_guest"),
    ("HOSTILE_GUEST", "hostile_guest"),
    ("USERS_API", "users_api"),
    ("WELCOME_WORKER", "welcome_worker"),
    ("HTTP_GUEST", "http_guest"),
    ("TENANT_GUEST", "tenant_guest"),
    ("BENCH_GUEST", "bench_guest"),
    ("BENCH_HANDLER", "bench_handler"),
    ("BENCH_RECORDER", "bench_recorder"),
    ("CPU_GUEST", "cpu_guest"),
    ("STD_CONFIG_GUEST", "std_config_guest"),
    ("STD_KV_GUEST", "std_kv_guest"),
    ("SDK_EXAMPLE", "sdk_example"),
    ("SCALE_HANDLER", "scale_handler"),
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
    let wasi = wasi_http_wit(&root);
    let (python_http, python_ports) = build_python_guests(&root, &out_dir, wasi.as_deref()).unzip();
    let (js_http, js_ports) = build_js_guests(&root, &out_dir, wasi.as_deref()).unzip();
    let c_ports = build_c_guest(&root, &out_dir, wasi.as_deref());
    consts.push_str(&format!(
        "/// `guests/python_http` built with componentize-py, if it was found.\npub const PYTHON_HTTP: Option<&str> = {python_http:?};\n/// `guests/python_ports` built with componentize-py, if it was found.\npub const PYTHON_PORTS: Option<&str> = {python_ports:?};\n/// `guests/js_http` built with componentize-js, if it was found.\npub const JS_HTTP: Option<&str> = {js_http:?};\n/// `guests/js_ports` built with componentize-js, if it was found.\npub const JS_PORTS: Option<&str> = {js_ports:?};\n/// `guests/c_ports` built with clang, wit-bindgen and wasm-tools, if they were found.\npub const C_PORTS: Option<&str> = {c_ports:?};\n"
    ));
    std::fs::write(out_dir.join("guests.rs"), consts).expect("cannot write guests.rs");
}

/// A guest tool: the path in `env_var`, else `name` on the `PATH`.
fn find_tool(env_var: &str, name: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={env_var}");
    println!("cargo:rerun-if-env-changed=PATH");
    std::env::var_os(env_var).map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The WASI WIT and the tool for a language's guests, or a warning saying
/// why they are not built (their tests then report themselves skipped;
/// `.ci/run` installs the tools).
fn guest_tool<'w>(
    env_var: &str,
    name: &str,
    wasi: Option<&'w Path>,
) -> Option<(PathBuf, &'w Path)> {
    let Some(tool) = find_tool(env_var, name) else {
        println!(
            "cargo:warning={name} not found: its guests are not built and their tests report themselves skipped"
        );
        return None;
    };
    let Some(wasi) = wasi else {
        println!(
            "cargo:warning=the WASI WIT of wasmtime-wasi-http is not in cargo's source cache: the {name} guests are not built"
        );
        return None;
    };
    Some((tool, wasi))
}

/// Builds the Python guests with componentize-py (`BERTH_COMPONENTIZE_PY`
/// or `componentize-py` on the `PATH`): see [`build_proxy_and_ports`].
fn build_python_guests(
    root: &Path,
    out_dir: &Path,
    wasi: Option<&Path>,
) -> Option<(String, String)> {
    let (tool, wasi) = guest_tool("BERTH_COMPONENTIZE_PY", "componentize-py", wasi)?;
    let args = |cmd: &mut Command, wit: &Path, world: &str| {
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-d")
            .arg(wit)
            .args(["-w", world, "componentize", "app"]);
    };
    let worlds = ("wasi:http/proxy", "berth:infra/python-command");
    Some(build_proxy_and_ports(
        root, out_dir, wasi, &tool, "python", worlds, args,
    ))
}

/// Builds the JavaScript guests with componentize-js
/// (`BERTH_COMPONENTIZE_JS` or `componentize-js` on the `PATH`): see
/// [`build_proxy_and_ports`].
fn build_js_guests(root: &Path, out_dir: &Path, wasi: Option<&Path>) -> Option<(String, String)> {
    let (tool, wasi) = guest_tool("BERTH_COMPONENTIZE_JS", "componentize-js", wasi)?;
    let args = |cmd: &mut Command, wit: &Path, world: &str| {
        cmd.arg("app.js").arg("--wit").arg(wit).args(["-n", world]);
    };
    let worlds = ("wasi:http/proxy@0.2.12", "berth:infra/js-command");
    Some(build_proxy_and_ports(
        root, out_dir, wasi, &tool, "js", worlds, args,
    ))
}

/// Builds `guests/<lang>_http` against the WASI WIT of the
/// wasmtime-wasi-http crate Berth links alone (world `worlds.0`), and
/// `guests/<lang>_ports` against [`assemble_wit`] (world `worlds.1`), with
/// `tool`: `args` adds the tool's WIT and world arguments, then `-o <out>`
/// follows. Returns the two components' paths.
fn build_proxy_and_ports(
    root: &Path,
    out_dir: &Path,
    wasi: &Path,
    tool: &Path,
    lang: &str,
    (proxy_world, ports_world): (&str, &str),
    args: impl Fn(&mut Command, &Path, &str),
) -> (String, String) {
    let componentize = |guest: &str, wit: &Path, world: &str| {
        let dir = format!("guests/{guest}");
        let out = out_dir.join(format!("{guest}.wasm"));
        let mut cmd = Command::new(tool);
        cmd.current_dir(root.join(&dir));
        args(&mut cmd, wit, world);
        cmd.arg("-o").arg(&out);
        run_tool(cmd, &dir);
        out.display().to_string()
    };
    let http = componentize(&format!("{lang}_http"), wasi, proxy_world);
    let world_file = format!("guests/{lang}_ports/world.wit");
    let wit = assemble_wit(root, out_dir, wasi, &world_file);
    let ports = componentize(&format!("{lang}_ports"), &wit, ports_world);
    (http, ports)
}

/// Builds `guests/c_ports` (a wasi-libc program) with `wit-bindgen c`
/// bindings of its world, clang for `wasm32-wasi`, and `wasm-tools
/// component new` with the WASI preview1 command adapter of wasmtime's
/// version: the recipe in the header of `guests/c_ports/main.c`. The tools
/// are `BERTH_WIT_BINDGEN`, `BERTH_CLANG` and `BERTH_WASM_TOOLS`, else
/// `wit-bindgen`, `clang-14` and `wasm-tools` on the `PATH`.
fn build_c_guest(root: &Path, out_dir: &Path, wasi: Option<&Path>) -> Option<String> {
    let (wit_bindgen, wasi) = guest_tool("BERTH_WIT_BINDGEN", "wit-bindgen", wasi)?;
    let (clang, _) = guest_tool("BERTH_CLANG", "clang-14", Some(wasi))?;
    let (wasm_tools, _) = guest_tool("BERTH_WASM_TOOLS", "wasm-tools", Some(wasi))?;
    let src = root.join("guests/c_ports");
    let wit = assemble_wit(root, out_dir, wasi, "guests/c_ports/world.wit");
    let gen_dir = out_dir.join("c_ports-gen");
    let _ = std::fs::remove_dir_all(&gen_dir);
    let mut cmd = Command::new(&wit_bindgen);
    cmd.arg("c")
        .arg(&wit)
        .args(["--world", "c-command", "--out-dir"])
        .arg(&gen_dir);
    run_tool(cmd, "guests/c_ports");

    let core = out_dir.join("c_ports.core.wasm");
    let mut cmd = Command::new(&clang);
    cmd.args([
        "--target=wasm32-wasi",
        "--sysroot=/usr",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
    ])
    .arg(format!("-I{}", gen_dir.display()))
    .arg("-nostartfiles")
    .arg(src.join("main.c"))
    .arg(src.join("command_start.c"))
    .arg(gen_dir.join("c_command.c"))
    .arg(gen_dir.join("c_command_component_type.o"))
    .arg("-o")
    .arg(&core);
    run_tool(cmd, "guests/c_ports");

    let adapter = out_dir.join("wasi_snapshot_preview1.command.wasm");
    std::fs::write(
        &adapter,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    )
    .expect("cannot write the preview1 adapter");
    let component = out_dir.join("c_ports.wasm");
    let mut cmd = Command::new(&wasm_tools);
    cmd.args(["component", "new"])
        .arg(&core)
        .arg("--adapt")
        .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
        .arg("-o")
        .arg(&component);
    run_tool(cmd, "guests/c_ports");
    Some(component.display().to_string())
}

/// One package directory holding the `berth:infra` WIT (as `berth wit`
/// writes it), the guest's `world` file and the WASI packages as `deps/`:
/// componentize-py 0.25 cannot merge worlds from separate directories and
/// componentize-js takes a single `--wit` path.
fn assemble_wit(root: &Path, out_dir: &Path, wasi: &Path, world: &str) -> PathBuf {
    let world = root.join(world);
    let guest = world
        .parent()
        .and_then(|p| p.file_name())
        .expect("a guest directory")
        .to_string_lossy()
        .into_owned();
    let wit = out_dir.join(format!("{guest}-wit"));
    let _ = std::fs::remove_dir_all(&wit);
    std::fs::create_dir_all(wit.join("deps")).expect("cannot create a guest WIT directory");
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
    std::fs::copy(&world, wit.join(format!("{guest}-world.wit")))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", world.display()));
    wit
}

/// Runs a guest build tool, failing the build with its directory if it fails.
fn run_tool(mut cmd: Command, dir: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        status.success(),
        "{:?} failed to build {dir}",
        cmd.get_program()
    );
}

include!("../host/wasi_wit.rs");

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
