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
