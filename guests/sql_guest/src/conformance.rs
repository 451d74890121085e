//! `sql_guest conformance <db>`: the SQL port, case by case.

use berth_bindings::sql::{Connection, Error, Value};

use crate::{as_bool, as_int, as_str, scalar_int, step};

const TIMESTAMP: &str = "2024-05-01T12:00:00Z";
const DATE: &str = "2024-05-01";
const JSON: &str = r#"{"name":"Zoë","tags":["a","b"],"n":1}"#;
const UUID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const DECIMAL: &str = "12.50";
const UNICODE: &str = "héllo wörld — 日本語 🚀 \"quoted\" 'single'\nline two";
const FLOAT: f64 = -1234.5678e-3;

pub fn run(db: &str, dialect: &str) {
    let conn = Connection::open(db).expect("open granted db");
    step("open");
    value_round_trip(&conn, dialect);
    if dialect == "postgres" {
        postgres_arrays(&conn);
        postgres_exact_values(&conn);
    }
    rows_affected(&conn);
    transactions(&conn);
    errors(&conn);
    cursor(&conn);
    too_large(&conn);
    println!("sql: conformance passed");
}

/// Every `value` case goes in as a parameter and comes back unchanged.
fn value_round_trip(conn: &Connection, dialect: &str) {
    // Only the column types differ between engines. On SQLite `amount` is
    // TEXT: DECIMAL/NUMERIC columns get numeric affinity, which would
    // silently turn "12.50" into the real 12.5. Postgres and MySQL/MariaDB
    // keep NUMERIC/DECIMAL exactly. MySQL's BLOB holds at most 64 KiB, so
    // LONGBLOB is its unbounded binary type; its TIMESTAMP is an instant
    // (stored in UTC), its DATETIME is wall-clock time without a zone.
    let (blob, timestamp, decimal) = match dialect {
        "postgres" => ("BYTEA", "TIMESTAMPTZ", "NUMERIC(10, 2)"),
        "sqlite" => ("BLOB", "TIMESTAMP", "TEXT"),
        "mysql" => ("LONGBLOB", "TIMESTAMP", "DECIMAL(10, 2)"),
        other => panic!("unknown dialect {other:?}"),
    };
    conn.execute(
        &format!(
            "CREATE TABLE all_types (
                id INTEGER PRIMARY KEY,
                n TEXT, b BOOLEAN, i_min BIGINT, i_max BIGINT, f DOUBLE PRECISION,
                t TEXT, bl {blob}, ts {timestamp}, d DATE, j JSON, u UUID, amount {decimal}
            )"
        ),
        &[],
    )
    .expect("create all_types");

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let params = [
        Value::Int(1),
        Value::Null,
        Value::Boolean(true),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::Float(FLOAT),
        Value::Text(UNICODE.into()),
        Value::Blob(all_bytes.clone()),
        Value::Timestamp(TIMESTAMP.into()),
        Value::Date(DATE.into()),
        Value::Json(JSON.into()),
        Value::Uuid(UUID.into()),
        Value::Decimal(DECIMAL.into()),
    ];
    let n = conn
        .execute(
            "INSERT INTO all_types (id, n, b, i_min, i_max, f, t, bl, ts, d, j, u, amount)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &params,
        )
        .expect("insert every value case");
    assert_eq!(n, 1, "rows affected by insert");
    step("insert every value case");

    let rs = conn
        .query(
            "SELECT id, n, b, i_min, i_max, f, t, bl, ts, d, j, u, amount FROM all_types WHERE id = ?",
            &[Value::Int(1)],
        )
        .expect("select all_types");
    let names: Vec<&str> = rs.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["id", "n", "b", "i_min", "i_max", "f", "t", "bl", "ts", "d", "j", "u", "amount"]
    );
    assert_eq!(rs.rows.len(), 1);
    // No row: the columns are still named, with the same types.
    let empty = conn
        .query(
            "SELECT id, t FROM all_types WHERE id = ?",
            &[Value::Int(-1)],
        )
        .expect("select no rows");
    assert!(empty.rows.is_empty(), "{:?}", empty.rows);
    let names: Vec<&str> = empty.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "t"], "an empty result names its columns");
    assert_eq!(empty.columns[0].type_name, rs.columns[0].type_name);
    assert_eq!(empty.columns[1].type_name, rs.columns[6].type_name);
    step("an empty result names its columns");
    let row = &rs.rows[0];
    assert_eq!(row.len(), 13);
    assert_eq!(as_int(&row[0]), Some(1));
    assert!(matches!(row[1], Value::Null), "null: {:?}", row[1]);
    assert_eq!(as_bool(&row[2]), Some(true), "boolean: {:?}", row[2]);
    assert_eq!(as_int(&row[3]), Some(i64::MIN));
    assert_eq!(as_int(&row[4]), Some(i64::MAX));
    match row[5] {
        // Exact bit-for-bit equality: floats must not pass through text.
        Value::Float(f) => assert_eq!(f.to_bits(), FLOAT.to_bits(), "float {f}"),
        ref v => panic!("float: {v:?}"),
    }
    assert!(
        matches!(&row[6], Value::Text(s) if s == UNICODE),
        "text: {:?}",
        row[6]
    );
    assert!(
        matches!(&row[7], Value::Blob(b) if *b == all_bytes),
        "blob: {:?}",
        row[7]
    );
    assert_eq!(as_str(&row[8]), Some(TIMESTAMP));
    assert_eq!(as_str(&row[9]), Some(DATE));
    assert_eq!(as_str(&row[10]), Some(JSON));
    assert_eq!(as_str(&row[11]), Some(UUID));
    assert_eq!(as_str(&row[12]), Some(DECIMAL));
    step("round trip of every value case");
}

