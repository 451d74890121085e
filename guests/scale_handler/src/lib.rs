//! Message handler of the scale-out test (`tests/tests/all/scale.rs`).
//!
//! Deliveries are at least once, so a message may arrive twice: after its
//! host was killed between committing and acknowledging, or after its ack
//! wait ran out. The handler makes its effect idempotent with the message
//! id as key, all in one transaction:
//! - `deliveries` gets a row per delivery (redeliveries included), naming
//!   the host (config key `host-name`) and the attempt;
//! - `effects` gets the message id once (`ON CONFLICT DO NOTHING`);
//! - only when that row is new is the counter `totals.n` incremented: the
//!   non-idempotent side effect the key guards.

use berth_sdk::messaging::Message;
use berth_sdk::sql::Database;
use berth_sdk::{config, params, Result};

fn on_message(msg: Message) -> Result<()> {
    let host = config::require("host-name")?;
    let db = Database::open("main")?;
    db.transaction(|tx| {
        tx.execute(
            "INSERT INTO deliveries (id, host, attempt) VALUES (?, ?, ?)",
            params![msg.id.as_str(), host.as_str(), i64::from(msg.attempt)],
        )?;
        let first = tx.execute(
            "INSERT INTO effects (id, host) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            params![msg.id.as_str(), host.as_str()],
        )?;
        if first == 1 {
            tx.execute("UPDATE totals SET n = n + 1 WHERE name = 'all'", &[])?;
        }
        Ok(())
    })
}

berth_sdk::message_handler!(on_message);
