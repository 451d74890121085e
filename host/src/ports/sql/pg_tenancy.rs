//! Role-per-app tenancy on Postgres (`tenancy = "role-per-app"`).
//!
//! With the host config's admin login, the host provisions for each app's
//! logical database a role that owns one schema of the same name, and the
//! app's pool logs in as that role. The role has no other rights: it is not
//! a member of any role, cannot create roles or databases, and in the
//! tenants' database the host revokes what `PUBLIC` gets by default (the
//! `public` schema, temporary tables, the `plpgsql` language). So whatever
//! SQL a guest sends — schema-qualified names of another tenant, `SET ROLE`,
//! `SET SESSION AUTHORIZATION`, `pg_read_file`, `COPY … TO PROGRAM`,
//! `CREATE EXTENSION`, `DO` blocks — the server refuses it.
//!
//! Role passwords are derived from a host secret (`tenant_password_key`) by
//! HMAC, so every host process sharing the config logs in with the same
//! password without storing one. The server is only ever sent a SCRAM
//! verifier of it, on a connection whose statements sqlx does not log, so
//! the password reaches neither a log line of the host nor the server's
//! statement log.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};

use super::SqlError;
use super::postgres::map_error;
use crate::secret::Secret;

/// The role, and schema, serving `app`'s logical database `db`: readable,
/// at most 63 bytes (Postgres' identifier limit), and collision-free thanks
/// to a hash of the exact names.
pub fn tenant_role(app: &str, db: &str) -> String {
    let clean = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let digest = Sha256::digest(format!("{app}\0{db}").as_bytes());
    let mut base = format!("berth_{}_{}", clean(app), clean(db));
    base.truncate(63 - 9);
    format!("{base}_{}", hex::encode(&digest[..4]))
}

/// The mark [`provision`] records on the role of `app`'s database `db`
/// (`COMMENT ON ROLE`): the whole SHA-256 of the exact names, where
/// [`tenant_role`] keeps 32 bits of it. Two names whose roles collide (a
/// long readable part cut, and a hash found by search) are told apart by
/// it, so one app's load never adopts the role, and the data, of
/// another's.
pub fn tenant_owner(app: &str, db: &str) -> String {
    let digest = Sha256::digest(format!("{app}\0{db}").as_bytes());
    format!("berth tenant {}", hex::encode(digest))
}

/// HMAC-SHA-256 of `data` under `key`.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The password of `role`, derived from the host's key.
pub fn tenant_password(key: &Secret, role: &str) -> Secret {
    Secret::new(hex::encode(hmac_sha256(
        key.expose().as_bytes(),
        role.as_bytes(),
    )))
}

/// PBKDF2 rounds of the SCRAM verifier: Postgres' own default.
const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of `password` as Postgres stores it
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, RFC 5803).
/// Postgres takes a verifier given to `PASSWORD '…'` as is, so the password
/// itself never travels to the server.
pub fn scram_verifier(password: &Secret, salt: &[u8], iterations: u32) -> String {
    // PBKDF2-HMAC-SHA-256 with one output block (RFC 8018, 5.2).
    let pw = password.expose().as_bytes();
    let mut block = hmac_sha256(pw, &[salt, &1u32.to_be_bytes()].concat());
    let mut salted = block;
    for _ in 1..iterations {
        block = hmac_sha256(pw, &block);
        salted
            .iter_mut()
            .zip(block.iter())
            .for_each(|(s, b)| *s ^= b);
    }
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

/// Whether [`provision`] keeps what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// A load: the role, its schema and the revocations are committed.
    Apply,
    /// A dry run (`berth check`): every statement runs in one transaction
    /// that is rolled back, so the admin login's rights are tried exactly
    /// as a load would use them while nothing changes. (Role and schema
    /// DDL is transactional in Postgres; a rolled-back `ALTER ROLE` leaves
    /// the password a running host logs in with untouched.)
    TryAndRollBack,
}

