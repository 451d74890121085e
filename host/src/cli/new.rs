//! `berth new <template> <name>`: a project that `berth up` builds and runs
//! at once, in Rust (with the berth-sdk crate), Python (componentize-py) or
//! JavaScript (componentize-js), as an HTTP handler, a message handler or a
//! command. The templates live in `host/templates/` and are compiled in.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::wit::{BERTH_INFRA, WASI};

/// A project template: name, what it makes, language, files.
pub struct Template {
    /// `rust-http`, …
    pub name: &'static str,
    /// One line for `berth new --list`.
    pub about: &'static str,
    /// Which language support files it gets besides its own.
    pub language: Language,
    /// Path in the project and text, with `{{name}}`, `{{crate}}` and
    /// `{{package}}` placeholders.
    pub files: &'static [(&'static str, &'static str)],
}

/// A template's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Gets the berth-sdk crate in `vendor/` and the berth:infra WIT in `wit/`.
    Rust,
    /// Gets the berth:infra and WASI WIT in `wit/deps/`, beside its world.
    Python,
    /// As Python.
    JavaScript,
}

macro_rules! template_files {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../../templates/", $dir, "/", $file)))),+]
    };
}

/// Every template.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "rust-http",
        about: "an HTTP handler in Rust, with routing (berth-sdk)",
        language: Language::Rust,
        files: template_files!("rust-http": "berth.toml", "Cargo.toml", "src/lib.rs"),
    },
    Template {
        name: "rust-message",
        about: "a message handler in Rust, with a /publish route (berth-sdk)",
        language: Language::Rust,
        files: template_files!("rust-message": "berth.toml", "Cargo.toml", "src/lib.rs"),
    },
    Template {
        name: "rust-command",
        about: "a command in Rust, run once (berth-sdk)",
        language: Language::Rust,
        files: template_files!("rust-command": "berth.toml", "Cargo.toml", "src/main.rs"),
    },
    Template {
        name: "python-http",
        about: "an HTTP handler in Python (componentize-py)",
        language: Language::Python,
        files: template_files!("python-http": "berth.toml", "app.py", "wit/world.wit"),
    },
    Template {
        name: "python-message",
        about: "a message handler in Python, with a /publish route (componentize-py)",
        language: Language::Python,
        files: template_files!("python-message": "berth.toml", "app.py", "wit/world.wit"),
    },
    Template {
        name: "python-command",
        about: "a command in Python, run once (componentize-py)",
        language: Language::Python,
        files: template_files!("python-command": "berth.toml", "app.py", "wit/world.wit"),
    },
    Template {
        name: "js-http",
        about: "an HTTP handler in JavaScript (componentize-js)",
        language: Language::JavaScript,
        files: template_files!("js-http": "berth.toml", "app.js", "wit/world.wit"),
    },
    Template {
        name: "js-message",
        about: "a message handler in JavaScript, with a /publish route (componentize-js)",
        language: Language::JavaScript,
        files: template_files!("js-message": "berth.toml", "app.js", "wit/world.wit"),
    },
    Template {
        name: "js-command",
        about: "a command in JavaScript, run once (componentize-js)",
        language: Language::JavaScript,
        files: template_files!("js-command": "berth.toml", "app.js", "wit/world.wit"),
    },
];

/// The sources of `guests/berth-sdk`, written into Rust projects as
/// `vendor/berth-sdk` (its `Cargo.toml` is [`SDK_MANIFEST`]: the
/// repository's inherits workspace settings). A test checks the list
/// matches the directory.
pub const SDK_SOURCES: &[(&str, &str)] = &[
    (
        "src/lib.rs",
        include_str!("../../../guests/berth-sdk/src/lib.rs"),
    ),
    (
        "src/error.rs",
        include_str!("../../../guests/berth-sdk/src/error.rs"),
    ),
    (
        "src/sql.rs",
        include_str!("../../../guests/berth-sdk/src/sql.rs"),
    ),
    (
        "src/repository.rs",
        include_str!("../../../guests/berth-sdk/src/repository.rs"),
    ),
    (
        "src/kv.rs",
        include_str!("../../../guests/berth-sdk/src/kv.rs"),
    ),
    (
        "src/blob.rs",
        include_str!("../../../guests/berth-sdk/src/blob.rs"),
    ),
    (
        "src/config.rs",
        include_str!("../../../guests/berth-sdk/src/config.rs"),
    ),
    (
        "src/email.rs",
        include_str!("../../../guests/berth-sdk/src/email.rs"),
    ),
    (
        "src/log.rs",
        include_str!("../../../guests/berth-sdk/src/log.rs"),
    ),
    (
        "src/messaging.rs",
        include_str!("../../../guests/berth-sdk/src/messaging.rs"),
    ),
    (
        "src/http/mod.rs",
        include_str!("../../../guests/berth-sdk/src/http/mod.rs"),
    ),
    (
        "src/http/server.rs",
        include_str!("../../../guests/berth-sdk/src/http/server.rs"),
    ),
    (
        "src/http/router.rs",
        include_str!("../../../guests/berth-sdk/src/http/router.rs"),
    ),
    (
        "src/http/client.rs",
        include_str!("../../../guests/berth-sdk/src/http/client.rs"),
    ),
];

