//! Runs the build commands of an app's components (`berth up`).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::manifest::Manifest;

/// Runs every component's `build` command in the manifest's directory.
pub fn build_components(manifest: &Manifest) -> anyhow::Result<()> {
    for c in manifest.components.values() {
        let Some(cmd) = &c.build else { continue };
        if cmd.contains("wasm32-wasip2") {
            ensure_wasm_target_in(manifest.dir())?;
        }
        report!("berth: building component `{}`: {cmd}", c.name);
        let status = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(manifest.dir())
            // The tools' chatter goes with Berth's own progress, to stderr:
            // stdout stays for what `berth up` reports (its URL first).
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .with_context(|| format!("cannot start the build command of `{}`", c.name))?;
        if status.code() == Some(127) {
            let program = cmd.split_whitespace().next().unwrap_or(cmd);
            bail!(
                "the build command of component `{}` failed: `{program}` was not found; install it (the comments in {} say how) or fix `build`: {cmd}",
                c.name,
                manifest.file.display()
            );
        }
        if !status.success() {
            bail!(
                "the build command of component `{}` failed ({status}): {cmd}",
                c.name
            );
        }
        if !c.path.exists() {
            bail!(
                "component `{}` was built but {} does not exist; check `path` in {}",
                c.name,
                c.path.display(),
                manifest.file.display()
            );
        }
    }
    Ok(())
}

/// Installs the `wasm32-wasip2` Rust target if rustup lacks it (rustup does
/// not add a toolchain file's targets to an already installed toolchain),
/// for the toolchain that builds in `dir` (its `rust-toolchain.toml` picks
/// it). Without rustup (a distribution's Rust), the target's standard
/// library is looked for where `rustc` keeps it.
fn ensure_wasm_target_in(dir: &std::path::Path) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .output();
    let Ok(out) = installed else {
        let libdir = Command::new("rustc")
            .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
            .current_dir(dir)
            .output();
        let present = libdir.is_ok_and(|out| {
            out.status.success()
                && std::path::Path::new(String::from_utf8_lossy(&out.stdout).trim()).is_dir()
        });
        if present {
            return Ok(());
        }
        bail!(
            "the wasm32-wasip2 target is missing and rustup cannot be run to add it; install it with `rustup target add wasm32-wasip2` (or your distribution's wasm32-wasip2 standard library)"
        );
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    report!(
        "berth: the wasm32-wasip2 target is missing; running `rustup target add wasm32-wasip2`"
    );
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .current_dir(dir)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; run it yourself"
        ),
    }
}
