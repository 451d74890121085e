//! HTTP: a handler with routing for the component's `[[trigger.http]]`
//! routes, and outbound requests through the host's policy.
//!
//! ```no_run
//! use berth_sdk::http::{Request, Response, Router};
//! use berth_sdk::Result;
//!
//! fn get_user(req: &Request) -> Result<Response> {
//!     let id: i64 = req.param_as("id")?;
//!     Ok(Response::json(200, format!(r#"{{"id":{id}}}"#)))
//! }
//!
//! fn handle(req: Request) -> Response {
//!     Router::new()
//!         .get("/users/{id}", get_user)
//!         .post("/echo", |req| Ok(Response::bytes(200, "application/octet-stream", req.body().to_vec())))
//!         .handle(req)
//! }
//!
//! berth_sdk::http_handler!(handle);
//! # fn main() {}
//! ```
//!
//! Outbound, to a destination the manifest's `http` or `upstreams` grants:
//!
//! ```no_run
//! fn status() -> berth_sdk::Result<String> {
//!     let response = berth_sdk::http::get("https://status.example.com/ping")?;
//!     Ok(format!("{} {}", response.status(), response.text_body()?))
//! }
//! ```

mod client;
mod router;
mod server;

pub use client::{fetch, get, OutboundRequest};
pub use router::Router;
pub use server::{serve, Request, Response};

/// Exports `$handler`, a `fn(Request) -> Response`, as the component's
/// `wasi:http/incoming-handler`: see the [`http`](crate::http) module.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        struct __BerthHttpHandler;

        impl $crate::wasip2::exports::http::incoming_handler::Guest for __BerthHttpHandler {
            fn handle(
                request: $crate::wasip2::http::types::IncomingRequest,
                out: $crate::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::http::serve(request, out, $handler);
            }
        }

        $crate::wasip2::http::proxy::export!(__BerthHttpHandler with_types_in $crate::wasip2);
    };
}