/// Creates or updates the tenant's role and its schema with an admin
/// connection, and takes from `PUBLIC` the default rights a tenant could
/// use to leave its schema. Idempotent; safe to run from several hosts at
/// once. A refusal names the role and the rights the admin login needs. A
/// role that another app's database owns (see [`tenant_owner`]) is refused.
pub async fn provision(
    admin: &PgConnectOptions,
    tenant: &super::postgres::TenantLogin,
    mode: Provisioning,
) -> Result<(), SqlError> {
    let role = tenant.role.as_str();
    run_provisioning(admin, tenant, mode)
        .await
        .map_err(|e| match e {
            SqlError::Denied(why) => SqlError::Denied(format!(
                "provisioning the app's role `{role}` with the URL's login: {why} (that login needs CREATEROLE and must own the tenants' database, or be a superuser; see docs/security.md)"
            )),
            other => other,
        })
}

async fn run_provisioning(
    admin: &PgConnectOptions,
    tenant: &super::postgres::TenantLogin,
    mode: Provisioning,
) -> Result<(), SqlError> {
    let (role, password) = (tenant.role.as_str(), &tenant.password);
    // Both values are generated here ([a-z0-9_] and base64), never taken
    // from a guest or a file, so quoting them inline is safe; DDL takes no
    // parameters.
    debug_assert!(role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    // sqlx logs statements (at debug, and slow ones at warn): these carry
    // the role's verifier.
    let admin = admin.clone().disable_statement_logging();
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .map_err(map_error)?;
    // Catalog rows other sessions hold are waited for at most this long.
    execute(&mut conn, "SET lock_timeout = '30s'").await?;
    take_provisioning_lock(&mut conn).await?;
    let dry_run = mode == Provisioning::TryAndRollBack;
    if dry_run {
        execute(&mut conn, "BEGIN").await?;
    }
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .map_err(map_error)?;
    let pw = scram_verifier(password, &rand::random::<[u8; 16]>(), SCRAM_ITERATIONS);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut conn)
            .await
            .map_err(map_error)?;
    if !exists {
        create_role(&mut conn, role, &pw, dry_run).await?;
    }
    claim_role(&mut conn, role, &tenant.owner).await?;
    let attributes = if superuser {
        ROLE_ATTRIBUTES.to_owned()
    } else {
        attributes_to_change(&mut conn, role).await?
    };
    execute(
        &mut conn,
        &format!("ALTER ROLE \"{role}\" WITH {attributes} PASSWORD '{pw}'"),
    )
    .await?;
    // Postgres lets only a member of a role create a schema it owns: a
    // login that is not a superuser joins the tenant's role for that, and
    // leaves it again, so that it does not hold the tenant's rights (an app
    // of a `shared` database logging in as it could use them).
    let joined = !superuser && !is_member(&mut conn, role).await?;
    if joined {
        execute(&mut conn, &format!("GRANT \"{role}\" TO CURRENT_USER")).await?;
    }
    execute(
        &mut conn,
        &format!("CREATE SCHEMA IF NOT EXISTS \"{role}\" AUTHORIZATION \"{role}\""),
    )
    .await?;
    if joined {
        execute(&mut conn, &format!("REVOKE \"{role}\" FROM CURRENT_USER")).await?;
    }
    // A role may change its own defaults (`ALTER ROLE CURRENT_USER SET
    // …`), which would outlive the app's reloads: each provisioning
    // starts them over.
    execute(&mut conn, &format!("ALTER ROLE \"{role}\" RESET ALL")).await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .map_err(map_error)?;
    let database = database.replace('"', "\"\"");
    execute(
        &mut conn,
        &format!("ALTER ROLE \"{role}\" IN DATABASE \"{database}\" RESET ALL"),
    )
    .await?;
    execute(
        &mut conn,
        &format!("ALTER ROLE \"{role}\" SET search_path = \"{role}\""),
    )
    .await?;
    revoke_from_public(&mut conn).await?;
    check_confined(&mut conn, role).await?;
    if dry_run {
        execute(&mut conn, "ROLLBACK").await?;
    }
    conn.close().await.map_err(map_error)?;
    Ok(())
}

/// Records `owner` on `role`, or checks that it is recorded there: a role
/// recorded for another app's database is refused, without a word about
/// that app. A role without a mark (made by a Berth before 2026-12-07) is
/// marked by its first provisioning since.
async fn claim_role(conn: &mut PgConnection, role: &str, owner: &str) -> Result<(), SqlError> {
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_error)?;
    match recorded {
        Some(mark) if mark == owner => Ok(()),
        Some(_) => Err(SqlError::Denied(format!(
            "role `{role}` belongs to another app's database (their names share a role name): rename this logical database"
        ))),
        // Generated here from a hash ([a-z0-9 ]), so quoting inline is
        // safe.
        None => execute(conn, &format!("COMMENT ON ROLE \"{role}\" IS '{owner}'")).await,
    }
}

