//! Benchmark message handler that does some work: it records the message
//! id in the table `effects` of database `main`, once
//! (`ON CONFLICT DO NOTHING`), the idempotent effect of the scale-out test.
//! The benchmark's native loop runs the same statement with sqlx, so the
//! two sides of `tests/benches/ports/nats.rs` do the same work.

use berth_sdk::messaging::Message;
use berth_sdk::sql::Database;
use berth_sdk::{params, Result};

fn on_message(msg: Message) -> Result<()> {
    Database::open("main")?.execute(
        "INSERT INTO effects (id) VALUES (?) ON CONFLICT (id) DO NOTHING",
        params![msg.id.as_str()],
    )?;
    Ok(())
}

berth_sdk::message_handler!(on_message);
