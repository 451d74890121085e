//! {{name}}: an HTTP component. Routes are matched by [`Router`]; every
//! handler returns `Result<Response>`, and `?` on a port error becomes a
//! 4xx/5xx response.

use berth_sdk::http::{Request, Response, Router};
use berth_sdk::{config, kv, Result};

/// `GET /`: the configured greeting and a visit counter kept in `counters`.
fn index(_req: &Request) -> Result<Response> {
    let greeting = config::require("greeting")?;
    let visits = kv::Bucket::open("counters")?.increment("visits", 1)?;
    Ok(Response::text(200, format!("{greeting} (visit {visits})\n")))
}

/// `GET /hello/{name}`.
fn hello(req: &Request) -> Result<Response> {
    let name = req.param("name").unwrap_or("world");
    Ok(Response::text(200, format!("hello, {name}\n")))
}

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", index)
        .get("/hello/{name}", hello)
        .handle(req)
}

berth_sdk::http_handler!(handle);