/// `execute` reports how many rows an insert, update or delete touched.
fn rows_affected(conn: &Connection) {
    conn.execute("CREATE TABLE counted (v INTEGER)", &[])
        .expect("create counted");
    let n = conn
        .execute("INSERT INTO counted (v) VALUES (1), (2), (3), (4)", &[])
        .expect("insert 4");
    assert_eq!(n, 4, "rows inserted");
    let n = conn
        .execute(
            "UPDATE counted SET v = v * 10 WHERE v >= ?",
            &[Value::Int(3)],
        )
        .expect("update");
    assert_eq!(n, 2, "rows updated");
    let n = conn
        .execute("DELETE FROM counted WHERE v = ?", &[Value::Int(1)])
        .expect("delete");
    assert_eq!(n, 1, "rows deleted");
    // Rows an UPDATE matches count even when their value does not change.
    let n = conn
        .execute("UPDATE counted SET v = v", &[])
        .expect("update to the same value");
    assert_eq!(n, 3, "rows matched by an update that changes nothing");
    step("rows affected");
}

fn count_id(conn: &Connection, id: i64) -> i64 {
    scalar_int(
        conn,
        "SELECT count(*) FROM tx_test WHERE id = ?",
        &[Value::Int(id)],
    )
}

/// Commit makes writes visible; rollback and drop discard them.
fn transactions(conn: &Connection) {
    conn.execute("CREATE TABLE tx_test (id INTEGER)", &[])
        .expect("create tx_test");
    let insert = "INSERT INTO tx_test (id) VALUES (?)";

    let tx = conn.begin().expect("begin (commit case)");
    assert_eq!(
        tx.execute(insert, &[Value::Int(1)]).expect("insert in tx"),
        1
    );
    // The transaction sees its own uncommitted write.
    let rs = tx
        .query("SELECT count(*) FROM tx_test WHERE id = 1", &[])
        .expect("query in tx");
    assert_eq!(as_int(&rs.rows[0][0]), Some(1));
    tx.commit().expect("commit");
    assert_eq!(count_id(conn, 1), 1, "committed row visible");
    assert!(
        matches!(tx.execute(insert, &[Value::Int(9)]), Err(Error::Closed)),
        "execute after commit must be Closed"
    );
    drop(tx);
    step("transaction commit");

    let tx = conn.begin().expect("begin (rollback case)");
    tx.execute(insert, &[Value::Int(2)]).expect("insert in tx");
    tx.rollback().expect("rollback");
    assert_eq!(count_id(conn, 2), 0, "rolled back row invisible");
    drop(tx);
    step("transaction rollback");

    let tx = conn.begin().expect("begin (drop case)");
    tx.execute(insert, &[Value::Int(3)]).expect("insert in tx");
    drop(tx); // no commit: the host must roll back
    assert_eq!(count_id(conn, 3), 0, "row of dropped transaction invisible");
    assert_eq!(count_id(conn, 9), 0, "write after commit never happened");
    step("transaction drop rolls back");

    // Transaction control goes through the port only: a `BEGIN` of the
    // guest's own would send a pooled connection back inside it.
    for statement in ["BEGIN", " -- why\nstart transaction", "SET autocommit = 0"] {
        match conn.execute(statement, &[]) {
            Err(Error::Denied(_)) => {}
            other => panic!("{statement:?}: expected Denied, got {other:?}"),
        }
    }
    let tx = conn.begin().expect("begin (guest COMMIT case)");
    tx.execute(insert, &[Value::Int(4)]).expect("insert in tx");
    match tx.execute("COMMIT", &[]) {
        Err(Error::Denied(_)) => {}
        other => panic!("COMMIT in a transaction: expected Denied, got {other:?}"),
    }
    tx.rollback().expect("rollback after a refused COMMIT");
    assert_eq!(count_id(conn, 4), 0, "the refused COMMIT committed nothing");
    step("transaction control is refused");

    // A failed statement ends the transaction on every engine: later
    // statements are refused and `commit` rolls back (Postgres can commit
    // nothing after an error; the other engines are held to the same rule).
    conn.execute("CREATE TABLE tx_unique (id INTEGER PRIMARY KEY)", &[])
        .expect("create tx_unique");
    let tx = conn.begin().expect("begin (failed statement case)");
    tx.execute(insert, &[Value::Int(5)]).expect("insert in tx");
    let unique = "INSERT INTO tx_unique (id) VALUES (1)";
    tx.execute(unique, &[]).expect("first unique row");
    match tx.execute(unique, &[]) {
        Err(Error::Constraint(_)) => {}
        other => panic!("a duplicate key in a transaction: expected Constraint, got {other:?}"),
    }
    match tx.execute(insert, &[Value::Int(6)]) {
        Err(Error::Other(m)) if m.contains("earlier statement") => {}
        other => panic!("a statement after a failed one: got {other:?}"),
    }
    match tx.commit() {
        Err(Error::Other(m)) if m.contains("rolled back") => {}
        other => panic!("commit after a failed statement: got {other:?}"),
    }
    assert!(matches!(tx.rollback(), Err(Error::Closed)));
    drop(tx);
    assert_eq!(
        count_id(conn, 5),
        0,
        "nothing of the failed transaction committed"
    );
    assert_eq!(
        scalar_int(conn, "SELECT count(*) FROM tx_unique", &[]),
        0,
        "nothing of the failed transaction committed"
    );
    step("a failed statement ends the transaction");

    // One statement, parameters of different types on the same connection
    // (a transaction keeps it): each value is stored as given.
    conn.execute("CREATE TABLE mixed (f DOUBLE PRECISION)", &[])
        .expect("create mixed");
    let tx = conn.begin().expect("begin (mixed types)");
    let insert_f = "INSERT INTO mixed (f) VALUES (?)";
    for value in [
        Value::Int(3),
        Value::Float(2.5),
        Value::Null,
        Value::Int(-7),
    ] {
        tx.execute(insert_f, &[value.clone()])
            .unwrap_or_else(|e| panic!("insert {value:?}: {e:?}"));
    }
    let rs = tx
        .query("SELECT f FROM mixed ORDER BY f", &[])
        .expect("read mixed");
    let got: Vec<Option<f64>> = rs
        .rows
        .iter()
        .map(|r| match &r[0] {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Null => None,
            other => panic!("mixed: unexpected {other:?}"),
        })
        .collect();
    let mut numbers: Vec<f64> = got.iter().flatten().copied().collect();
    numbers.sort_by(f64::total_cmp);
    assert_eq!(numbers, [-7.0, 2.5, 3.0], "mixed: {got:?}");
    assert_eq!(
        got.iter().filter(|v| v.is_none()).count(),
        1,
        "mixed: {got:?}"
    );
    tx.commit().expect("commit mixed");
    step("mixed parameter types on one statement");
}

