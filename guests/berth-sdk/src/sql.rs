//! Relational persistence: typed rows, parameters from Rust values, and
//! transactions as closures.
//!
//! ```no_run
//! use berth_sdk::sql::{Database, FromRow, Row};
//! use berth_sdk::{params, Result};
//!
//! struct Note { id: i64, text: String, pinned: bool }
//!
//! impl FromRow for Note {
//!     fn from_row(row: &Row<'_>) -> Result<Self> {
//!         Ok(Note { id: row.get("id")?, text: row.get("text")?, pinned: row.get("pinned")? })
//!     }
//! }
//!
//! fn pinned_notes() -> Result<Vec<Note>> {
//!     let db = Database::open("main")?;
//!     db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT, pinned BOOLEAN)", &[])?;
//!     db.transaction(|tx| {
//!         tx.execute("INSERT INTO notes (text, pinned) VALUES (?, ?)", params!["buy milk", true])?;
//!         Ok(())
//!     })?;
//!     db.query("SELECT id, text, pinned FROM notes WHERE pinned = ?", params![true])
//! }
//! # fn main() {}
//! ```
//!
//! Placeholders are `?` on every engine. Values travel as
//! [`Value`]; [`FromValue`] and `From<T> for Value` convert the common Rust
//! types, and exact types (decimals, timestamps, UUIDs) stay text so nothing
//! is rounded.

use crate::raw::berth::infra::sql as raw;
use crate::{Error, Result};

pub use raw::{Column, Error as SqlError, Value};

/// A logical database granted to the component (`sql = ["main"]`).
///
/// Opening one is cheap: it is a handle onto the host's pool.
pub struct Database {
    conn: raw::Connection,
}

impl Database {
    /// Opens the logical database `name`; [`SqlError::NotGranted`] if the
    /// manifest does not grant it.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self {
            conn: raw::Connection::open(name)?,
        })
    }

    /// Runs a statement without rows; returns the number of rows affected.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64> {
        Ok(self.conn.execute(statement, params)?)
    }

    /// Runs a query and converts every row into `T`.
    pub fn query<T: FromRow>(&self, statement: &str, params: &[Value]) -> Result<Vec<T>> {
        Rows::from(self.conn.query(statement, params)?).decode()
    }

    /// Runs a query and converts its first row, if any.
    pub fn query_one<T: FromRow>(&self, statement: &str, params: &[Value]) -> Result<Option<T>> {
        Ok(self.query(statement, params)?.into_iter().next())
    }

    /// Runs a query and returns the rows as they came, for reading by
    /// column name without a struct.
    pub fn rows(&self, statement: &str, params: &[Value]) -> Result<Rows> {
        Ok(Rows::from(self.conn.query(statement, params)?))
    }

    /// Runs `work` in a transaction: committed if it returns `Ok`, rolled
    /// back if it returns `Err` (or panics: the host rolls back a
    /// transaction whose guest traps).
    ///
    /// Only statements run through `work`'s [`Transaction`] are in it. This
    /// `Database`, and a [`crate::Repository`] over it, run theirs outside:
    /// committed at once whatever `work` returns, and on SQLite waiting for
    /// the transaction's write lock once it wrote (a `conflict` after 5 s).
    pub fn transaction<R>(&self, work: impl FnOnce(&Transaction) -> Result<R>) -> Result<R> {
        let tx = Transaction {
            tx: self.conn.begin()?,
        };
        match work(&tx) {
            Ok(value) => {
                tx.tx.commit()?;
                Ok(value)
            }
            Err(e) => {
                // The work's error is the one worth reporting; a failed
                // rollback leaves the host to roll back on drop anyway.
                let _ = tx.tx.rollback();
                Err(e)
            }
        }
    }

    /// Streams a large result in batches of up to `batch` rows, calling
    /// `each` on every row converted into `T`.
    pub fn for_each<T: FromRow>(
        &self,
        statement: &str,
        params: &[Value],
        batch: u32,
        mut each: impl FnMut(T) -> Result<()>,
    ) -> Result<()> {
        let cursor = self.conn.open_cursor(statement, params)?;
        let columns = cursor.columns();
        loop {
            let rows = cursor.next(batch.max(1))?;
            if rows.is_empty() {
                return Ok(());
            }
            for values in &rows {
                each(T::from_row(&Row {
                    columns: &columns,
                    values,
                })?)?;
            }
        }
    }

    /// The generated connection, for what this wrapper does not cover.
    pub fn raw(&self) -> &raw::Connection {
        &self.conn
    }
}

/// A transaction open in [`Database::transaction`].
pub struct Transaction {
    tx: raw::Transaction,
}

impl Transaction {
    /// Like [`Database::execute`], inside the transaction.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64> {
        Ok(self.tx.execute(statement, params)?)
    }

    /// Like [`Database::query`], inside the transaction.
    pub fn query<T: FromRow>(&self, statement: &str, params: &[Value]) -> Result<Vec<T>> {
        Rows::from(self.tx.query(statement, params)?).decode()
    }

    /// Like [`Database::query_one`], inside the transaction.
    pub fn query_one<T: FromRow>(&self, statement: &str, params: &[Value]) -> Result<Option<T>> {
        Ok(self.query(statement, params)?.into_iter().next())
    }
}

/// A query result: its columns and rows.
pub struct Rows {
    columns: Vec<Column>,
    rows: Vec<Vec<Value>>,
}

impl From<raw::RowSet> for Rows {
    fn from(set: raw::RowSet) -> Self {
        Self {
            columns: set.columns,
            rows: set.rows,
        }
    }
}

