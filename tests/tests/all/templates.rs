//! `berth new`: every template makes a project that `berth up` builds and
//! runs at once, from the files the binary carries (no checkout needed).
//! HTTP templates answer `GET /`; message templates handle what their
//! `/publish` route publishes; command templates run once under `berth up`
//! and again under `berth run`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::cli::berth;

/// The tool a template's build command needs, if it is on the `PATH`; when
/// it is not, the test reports itself skipped (a failure under
/// `BERTH_TEST_REQUIRE_TOOLCHAINS`).
fn tool_available(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    berth_tests::toolchain_found(&format!("{tool} (on the PATH)"), found)
}

/// `berth new <template> <name>` into a fresh directory; returns it.
fn new_project(parent: &Path, template: &str, name: &str) -> PathBuf {
    let dir = parent.join(name);
    let out = berth()
        .args(["new", template, name, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("berth up"), "{stdout}");
    dir
}

/// `berth up` in `dir`, with the environment of a user's shell rather than
/// of this test's cargo.
fn berth_in(dir: &Path) -> std::process::Command {
    let mut cmd = berth();
    cmd.current_dir(dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A running `berth up` and its URL.
struct Up {
    child: Child,
    url: String,
}

impl Up {
    fn start(dir: &Path) -> Self {
        // The build's and the host's output go to a file, shown on failure.
        let log_path = dir.join("berth-up.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = berth_in(dir)
            .args(["up", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = match lines.next() {
            Some(Ok(line)) => line,
            _ => {
                let status = child.wait().unwrap();
                panic!(
                    "berth up in {} ended ({status}) before serving:\n{}",
                    dir.display(),
                    log()
                );
            }
        };
        let url = first
            .split("is up at ")
            .nth(1)
            .unwrap_or_else(|| panic!("no URL in `{first}`:\n{}", log()))
            .trim()
            .to_string();
        // Keep draining stdout so the child never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking request: status and body.
fn request(method: &str, url: &str, body: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let response = reqwest::Client::new()
            .request(method.parse().unwrap(), url)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

fn http_template_serves(template: &str, name: &str) {
    let parent = tempfile::tempdir().unwrap();
    let dir = new_project(parent.path(), template, name);
    let up = Up::start(&dir);
    assert_eq!(
        request("GET", &format!("{}/", up.url), ""),
        (200, format!("Hello from {name} (visit 1)\n"))
    );
    assert_eq!(
        request("GET", &format!("{}/", up.url), ""),
        (200, format!("Hello from {name} (visit 2)\n"))
    );
}

fn message_template_handles(template: &str, name: &str) {
    let parent = tempfile::tempdir().unwrap();
    let dir = new_project(parent.path(), template, name);
    let up = Up::start(&dir);
    assert_eq!(
        request("GET", &format!("{}/", up.url), ""),
        (200, "handled 0\n".into())
    );
    let (status, body) = request("POST", &format!("{}/publish", up.url), "hi");
    assert_eq!(status, 202, "{body}");
    assert!(body.starts_with("published "), "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = request("GET", &format!("{}/", up.url), "");
        if body == "handled 1\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message was not handled: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn command_template_runs(template: &str, name: &str) {
    let parent = tempfile::tempdir().unwrap();
    let dir = new_project(parent.path(), template, name);
    let up = berth_in(&dir).arg("up").output().unwrap();
    let stdout = String::from_utf8_lossy(&up.stdout);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("Hello from {name}, world! (run 1)\n"),
        "{stderr}"
    );
    assert!(stderr.contains("has no triggers: running"), "{stderr}");
    let run = berth_in(&dir)
        .args(["run", "berth.toml", "--", "ada", "bob"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("Hello from {name}, ada, bob! (run 2)\n"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn template_rust_http_serves() {
    http_template_serves("rust-http", "rusty-web");
}

#[test]
fn template_rust_message_handles_what_it_publishes() {
    message_template_handles("rust-message", "rusty-worker");
}

#[test]
fn template_rust_command_runs() {
    command_template_runs("rust-command", "rusty-tool");
}

#[test]
fn template_python_http_serves() {
    if tool_available("componentize-py") {
        http_template_serves("python-http", "py-web");
    }
}

#[test]
fn template_python_message_handles_what_it_publishes() {
    if tool_available("componentize-py") {
        message_template_handles("python-message", "py-worker");
    }
}

#[test]
fn template_python_command_runs() {
    if tool_available("componentize-py") {
        command_template_runs("python-command", "py-tool");
    }
}

#[test]
fn template_js_http_serves() {
    if tool_available("componentize-js") {
        http_template_serves("js-http", "js-web");
    }
}

#[test]
fn template_js_message_handles_what_it_publishes() {
    if tool_available("componentize-js") {
        message_template_handles("js-message", "js-worker");
    }
}

#[test]
fn template_js_command_runs() {
    if tool_available("componentize-js") {
        command_template_runs("js-command", "js-tool");
    }
}

#[test]
fn berth_new_refuses_bad_names_and_existing_directories() {
    let parent = tempfile::tempdir().unwrap();
    let out = berth()
        .args(["new", "rust-http", "Bad_Name"])
        .current_dir(parent.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid project name"));
    let dir = new_project(parent.path(), "rust-http", "taken");
    let out = berth()
        .args(["new", "js-http", "taken", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let list = berth().args(["new", "--list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for t in [
        "rust-http",
        "rust-message",
        "rust-command",
        "python-http",
        "js-command",
    ] {
        assert!(list.contains(t), "{list}");
    }
}

#[test]
fn vendored_sdk_is_the_repository_sdk() {
    // `berth new` writes the SDK sources it carries: they must be today's.
    let parent = tempfile::tempdir().unwrap();
    let dir = new_project(parent.path(), "rust-command", "sdk-check");
    let repo = Path::new(berth_tests::guests::REPO_ROOT).join("guests/berth-sdk/src");
    let vendored = dir.join("vendor/berth-sdk/src");
    assert_eq!(
        berth_tests::files_under(&vendored, |_| true),
        berth_tests::files_under(&repo, |_| true),
        "update SDK_SOURCES in host/src/cli/new.rs"
    );
}