/// Engine errors map to the port's error cases instead of trapping.
fn errors(conn: &Connection) {
    conn.execute("CREATE TABLE uniq (v TEXT UNIQUE)", &[])
        .expect("create uniq");
    let insert = "INSERT INTO uniq (v) VALUES (?)";
    conn.execute(insert, &[Value::Text("a".into())])
        .expect("first insert");
    match conn.execute(insert, &[Value::Text("a".into())]) {
        Err(Error::Constraint(_)) => step("unique violation is constraint"),
        other => panic!("duplicate insert: expected Constraint, got {other:?}"),
    }

    match conn.query("SELEC 1", &[]) {
        Err(Error::Syntax(_)) => step("bad statement is syntax"),
        other => panic!("SELEC 1: expected Syntax, got {other:?}"),
    }

    match conn.query("SELECT ?, ?", &[Value::Int(1)]) {
        Err(Error::InvalidInput(_)) => step("wrong parameter count is invalid-input"),
        other => panic!("2 placeholders, 1 param: expected InvalidInput, got {other:?}"),
    }

    match Connection::open("not-granted-db") {
        Err(Error::NotGranted(_)) => step("ungranted db is not-granted"),
        Err(e) => panic!("open not-granted-db: expected NotGranted, got {e:?}"),
        Ok(_) => panic!("open not-granted-db: expected NotGranted, got a connection"),
    }
}

