//! Smoke tests of the `berth` binary that need no guest. Having an
//! integration test here also makes `cargo test` build `target/*/berth`,
//! which the workspace's end-to-end CLI tests run.

use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "up", "check"] {
        assert!(text.contains(cmd), "{text}");
    }
}

#[test]
fn missing_manifest_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check", "/nonexistent/berth.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read manifest /nonexistent/berth.toml"),
        "{err}"
    );
}