/// The vendored SDK's manifest: the dependencies of `guests/berth-sdk`,
/// with the versions the guests workspace uses.
pub const SDK_MANIFEST: &str = r#"[package]
name = "berth-sdk"
description = "The Rust SDK for Berth components (vendored by `berth new`)"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
wit-bindgen = "0.61"
wasip2 = "1"
"#;

/// Finds a template by name.
pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// The `berth new --list` text.
pub fn list() -> String {
    let mut text = String::from("templates:\n");
    for t in TEMPLATES {
        text.push_str(&format!("  {:<16} {}\n", t.name, t.about));
    }
    text
}

/// Creates project `name` from `template` in `dir` (default `./<name>`);
/// returns the project directory.
pub fn create(template_name: &str, name: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(template) = template(template_name) else {
        return Err(super::UsageError(format!(
            "unknown template `{template_name}`; {}",
            list().trim_end()
        ))
        .into());
    };
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{package}}", name)
    };
    let mut files: Vec<(PathBuf, String)> = template
        .files
        .iter()
        .map(|(path, text)| (PathBuf::from(path), fill(text)))
        .collect();
    match template.language {
        Language::Rust => {
            files.push(("vendor/berth-sdk/Cargo.toml".into(), SDK_MANIFEST.into()));
            for (path, text) in SDK_SOURCES {
                files.push((Path::new("vendor/berth-sdk").join(path), (*text).into()));
            }
            // The SDK generates its bindings from `../../wit`.
            for (file, text) in BERTH_INFRA {
                files.push((Path::new("wit").join(file), (*text).into()));
            }
            files.push((".gitignore".into(), "/target\n/.berth\n".into()));
        }
        Language::Python | Language::JavaScript => {
            if WASI.is_empty() {
                bail!(
                    "this berth was built without the WASI WIT (wasmtime-wasi-http was not in cargo's source cache), which {} projects need",
                    template.name
                );
            }
            for (file, text) in BERTH_INFRA {
                files.push((Path::new("wit/deps/berth-infra").join(file), (*text).into()));
            }
            for (file, text) in WASI {
                files.push((Path::new("wit/deps").join(file), (*text).into()));
            }
            let ignored = if template.language == Language::Python {
                "/app.wasm\n/.berth\n__pycache__/\n"
            } else {
                "/app.wasm\n/.berth\n"
            };
            files.push((".gitignore".into(), ignored.into()));
        }
    }
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// Project names become the app name, a component name, a cargo package
/// and a WIT package name: lowercase letters, digits and single hyphens,
/// starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(super::UsageError(format!(
            "`{name}` is not a valid project name: use 1-64 lowercase letters, digits and single hyphens, starting with a letter (e.g. `hello-api`)"
        ))
        .into());
    }
    if WIT_KEYWORDS.contains(&name) {
        return Err(super::UsageError(format!(
            "`{name}` is a WIT keyword, which the Python and JavaScript templates' WIT package cannot be named; choose another name (e.g. `{name}-app`)"
        ))
        .into());
    }
    Ok(())
}

/// The words WIT reserves (wit-parser's lexer), which a package name may
/// not be.
const WIT_KEYWORDS: &[&str] = &[
    "use",
    "type",
    "func",
    "u8",
    "u16",
    "u32",
    "u64",
    "s8",
    "s16",
    "s32",
    "s64",
    "f32",
    "f64",
    "char",
    "resource",
    "own",
    "borrow",
    "record",
    "flags",
    "variant",
    "enum",
    "bool",
    "string",
    "option",
    "result",
    "future",
    "stream",
    "error-context",
    "list",
    "map",
    "as",
    "from",
    "static",
    "interface",
    "tuple",
    "world",
    "import",
    "export",
    "package",
    "constructor",
    "include",
    "with",
    "async",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_written() {
        for bad in [
            "",
            "Hello",
            "1st",
            "a--b",
            "trailing-",
            "under_score",
            "dot.name",
            "import",
            "list",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "hello-api", "v2-worker", "import-app"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
        let err = create("cobol-http", "x", None).unwrap_err().to_string();
        assert!(
            err.contains("unknown template `cobol-http`") && err.contains("rust-http"),
            "{err}"
        );
    }

    #[test]
    fn every_template_names_its_component_and_has_a_build_command() {
        for t in TEMPLATES {
            let manifest = t
                .files
                .iter()
                .find(|(p, _)| *p == "berth.toml")
                .expect("berth.toml");
            assert!(manifest.1.contains("[component.{{name}}]"), "{}", t.name);
            assert!(manifest.1.contains("build = "), "{}", t.name);
        }
    }
}