/// Fills `table` with the integers 1..=n (n <= 100,000) in one statement.
///
/// Written to run unchanged on every engine: `INSERT … WITH`, not `WITH …
/// INSERT` (which MySQL/MariaDB reject), and a cross join of digits rather
/// than a recursive CTE (MariaDB stops recursion after
/// `max_recursive_iterations`, 1000 by default).
fn fill(conn: &Connection, table: &str, n: i64) {
    conn.execute(&format!("CREATE TABLE {table} (n INTEGER)"), &[])
        .unwrap_or_else(|e| panic!("create {table}: {e:?}"));
    let statement = format!(
        "INSERT INTO {table} (n)
         WITH d(x) AS (VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9))
         SELECT 1 + a.x + 10 * b.x + 100 * c.x + 1000 * e.x + 10000 * f.x
         FROM d a, d b, d c, d e, d f
         WHERE 1 + a.x + 10 * b.x + 100 * c.x + 1000 * e.x + 10000 * f.x <= ?"
    );
    let inserted = conn
        .execute(&statement, &[Value::Int(n)])
        .unwrap_or_else(|e| panic!("fill {table}: {e:?}"));
    assert_eq!(inserted, n as u64, "rows inserted into {table}");
}

/// Reads `SELECT n FROM table ORDER BY n` through a cursor in batches and
/// asserts the rows are exactly 1..=expected, in order.
fn read_all_with_cursor(conn: &Connection, table: &str, expected: i64) {
    let cursor = conn
        .open_cursor(&format!("SELECT n FROM {table} ORDER BY n"), &[])
        .expect("open cursor");
    assert!(!cursor.columns().is_empty(), "cursor columns");
    let mut next_expected = 1;
    loop {
        let batch = cursor.next(1000).expect("cursor next");
        if batch.is_empty() {
            break;
        }
        assert!(
            batch.len() <= 1000,
            "batch of {} rows exceeds max-rows",
            batch.len()
        );
        for row in &batch {
            assert_eq!(as_int(&row[0]), Some(next_expected), "row out of order");
            next_expected += 1;
        }
    }
    assert_eq!(
        next_expected - 1,
        expected,
        "rows read through cursor from {table}"
    );
}

fn cursor(conn: &Connection) {
    fill(conn, "big", 2_500);
    read_all_with_cursor(conn, "big", 2_500);
    step("cursor reads 2500 rows in order");
}

