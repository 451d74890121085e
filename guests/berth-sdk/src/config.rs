//! The component's configuration: values the manifest declares under
//! `[config]` (`page_size = "50"`) and grants the component (`config =
//! ["page_size"]` among its grants), secrets included, read by key.
//!
//! ```no_run
//! use berth_sdk::{config, Result};
//!
//! fn page_size() -> Result<u32> {
//!     Ok(config::parse::<u32>("page_size")?.unwrap_or(50))
//! }
//! # fn main() {}
//! ```

use std::str::FromStr;

use crate::raw::berth::infra::config as raw;
use crate::{Error, Result};

pub use raw::Error as ConfigError;

/// The value of `key`, `None` if it has none; [`ConfigError::NotGranted`]
/// if the component was not given the key.
pub fn get(key: &str) -> Result<Option<String>> {
    Ok(raw::get(key)?)
}

/// The value of `key`; [`Error::Missing`] if it has none.
pub fn require(key: &str) -> Result<String> {
    get(key)?.ok_or_else(|| Error::Missing(format!("config key `{key}` has no value")))
}

/// The value of `key` parsed as `T`.
pub fn parse<T: FromStr>(key: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    get(key)?
        .map(|text| {
            text.parse()
                .map_err(|e| Error::Decode(format!("config key `{key}`: {e}")))
        })
        .transpose()
}

/// Every key and value granted to the component.
pub fn all() -> Result<Vec<(String, String)>> {
    Ok(raw::get_all()?)
}
