//! How the Postgres adapter names sqlx's errors to guests: the port's
//! typed errors, without what could name a host, a login or a credential.

use super::SqlError;

/// Maps a sqlx error to the port's error. Database messages are kept (they
/// name objects of the guest's own SQL); connection errors are not, since
/// they can name hosts.
pub fn map_error(e: sqlx::Error) -> SqlError {
    match e {
        sqlx::Error::Database(db) => {
            let msg = db.message().to_string();
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                c if c.starts_with("23") => SqlError::Constraint(msg),
                "42601" | "42P01" | "42703" | "42883" | "42P07" | "42804" | "42P18" => {
                    SqlError::Syntax(msg)
                }
                c if c.starts_with("42") && c != "42501" => SqlError::Syntax(msg),
                "42501" => SqlError::Denied(msg),
                "57014" => SqlError::Timeout,
                // The server refused the host's login (a new pooled
                // connection): the operator's credential, not the guest's
                // statement; the message can name the user, database and
                // the host's address (`no pg_hba.conf entry for host …`).
                // A guest's statement can raise such a code too (`RAISE …
                // USING ERRCODE`), with any text: escaped, and written once
                // a second at most.
                c if c.starts_with("28") => {
                    if crate::audit::host_warning_due("postgres login refused") {
                        tracing::warn!(
                            error = %crate::audit::printable(crate::audit::bounded(&msg)),
                            "the Postgres server refused the host's login"
                        );
                    }
                    SqlError::Unavailable("the database refused the host's login".into())
                }
                // A read-only transaction or server refuses the write.
                "25006" => SqlError::Denied(msg),
                // A lock not taken (`NOWAIT`, `lock_timeout`): another
                // session holds it, as for a serialization failure.
                "55P03" => SqlError::Conflict(msg),
                "40001" | "40P01" => SqlError::Conflict(msg),
                c if c.starts_with("22") => SqlError::InvalidInput(msg),
                "08P01" => SqlError::InvalidInput(msg),
                c if c.starts_with("53") => SqlError::ShortOfResources(c.to_string()),
                c if c.starts_with("08") || c.starts_with("57P") => {
                    SqlError::Unavailable(format!("server error {c}"))
                }
                _ => SqlError::Other(msg),
            }
        }
        sqlx::Error::PoolTimedOut => {
            SqlError::Unavailable("no database connection available in time".into())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => SqlError::Unavailable("cannot reach the database".into()),
        sqlx::Error::Configuration(_) => {
            SqlError::Unavailable("database configuration error".into())
        }
        sqlx::Error::Protocol(m) if m.contains("parameters") => SqlError::InvalidInput(m),
        // A parameter the driver could not encode was never sent.
        sqlx::Error::Encode(e) => SqlError::InvalidInput(format!("cannot send a parameter: {e}")),
        sqlx::Error::ColumnDecode { source, .. } => SqlError::UnsupportedType(source.to_string()),
        other => SqlError::Other(other.to_string()),
    }
}
