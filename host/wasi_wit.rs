// Shared by the build scripts of `host/` and `tests/` (`include!`d): where
// the standard WASI WIT that Berth serves is, namely the `wit/` directory of
// the wasmtime-wasi-http crate at the version in Cargo.lock, in cargo's
// registry source cache.

/// `<cargo home>/registry/src/*/wasmtime-wasi-http-<locked version>/wit`.
fn wasi_http_wit(root: &std::path::Path) -> Option<std::path::PathBuf> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasmtime-wasi-http\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))?
        .trim_end_matches('"')
        .to_string();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))?;
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
