//! Reading the component file an app names: bounded, a regular file,
//! within the app's own directory on `berth serve`, and a component.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Reads the regular file at `path` if it holds at most `max` bytes (and,
/// with `root`, lies in that directory). Opened once, without waiting (a
/// FIFO without a writer would block the open for ever), and read with a
/// bound, so neither a device (`/dev/zero`), a FIFO, nor a file that grows
/// after a size check can make the host read more. Where the file lies is
/// read from the open file itself, so a link swapped after a check cannot
/// lead elsewhere.
pub(super) fn read_bounded(path: &Path, max: u64, root: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read component {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read component {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("component {} is not a regular file", path.display());
    }
    if let Some(root) = root {
        check_within(&file, path, root)?;
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read component {}", path.display()))?;
    if bytes.len() as u64 > max {
        anyhow::bail!(
            "component {} is larger than this host accepts: at most {} MiB ([engine] max_component_mb)",
            path.display(),
            max >> 20
        );
    }
    Ok(bytes)
}

/// Refuses anything that is not a WebAssembly component with a message that
/// says what it is instead.
pub(super) fn check_is_component(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!(
            "not a WebAssembly file (no `\\0asm` header); expected a component built for wasm32-wasip2"
        );
    }
    // Layer field: 0 for core modules, 1 for components.
    if bytes[6..8] == [0, 0] {
        bail!(
            "this is a core WebAssembly module, not a component; build it for wasm32-wasip2 or wrap it with `wasm-tools component new`"
        );
    }
    Ok(())
}

/// Refuses open `file` (opened as `path`) unless it lies in directory
/// `root`, every link followed.
fn check_within(file: &std::fs::File, path: &Path, root: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let outside = || {
        anyhow::anyhow!(
            "component {} lies outside the app's directory {}: an app served by `berth serve` runs components from its own directory only",
            path.display(),
            root.display()
        )
    };
    let root = std::fs::canonicalize(root).map_err(|_| outside())?;
    let actual = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .with_context(|| format!("cannot tell where component {} lies", path.display()))?;
    if !actual.starts_with(&root) {
        return Err(outside());
    }
    let links = file.metadata().map(|m| m.nlink()).unwrap_or(0);
    if links > 1 {
        // A hard link has no one place: it may be another tenant's file
        // too, whatever directory this name lies in.
        anyhow::bail!(
            "component {} is a hard link ({links} names): an app served by `berth serve` runs components that are its own files only",
            path.display()
        );
    }
    Ok(())
}
