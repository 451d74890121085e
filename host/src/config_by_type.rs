//! Backend sections of the host config: tables that name their backend in
//! `type` (`[sql.main]` with `type = "postgres"` and that backend's
//! settings).
//!
//! serde's internally tagged enums (`#[serde(tag = "type")]`) buffer the
//! table before they read the variant, and the buffer loses which key a
//! wrongly typed setting was under: `port = "587"` in `[email]` was
//! refused as "invalid type: string, expected u16", with no key named. So
//! each section's enum derives serde's external form instead (`{ postgres
//! = { … } }`, under `#[serde(remote = "Self")]`, which leaves the derived
//! code as an inherent `deserialize`), and [`deserialize_by_type!`] gives
//! it a `Deserialize` that reads the table, takes `type` out and reads the
//! rest in that form, whose errors keep the setting's key.

use serde::Deserialize as _;
use serde::de::Error as _;

/// Reads a backend section from `d`, handing `{ <type> = <the other
/// settings> }` to `external` (the enum's derived, externally tagged
/// `deserialize`). Errors name the setting they are about.
pub(crate) fn deserialize<'de, D, T>(
    d: D,
    external: fn(toml::Value) -> Result<T, toml::de::Error>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let mut table = toml::Table::deserialize(d)?;
    let backend = match table.remove("type") {
        Some(toml::Value::String(backend)) => backend,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "`type`: expected a string, found {}",
                other.type_str()
            )));
        }
        None => return Err(D::Error::missing_field("type")),
    };
    let external_form = toml::Table::from_iter([(backend, toml::Value::Table(table))]);
    external(toml::Value::Table(external_form)).map_err(|e| D::Error::custom(naming_the_key(&e)))
}

/// `e`'s message, led by the key of the setting it is about.
fn naming_the_key(e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    // toml keeps the keys an error was found under to itself, but its
    // `Display` of an error from outside a file ends with them:
    // "in `<setting>`" (a nested one as `<table>.<setting>`).
    let shown = e.to_string();
    let setting = shown
        .trim_end()
        .rsplit_once("\nin `")
        .and_then(|(_, keys)| keys.strip_suffix('`'));
    match setting {
        Some(setting) => format!("`{setting}`: {message}"),
        None => message.to_string(),
    }
}

/// Implements `Deserialize` for a backend section's enum, which derives
/// `Deserialize` with `#[serde(remote = "Self", rename_all = "kebab-case",
/// deny_unknown_fields)]` (see the module's docs).
macro_rules! deserialize_by_type {
    ($section:ty) => {
        impl<'de> serde::Deserialize<'de> for $section {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // The inherent `deserialize` the derive made.
                $crate::config::by_type::deserialize(d, |v| <$section>::deserialize(v))
            }
        }
    };
}
pub(crate) use deserialize_by_type;

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(remote = "Self", rename_all = "kebab-case", deny_unknown_fields)]
    enum Section {
        Plain {},
        Server { port: u16, host: Option<String> },
    }
    deserialize_by_type!(Section);

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        section: Section,
    }

    fn read(text: &str) -> Result<Section, String> {
        toml::from_str::<File>(text)
            .map(|f| f.section)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn sections_read_by_type_name_the_setting_in_errors() {
        assert_eq!(read("[section]\ntype = \"plain\"\n"), Ok(Section::Plain {}));
        assert_eq!(
            read("[section]\ntype = \"server\"\nport = 25\n"),
            Ok(Section::Server {
                port: 25,
                host: None
            })
        );
        assert_eq!(
            read("section = { type = \"server\", port = 25, host = \"h\" }\n"),
            Ok(Section::Server {
                port: 25,
                host: Some("h".into())
            })
        );
        let wrong_type = read("[section]\ntype = \"server\"\nport = \"587\"\n").unwrap_err();
        assert!(
            wrong_type.starts_with("`port`: invalid type: string"),
            "{wrong_type}"
        );
        let unknown = read("[section]\ntype = \"server\"\nport = 1\nsize = 3\n").unwrap_err();
        assert!(unknown.contains("unknown field `size`"), "{unknown}");
        let variant = read("[section]\ntype = \"memcached\"\n").unwrap_err();
        assert!(variant.contains("unknown variant `memcached`"), "{variant}");
        let missing = read("[section]\nport = 1\n").unwrap_err();
        assert!(missing.contains("missing field `type`"), "{missing}");
        let not_text = read("[section]\ntype = 3\n").unwrap_err();
        assert_eq!(not_text, "`type`: expected a string, found integer");
        let missing_setting = read("[section]\ntype = \"server\"\n").unwrap_err();
        assert!(
            missing_setting.contains("missing field `port`"),
            "{missing_setting}"
        );
    }
}
