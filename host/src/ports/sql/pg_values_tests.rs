//! Tests of the Postgres value mapping: parameter types, statement texts, numerics.

use sqlx::TypeInfo as _;

use sqlx::postgres::PgArgumentBuffer;

use super::{PgParam, SpecialNumeric, statement_text};

#[test]
fn infinities_are_accepted_as_parameters() {
    use super::SqlValue;
    let one = |v| super::convert(vec![v]).unwrap().remove(0);
    assert!(matches!(
        one(SqlValue::Timestamp("infinity".into())),
        PgParam::InfiniteTimestamp(i64::MAX)
    ));
    assert!(matches!(
        one(SqlValue::Timestamp("-infinity".into())),
        PgParam::InfiniteTimestamp(i64::MIN)
    ));
    assert!(matches!(
        one(SqlValue::Date("infinity".into())),
        PgParam::InfiniteDate(i32::MAX)
    ));
    assert!(matches!(
        one(SqlValue::Date("-infinity".into())),
        PgParam::InfiniteDate(i32::MIN)
    ));
}

/// Parsing a decimal takes time quadratic in its digits, on the thread
/// serving the call: what Postgres cannot store is refused unparsed.
#[test]
fn decimals_past_what_postgres_stores_are_refused_before_parsing() {
    use super::{SqlError, SqlValue};
    let started = std::time::Instant::now();
    for huge in [
        "1".repeat(4 << 20),
        "1e2000000".to_owned(),
        "1e-9999999999".to_owned(),
    ] {
        let err = super::convert(vec![SqlValue::Decimal(huge)]).err();
        assert!(matches!(err, Some(SqlError::InvalidInput(_))), "{err:?}");
        assert!(
            err.unwrap().to_string().len() < 200,
            "the value is not echoed"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let largest = format!("{}.{}", "9".repeat(1000), "1".repeat(100));
    assert!(super::convert(vec![SqlValue::Decimal(largest)]).is_ok());
    assert!(super::convert(vec![SqlValue::Decimal("1.5e-300".into())]).is_ok());
}

#[test]
fn a_statement_without_parameters_keeps_its_question_marks() {
    assert_eq!(
        statement_text("SELECT d ? 'k' FROM t", &[]),
        "SELECT d ? 'k' FROM t"
    );
}

#[test]
fn statement_text_names_the_bound_types() {
    let sql = "INSERT INTO t (a, b, c) VALUES (?, ?, ?)";
    assert_eq!(
        statement_text(sql, &[PgParam::Int(3), PgParam::Float(2.5), PgParam::Null]),
        "/*berth:int8,float8,untyped*/ INSERT INTO t (a, b, c) VALUES ($1, $2, $3)"
    );
    // Each type signature is its own statement in sqlx's cache.
    let one = "INSERT INTO t (dbl) VALUES (?)";
    assert_ne!(
        statement_text(one, &[PgParam::Int(3)]),
        statement_text(one, &[PgParam::Float(2.5)])
    );
    assert_ne!(
        statement_text(one, &[PgParam::Null]),
        statement_text(one, &[PgParam::Int(3)])
    );
    assert_eq!(
        statement_text(one, &[PgParam::Int(3)]),
        statement_text(one, &[PgParam::Int(4)])
    );
    // No parameters, no comment; `$n` statements keep their text.
    assert_eq!(statement_text("SELECT 1", &[]), "SELECT 1");
    assert_eq!(
        statement_text("SELECT $1::text, '?'", &[PgParam::Text("x".into())]),
        "/*berth:text*/ SELECT $1::text, '?'"
    );
}

#[test]
fn type_tags_match_the_bound_types() {
    let params = [
        PgParam::Bool(true),
        PgParam::Int(1),
        PgParam::Float(1.0),
        PgParam::Text(String::new()),
        PgParam::Bytes(Vec::new()),
        PgParam::TimestampTz(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH),
        PgParam::Timestamp(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH.naive_utc()),
        PgParam::Date(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH.date_naive()),
        PgParam::InfiniteTimestamp(i64::MAX),
        PgParam::InfiniteDate(i32::MIN),
        PgParam::Uuid(sqlx::types::Uuid::nil()),
        PgParam::Decimal(bigdecimal::BigDecimal::from(1i64)),
        PgParam::SpecialDecimal(SpecialNumeric(SpecialNumeric::NAN)),
    ];
    for p in &params {
        assert_eq!(p.type_tag(), p.type_info().name().to_ascii_lowercase());
    }
    // Declared by oid (114), which sqlx does not name.
    assert_eq!(PgParam::Json(String::new()).type_tag(), "json");
}

fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [ndigits, weight, sign as i16, dscale as i16]
        .into_iter()
        .chain(digits.iter().copied())
    {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b
}

#[test]
fn special_numerics_round_trip_through_the_binary_format() {
    use sqlx::Encode as _;
    for (text, read_back) in [
        ("NaN", "NaN"),
        ("nan", "NaN"),
        ("Infinity", "Infinity"),
        ("+inf", "Infinity"),
        ("-Infinity", "-Infinity"),
        ("-INF", "-Infinity"),
        (" NaN\n", "NaN"),
    ] {
        let special = SpecialNumeric::parse(text).unwrap();
        let mut buf = PgArgumentBuffer::default();
        let _ = special.encode_by_ref(&mut buf).unwrap();
        assert_eq!(super::numeric_text(&buf).unwrap(), read_back, "{text}");
    }
    for not_special in ["", "-", "+nan", "-NaN", "infinit", "1e5", "Infinity1"] {
        assert!(
            SpecialNumeric::parse(not_special).is_none(),
            "{not_special}"
        );
    }
}

#[test]
fn numeric_keeps_its_scale() {
    assert_eq!(
        super::numeric_text(&numeric(2, 0, 0, 2, &[12, 5000])).unwrap(),
        "12.50"
    );
    assert_eq!(
        super::numeric_text(&numeric(1, -1, 0x4000, 5, &[5])).unwrap(),
        "-0.00050"
    );
    assert_eq!(
        super::numeric_text(&numeric(2, 1, 0, 0, &[1, 2])).unwrap(),
        "10002"
    );
    assert_eq!(
        super::numeric_text(&numeric(0, 0, 0, 3, &[])).unwrap(),
        "0.000"
    );
}
