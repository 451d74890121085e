//! SQLite's errors as the sql port's.

use std::path::Path;

use rusqlite::{Connection, ErrorCode};

use super::super::SqlError;

/// Largest write-ahead log a bounded database keeps between checkpoints.
const MAX_KEPT_LOG: u64 = 64 << 20;

/// Bounds the database of `conn` to `max` bytes (`[app_limits]
/// store_mb`): a connection's own setting, so made on every one. A bound
/// below what the file holds already stops its growth there. Its
/// write-ahead log is cut back to at most the same (64 MiB at most) after
/// each checkpoint.
pub(super) fn bound_size(conn: &Connection, max: u64) -> Result<(), SqlError> {
    let page: u64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .map_err(map_error)?;
    let pages = (max / page.max(512)).max(1);
    let held: u64 = conn
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        .and_then(|()| conn.query_row("PRAGMA page_count", [], |row| row.get(0)))
        .map_err(map_error)?;
    if held > pages && crate::audit::first_time(&format!("store over bound {:?}", conn.path())) {
        tracing::warn!(
            path = conn.path().unwrap_or_default(),
            held_mib = (held * page) >> 20,
            max_mib = max >> 20,
            "an embedded SQLite store already holds more than [app_limits] store_mb allows: it takes no more writes that grow it"
        );
    }
    conn.query_row(
        &format!("PRAGMA journal_size_limit = {}", max.min(MAX_KEPT_LOG)),
        [],
        |_| Ok(()),
    )
    .map_err(map_error)
}

/// [`map_error`] of an error of a statement on `conn`, telling a database
/// that reached its bound (`too-large`, the guest's to resolve) from a
/// full disk (`unavailable`, the operator's, with a warning).
pub fn map_error_on(conn: &Connection, e: rusqlite::Error) -> SqlError {
    if e.sqlite_error_code() == Some(ErrorCode::DiskFull) && at_bound(conn) {
        return SqlError::TooLarge(
            "the database holds as much as the host allows it ([app_limits] store_mb); delete \
             data, or ask the operator for more room"
                .into(),
        );
    }
    map_error(e)
}

/// Whether the database of `conn`, if bounded, ran into its bound rather
/// than into a disk: the room its bound leaves is no more than the free
/// space of its directory and of the temporary directory (where SQLite
/// puts sorts and statement journals). A write needing several pages
/// fails with some still left, so the page count alone cannot tell. (A
/// transaction SQLite rolled back whole leaves more room than it had, so
/// one that hit its bound on a nearly full disk reads as a full disk.)
/// The pragmas read are ones guests may read too.
fn at_bound(conn: &Connection) -> bool {
    let count = |pragma: &str| {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get::<_, u64>(0))
            .ok()
    };
    let (Some(held), Some(max), Some(page)) = (
        count("page_count"),
        count("max_page_count"),
        count("page_size"),
    ) else {
        return false;
    };
    if max >= UNBOUNDED_PAGES {
        return false;
    }
    let left = max.saturating_sub(held).saturating_mul(page);
    let dir = conn.path().and_then(|file| Path::new(file).parent());
    let temporary = std::env::temp_dir();
    match (dir.and_then(free_bytes), free_bytes(&temporary)) {
        (Some(free), Some(free_temporary)) => left <= free.min(free_temporary),
        _ => held >= max,
    }
}

/// SQLite's own most pages (its default `max_page_count`): a database
/// with it has no bound of the host's.
const UNBOUNDED_PAGES: u64 = 0xffff_fffe;

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
#[expect(unsafe_code, reason = "statvfs(3) fills the struct it is given")]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `stat` is a `struct statvfs`
    // for the call to fill; it is read only after the call succeeded.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled by the successful call above.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Maps a rusqlite error to the port's error. SQLite messages carry no
/// credentials or paths, so they are kept.
pub fn map_error(e: rusqlite::Error) -> SqlError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let msg = msg.unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::ConstraintViolation => SqlError::Constraint(msg),
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => SqlError::Conflict(msg),
                ErrorCode::AuthorizationForStatementDenied
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly => SqlError::Denied(msg),
                ErrorCode::TooBig => SqlError::TooLarge(msg),
                ErrorCode::OutOfMemory => {
                    // Every app's SQLite shares the limit, so the operator
                    // hears of it, not only the tenant whose call failed.
                    static LAST_WARNING: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    if crate::ports::warning_due(&LAST_WARNING) {
                        tracing::warn!(
                            "the embedded SQLite stores reached the host's memory limit ([engine] sqlite_memory_mb); calls get `unavailable` until memory is freed (said at most once a minute)"
                        );
                    }
                    SqlError::Unavailable(
                        "the memory the host gives SQLite ([engine] sqlite_memory_mb) is in use; retry, or make smaller values".into(),
                    )
                }
                ErrorCode::OperationInterrupted => SqlError::Timeout,
                ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull => {
                    // The operator's to fix (a full disk or quota, a file
                    // made unreadable): said where they look, and SQLite's
                    // message names no path.
                    static LAST_WARNING: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    if crate::ports::warning_due(&LAST_WARNING) {
                        tracing::warn!(error = %msg, "an embedded SQLite store failed (said at most once a minute)");
                    }
                    SqlError::Unavailable(msg)
                }
                ErrorCode::TypeMismatch => SqlError::InvalidInput(msg),
                _ if msg.starts_with("not authorized") => SqlError::Denied(msg),
                _ if msg.contains("syntax error")
                    || msg.starts_with("no such ")
                    || msg.contains("incomplete input")
                    || msg.contains("already exists") =>
                {
                    SqlError::Syntax(msg)
                }
                _ => SqlError::Other(msg),
            }
        }
        rusqlite::Error::SqlInputError { msg, .. } if msg.starts_with("not authorized") => {
            SqlError::Denied(msg)
        }
        rusqlite::Error::SqlInputError { msg, .. } => SqlError::Syntax(msg),
        rusqlite::Error::InvalidParameterCount(given, expected) => SqlError::InvalidInput(format!(
            "statement takes {expected} parameters, {given} given"
        )),
        rusqlite::Error::MultipleStatement => {
            SqlError::InvalidInput("only one statement per call".into())
        }
        other => SqlError::Other(other.to_string()),
    }
}
