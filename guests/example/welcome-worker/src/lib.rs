//! # welcome-worker: the message-consuming half of the Berth example
//!
//! `users-api` publishes a `user.created` event for every new user. The
//! manifest (`berth.toml`) routes that topic to this component with a
//! `[[trigger.message]]`, and the host calls [`handle`](WelcomeWorker) once
//! per message. The worker keeps the `users_created` counter in the kv
//! bucket `counters`, which `GET /stats` reports.
//!
//! Returning `Ok` acknowledges a message; returning `Err` (or trapping)
//! makes the host deliver it again later.

// Bindings for the `message-handler` world: every Berth port as imports,
// plus the `handler` interface this component exports.
wit_bindgen::generate!({
    path: "../../../wit",
    world: "berth:infra/message-handler",
    generate_all,
});

use berth::infra::kv::Bucket;
use berth::infra::logging::{log, Level};
use berth::infra::messaging_types::Message;
use serde::Deserialize;

/// The payload of a `user.created` event.
#[derive(Deserialize)]
struct UserCreated {
    id: i64,
}

struct WelcomeWorker;

impl exports::berth::infra::handler::Guest for WelcomeWorker {
    fn handle(msg: Message) -> Result<Option<Vec<u8>>, String> {
        if msg.topic != "user.created" {
            log(
                Level::Warn,
                "ignoring message on unexpected topic",
                &[field("topic", &msg.topic)],
            );
            return Ok(None);
        }
        let event: UserCreated = match serde_json::from_slice(&msg.payload) {
            Ok(event) => event,
            Err(e) => {
                // Redelivering a malformed message would fail the same way
                // forever, so acknowledge it and leave a trace in the log.
                log(
                    Level::Error,
                    "malformed user.created payload",
                    &[field("error", &e.to_string())],
                );
                return Ok(None);
            }
        };

        // A failure here is worth retrying (the store may be briefly
        // unavailable): returning `Err` asks the host to redeliver.
        // Redelivery can count a user twice; `msg.id` is stable across
        // deliveries and could serve as an idempotency key if that mattered.
        let total = Bucket::open("counters")
            .and_then(|counters| counters.increment("users_created", 1))
            .map_err(|e| format!("counting the user failed: {e}"))?;

        log(
            Level::Info,
            "counted new user",
            &[
                field("user_id", &event.id.to_string()),
                field("users_created", &total.to_string()),
                field("message_id", &msg.id),
            ],
        );
        Ok(None)
    }
}

/// A structured log field.
fn field(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

export!(WelcomeWorker);
