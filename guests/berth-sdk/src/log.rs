//! Structured, levelled logging into the host's log pipeline, tagged with
//! the app and component by the host.
//!
//! ```no_run
//! berth_sdk::log::info("user created", &[("id", "42")]);
//! ```

use crate::raw::berth::infra::logging;

pub use logging::Level;

/// Writes a record at `level` with `message` and structured `fields`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    logging::log(level, message, &fields);
}

/// A debug record.
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields);
}

/// An info record.
pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields);
}

/// A warning.
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields);
}

/// An error record.
pub fn error(message: &str, fields: &[(&str, &str)]) {
    log(Level::Error, message, fields);
}
