//! Rust bindings to the Berth ports, the `berth:infra@0.1.0` package.
//!
//! A Berth component reaches every piece of infrastructure (databases,
//! key-value stores, blob storage, messaging, email, configuration, logs)
//! through these *ports*. It names resources by the logical names its app
//! manifest grants it (`sql = ["main"]`); the host decides which backend
//! serves them and holds every credential.
//!
//! The modules are generated from the WIT in `wit/` by `wit-bindgen`, for
//! the `berth:infra/ports` world (imports only). Use them from any
//! `wasm32-wasip2` component:
//!
//! ```ignore
//! use berth_bindings::sql::{Connection, Value};
//!
//! let db = Connection::open("main")?;
//! let rows = db.query("SELECT name FROM users WHERE id = ?", &[Value::Int(1)])?;
//! ```
//!
//! Components that *export* a Berth interface (such as a message handler)
//! generate their own bindings for the exporting world, for example
//! `berth:infra/message-handler`.

#![warn(missing_docs)]

#[allow(missing_docs)]
mod generated {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "berth:infra/ports",
        generate_all,
    });
}

/// Everything the generator produced, under its WIT package path
/// (`berth::infra::<interface>`).
pub use generated::berth;

/// Relational persistence: connections, transactions and cursors over a
/// logical database.
pub use generated::berth::infra::sql;

/// Key-value storage and caching: buckets of byte values with TTLs,
/// counters and compare-and-swap.
pub use generated::berth::infra::kv;

/// Blob and file storage: containers of objects, read and written whole or
/// in chunks.
pub use generated::berth::infra::blob;

/// Publishing messages and request/reply.
pub use generated::berth::infra::messaging;

/// The message and header types shared by publishing and handling.
pub use generated::berth::infra::messaging_types;

/// Sending email from a granted sender.
pub use generated::berth::infra::email;

/// The component's own configuration values.
pub use generated::berth::infra::config;

/// Structured, levelled logging into the host's log pipeline.
pub use generated::berth::infra::logging;

/// Writes a log record with `message` and structured `fields`.
///
/// A convenience over [`logging::log`] that takes borrowed fields.
pub fn log(level: logging::Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    logging::log(level, message, &fields);
}