/// Results above the host's row cap are refused by `query`, not truncated;
/// a cursor still reads them all.
fn too_large(conn: &Connection) {
    fill(conn, "huge", 12_000);
    match conn.query("SELECT n FROM huge", &[]) {
        Err(Error::TooLarge(_)) => step("query over the row cap is too-large"),
        Ok(rs) => panic!(
            "12000-row query: expected TooLarge, got {} rows",
            rs.rows.len()
        ),
        Err(e) => panic!("12000-row query: expected TooLarge, got {e:?}"),
    }
    read_all_with_cursor(conn, "huge", 12_000);
    step("cursor reads 12000 rows");
}

/// Postgres arrays of scalars come back as JSON arrays; arrays of other
/// element types are refused with `unsupported-type`, naming the column.
fn postgres_arrays(conn: &Connection) {
    let rs = conn
        .query(
            "SELECT ARRAY[1, NULL, 3]::int4[] AS ints, ARRAY['a', 'b\"c']::text[] AS texts, \
             ARRAY[true, false] AS bools, ARRAY[1.5]::float8[] AS floats, \
             '{}'::int8[] AS empty",
            &[],
        )
        .expect("select arrays");
    let row = &rs.rows[0];
    let expected = [
        r#"[1,null,3]"#,
        r#"["a","b\"c"]"#,
        "[true,false]",
        "[1.5]",
        "[]",
    ];
    for (value, expected) in row.iter().zip(expected) {
        assert!(
            matches!(value, Value::Json(s) if s == expected),
            "array: {value:?}, expected json {expected}"
        );
    }
    assert_eq!(rs.columns[0].type_name, "int4[]");
    match conn.query("SELECT ARRAY[1.5]::numeric[] AS nums", &[]) {
        Err(Error::UnsupportedType(m)) if m.contains("NUMERIC[]") => {
            step("numeric[] is unsupported-type")
        }
        other => panic!("numeric[]: expected UnsupportedType, got {other:?}"),
    }
    // JSON has no NaN: it must not come back as a null element.
    match conn.query("SELECT ARRAY['NaN', 'Infinity']::float8[] AS odd", &[]) {
        Err(Error::UnsupportedType(m)) if m.contains("NaN") => {
            step("a float array holding NaN is unsupported-type")
        }
        other => panic!("float8[] with NaN: expected UnsupportedType, got {other:?}"),
    }
    step("postgres arrays as json");
}

/// Postgres-only values that no Rust number type holds: `numeric`'s NaN
/// and infinities travel as `decimal` both ways, and json arrays keep
/// their elements' text, so no number is rounded through a float.
fn postgres_exact_values(conn: &Connection) {
    for special in ["NaN", "Infinity", "-Infinity"] {
        let rs = conn
            .query("SELECT ?::numeric AS n", &[Value::Decimal(special.into())])
            .expect("numeric NaN or infinity as a parameter");
        assert!(
            matches!(&rs.rows[0][0], Value::Decimal(s) if s == special),
            "{special}: got {:?}",
            rs.rows[0][0]
        );
    }
    step("numeric NaN and infinities round-trip as decimal");
    let rs = conn
        .query(
            "SELECT ARRAY['{\"n\": 12345678901234567890.123456789}'::json, NULL] AS j, \
             ARRAY['{\"n\": 0.10000000000000000001}'::jsonb] AS jb",
            &[],
        )
        .expect("select json arrays");
    let expected = [
        r#"[{"n": 12345678901234567890.123456789},null]"#,
        r#"[{"n": 0.10000000000000000001}]"#,
    ];
    for (value, expected) in rs.rows[0].iter().zip(expected) {
        assert!(
            matches!(value, Value::Json(s) if s == expected),
            "json array: {value:?}, expected {expected}"
        );
    }
    step("json arrays keep their numbers exactly");
    // One row past the byte cap (16 MiB by default) is refused whole.
    match conn.query("SELECT repeat('x', 17 << 20) AS big", &[]) {
        Err(Error::TooLarge(m)) if m.contains("bytes") => {
            step("a single row over the byte cap is too-large")
        }
        Ok(_) => panic!("a 17 MiB row: expected TooLarge, got it"),
        Err(e) => panic!("a 17 MiB row: expected TooLarge, got {e:?}"),
    }
}
