//! Values between the sql port and SQLite: parameters in (refusing what
//! SQLite would store rounded), rows out (the port types restored from the
//! columns' declared types, a row measured before it is copied).

use rusqlite::types::{Value, ValueRef};

use super::map_error;
use crate::ports::sql::{SqlColumn, SqlError, SqlValue};

/// The parameters as SQLite values, refusing a decimal SQLite would round
/// ([`exact_in_sqlite`]).
pub(super) fn to_sqlite_params(params: Vec<SqlValue>) -> Result<Vec<Value>, SqlError> {
    params
        .into_iter()
        .map(|value| match value {
            SqlValue::Decimal(d) if !exact_in_sqlite(&d) => Err(SqlError::InvalidInput(format!(
                "decimal {d} has more than 15 significant digits: SQLite stores it in a DECIMAL or NUMERIC column as a float, which would round it; pass it as `text` into a TEXT column to keep it exact"
            ))),
            value => Ok(to_sqlite(value)),
        })
        .collect()
}

/// Whether SQLite keeps the decimal text `d` exactly in a column of
/// NUMERIC affinity (DECIMAL, NUMERIC): it stores a well-formed number as
/// an integer when it is one within 64 bits, else as a float keeping 15
/// significant digits. Text that is no number stays text, exactly.
fn exact_in_sqlite(d: &str) -> bool {
    // SQLite reads a number past blanks before and after it (its blanks
    // are 0x09 to 0x0D and the space: a vertical tab too).
    let d = d.trim_matches(|c: char| matches!(c, ' ' | '\t'..='\r'));
    let negative = d.starts_with('-');
    let unsigned = d.strip_prefix(['-', '+']).unwrap_or(d);
    // An exponent's mantissa is counted as any other number.
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = || int.bytes().chain(frac.bytes());
    if (int.is_empty() && frac.is_empty()) || !digits().all(|b| b.is_ascii_digit()) {
        // No number: SQLite keeps it as text.
        return true;
    }
    // Only digits are read as an integer: with a point (`….00`) SQLite
    // reads a float first, and makes an integer of that.
    let sign = if negative { "-" } else { "" };
    let integer = exponent.is_none() && !mantissa.contains('.');
    if integer && format!("{sign}{int}").parse::<i64>().is_ok() {
        return true;
    }
    let digits = format!("{int}{frac}");
    digits.trim_start_matches('0').trim_end_matches('0').len() <= 15
}

fn to_sqlite(value: SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Boolean(b) => Value::Integer(b as i64),
        SqlValue::Int(i) => Value::Integer(i),
        SqlValue::Float(f) => Value::Real(f),
        SqlValue::Blob(b) => Value::Blob(b),
        SqlValue::Text(s)
        | SqlValue::Timestamp(s)
        | SqlValue::Date(s)
        | SqlValue::Json(s)
        | SqlValue::Uuid(s)
        | SqlValue::Decimal(s) => Value::Text(s),
    }
}

/// Converts a stored value, using the column's declared type to restore the
/// port type that SQLite stores as integer or text.
fn from_sqlite(value: ValueRef<'_>, declared: &str) -> Result<SqlValue, SqlError> {
    Ok(match value {
        ValueRef::Null => SqlValue::Null,
        // SQLite takes any integer in a BOOLEAN column; reading 2 as `true`
        // would lose it, so the guest is told to declare an integer.
        ValueRef::Integer(i @ (0 | 1)) if declared.contains("bool") => SqlValue::Boolean(i == 1),
        ValueRef::Integer(i) if declared.contains("bool") => {
            return Err(SqlError::UnsupportedType(format!(
                "a column declared {declared} holds {i}, not 0 or 1; declare it INTEGER (or cast it) to read integers"
            )));
        }
        // NUMERIC affinity stores decimal text as a number: hand it back as
        // decimal text (SQLite keeps no scale, so "12.50" reads as "12.5").
        ValueRef::Integer(i) if is_decimal(declared) => SqlValue::Decimal(i.to_string()),
        ValueRef::Real(f) if is_decimal(declared) => SqlValue::Decimal(f.to_string()),
        ValueRef::Integer(i) => SqlValue::Int(i),
        ValueRef::Real(f) => SqlValue::Float(f),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t)
                .map_err(|_| SqlError::UnsupportedType("text that is not UTF-8".into()))?
                .to_string();
            match declared {
                d if d.contains("timestamp") || d.contains("datetime") => SqlValue::Timestamp(s),
                "date" => SqlValue::Date(s),
                d if d.starts_with("json") => SqlValue::Json(s),
                "uuid" => SqlValue::Uuid(s),
                d if is_decimal(d) => SqlValue::Decimal(s),
                _ => SqlValue::Text(s),
            }
        }
    })
}

fn is_decimal(declared: &str) -> bool {
    declared.starts_with("decimal") || declared.starts_with("numeric")
}

pub(super) fn columns_of(stmt: &rusqlite::Statement<'_>) -> Vec<SqlColumn> {
    stmt.columns()
        .iter()
        .map(|c| SqlColumn {
            name: c.name().to_string(),
            type_name: c.decl_type().unwrap_or("").to_ascii_lowercase(),
        })
        .collect()
}

/// A lower bound of what `row` will hold once read (each value's own size,
/// and the bytes of its text and blobs), taken before any of it is copied
/// into the host (see [`CappedRows::room_for`]): a row of many large
/// values is refused while SQLite holds its only copy.
pub(super) fn held_size_at_least(row: &rusqlite::Row<'_>, columns: usize) -> usize {
    let each = std::mem::size_of::<SqlValue>();
    (0..columns)
        .map(|i| {
            each + match row.get_ref(i) {
                Ok(ValueRef::Text(bytes) | ValueRef::Blob(bytes)) => bytes.len(),
                _ => 0,
            }
        })
        .sum()
}

pub(super) fn read_row(
    row: &rusqlite::Row<'_>,
    columns: &[SqlColumn],
) -> Result<Vec<SqlValue>, SqlError> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| from_sqlite(row.get_ref(i).map_err(map_error)?, &c.type_name))
        .collect()
}
