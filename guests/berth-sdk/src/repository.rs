//! A typed repository: an entity's CRUD over one table, in a few lines.
//!
//! The `UserRepository` of a layered application, without writing its SQL:
//!
//! ```no_run
//! use berth_sdk::sql::{FromRow, Row, Value};
//! use berth_sdk::{params, Entity, Repository, Result};
//!
//! struct User { id: i64, name: String, email: String }
//!
//! impl FromRow for User {
//!     fn from_row(row: &Row<'_>) -> Result<Self> {
//!         Ok(User { id: row.get("id")?, name: row.get("name")?, email: row.get("email")? })
//!     }
//! }
//!
//! impl Entity for User {
//!     const TABLE: &'static str = "users";
//!     const COLUMNS: &'static [&'static str] = &["id", "name", "email"];
//!     fn values(&self) -> Vec<Value> {
//!         params![self.id, &self.name, &self.email].to_vec()
//!     }
//! }
//!
//! fn rename(id: i64, name: &str) -> Result<bool> {
//!     let users = Repository::<User>::open("main")?;
//!     let Some(mut user) = users.find(id)? else { return Ok(false) };
//!     user.name = name.to_owned();
//!     users.update(&user)
//! }
//! # fn main() {}
//! ```
//!
//! The repository writes only the columns the entity names, binds every
//! value as a parameter, and refuses column names that are not in
//! [`Entity::COLUMNS`], so no caller input ever becomes SQL text.

use std::marker::PhantomData;

use crate::sql::{Database, FromRow, Value};
use crate::{Error, Result};

/// A row type stored in one table.
pub trait Entity: FromRow {
    /// The table's name.
    const TABLE: &'static str;
    /// The columns the entity reads and writes; the first is the primary key.
    const COLUMNS: &'static [&'static str];
    /// The entity's values, in [`Entity::COLUMNS`] order.
    fn values(&self) -> Vec<Value>;
}

/// The find/insert/update/delete of `T` over its table.
pub struct Repository<T> {
    db: Database,
    entity: PhantomData<fn() -> T>,
}

impl<T: Entity> Repository<T> {
    /// A repository over `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            entity: PhantomData,
        }
    }

    /// A repository over the logical database `name`.
    pub fn open(name: &str) -> Result<Self> {
        Database::open(name).map(Self::new)
    }

    /// The database, for queries the repository does not cover.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The entity whose primary key is `id`.
    pub fn find(&self, id: impl Into<Value>) -> Result<Option<T>> {
        let sql = format!("{} WHERE {} = ?", select::<T>(), primary_key::<T>());
        self.db.query_one(&sql, &[id.into()])
    }

    /// Every entity whose `column` equals `value`, by primary key.
    pub fn find_by(&self, column: &str, value: impl Into<Value>) -> Result<Vec<T>> {
        let column = known_column::<T>(column)?;
        let sql = format!(
            "{} WHERE {column} = ? ORDER BY {}",
            select::<T>(),
            primary_key::<T>()
        );
        self.db.query(&sql, &[value.into()])
    }

    /// Every entity, by primary key.
    pub fn all(&self) -> Result<Vec<T>> {
        let sql = format!("{} ORDER BY {}", select::<T>(), primary_key::<T>());
        self.db.query(&sql, &[])
    }

    /// Inserts `entity` (every column, the primary key included).
    pub fn insert(&self, entity: &T) -> Result<()> {
        let placeholders = vec!["?"; T::COLUMNS.len()].join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            T::TABLE,
            T::COLUMNS.join(", ")
        );
        self.db.execute(&sql, &checked_values(entity)?)?;
        Ok(())
    }

    /// Writes every column of `entity` to the row with its primary key;
    /// `false` if there is no such row.
    pub fn update(&self, entity: &T) -> Result<bool> {
        let mut values = checked_values(entity)?;
        let id = values.remove(0);
        values.push(id);
        let assignments: Vec<String> = T::COLUMNS[1..].iter().map(|c| format!("{c} = ?")).collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = ?",
            T::TABLE,
            assignments.join(", "),
            primary_key::<T>()
        );
        Ok(self.db.execute(&sql, &values)? > 0)
    }

    /// Deletes the entity whose primary key is `id`; `false` if there was none.
    pub fn delete(&self, id: impl Into<Value>) -> Result<bool> {
        let sql = format!("DELETE FROM {} WHERE {} = ?", T::TABLE, primary_key::<T>());
        Ok(self.db.execute(&sql, &[id.into()])? > 0)
    }

    /// The number of rows in the table.
    pub fn count(&self) -> Result<u64> {
        let sql = format!("SELECT COUNT(*) FROM {}", T::TABLE);
        let (n,): (i64,) = self
            .db
            .query_one(&sql, &[])?
            .ok_or_else(|| Error::Decode("COUNT(*) returned no row".into()))?;
        u64::try_from(n).map_err(|_| Error::Decode(format!("COUNT(*) returned {n}")))
    }
}

fn select<T: Entity>() -> String {
    format!("SELECT {} FROM {}", T::COLUMNS.join(", "), T::TABLE)
}

fn primary_key<T: Entity>() -> &'static str {
    T::COLUMNS
        .first()
        .expect("Entity::COLUMNS names at least the primary key")
}

fn known_column<T: Entity>(column: &str) -> Result<&'static str> {
    T::COLUMNS
        .iter()
        .find(|c| **c == column)
        .copied()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "`{column}` is not a column of {} ({})",
                T::TABLE,
                T::COLUMNS.join(", ")
            ))
        })
}

fn checked_values<T: Entity>(entity: &T) -> Result<Vec<Value>> {
    let values = entity.values();
    if values.len() != T::COLUMNS.len() {
        return Err(Error::Invalid(format!(
            "{}: values() gave {} values for {} columns",
            T::TABLE,
            values.len(),
            T::COLUMNS.len()
        )));
    }
    Ok(values)
}
