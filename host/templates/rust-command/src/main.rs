//! {{name}}: a command. It records each run in SQL and prints the greeting
//! and how many times it has run; arguments are names to greet.

use berth_sdk::sql::Database;
use berth_sdk::{config, params, Result};

fn main() -> Result<()> {
    let greeting = config::require("greeting")?;
    let db = Database::open("main")?;
    db.execute(
        "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, who TEXT NOT NULL)",
        &[],
    )?;
    let who: Vec<String> = std::env::args().skip(1).collect();
    let who = if who.is_empty() { "world".to_owned() } else { who.join(", ") };
    db.execute("INSERT INTO runs (who) VALUES (?)", params![&who])?;
    let (runs,): (i64,) = db
        .query_one("SELECT COUNT(*) FROM runs", &[])?
        .unwrap_or((0,));
    println!("{greeting}, {who}! (run {runs})");
    Ok(())
}
