//! What a guest's statement may do on a pooled SQLite connection, and for
//! how long: the authorizer (no `ATTACH`/`DETACH`, no extension loading,
//! no temporary tables, indexes, triggers or views, only introspection
//! pragmas) and the statement deadline, checked by a
//! progress handler, that interrupts a runaway statement with `timeout`.

use std::os::raw::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Virtual-machine instructions between two checks of a statement's deadline.
const PROGRESS_OPS: c_int = 1000;

/// What a statement on a pooled connection may do.
pub(super) fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        // Temporary objects live on the connection, which the pool lends
        // to the app's later calls: a temporary table would hide the real
        // one of its name there, a temporary trigger rewrite their writes.
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Authorization::Deny,
        // Every object is written into its schema's table when it is made:
        // this catches `CREATE TABLE temp.t` and virtual tables in `temp`,
        // which SQLite does not report as temporary.
        AuthAction::Insert { table_name }
            if is_schema_table(table_name)
                && (ctx
                    .database_name
                    .is_some_and(|db| db.eq_ignore_ascii_case("temp"))
                    || table_name.to_ascii_lowercase().starts_with("sqlite_temp_")) =>
        {
            Authorization::Deny
        }
        // Extension loading is also off in the library; refusing the call
        // here gives the guest `denied` rather than a runtime error.
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Authorization::Deny
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } if !pragma_allowed(pragma_name, pragma_value) => Authorization::Deny,
        _ => Authorization::Allow,
    }
}

/// Whether `name` is a schema table (`sqlite_master`, `sqlite_schema` and
/// their `temp` twins).
fn is_schema_table(name: &str) -> bool {
    [
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
    ]
    .iter()
    .any(|t| t.eq_ignore_ascii_case(name))
}

/// Pragmas that only describe the schema or check the file, with or
/// without an argument.
const INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "collation_list",
];

/// Pragmas that may be read (no argument) but not set.
const READABLE_PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "foreign_keys",
    "page_count",
    "freelist_count",
    "data_version",
    // With `page_count`: how much room the host leaves the database
    // (`[app_limits] store_mb`), read by the host too after a full write.
    "page_size",
    "max_page_count",
];

/// Whether a guest may run `PRAGMA name` (`= value`, `(value)`), also as a
/// `pragma_<name>` table-valued function. Only introspection is: some
/// pragmas change every SQLite connection of the process
/// (`hard_heap_limit`, `soft_heap_limit`, `temp_store_directory`), others
/// the connection, which the pool hands to the next caller (`foreign_keys`,
/// `journal_mode`, `synchronous`, `query_only`, `writable_schema`,
/// `mmap_size`, `cache_size`, …), and `database_list` shows the file's path
/// on the host. Setting `user_version` is allowed: it is a number in the
/// database's own header.
fn pragma_allowed(name: &str, value: Option<&str>) -> bool {
    listed(INTROSPECTION_PRAGMAS, name)
        || (value.is_none() && listed(READABLE_PRAGMAS, name))
        || name.eq_ignore_ascii_case("user_version")
}

fn listed(list: &[&str], name: &str) -> bool {
    list.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Whether the call a statement runs for was given up: the guest's
/// invocation that made it timed out or trapped (dropping the call's
/// future), or the cursor it reads for was dropped.
pub(super) type GivenUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// Held by the async side of a call whose statement runs on the blocking
/// pool: dropped with the call's future, it tells the statement to stop.
/// Otherwise a guest whose invocations time out could leave runaway
/// statements holding the pool's connections and the process's blocking
/// threads for the whole statement limit.
pub(super) struct GiveUpOnDrop(Arc<AtomicBool>);

impl GiveUpOnDrop {
    pub(super) fn new() -> Self {
        Self(Arc::default())
    }

    /// What the statement's progress handler looks at.
    pub(super) fn given_up(&self) -> GivenUp {
        let flag = self.0.clone();
        Arc::new(move || flag.load(Ordering::Relaxed))
    }
}

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// When the statement running on a connection is interrupted.
#[derive(Clone)]
pub(super) struct Deadline {
    limit: Duration,
    start: Instant,
    /// Nanoseconds after `start` past which the statement is interrupted;
    /// moved on by [`Deadline::rearm`].
    at: Arc<AtomicU64>,
    /// Interrupts the statement before the deadline once its call is
    /// given up.
    given_up: Option<GivenUp>,
}

impl Deadline {
    /// A deadline `limit` from now.
    pub(super) fn new(limit: Duration) -> Deadline {
        let deadline = Deadline {
            limit,
            start: Instant::now(),
            at: Arc::new(AtomicU64::new(0)),
            given_up: None,
        };
        deadline.rearm();
        deadline
    }

    /// This deadline, passed early once `given_up` says so.
    pub(super) fn or_given_up(mut self, given_up: GivenUp) -> Deadline {
        self.given_up = Some(given_up);
        self
    }

    /// Moves the deadline to `limit` from now.
    pub(super) fn rearm(&self) {
        let at = self.start.elapsed().saturating_add(self.limit);
        self.at.store(nanos(at), Ordering::Relaxed);
    }

    fn passed(&self) -> bool {
        nanos(self.start.elapsed()) >= self.at.load(Ordering::Relaxed)
            || self.given_up.as_ref().is_some_and(|given_up| given_up())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Interrupts whatever runs on a connection once a deadline passes (SQLite
/// then fails it with `SQLITE_INTERRUPT`, given as [`SqlError::Timeout`]),
/// until dropped: host code using the connection afterwards is not limited.
pub(super) struct Armed<'a>(&'a Connection);

impl<'a> Armed<'a> {
    pub(super) fn new(conn: &'a Connection, deadline: Deadline) -> Armed<'a> {
        conn.progress_handler(PROGRESS_OPS, Some(move || deadline.passed()));
        Armed(conn)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.progress_handler(0, None::<fn() -> bool>);
    }
}

/// Runs a guest's statement `f` on `conn`, interrupted after `limit` or
/// once `given_up` says its call was given up.
pub(super) fn with_deadline<R>(
    conn: &Connection,
    limit: Duration,
    given_up: GivenUp,
    f: impl FnOnce(&Connection) -> R,
) -> R {
    let _armed = Armed::new(conn, Deadline::new(limit).or_given_up(given_up));
    f(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pragma_allow_list() {
        assert!(pragma_allowed("table_info", Some("t")));
        assert!(pragma_allowed("TABLE_INFO", Some("t")));
        assert!(pragma_allowed("integrity_check", None));
        assert!(pragma_allowed("page_count", None));
        assert!(pragma_allowed("user_version", Some("3")));
        assert!(!pragma_allowed("page_count", Some("3")));
        assert!(pragma_allowed("max_page_count", None));
        assert!(!pragma_allowed("max_page_count", Some("1000000000")));
        assert!(!pragma_allowed("page_size", Some("65536")));
        assert!(!pragma_allowed("foreign_keys", Some("OFF")));
        assert!(!pragma_allowed("hard_heap_limit", Some("1")));
        assert!(!pragma_allowed("hard_heap_limit", None));
        assert!(!pragma_allowed("temp_store_directory", Some("/tmp")));
        assert!(!pragma_allowed("database_list", None));
        assert!(!pragma_allowed("cache_size", None));
    }
}
