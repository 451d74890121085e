//! Tests of the statement checks: transaction control, session changes, implicit commits.

use super::*;

#[test]
fn transaction_control_is_refused_in_any_spelling() {
    for statement in [
        "BEGIN",
        "begin transaction",
        "  \n\tBEGIN;",
        "-- note\nBEGIN",
        "/* a /* nested */ comment */ commit",
        "START TRANSACTION",
        "END",
        "ROLLBACK TO SAVEPOINT a",
        "abort",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "XA START 'x'",
        "SET autocommit = 0",
        "set session autocommit=0",
        "SET @@autocommit = 0",
        "SET @@session.autocommit = 0",
        // MySQL runs what an executable comment holds, and reads `#`
        // as a comment to the end of the line.
        "/*!SET autocommit=0*/",
        "/*!40101 SET autocommit = 0 */",
        "/* x */ /*!COMMIT*/",
        "/*M!100100 ROLLBACK */",
        "# note\nCOMMIT",
        // An executable comment closed at once, a line comment ended
        // by `\r`, empty statements, a comment MySQL does not nest.
        "/*!*/BEGIN",
        "/*!*/ SET autocommit=0",
        "-- x\rBEGIN",
        ";BEGIN",
        "; ;\n(COMMIT)",
        "/* /* */ SET autocommit=0",
        "/* /* */ COMMIT /* */",
        // Several variables in one `SET`, and MariaDB's `SET STATEMENT`.
        "SET sql_mode = DEFAULT, autocommit = 0",
        "SET sql_mode = DEFAULT, @@session.autocommit = 0",
        "SET STATEMENT max_statement_time = 1 FOR START TRANSACTION",
        "set statement x = 'for' for\nCOMMIT",
        "SET STATEMENT max_statement_time=1.5FOR START TRANSACTION",
        "SET STATEMENT max_statement_time=1e1FOR COMMIT",
        // An executable comment is a comment to Postgres and SQLite, and
        // to MySQL when its version is newer than the server's.
        "/*!x*/ BEGIN",
        "/*M!SELECT*/ SET autocommit=0",
        "/*!99999 x*/ COMMIT",
        // Only Postgres ends a line comment at `\r`.
        "-- \rSELECT 1\nSET autocommit=0",
        "-- \rSELECT 1\nBEGIN",
    ] {
        let refused = refuse_transaction_control(statement);
        assert!(
            matches!(&refused, Err(SqlError::Denied(m)) if m.contains("transaction control")),
            "{statement}: {refused:?}"
        );
    }
}

#[test]
fn statements_that_leave_session_state_are_recognised() {
    for statement in [
        "SET search_path = other",
        "set statement_timeout = 0",
        "/* x */ SET SESSION statement_timeout = 0",
        "SET ROLE app",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "RESET ALL",
        "SELECT set_config('statement_timeout', '0', false)",
        "select SET_CONFIG('search_path', 'x', false)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock_shared(1)",
        "DO $$ BEGIN PERFORM 1; END $$",
        "LISTEN channel",
        "PREPARE q AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "CREATE TEMP TABLE t (a int)",
        "create temporary table t (a int)",
        "CREATE LOCAL TEMPORARY TABLE t (a int)",
        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
        "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        "EXPLAIN (ANALYZE) CREATE TEMPORARY TABLE t AS SELECT 1",
        "SELECT * INTO  TEMP t FROM x",
        "SELECT 1 INTO/**/TEMP t",
        "SELECT 1 INTO LOCAL TEMP t",
        "SELECT 1 INTO GLOBAL TEMPORARY t",
        "SELECT 1 INTO /* /* */ */ TEMP t",
        "CREATE TABLE pg_temp.t (a int)",
        "SELECT 1 INTO pg_temp.t",
        "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
        "SELECT U&\"set\\005fconfig\"('TimeZone', 'UTC', false)",
    ] {
        assert!(changes_session(statement, Dialect::Postgres), "{statement}");
    }
    for statement in [
        "SET @x = 1",
        "SET SESSION max_statement_time = 0",
        "SET LOCAL sql_mode = ''",
        "SET @@session.sql_mode = ''",
        "SET NAMES latin1",
        "SELECT @x := 1",
        "SELECT GET_LOCK('a', 1)",
        "USE other_database",
        "PREPARE s FROM 'SELECT 1'",
        "LOCK TABLES t WRITE",
        "CREATE TEMPORARY TABLE t (a int)",
        "CREATE OR REPLACE TEMPORARY TABLE t (a int)",
        "SET TRANSACTION READ ONLY",
        "SELECT a INTO @v FROM t",
        "SELECT 1 INTO@v",
        "SELECT 1 INTO/**/@v",
        "SELECT 1 INTO /*!@v*/",
        "SELECT 1 INTO /*!50100 @v */",
        "SET STATEMENT max_statement_time = 1 FOR SET @a = 1",
        "/*M!SELECT*/ SET @a = 1",
        "-- \rSELECT 1\nSET @a = 1",
        "SET STATEMENT max_statement_time = 1 FOR USE other",
        "SET STATEMENT max_statement_time = 1 FOR CREATE TEMPORARY TABLE t (a int)",
        "CALL p(@out)",
        "CALL p(1)",
    ] {
        assert!(changes_session(statement, Dialect::Mysql), "{statement}");
    }
}

