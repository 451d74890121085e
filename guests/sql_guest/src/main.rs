//! SQL port test guest (`wasi:cli/run` command).
//!
//! Modes (argv[1..]):
//! - `conformance <db> [sqlite|postgres|mysql]`: exercises the whole `sql` port on a
//!   fresh, empty db; the dialect only picks column types in one DDL statement.
//! - `trap-in-tx <db>`: inserts a row inside a transaction, then traps, so the
//!   host can check that the transaction was rolled back.
//! - `count-trap-rows <db> <expected>`: asserts how many rows `trap_probe` holds.
//! - `cursors <db> <n> <hold_ms>`: opens up to `n` cursors, prints how many
//!   it got and why it stopped, and keeps them open for `hold_ms`.
//! - `int <db> <statement>`: prints the integer the statement returns (one row,
//!   one column), such as the server's id of the connection that ran it.
//!
//! Any failed assertion panics, which traps the component: the host sees
//! that as a test failure.

mod conformance;

use berth_bindings::sql::{Connection, Value};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["conformance", db] => conformance::run(db, "sqlite"),
        ["conformance", db, dialect] => conformance::run(db, dialect),
        ["trap-in-tx", db] => trap_in_tx(db),
        ["expect-timeout", db, statement] => expect_timeout(db, statement),
        ["try", db, statement] => try_statement(db, statement),
        ["cursors", db, n, hold_ms] => {
            let n: usize = n.parse().expect("<n> must be a count");
            let hold_ms: u64 = hold_ms.parse().expect("<hold_ms> must be milliseconds");
            open_cursors(db, n, hold_ms);
        }
        ["int", db, statement] => {
            let conn = Connection::open(db).expect("open granted db");
            println!("{}", scalar_int(&conn, statement, &[]));
        }
        ["count-trap-rows", db, expected] => {
            let expected: i64 = expected.parse().expect("<expected> must be an integer");
            count_trap_rows(db, expected);
        }
        other => panic!(
            "usage: sql_guest conformance|trap-in-tx|count-trap-rows|try|int|cursors <db> [args]; got {other:?}"
        ),
    }
}

/// Runs one statement and prints `ok <rows>` or `error <variant>: <message>`,
/// exiting 0 either way: the test judges the outcome (hostile SQL).
fn try_statement(db: &str, statement: &str) {
    let conn = berth_bindings::sql::Connection::open(db).expect("open granted db");
    match conn.query(statement, &[]) {
        Ok(rs) => println!("ok {}", rs.rows.len()),
        Err(e) => println!("error {e:?}"),
    }
}

/// Opens up to `n` cursors and keeps them for `hold_ms`, printing `opened
/// <k>` and then the error that stopped it, if one did.
fn open_cursors(db: &str, n: usize, hold_ms: u64) {
    let conn = Connection::open(db).expect("open granted db");
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..n {
        match conn.open_cursor("SELECT 1", &[]) {
            Ok(c) => open.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    println!("opened {}", open.len());
    if let Some(e) = refused {
        println!("error {e:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
}

/// Prints one progress line; the host's test log shows how far a guest got.
pub fn step(name: &str) {
    println!("sql: {name} ok");
}

/// The string content of any text-carrying value.
///
/// SQLite stores timestamps, dates, JSON, UUIDs and decimals as text, so the
/// host may return them as `text` rather than the specific variant: tests
/// compare content, not the variant.
pub fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::Text(s)
        | Value::Timestamp(s)
        | Value::Date(s)
        | Value::Json(s)
        | Value::Uuid(s)
        | Value::Decimal(s) => Some(s),
        _ => None,
    }
}

/// The integer in `v`, if it is one.
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// The boolean in `v`; SQLite has no boolean type and returns 0/1 integers.
pub fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Boolean(b) => Some(*b),
        Value::Int(0) => Some(false),
        Value::Int(1) => Some(true),
        _ => None,
    }
}

/// Runs a single-value query (`SELECT count(*) ...`) and returns the integer.
pub fn scalar_int(conn: &Connection, statement: &str, params: &[Value]) -> i64 {
    let rs = conn
        .query(statement, params)
        .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    assert_eq!(rs.rows.len(), 1, "{statement}: expected one row");
    as_int(&rs.rows[0][0]).unwrap_or_else(|| panic!("{statement}: not an int: {:?}", rs.rows[0][0]))
}

const CREATE_TRAP_PROBE: &str = "CREATE TABLE IF NOT EXISTS trap_probe (id INTEGER)";

/// Holds an open transaction with an uncommitted insert, then traps.
fn trap_in_tx(db: &str) {
    let conn = Connection::open(db).expect("open db");
    conn.execute(CREATE_TRAP_PROBE, &[])
        .expect("create trap_probe");
    let tx = conn.begin().expect("begin");
    let n = tx
        .execute("INSERT INTO trap_probe (id) VALUES (?)", &[Value::Int(1)])
        .expect("insert in tx");
    assert_eq!(n, 1);
    step("insert inside transaction");
    // Keep `tx` alive across the panic: the host must roll it back on trap.
    let _tx = tx;
    panic!("deliberate trap while holding a transaction");
}

/// Runs `statement`, which must outlast the host's statement timeout, and
/// asserts the port reports `timeout` (and the connection stays usable).
fn expect_timeout(db: &str, statement: &str) {
    let conn = Connection::open(db).expect("open db");
    match conn.query(statement, &[]) {
        Err(berth_bindings::sql::Error::Timeout) => step("slow statement timed out"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(
        scalar_int(&conn, "SELECT 1", &[]),
        1,
        "usable after a timeout"
    );
}

fn count_trap_rows(db: &str, expected: i64) {
    let conn = Connection::open(db).expect("open db");
    conn.execute(CREATE_TRAP_PROBE, &[])
        .expect("create trap_probe");
    let n = scalar_int(&conn, "SELECT count(*) FROM trap_probe", &[]);
    assert_eq!(n, expected, "rows in trap_probe");
    step(&format!("trap_probe holds {n} rows"));
}
