//! Runs the build commands of an app's components (`berth up`).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::manifest::Manifest;

/// Runs every component's `build` command in the manifest's directory.
pub fn build_components(manifest: &Manifest) -> anyhow::Result<()> {
    for c in manifest.components.values() {
        let Some(cmd) = &c.build else { continue };
        if cmd.contains("wasm32-wasip2") {
            ensure_wasm_target()?;
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
/// not add a toolchain file's targets to an already installed toolchain).
pub fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(out) = installed else {
        bail!(
            "cannot run rustup to check for the wasm32-wasip2 target; install it with `rustup target add wasm32-wasip2`"
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
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; run it yourself"
        ),
    }
}