#[test]
fn statements_confined_to_themselves_or_their_transaction_pass() {
    for statement in [
        "SELECT 1",
        "UPDATE t SET a = 1",
        "INSERT INTO settings (name) VALUES ('x')",
        "SET LOCAL statement_timeout = 0",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
        "SELECT pg_advisory_xact_lock(1)",
        "CREATE TABLE temperatures (a int)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "",
    ] {
        assert!(
            !changes_session(statement, Dialect::Postgres),
            "{statement}"
        );
    }
    for statement in [
        "SELECT 1",
        "UPDATE t SET a = 1",
        "SET STATEMENT max_statement_time = 0 FOR SELECT 1",
        "SELECT a = 1 FROM t",
        "CREATE TABLE t (a int)",
    ] {
        assert!(!changes_session(statement, Dialect::Mysql), "{statement}");
    }
}

#[test]
fn ordinary_statements_pass() {
    for statement in [
        "SELECT 1",
        "INSERT INTO beginnings VALUES (1)",
        "UPDATE t SET ended = true",
        "beginning",
        "PREPARE q AS SELECT 1",
        "SET search_path = a",
        "SET statement_timeout = 0",
        "-- BEGIN\nSELECT 1",
        "/* COMMIT */ SELECT 1",
        "/*+ hint */ SELECT 1",
        "/*!40101 SELECT 1 */",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION (SELECT 2)",
        "",
        "/* unterminated",
    ] {
        assert_eq!(refuse_transaction_control(statement), Ok(()), "{statement}");
    }
}

#[test]
fn statements_that_commit_a_mysql_transaction_are_refused_in_one() {
    for statement in [
        "CREATE TABLE t (a int)",
        "alter table t add b int",
        "DROP TABLE t",
        "TRUNCATE t",
        "RENAME TABLE a TO b",
        "LOCK TABLES t WRITE",
        "GRANT SELECT ON t TO u",
        "SET PASSWORD = 'x'",
        "ANALYZE TABLE t",
        "/*!x*/ CREATE TABLE t (a int)",
        // `temporary` as a name, not the keyword.
        "CREATE TABLE t (temporary INT)",
        "DROP TABLE temporary",
        "TRUNCATE temporary",
        "SET STATEMENT max_statement_time = 1 FOR CREATE TABLE x (a INT)",
        "SET STATEMENT max_statement_time=1.5FOR DROP TABLE t",
    ] {
        assert!(
            matches!(refuse_implicit_commit(statement), Err(SqlError::Denied(m)) if m.contains("commits")),
            "{statement}"
        );
    }
    for statement in [
        "INSERT INTO t VALUES (1)",
        "SELECT 1",
        "CREATE TEMPORARY TABLE t (a int)",
        "CREATE OR REPLACE TEMPORARY TABLE t (a int)",
        "DROP TEMPORARY TABLE t",
        "UPDATE created SET dropped = 1",
        "ANALYZE SELECT 1",
        "RESET PERSIST",
        "SELECT * FROM t FOR UPDATE",
    ] {
        assert_eq!(refuse_implicit_commit(statement), Ok(()), "{statement}");
    }
}

#[test]
fn statements_whose_first_keyword_cannot_be_found_are_refused() {
    for statement in ["'x'", "$$ BEGIN", "[BEGIN]", "\\set x"] {
        let refused = refuse_transaction_control(statement);
        assert!(
            matches!(&refused, Err(SqlError::Denied(m)) if m.contains("start with a keyword")),
            "{statement}: {refused:?}"
        );
    }
}

/// `SET STATEMENT`s nested or holding many `FOR`s are refused, not read
/// once per way of splitting them (which took time exponential in their
/// depth); one with a few `FOR`s still passes, or is refused for what it
/// runs.
#[test]
fn tangled_set_statements_are_refused_before_they_are_read_every_way() {
    let nested = format!("{}SELECT 1", "SET STATEMENT x = 1 FOR ".repeat(40));
    let many = format!("SET STATEMENT x = '{}' FOR SELECT 1", "for ".repeat(100));
    let twice = "SET STATEMENT a=1 FOR SET STATEMENT b=1 FOR SELECT 1".to_string();
    for statement in [&nested, &many, &twice] {
        let refused = refuse_transaction_control(statement);
        assert!(
            matches!(&refused, Err(SqlError::Denied(m)) if m.contains("at most 8 `FOR`s")),
            "{statement}: {refused:?}"
        );
        // The other checks answer at once too, as careful as they can be.
        assert!(changes_session(statement, Dialect::Mysql));
        assert!(refuse_implicit_commit(statement).is_err());
    }
    let fine = "SET STATEMENT max_statement_time = 1 FOR SELECT 'for' FROM t";
    assert_eq!(refuse_transaction_control(fine), Ok(()));
    assert!(!changes_session(fine, Dialect::Mysql));
}

/// A phrase's first word followed by comments running to the end of the
/// text, many times over, is not read to the end from each of them: past
/// its budget the phrase counts as held (the session is then reset).
#[test]
fn phrases_are_looked_for_within_a_budget() {
    let statement = format!("SELECT 1 {}", "into--".repeat(100_000));
    assert!(changes_session(&statement, Dialect::Postgres));
    assert!(changes_session(&statement, Dialect::Mysql));
    assert_eq!(refuse_transaction_control(&statement), Ok(()));
    // Within the budget, the answer is what the text says.
    assert!(!changes_session(
        "SELECT 1 -- into the table",
        Dialect::Postgres
    ));
    assert!(changes_session(
        "SELECT 1 INTO /* x */ TEMP t",
        Dialect::Postgres
    ));
}

#[test]
fn statements_past_the_size_cap_are_refused() {
    let statement = format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES));
    let refused = refuse_transaction_control(&statement);
    assert!(
        matches!(&refused, Err(SqlError::InvalidInput(m)) if m.contains("more than the port takes")),
        "{refused:?}"
    );
}
