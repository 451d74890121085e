//! The infrastructure ports served to guests.
//!
//! Every port has the same shape:
//! - `mod.rs`: the backend trait (`Arc<dyn …Backend>`, chosen per logical
//!   name at app load), the typed error, shared validation;
//! - `host.rs`: the WIT glue: grant checks, limits, resource-table
//!   bookkeeping, and the one place where a backend error becomes a
//!   guest-visible WIT error (full error logged host-side, a sanitized message
//!   to the guest);
//! - one file per technology (`sqlite.rs`, `memory.rs`, `fs.rs`, …) that
//!   never sees wasmtime types and maps its library's errors at its seam.

pub mod blob;
pub mod config;
pub mod email;
pub mod kv;
pub mod logging;
pub mod messaging;
pub mod sql;

/// Joins an error and its sources into one line for the host log.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
