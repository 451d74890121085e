//! `UserRepository`: every SQL statement of the app, behind a small typed API.
//!
//! Handlers never build SQL themselves. They call the repository, which
//! talks to the logical database through the `sql` port and turns rows into
//! [`User`] values and engine errors into [`RepoError`]s the caller can act on.

use berth_bindings::sql::{self, Connection, Value};
use serde::Serialize;

/// The schema, created on first use. `IF NOT EXISTS` makes it idempotent; a
/// larger app would run versioned migrations at deploy time instead.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    created_at TEXT
)";

/// A stored user, as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: Option<String>,
}

/// Why creating a user failed.
#[derive(Debug)]
pub enum RepoError {
    /// Another user already has this email address.
    DuplicateEmail,
    /// Any other database failure.
    Sql(sql::Error),
}

impl From<sql::Error> for RepoError {
    fn from(err: sql::Error) -> Self {
        RepoError::Sql(err)
    }
}

/// Users, stored in a logical SQL database.
pub struct UserRepository {
    conn: Connection,
}

impl UserRepository {
    /// Opens the logical database `db` (as granted in `berth.toml`).
    pub fn open(db: &str) -> Result<Self, sql::Error> {
        Ok(Self {
            conn: Connection::open(db)?,
        })
    }

    /// Creates a user and returns it with its new id.
    ///
    /// Runs in a transaction: creating the table if this is the first user,
    /// then inserting. If anything fails, `tx` is dropped without `commit`
    /// and the host rolls everything back.
    pub fn create(&self, name: &str, email: &str) -> Result<User, RepoError> {
        let tx = self.conn.begin()?;
        tx.execute(SCHEMA, &[])?;
        // `RETURNING` hands back the generated id and timestamp in the same
        // round trip (SQLite 3.35+ and Postgres both support it).
        let inserted = tx.query(
            "INSERT INTO users (name, email, created_at) VALUES (?, ?, CURRENT_TIMESTAMP)
             RETURNING id, name, email, created_at",
            &[Value::Text(name.to_owned()), Value::Text(email.to_owned())],
        );
        let rows = match inserted {
            Ok(rows) => rows,
            // The only constraint valid input can violate is `email UNIQUE`.
            Err(sql::Error::Constraint(_)) => return Err(RepoError::DuplicateEmail),
            Err(e) => return Err(e.into()),
        };
        let user = rows
            .rows
            .first()
            .map(|row| user_from_row(row))
            .ok_or_else(|| {
                RepoError::Sql(sql::Error::Other(
                    "INSERT ... RETURNING returned no row".into(),
                ))
            })??;
        tx.commit()?;
        Ok(user)
    }

    /// Finds the user with `id`, if there is one.
    pub fn find(&self, id: i64) -> Result<Option<User>, sql::Error> {
        // Before the first user is created the table may not exist yet.
        self.conn.execute(SCHEMA, &[])?;
        let rows = self.conn.query(
            "SELECT id, name, email, created_at FROM users WHERE id = ?",
            &[Value::Int(id)],
        )?;
        rows.rows.first().map(|row| user_from_row(row)).transpose()
    }

    /// Whether a user with `id` exists.
    pub fn exists(&self, id: i64) -> Result<bool, sql::Error> {
        Ok(self.find(id)?.is_some())
    }
}

/// Maps a `(id, name, email, created_at)` row to a [`User`].
fn user_from_row(row: &[Value]) -> Result<User, sql::Error> {
    let unexpected = |what: &str| sql::Error::Other(format!("unexpected {what} in users row"));
    let [id, name, email, created_at] = row else {
        return Err(unexpected("column count"));
    };
    let Value::Int(id) = id else {
        return Err(unexpected("id"));
    };
    Ok(User {
        id: *id,
        name: text(name).ok_or_else(|| unexpected("name"))?,
        email: text(email).ok_or_else(|| unexpected("email"))?,
        created_at: text(created_at),
    })
}

/// The string in a text-like value. Engines differ in how they return a
/// timestamp (SQLite: text, Postgres: `timestamp`), so accept both.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(s) | Value::Timestamp(s) => Some(s.clone()),
        _ => None,
    }
}