/// The advisory lock serializing provisionings on a server ("berthprv").
const PROVISIONING_LOCK: i64 = 0x6265_7274_6870_7276;

/// How long a provisioning waits for the lock before it goes on without.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One provisioning at a time on the server: hosts starting together
/// would otherwise fail on each other's catalog updates (`tuple
/// concurrently updated`). The lock is held until the connection closes.
/// Any session of the database may take an advisory lock, a tenant's
/// transaction too, so past [`LOCK_WAIT`] the provisioning goes on without
/// it: a tenant holding it delays other apps' loads by that much, and
/// does not keep them from loading. (A provisioning that then meets
/// another host's fails this load; the next one provisions again.)
async fn take_provisioning_lock(conn: &mut PgConnection) -> Result<(), SqlError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock($1)")
            .bind(PROVISIONING_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_error)?;
        if taken {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                waited_s = LOCK_WAIT.as_secs(),
                "the Postgres provisioning lock is held by another session (another host provisioning, or a tenant's transaction); provisioning without it"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// For an admin that is not a superuser, the attributes of `role` to set:
/// only those it lacks. Such a login may not name SUPERUSER, REPLICATION or
/// BYPASSRLS at all (even to deny them), nor, from Postgres 16, CREATEDB
/// unless it has it; `check_confined` makes sure the role holds none.
async fn attributes_to_change(conn: &mut PgConnection, role: &str) -> Result<String, SqlError> {
    let (login, createdb, createrole, inherit): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT rolcanlogin, rolcreatedb, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_error)?;
    let wanted = [
        (!login, "LOGIN"),
        (createdb, "NOCREATEDB"),
        (createrole, "NOCREATEROLE"),
        (inherit, "NOINHERIT"),
    ];
    Ok(wanted
        .iter()
        .filter(|(change, _)| *change)
        .map(|(_, attribute)| *attribute)
        .collect::<Vec<_>>()
        .join(" "))
}

/// Whether the admin login is already a member of `role`.
async fn is_member(conn: &mut PgConnection, role: &str) -> Result<bool, SqlError> {
    sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_error)
}

/// Takes from `PUBLIC` the default rights a tenant could use to leave its
/// schema: schema `public` and `plpgsql` (when the database still has
/// them), and `CREATE`/`TEMPORARY` on the database.
async fn revoke_from_public(conn: &mut PgConnection) -> Result<(), SqlError> {
    let (database, public, plpgsql): (String, bool, bool) = sqlx::query_as(
        "SELECT current_database(),
                EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public'),
                EXISTS (SELECT 1 FROM pg_language WHERE lanname = 'plpgsql')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(map_error)?;
    if public {
        execute(conn, "REVOKE ALL ON SCHEMA public FROM PUBLIC").await?;
    }
    if plpgsql {
        execute(conn, "REVOKE ALL ON LANGUAGE plpgsql FROM PUBLIC").await?;
    }
    let database = database.replace('"', "\"\"");
    execute(
        conn,
        &format!("REVOKE CREATE, TEMPORARY ON DATABASE \"{database}\" FROM PUBLIC"),
    )
    .await
}

/// A tenant role's attributes, as created (and, by a superuser, altered).
const ROLE_ATTRIBUTES: &str =
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS";

/// Creates `role`, unless another host did meanwhile.
async fn create_role(
    conn: &mut PgConnection,
    role: &str,
    verifier: &str,
    dry_run: bool,
) -> Result<(), SqlError> {
    // In a dry run's transaction an error aborts it: the savepoint lets the
    // check go on past a role another host created meanwhile.
    if dry_run {
        execute(conn, "SAVEPOINT create_role").await?;
    }
    let created = sqlx::query(&format!(
        "CREATE ROLE \"{role}\" {ROLE_ATTRIBUTES} PASSWORD '{verifier}'"
    ))
    .execute(&mut *conn)
    .await;
    match created {
        Ok(_) => Ok(()),
        // Another host created it meanwhile: 42710 once that was committed,
        // 23505 (pg_authid's unique index) when it was committed while this
        // creation waited for it.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42710" | "23505")) => {
            if dry_run {
                execute(conn, "ROLLBACK TO SAVEPOINT create_role").await?;
            }
            Ok(())
        }
        Err(e) => Err(map_error(e)),
    }
}

