//! # users-api: the Berth example application
//!
//! A small HTTP API for user accounts. It shows every Berth port a typical
//! web service needs, used from plain Rust:
//!
//! | Route                     | What it does                                         |
//! |---------------------------|------------------------------------------------------|
//! | `POST /users`             | creates a user (SQL), announces it (messaging), sends a welcome email |
//! | `GET /users/{id}`         | reads a user (SQL)                                   |
//! | `PUT /users/{id}/avatar`  | streams the request body into blob storage           |
//! | `GET /stats`              | reads a counter (key-value) and a setting (config)   |
//!
//! The component never sees a database URL, a bucket name or an SMTP
//! password: it asks for *logical* resources (`main`, `avatars`,
//! `counters`) that its manifest, `berth.toml`, grants it, and the host
//! decides what serves them.
//!
//! Code layout:
//! - [`http`]: the thin layer over `wasi:http` (bodies, JSON responses, errors),
//! - [`routes`]: routing and one function per endpoint,
//! - [`repository`]: `UserRepository`, all the SQL in one place,
//! - [`avatars`]: streaming uploads into blob storage,
//! - [`notify`]: what happens after a user is created (event and email).
//!
//! The companion component `welcome-worker` consumes the `user.created`
//! events and keeps the count that `GET /stats` reports.

mod avatars;
mod http;
mod notify;
mod repository;
mod routes;

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// The component's entry point: the host calls `handle` once per request.
struct UsersApi;

impl wasip2::exports::http::incoming_handler::Guest for UsersApi {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Handlers return `Err(ApiError)` for anything that is not a success;
        // both sides turn into a JSON response here.
        let response = routes::handle(&request).unwrap_or_else(http::Response::from);
        http::send(response_out, response);
    }
}

// Exports `wasi:http/incoming-handler`, which makes this an HTTP component.
wasip2::http::proxy::export!(UsersApi);
