//! Message handler test component (a reactor, world
//! `berth:infra/message-handler`).
//!
//! For every delivered message it records what it saw in the kv bucket
//! `received`, so the host's tests can check deliveries from outside:
//! - `count`: incremented once per delivery (redeliveries included), after
//!   the keys below are written, so a test that saw it can read them,
//! - `last-id`: the id of the latest message,
//! - `payload/<id>`: the payload of message `<id>`,
//! - `attempt/<id>`: the delivery attempt of its latest delivery,
//! - `topic/<id>`: the topic it was delivered from,
//! - `instance-seq/<id>`: how many messages this instance had handled when
//!   it got message `<id>` (1 in a fresh instance; more in a reused one).
//!
//! Payload `ping` is answered with `pong:ping` (request/reply); payload
//! `fail-once` fails on its first attempt so the host redelivers it;
//! `trap-once` traps on its first attempt, leaving the message unacked;
//! `slow-<ms>` waits `<ms>` milliseconds, then records `done/<id>` (its
//! attempt).

wit_bindgen::generate!({
    path: "../../wit",
    world: "berth:infra/message-handler",
    generate_all,
});

use berth::infra::kv::Bucket;
use berth::infra::logging::{self, Level};
use berth::infra::messaging_types::Message;

struct Handler;

export!(Handler);

impl exports::berth::infra::handler::Guest for Handler {
    fn handle(msg: Message) -> Result<Option<Vec<u8>>, String> {
        logging::log(
            Level::Info,
            "messaging_handler received a message",
            &[
                ("id".to_owned(), msg.id.clone()),
                ("topic".to_owned(), msg.topic.clone()),
                ("attempt".to_owned(), msg.attempt.to_string()),
            ],
        );
        record(&msg).map_err(|e| format!("recording the delivery failed: {e}"))?;

        match msg.payload.as_slice() {
            b"ping" => Ok(Some(b"pong:ping".to_vec())),
            // Failing (rather than trapping) asks the host to redeliver.
            b"fail-once" if msg.attempt == 1 => Err("deliberate failure".to_owned()),
            b"trap-once" if msg.attempt == 1 => std::process::abort(),
            payload if payload.starts_with(b"fail-always") => Err("deliberate failure".to_owned()),
            payload if payload.starts_with(b"slow-") => {
                let ms = std::str::from_utf8(&payload[5..])
                    .ok()
                    .and_then(|ms| ms.parse().ok())
                    .ok_or("slow-<ms> needs a number of milliseconds")?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Bucket::open("received")
                    .and_then(|b| {
                        b.set(
                            &format!("done/{}", msg.id),
                            msg.attempt.to_string().as_bytes(),
                            None,
                        )
                    })
                    .map_err(|e| format!("recording the end failed: {e}"))?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

/// Writes what the tests look at into the `received` bucket.
fn record(msg: &Message) -> Result<(), berth::infra::kv::Error> {
    static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let bucket = Bucket::open("received")?;
    bucket.set(
        &format!("instance-seq/{}", msg.id),
        seq.to_string().as_bytes(),
        None,
    )?;
    bucket.set("last-id", msg.id.as_bytes(), None)?;
    bucket.set(&format!("payload/{}", msg.id), &msg.payload, None)?;
    bucket.set(
        &format!("attempt/{}", msg.id),
        msg.attempt.to_string().as_bytes(),
        None,
    )?;
    bucket.set(&format!("topic/{}", msg.id), msg.topic.as_bytes(), None)?;
    // Last: tests wait for `count`, then read the keys above, which must
    // already hold this delivery's values (a redelivery overwrites them).
    bucket.increment("count", 1)?;
    Ok(())
}
