//! Berth: a WebAssembly component host that serves infrastructure *ports*
//! (SQL, key-value, blobs, messaging, email, config, logging, outbound HTTP)
//! to sandboxed guests.
//!
//! The crate is organised by lifetime (see `README.md`, "Architecture"):
//! - **process**: [`engine::HostEngine`] (wasmtime `Engine`, `Linker`, epoch
//!   ticker, compiled-component cache), built once;
//! - **app**: [`app::App`] (manifest, backends, `InstancePre` per component),
//!   built when an app is loaded;
//! - **instance**: [`state::InstanceState`], the data of one `Store`, created
//!   per run, request or message; it only clones `Arc`s.
//!
//! Ports live in [`ports`]: each has a backend trait, typed errors, the WIT
//! glue (`host.rs`) and one adapter per technology.

pub mod admin;
pub mod app;
pub mod audit;
pub mod backends;
pub mod bindings;
pub mod cli;
pub mod config;
pub mod engine;
pub mod fairness;
pub mod idle_body;
pub mod imports;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod outbound;
pub mod ports;
pub mod rate;
pub mod secret;
pub mod state;
pub mod state_file;
pub mod tenants;
pub mod triggers;
