//! # berth-sdk: writing Berth components in Rust
//!
//! A Berth component reaches its infrastructure only through *ports*: SQL,
//! key-value, blob storage, messaging, email, configuration and logging. It
//! names each resource by the logical name its manifest grants it
//! (`sql = ["main"]`); the host picks the backend and holds every
//! credential. This crate wraps the generated bindings of those ports in
//! plain Rust:
//!
//! - [`sql`]: rows into structs ([`sql::FromRow`]), parameters from Rust
//!   values ([`params!`]), closures as transactions;
//! - [`repository`]: a typed [`Repository`] that gives an entity its
//!   find/insert/update/delete in a few lines;
//! - [`http`]: an HTTP handler with routing ([`http::Router`],
//!   [`http_handler!`]) and outbound requests ([`http::fetch`]);
//! - [`kv`], [`blob`], [`config`], [`messaging`], [`email`], [`log`]: the
//!   other ports, and [`message_handler!`] to consume messages;
//! - [`Error`]: one error type for all of them, implementing
//!   [`std::error::Error`], so `?` works across ports.
//!
//! A whole HTTP component:
//!
//! ```no_run
//! use berth_sdk::http::{Request, Response, Router};
//! use berth_sdk::{kv, Result};
//!
//! fn hello(_req: &Request) -> Result<Response> {
//!     let visits = kv::Bucket::open("counters")?.increment("visits", 1)?;
//!     Ok(Response::text(200, format!("hello, visitor {visits}")))
//! }
//!
//! fn handle(req: Request) -> Response {
//!     Router::new().get("/", hello).handle(req)
//! }
//!
//! berth_sdk::http_handler!(handle);
//! # fn main() {}
//! ```
//!
//! The manifest that runs it declares the bucket and grants it:
//!
//! ```toml
//! name = "hello"
//!
//! [kv.counters]
//!
//! [component.hello]
//! path = "target/wasm32-wasip2/release/hello.wasm"
//!
//! [component.hello.grants]
//! kv = ["counters"]
//!
//! [[trigger.http]]
//! route = "/..."
//! component = "hello"
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`.

#![warn(missing_docs)]

pub mod blob;
pub mod config;
pub mod email;
mod error;
pub mod http;
pub mod kv;
pub mod log;
pub mod messaging;
pub mod repository;
pub mod sql;

pub use error::{Error, Result};
pub use repository::{Entity, Repository};

/// The generated bindings of the `berth:infra@0.1.0` WIT, for what this
/// crate does not wrap. Generated for the `message-handler` world: its
/// imports are every port; its `handler` export is linked only by
/// [`message_handler!`].
#[allow(missing_docs)]
#[doc(hidden)]
pub mod raw {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "berth:infra/message-handler",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_message_handler",
        default_bindings_module: "berth_sdk::raw",
    });
}

/// The `wasip2` crate, for the macros and for `wasi:*` APIs this crate does
/// not wrap.
#[doc(hidden)]
pub use wasip2;
