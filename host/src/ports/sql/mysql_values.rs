//! MySQL/MariaDB value mapping: guest parameters to protocol values, and
//! result columns back to port values.
//!
//! A column is classified once from its metadata (type, flags, character
//! set, length), then every value of it is read the same way. Text and
//! bytes share the wire types (`VARCHAR`/`VARBINARY`, `TEXT`/`BLOB`), and
//! the `BINARY` flag is also set on text with a `_bin` collation (MariaDB's
//! `JSON` is one), so only the character set tells them apart: 63
//! (`binary`) is bytes, anything else is text.

use std::str::FromStr as _;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::{Column, Value};

use super::{SqlColumn, SqlError, SqlValue};

/// The `binary` character set: a string column in it holds bytes.
const BINARY_CHARSET: u16 = 63;

/// How every value of one result column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `SELECT NULL`: every value is NULL.
    Null,
    /// `TINYINT(1)` / `BOOLEAN`.
    Bool,
    /// Any integer type, and `YEAR`.
    Int,
    /// `FLOAT` / `DOUBLE`.
    Float,
    /// `DECIMAL`, sent as exact text.
    Decimal,
    /// A string in a character set.
    Text,
    /// A string in the `binary` character set.
    Blob,
    /// MySQL's native `JSON` type.
    Json,
    /// MariaDB's `UUID` type.
    Uuid,
    /// `TIMESTAMP`: a point in time, sent in the session time zone (UTC).
    TimestampUtc,
    /// `DATETIME`: wall-clock time without a zone.
    DateTime,
    /// `DATE`.
    Date,
    /// Anything the port cannot carry (`TIME`, `BIT`, `GEOMETRY`, …).
    Unsupported,
}

/// A classified result column.
#[derive(Debug, Clone)]
pub(super) struct ColumnKind {
    pub(super) name: String,
    pub(super) type_name: String,
    pub(super) kind: Kind,
}

/// Classifies the columns of a result set.
pub(super) fn classify(columns: &[Column]) -> Vec<ColumnKind> {
    columns.iter().map(classify_one).collect()
}

fn classify_one(c: &Column) -> ColumnKind {
    let (kind, type_name) = kind_of(
        c.column_type(),
        c.flags(),
        c.character_set(),
        c.column_length(),
    );
    ColumnKind {
        name: c.name_str().into_owned(),
        type_name: type_name.to_string(),
        kind,
    }
}

/// The port's view of a column from its wire metadata.
fn kind_of(ty: ColumnType, flags: ColumnFlags, charset: u16, length: u32) -> (Kind, &'static str) {
    use ColumnType::*;
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let binary = charset == BINARY_CHARSET;
    match ty {
        MYSQL_TYPE_NULL => (Kind::Null, "null"),
        // TINYINT(1) is how both servers declare BOOLEAN.
        MYSQL_TYPE_TINY if length == 1 => (Kind::Bool, "boolean"),
        MYSQL_TYPE_TINY => (Kind::Int, "tinyint"),
        MYSQL_TYPE_SHORT => (Kind::Int, "smallint"),
        MYSQL_TYPE_INT24 => (Kind::Int, "mediumint"),
        MYSQL_TYPE_LONG => (Kind::Int, "int"),
        MYSQL_TYPE_LONGLONG if unsigned => (Kind::Int, "bigint unsigned"),
        MYSQL_TYPE_LONGLONG => (Kind::Int, "bigint"),
        MYSQL_TYPE_YEAR => (Kind::Int, "year"),
        MYSQL_TYPE_FLOAT => (Kind::Float, "float"),
        MYSQL_TYPE_DOUBLE => (Kind::Float, "double"),
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => (Kind::Decimal, "decimal"),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => (Kind::TimestampUtc, "timestamp"),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => (Kind::DateTime, "datetime"),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => (Kind::Date, "date"),
        MYSQL_TYPE_JSON => (Kind::Json, "json"),
        // MariaDB's UUID/INET4/INET6 types arrive as fixed-length text
        // flagged UNSIGNED, which no other string column is; a UUID is 36
        // characters (times the result character set's bytes per
        // character), INET4/INET6 are 15/39, which 36 does not divide.
        MYSQL_TYPE_STRING
            if unsigned
                && !binary
                && length > 0
                && length.is_multiple_of(36)
                && length / 36 <= 4 =>
        {
            (Kind::Uuid, "uuid")
        }
        MYSQL_TYPE_STRING if binary => (Kind::Blob, "binary"),
        MYSQL_TYPE_STRING if flags.contains(ColumnFlags::ENUM_FLAG) => (Kind::Text, "enum"),
        MYSQL_TYPE_STRING if flags.contains(ColumnFlags::SET_FLAG) => (Kind::Text, "set"),
        MYSQL_TYPE_STRING => (Kind::Text, "char"),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => (Kind::Blob, "varbinary"),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => (Kind::Text, "varchar"),
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if binary =>
        {
            (Kind::Blob, "blob")
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            (Kind::Text, "text")
        }
        MYSQL_TYPE_ENUM => (Kind::Text, "enum"),
        MYSQL_TYPE_SET => (Kind::Text, "set"),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => (Kind::Unsupported, "time"),
        MYSQL_TYPE_BIT => (Kind::Unsupported, "bit"),
        MYSQL_TYPE_GEOMETRY => (Kind::Unsupported, "geometry"),
        MYSQL_TYPE_VECTOR => (Kind::Unsupported, "vector"),
        MYSQL_TYPE_TYPED_ARRAY | MYSQL_TYPE_UNKNOWN => (Kind::Unsupported, "unknown"),
    }
}

