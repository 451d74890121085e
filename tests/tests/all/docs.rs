//! `docs/ports.md` is the rendering of the WIT doc comments: this test fails
//! when they differ. `BERTH_BLESS=1 cargo test -p berth-tests docs` (or
//! `just docs`) rewrites the file.

use std::path::Path;

#[test]
fn docs_ports_md_matches_wit() {
    let root = Path::new(berth_tests::guests::REPO_ROOT);
    let rendered = berth_tests::portsdoc::render(&root.join("wit")).unwrap();
    let path = root.join("docs/ports.md");
    if std::env::var_os("BERTH_BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "docs/ports.md is out of date with wit/; run `just docs` (BERTH_BLESS=1 cargo test -p berth-tests docs)"
    );
}

/// The host config of `docs/scaling.md`'s Kubernetes example parses.
#[test]
fn docs_scaling_md_host_config_is_valid() {
    let root = Path::new(berth_tests::guests::REPO_ROOT);
    let doc = std::fs::read_to_string(root.join("docs/scaling.md")).unwrap();
    let start = doc
        .find("  host.toml: |\n")
        .expect("the ConfigMap's host.toml")
        + 16;
    let block: String = doc[start..]
        .lines()
        .take_while(|l| !l.starts_with("---"))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, &block).unwrap();
    let host = berth::config::HostConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
    assert!(host.admin.listen.is_some());
    assert!(matches!(
        host.messaging,
        berth::ports::messaging::MessagingConfig::Nats { .. }
    ));
}

/// The sample host config of `docs/operating.md` (its first TOML block)
/// parses and validates.
#[test]
fn docs_operating_md_host_config_is_valid() {
    let root = Path::new(berth_tests::guests::REPO_ROOT);
    let doc = std::fs::read_to_string(root.join("docs/operating.md")).unwrap();
    let start = doc.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let block = &doc[start..start + doc[start..].find("```").expect("its end")];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, block).unwrap();
    let host = berth::config::HostConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
    assert!(host.public_url.is_some(), "{block}");
}
