//! {{name}}: consumes `{{name}}.events` and counts what it handled.
//!
//! Deliveries are at least once: the message id keeps a redelivered
//! message from being counted twice. Returning `Err` makes the host
//! redeliver after a backoff, up to the trigger's `max_deliveries`.

use berth_sdk::http::{Request, Response, Router};
use berth_sdk::messaging::{self, Message};
use berth_sdk::{kv, log, Result};

const TOPIC: &str = "{{name}}.events";

fn on_message(msg: Message) -> Result<()> {
    let state = kv::Bucket::open("state")?;
    // Only the first delivery of a message id counts.
    let seen = format!("seen/{}", msg.id);
    if state.compare_and_swap(&seen, None, b"1")? {
        // Failed, the mark goes too, so that the redelivery counts it.
        let handled = state.increment("handled", 1).inspect_err(|_| {
            let _ = state.delete(&seen);
        })?;
        let text = String::from_utf8_lossy(&msg.payload);
        log::info("message handled", &[("payload", &text), ("handled", &handled.to_string())]);
    }
    Ok(())
}

berth_sdk::message_handler!(on_message);

/// `POST /publish`: publishes the body to the topic this component consumes.
fn publish(req: &Request) -> Result<Response> {
    let id = messaging::publish(TOPIC, req.body())?;
    Ok(Response::text(202, format!("published {id}\n")))
}

/// `GET /`: the number of messages handled so far.
fn index(_req: &Request) -> Result<Response> {
    let handled = kv::Bucket::open("state")?.get_string("handled")?;
    Ok(Response::text(200, format!("handled {}\n", handled.as_deref().unwrap_or("0"))))
}

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", index)
        .post("/publish", publish)
        .handle(req)
}

berth_sdk::http_handler!(handle);