/// The port's columns of a classified result.
pub(super) fn columns_of(kinds: &[ColumnKind]) -> Vec<SqlColumn> {
    kinds
        .iter()
        .map(|k| SqlColumn {
            name: k.name.clone(),
            type_name: k.type_name.clone(),
        })
        .collect()
}

/// Reads one row of a classified result.
pub(super) fn read_row(
    kinds: &[ColumnKind],
    row: mysql_async::Row,
) -> Result<Vec<SqlValue>, SqlError> {
    // `Row::unwrap` would panic on a value already taken; `unwrap_raw`
    // reports it as `None`, which becomes an error instead.
    row.unwrap_raw()
        .into_iter()
        .zip(kinds)
        .map(|(v, k)| {
            let v = v.ok_or_else(|| SqlError::Other("a column value is missing".into()))?;
            read_value(k, v)
        })
        .collect()
}

fn read_value(col: &ColumnKind, v: Value) -> Result<SqlValue, SqlError> {
    let unexpected = |v: &Value| {
        SqlError::Other(format!(
            "column `{}` ({}) sent an unexpected value {v:?}",
            col.name, col.type_name
        ))
    };
    let text = |b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| {
            SqlError::Other(format!(
                "column `{}` ({}) is not valid UTF-8",
                col.name, col.type_name
            ))
        })
    };
    if v == Value::NULL {
        return Ok(SqlValue::Null);
    }
    Ok(match (col.kind, v) {
        (Kind::Unsupported, _) => {
            return Err(SqlError::UnsupportedType(format!(
                "column `{}` has type {}, which the sql port cannot carry; cast it (e.g. CAST(… AS CHAR))",
                col.name, col.type_name
            )));
        }
        // MariaDB accepts any TINYINT in a BOOLEAN column; reading 2 as
        // `true` would lose it, so the guest is told to declare an integer.
        (Kind::Bool, Value::Int(0) | Value::UInt(0)) => SqlValue::Boolean(false),
        (Kind::Bool, Value::Int(1) | Value::UInt(1)) => SqlValue::Boolean(true),
        (Kind::Bool, Value::Int(n)) => return Err(not_boolean(col, n.to_string())),
        (Kind::Bool, Value::UInt(n)) => return Err(not_boolean(col, n.to_string())),
        (Kind::Int, Value::Int(n)) => SqlValue::Int(n),
        (Kind::Int, Value::UInt(n)) => SqlValue::Int(i64::try_from(n).map_err(|_| {
            SqlError::UnsupportedType(format!(
                "column `{}` ({}) holds {n}, beyond the sql port's 64-bit signed int; cast it (e.g. CAST(… AS CHAR) or AS DECIMAL(20))",
                col.name, col.type_name
            ))
        })?),
        (Kind::Float, Value::Float(f)) => SqlValue::Float(f.into()),
        (Kind::Float, Value::Double(f)) => SqlValue::Float(f),
        (Kind::Decimal, Value::Bytes(b)) => SqlValue::Decimal(text(b)?),
        (Kind::Text, Value::Bytes(b)) => SqlValue::Text(text(b)?),
        (Kind::Blob, Value::Bytes(b)) => SqlValue::Blob(b),
        (Kind::Json, Value::Bytes(b)) => SqlValue::Json(text(b)?),
        (Kind::Uuid, Value::Bytes(b)) => {
            let s = text(b)?;
            match uuid::Uuid::parse_str(&s) {
                Ok(u) => SqlValue::Uuid(u.hyphenated().to_string()),
                Err(_) => SqlValue::Text(s),
            }
        }
        (Kind::TimestampUtc, v @ Value::Date(..)) => SqlValue::Timestamp(
            date_time(col, &v)?
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        (Kind::DateTime, v @ Value::Date(..)) => SqlValue::Timestamp(
            date_time(col, &v)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        (Kind::Date, v @ Value::Date(..)) => SqlValue::Date(date_time(col, &v)?.date().to_string()),
        (_, v) => return Err(unexpected(&v)),
    })
}

fn not_boolean(col: &ColumnKind, n: String) -> SqlError {
    SqlError::UnsupportedType(format!(
        "column `{}` is TINYINT(1), read as boolean, but holds {n}; declare it TINYINT (or cast it) to read integers",
        col.name
    ))
}

/// A binary-protocol date/time value as a calendar date and time; the
/// zero date `0000-00-00` that lax SQL modes allow is refused.
fn date_time(col: &ColumnKind, v: &Value) -> Result<chrono::NaiveDateTime, SqlError> {
    let Value::Date(y, mo, d, h, mi, s, us) = *v else {
        return Err(SqlError::Other("not a date value".into()));
    };
    chrono::NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
        .and_then(|date| date.and_hms_micro_opt(h.into(), mi.into(), s.into(), us))
        .ok_or_else(|| {
            SqlError::UnsupportedType(format!(
                "column `{}` holds {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}, which is not a calendar date",
                col.name
            ))
        })
}

/// Converts guest parameters to protocol values, checking the text of
/// typed values (timestamp, date, UUID, decimal) before anything is sent.
pub(super) fn convert(params: Vec<SqlValue>) -> Result<Vec<Value>, SqlError> {
    params.into_iter().map(param).collect()
}

fn param(v: SqlValue) -> Result<Value, SqlError> {
    let bad = |what: &str, v: &str| SqlError::InvalidInput(format!("{v:?} is not a valid {what}"));
    Ok(match v {
        SqlValue::Null => Value::NULL,
        SqlValue::Boolean(b) => Value::Int(b.into()),
        SqlValue::Int(i) => Value::Int(i),
        SqlValue::Float(f) => Value::Double(f),
        SqlValue::Text(s) | SqlValue::Json(s) => Value::Bytes(s.into_bytes()),
        SqlValue::Blob(b) => Value::Bytes(b),
        // The session time zone is UTC, so a TIMESTAMP column stores the
        // instant meant; a DATETIME column stores its UTC wall-clock time.
        SqlValue::Timestamp(s) => {
            let t = match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => t.naive_utc(),
                Err(_) => chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f"))
                    .map_err(|_| bad("timestamp (RFC 3339)", &s))?,
            };
            date_value(t).ok_or_else(|| bad("timestamp (years 0 to 9999)", &s))?
        }
        SqlValue::Date(s) => {
            let d = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|_| bad("date (YYYY-MM-DD)", &s))?;
            date_value(d.and_time(chrono::NaiveTime::MIN))
                .ok_or_else(|| bad("date (years 0 to 9999)", &s))?
        }
        SqlValue::Uuid(s) => {
            let u = uuid::Uuid::parse_str(&s).map_err(|_| bad("UUID", &s))?;
            Value::Bytes(u.hyphenated().to_string().into_bytes())
        }
        // Sent as text, which the server parses exactly.
        SqlValue::Decimal(s) => {
            // `DECIMAL` holds at most 65 digits: a few leading or trailing
            // zeros more pass, nothing that takes long to parse.
            super::decimal_in_bounds(&s, 1024, 1024)?;
            bigdecimal::BigDecimal::from_str(&s).map_err(|_| bad("decimal", &s))?;
            Value::Bytes(s.into_bytes())
        }
    })
}