impl Rows {
    /// The result's columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row, borrowed.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// Converts every row into `T`.
    pub fn decode<T: FromRow>(&self) -> Result<Vec<T>> {
        self.iter().map(|row| T::from_row(&row)).collect()
    }
}

/// One row of a result, read by column name or position.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [Column],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    /// The value of column `name` converted into `T`; an error names the
    /// column if it is absent or does not convert.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T> {
        let index = self
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::Decode(format!("the result has no column `{name}`")))?;
        T::from_value(&self.values[index])
            .map_err(|why| Error::Decode(format!("column `{name}`: {why}")))
    }

    /// The value at position `index` (from 0) converted into `T`.
    pub fn get_at<T: FromValue>(&self, index: usize) -> Result<T> {
        let value = self.values.get(index).ok_or_else(|| {
            Error::Decode(format!(
                "the result has {} columns, not {}",
                self.values.len(),
                index + 1
            ))
        })?;
        T::from_value(value).map_err(|why| Error::Decode(format!("column {index}: {why}")))
    }

    /// The raw values of the row, in column order.
    pub fn values(&self) -> &'a [Value] {
        self.values
    }
}

/// A type built from one result row.
///
/// Implement it with [`Row::get`] per field. Tuples of [`FromValue`] types
/// read the first columns by position, for quick queries:
/// `db.query::<(i64, String)>("SELECT id, name FROM users", &[])`.
pub trait FromRow: Sized {
    /// Builds `Self` from `row`.
    fn from_row(row: &Row<'_>) -> Result<Self>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: FromValue),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row<'_>) -> Result<Self> {
                Ok(($(row.get_at::<$t>($i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);

/// A Rust type read from one SQL value. The error says what was found.
///
/// Numbers read alike whichever engine answered: Postgres and MySQL answer
/// `SUM` of integers (and `AVG`) as decimals, where SQLite gives an integer
/// or a float, so a whole decimal reads as an integer and any decimal as a
/// float.
///
/// ```
/// use berth_sdk::sql::{FromValue, Value};
///
/// assert_eq!(i64::from_value(&Value::Decimal("42".into())), Ok(42));
/// assert_eq!(i64::from_value(&Value::Decimal("-7.000".into())), Ok(-7));
/// assert!(i64::from_value(&Value::Decimal("4.2".into())).is_err());
/// assert_eq!(f64::from_value(&Value::Decimal("4.25".into())), Ok(4.25));
/// ```
pub trait FromValue: Sized {
    /// Converts `value`, or explains why it cannot.
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Boolean(_) => "a boolean",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
        Value::Timestamp(_) => "a timestamp",
        Value::Date(_) => "a date",
        Value::Json(_) => "JSON",
        Value::Uuid(_) => "a UUID",
        Value::Decimal(_) => "a decimal",
    }
}

fn expected<T>(what: &str, value: &Value) -> Result<T, String> {
    Err(format!("expected {what}, found {}", kind(value)))
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(i) => Ok(*i),
            // Postgres and MySQL answer `SUM` of integers (and other
            // aggregates) as a decimal, where SQLite gives an integer: a
            // whole one reads as an integer on every engine.
            Value::Decimal(d) => whole_decimal(d)
                .ok_or_else(|| format!("expected an integer, found the decimal {d}")),
            other => expected("an integer", other),
        }
    }
}

/// The integer a decimal's text stands for, if it is whole (`42`, `-7.000`)
/// and fits in an `i64`.
fn whole_decimal(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse().ok()
}

macro_rules! narrow_int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                let wide = i64::from_value(value)?;
                <$t>::try_from(wide).map_err(|_| format!("{wide} does not fit in {}", stringify!($t)))
            }
        }
    )*};
}

narrow_int_from_value!(i32, i16, u32, u64, usize);

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Float(f) => Ok(*f),
            // Integers widen exactly up to 2^53, which is what callers of a
            // float column that holds whole numbers expect.
            Value::Int(i) => Ok(*i as f64),
            // Postgres's `AVG` and MySQL's `SUM` answer decimals: read as
            // the nearest float, as `f64` reads any number.
            Value::Decimal(d) => d
                .parse()
                .map_err(|_| format!("expected a float, found the decimal {d}")),
            other => expected("a float", other),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Boolean(b) => Ok(*b),
            // SQLite and MySQL store booleans as 0 and 1.
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => expected("a boolean", other),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(s)
            | Value::Timestamp(s)
            | Value::Date(s)
            | Value::Json(s)
            | Value::Uuid(s)
            | Value::Decimal(s) => Ok(s.clone()),
            other => expected("text", other),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => expected("a blob", other),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from($v: $t) -> Self {
                $e
            }
        }
    )*};
}

value_from! {
    i64 => |v| Value::Int(v),
    i32 => |v| Value::Int(v.into()),
    u32 => |v| Value::Int(v.into()),
    f64 => |v| Value::Float(v),
    bool => |v| Value::Boolean(v),
    String => |v| Value::Text(v),
    &str => |v| Value::Text(v.to_owned()),
    &String => |v| Value::Text(v.clone()),
    Vec<u8> => |v| Value::Blob(v),
    &[u8] => |v| Value::Blob(v.to_vec()),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Self {
        v.clone().map_or(Value::Null, Into::into)
    }
}

/// Statement parameters from Rust values: `params![id, "ada", true]` is a
/// `&[Value]` of `Value::Int`, `Value::Text` and `Value::Boolean`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::sql::Value] };
    ($($value:expr),+ $(,)?) => {
        &[$($crate::sql::Value::from($value)),+] as &[$crate::sql::Value]
    };
}