/// Checks what the provisioning must leave a tenant's role, rather than
/// trusting it: Postgres answers a REVOKE by a login without the right to
/// make it with a warning only, and a role made earlier may have been
/// changed since. The role must be a login with no other attribute and no
/// membership of another role (which it could `SET ROLE` to), and hold
/// neither CREATE nor TEMPORARY on the database nor CREATE on schema
/// `public` (their owner can take them from `PUBLIC`). PL/pgSQL, which
/// only its owner, a superuser, can take from `PUBLIC`, is left to
/// tenants with a warning.
async fn check_confined(conn: &mut PgConnection, role: &str) -> Result<(), SqlError> {
    let (elevated, database_rights, public_create, plpgsql): (bool, bool, bool, bool) =
        sqlx::query_as(
            "SELECT r.rolsuper OR r.rolreplication OR r.rolbypassrls OR r.rolcreatedb
                        OR r.rolcreaterole OR NOT r.rolcanlogin
                        OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid),
                    has_database_privilege(r.rolname, current_database(), 'CREATE')
                        OR has_database_privilege(r.rolname, current_database(), 'TEMPORARY'),
                    COALESCE((SELECT has_schema_privilege(r.rolname, n.oid, 'CREATE')
                              FROM pg_namespace n WHERE n.nspname = 'public'), false),
                    COALESCE((SELECT has_language_privilege(r.rolname, l.oid, 'USAGE')
                              FROM pg_language l WHERE l.lanname = 'plpgsql'), false)
             FROM pg_roles r WHERE r.rolname = $1",
        )
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_error)?;
    if elevated {
        return Err(SqlError::Denied(
            "the role holds more than a tenant may: an attribute besides LOGIN (only a superuser may take away SUPERUSER, REPLICATION and BYPASSRLS) or the membership of another role, which a tenant could SET ROLE to; revoke it".into(),
        ));
    }
    if database_rights {
        return Err(SqlError::Denied(
            "tenants would keep CREATE or TEMPORARY on the database: the login could not take them from PUBLIC".into(),
        ));
    }
    if public_create {
        return Err(SqlError::Denied(
            "tenants would keep CREATE on schema `public`: the login could not take it from PUBLIC"
                .into(),
        ));
    }
    if plpgsql {
        tracing::warn!(
            role,
            "tenants of this database can use PL/pgSQL (`DO` blocks, functions in their own schema): only a superuser can take it from PUBLIC"
        );
    }
    Ok(())
}

/// Runs one statement of the provisioning.
async fn execute(conn: &mut PgConnection, statement: &str) -> Result<(), SqlError> {
    sqlx::query(statement)
        .execute(conn)
        .await
        .map(drop)
        .map_err(map_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_bounded_and_distinct() {
        let a = tenant_role("shop", "main");
        assert!(a.starts_with("berth_shop_main_"), "{a}");
        assert_ne!(tenant_role("a_b", "c"), tenant_role("a", "b_c"));
        assert_ne!(tenant_role("Shop", "main"), tenant_role("shop", "main"));
        let long = tenant_role(&"x".repeat(64), &"y".repeat(64));
        assert!(long.len() <= 63, "{}", long.len());
        let key = Secret::new("k");
        assert_eq!(tenant_password(&key, &a), tenant_password(&key, &a));
        assert_ne!(tenant_password(&key, &a), tenant_password(&key, "other"));
    }

    #[test]
    fn scram_verifier_matches_an_independent_implementation() {
        // Computed with Python's hashlib.pbkdf2_hmac and hmac (RFC 5802).
        let verifier = scram_verifier(&Secret::new("pencil"), b"berth-salt-16byt", 4096);
        assert_eq!(verifier, EXPECTED_PENCIL);
        assert!(!verifier.contains("pencil"));
    }

    const EXPECTED_PENCIL: &str = "SCRAM-SHA-256$4096:YmVydGgtc2FsdC0xNmJ5dA==$sg0Zy/TsYThamIepVE/cJcoCXGlY3GxRFUYeRmksjpg=:mQPbJ/elvNralVEkxiGgwU/PhmqKGtJVzMU1FxOrTxI=";
}
