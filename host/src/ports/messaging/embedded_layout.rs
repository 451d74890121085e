//! Upgrades of the embedded broker's file from the layouts older releases
//! wrote, made by the process that owns it (see `EmbeddedBroker::open`).

use rusqlite::Connection;

/// Files from before topic patterns keyed a trigger's rows by their topic
/// alone; a row now names its trigger (topic or pattern) beside the
/// message's own topic. Adds that column to such a file, filled in from
/// the topic it meant, and indexes rows by trigger.
/// Rows a trigger claimed without naming it (an older host wrote them)
/// are filled in every time, so none is left unleased.
pub(super) fn migrate_to_triggers(db: &mut Connection) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !has_trigger_column(&tx)? {
        tx.execute("ALTER TABLE queue ADD COLUMN trigger_topic TEXT", [])?;
    }
    tx.execute_batch(
        "UPDATE queue SET trigger_topic = topic WHERE consumer IS NOT NULL AND trigger_topic IS NULL;
         DROP INDEX IF EXISTS queue_ready;
         DROP INDEX IF EXISTS queue_once;
         CREATE INDEX IF NOT EXISTS queue_ready_per_trigger ON queue (consumer, trigger_topic, leased, visible_at);
         CREATE UNIQUE INDEX IF NOT EXISTS queue_once_per_trigger ON queue (consumer, trigger_topic, id);",
    )?;
    tx.commit()
}

/// Whether the file's rows name their trigger (see [`migrate_to_triggers`]).
pub(super) fn has_trigger_column(db: &Connection) -> rusqlite::Result<bool> {
    db.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('queue') WHERE name = 'trigger_topic'",
        [],
        |r| r.get(0),
    )
}

/// Keeps the bytes the queue holds (payloads and headers) in
/// `queue_bytes`, by triggers, so every way a row comes or goes (in any
/// process) counts, and a publish learns the total without a scan.
pub(super) fn count_queue_bytes(db: &mut Connection) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS queue_bytes (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
         INSERT OR IGNORE INTO queue_bytes (id, bytes)
             SELECT 0, COALESCE(SUM(length(payload) + length(CAST(headers AS BLOB))), 0) FROM queue;
         CREATE TRIGGER IF NOT EXISTS queue_bytes_in AFTER INSERT ON queue BEGIN
             UPDATE queue_bytes SET bytes = bytes + length(NEW.payload) + length(CAST(NEW.headers AS BLOB)) WHERE id = 0;
         END;
         CREATE TRIGGER IF NOT EXISTS queue_bytes_out AFTER DELETE ON queue BEGIN
             UPDATE queue_bytes SET bytes = bytes - length(OLD.payload) - length(CAST(OLD.headers AS BLOB)) WHERE id = 0;
         END;",
    )?;
    tx.commit()
}

/// Whether the file counts its queue's bytes (see [`count_queue_bytes`]).
pub(super) fn counts_queue_bytes(db: &Connection) -> rusqlite::Result<bool> {
    db.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'queue_bytes'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}
