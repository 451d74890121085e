//! How the MySQL/MariaDB adapter names mysql_async's errors to guests: the
//! port's typed errors, without what could name a host, a login or a
//! credential.

use super::SqlError;

/// Maps a driver error to the port's error. Server messages are kept (they
/// name objects of the guest's own SQL); connection errors are not, since
/// they can name hosts.
pub fn map_error(e: mysql_async::Error) -> SqlError {
    use mysql_async::{DriverError, Error};
    match e {
        Error::Server(err) => map_server_error(err.code, &err.state, err.message),
        Error::Driver(DriverError::StmtParamsMismatch { .. })
        | Error::Driver(DriverError::StmtParamsNumberExceedsLimit { .. })
        | Error::Driver(DriverError::MixedParams)
        | Error::Driver(DriverError::Params(_)) => {
            SqlError::InvalidInput(format!("parameters do not match the statement: {e}"))
        }
        Error::Driver(DriverError::PacketTooLarge) => {
            SqlError::TooLarge("a value exceeds the server's max_allowed_packet".into())
        }
        Error::Io(_)
        | Error::Driver(DriverError::ConnectionClosed)
        | Error::Driver(DriverError::PoolDisconnected) => {
            SqlError::Unavailable("cannot reach the database".into())
        }
        Error::Url(_) => SqlError::Unavailable("database configuration error".into()),
        other => SqlError::Other(other.to_string()),
    }
}

/// Maps a server error by its number (the same on MySQL and MariaDB unless
/// noted), then by its SQLSTATE class.
pub(super) fn map_server_error(code: u16, state: &str, msg: String) -> SqlError {
    match code {
        // Duplicate key, foreign key (parent/child side, old and new
        // numbers), NOT NULL, field without default in strict mode, CHECK
        // (MariaDB 4025, MySQL 3819).
        1062 | 1586 | 1451 | 1452 | 1216 | 1217 | 1048 | 1364 | 4025 | 3819 => {
            SqlError::Constraint(msg)
        }
        // Parse error, unknown table/column/function, ambiguous column,
        // table exists, duplicate column, bad column count.
        1064 | 1149 | 1146 | 1054 | 1305 | 1630 | 1052 | 1050 | 1060 | 1091 | 1222 | 1241 => {
            SqlError::Syntax(msg)
        }
        // The server refused the host's login (a new pooled connection):
        // the operator's credential, not the guest's statement; the
        // message names the user and the host's address. A guest's
        // statement can raise the code too (`SIGNAL … SET MYSQL_ERRNO =
        // 1045`), with any text: escaped, and written once a second at most.
        1045 => {
            if crate::audit::host_warning_due("mysql login refused") {
                tracing::warn!(
                    error = %crate::audit::printable(crate::audit::bounded(&msg)),
                    "the MySQL server refused the host's login"
                );
            }
            SqlError::Unavailable("the database refused the host's login".into())
        }
        // Access denied, read-only server or transaction.
        1044 | 1142 | 1143 | 1227 | 1290 | 1792 => SqlError::Denied(msg),
        // MariaDB max_statement_time, MySQL max_execution_time, and a
        // statement the watchdog cancelled (`KILL QUERY`).
        1969 | 3024 | 1317 => SqlError::Timeout,
        // Deadlock, lock wait timeout: retrying may succeed.
        1213 | 1205 => SqlError::Conflict(msg),
        // Out of range, too long, wrong string for the character set,
        // wrong date/number text, division by zero in strict mode.
        1264 | 1406 | 1366 | 1292 | 1265 | 1367 | 1365 | 1411 => SqlError::InvalidInput(msg),
        // Too many connections, shutting down, connection killed.
        1040 | 1053 | 1927 => SqlError::Unavailable(format!("server error {code}")),
        _ => match state.get(..2).unwrap_or_default() {
            "23" => SqlError::Constraint(msg),
            "42" => SqlError::Syntax(msg),
            "22" => SqlError::InvalidInput(msg),
            "40" => SqlError::Conflict(msg),
            "08" => SqlError::Unavailable(format!("server error {code}")),
            _ => SqlError::Other(msg),
        },
    }
}