fn date_value(t: chrono::NaiveDateTime) -> Option<Value> {
    use chrono::{Datelike as _, Timelike as _};
    let year = u16::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    Some(Value::Date(
        year,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.nanosecond() / 1000,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(kind: Kind) -> ColumnKind {
        ColumnKind {
            name: "c".into(),
            type_name: "t".into(),
            kind,
        }
    }

    #[test]
    fn decimals_past_what_mysql_stores_are_refused_before_parsing() {
        for huge in ["1".repeat(4 << 20), "1e99999".to_owned()] {
            let err = super::param(SqlValue::Decimal(huge)).err();
            assert!(matches!(err, Some(SqlError::InvalidInput(_))), "{err:?}");
        }
        assert!(super::param(SqlValue::Decimal("12345.6789".into())).is_ok());
    }

    #[test]
    fn text_and_bytes_are_told_apart_by_character_set() {
        let bin = ColumnFlags::BINARY_FLAG | ColumnFlags::BLOB_FLAG;
        // LONGBLOB, and MariaDB's JSON (LONGTEXT COLLATE utf8mb4_bin): same
        // type and flags, different character set.
        assert_eq!(
            kind_of(ColumnType::MYSQL_TYPE_BLOB, bin, 63, u32::MAX).0,
            Kind::Blob
        );
        assert_eq!(
            kind_of(ColumnType::MYSQL_TYPE_BLOB, bin, 46, u32::MAX).0,
            Kind::Text
        );
        assert_eq!(
            kind_of(
                ColumnType::MYSQL_TYPE_VAR_STRING,
                ColumnFlags::BINARY_FLAG,
                46,
                40
            )
            .0,
            Kind::Text
        );
        assert_eq!(
            kind_of(
                ColumnType::MYSQL_TYPE_VAR_STRING,
                ColumnFlags::BINARY_FLAG,
                63,
                40
            )
            .0,
            Kind::Blob
        );
    }

    #[test]
    fn mariadb_uuid_is_recognised_but_inet_is_not() {
        let flags = ColumnFlags::UNSIGNED_FLAG | ColumnFlags::BINARY_FLAG;
        let string = ColumnType::MYSQL_TYPE_STRING;
        assert_eq!(kind_of(string, flags, 45, 144).0, Kind::Uuid);
        assert_eq!(kind_of(string, flags, 33, 108).0, Kind::Uuid);
        assert_eq!(kind_of(string, flags, 45, 156).0, Kind::Text); // INET6
        assert_eq!(kind_of(string, flags, 45, 60).0, Kind::Text); // INET4
        assert_eq!(kind_of(string, ColumnFlags::empty(), 45, 144).0, Kind::Text);
    }

    #[test]
    fn booleans_and_unsigned_integers_are_never_truncated() {
        assert_eq!(
            read_value(&col(Kind::Bool), Value::Int(1)).unwrap(),
            SqlValue::Boolean(true)
        );
        assert!(matches!(
            read_value(&col(Kind::Bool), Value::Int(2)),
            Err(SqlError::UnsupportedType(_))
        ));
        assert_eq!(
            read_value(&col(Kind::Int), Value::UInt(i64::MAX as u64)).unwrap(),
            SqlValue::Int(i64::MAX)
        );
        assert!(matches!(
            read_value(&col(Kind::Int), Value::UInt(u64::MAX)),
            Err(SqlError::UnsupportedType(m)) if m.contains("18446744073709551615")
        ));
    }

    #[test]
    fn timestamps_keep_their_precision() {
        let v = Value::Date(2024, 5, 1, 12, 0, 0, 0);
        assert_eq!(
            read_value(&col(Kind::TimestampUtc), v.clone()).unwrap(),
            SqlValue::Timestamp("2024-05-01T12:00:00Z".into())
        );
        assert_eq!(
            read_value(
                &col(Kind::DateTime),
                Value::Date(2024, 5, 1, 12, 0, 0, 250_000)
            )
            .unwrap(),
            SqlValue::Timestamp("2024-05-01T12:00:00.250".into())
        );
        assert_eq!(
            read_value(&col(Kind::Date), v).unwrap(),
            SqlValue::Date("2024-05-01".into())
        );
        assert!(matches!(
            read_value(&col(Kind::Date), Value::Date(0, 0, 0, 0, 0, 0, 0)),
            Err(SqlError::UnsupportedType(_))
        ));
    }

    #[test]
    fn parameters_are_checked_and_timestamps_converted_to_utc() {
        assert_eq!(
            param(SqlValue::Timestamp("2024-05-01T14:00:00.5+02:00".into())).unwrap(),
            Value::Date(2024, 5, 1, 12, 0, 0, 500_000)
        );
        assert_eq!(
            param(SqlValue::Date("2024-05-01".into())).unwrap(),
            Value::Date(2024, 5, 1, 0, 0, 0, 0)
        );
        for bad in [
            SqlValue::Timestamp("yesterday".into()),
            SqlValue::Date("2024-13-01".into()),
            SqlValue::Uuid("not-a-uuid".into()),
            SqlValue::Decimal("1.2.3".into()),
        ] {
            assert!(matches!(param(bad), Err(SqlError::InvalidInput(_))));
        }
    }
}
