//! Role-per-app tenancy on Postgres, beyond `sql_tenants_isolated_postgres`
//! (in `services.rs`): what `berth check` tries of the provisioning, and
//! an admin login that is not a superuser.

use berth_tests::{dry_run, host_config, service, unique};
use sqlx::Connection as _;

use crate::services::{sql_app, try_sql};

/// `berth check` tries a `role-per-app` database's provisioning as a load
/// does, in a transaction it rolls back: an admin login without
/// `CREATEROLE` fails the check as it fails the load, naming the role and
/// the rights it needs; a login with them passes the check, which leaves no
/// role or schema behind and, for a role already there, its password as it
/// was (a check with another key must not lock running hosts out).
#[tokio::test(flavor = "multi_thread")]
async fn sql_check_tries_the_tenant_provisioning_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let name = unique("tenchk_");
    let role = berth::ports::sql::pg_tenancy::tenant_role(&name, "main");
    let weak = unique("berth_weak_");
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!(
        "CREATE ROLE \"{weak}\" LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut weak_url = reqwest::Url::parse(&url).unwrap();
    weak_url.set_username(&weak).unwrap();
    let t = sql_app(&name);
    let config = |url: &str, key: &str| {
        let path = t.dir.path().join(format!("tenant-key-{key}"));
        std::fs::write(&path, key).unwrap();
        host_config(
            &t,
            &format!(
                "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\ntenancy = \"role-per-app\"\ntenant_password_key = \"${{file:{}}}\"\nmax_connections = 1\n",
                path.display()
            ),
        )
    };
    let checking = |url: &str, key: &str| dry_run(&t, config(url, key));
    let key = "check-test-tenant-key-0123456789";

    let checked = t
        .load_with(&checking(weak_url.as_str(), key))
        .await
        .err()
        .expect("the check fails without CREATEROLE");
    let loaded = t
        .load_with(&config(weak_url.as_str(), key))
        .await
        .err()
        .expect("the load fails without CREATEROLE");
    for failure in [format!("{checked:#}"), format!("{loaded:#}")] {
        assert!(failure.contains("sql.main"), "{failure}");
        assert!(failure.contains(&role), "{failure}");
        assert!(
            failure.contains("permission denied to create role"),
            "{failure}"
        );
        assert!(failure.contains("CREATEROLE"), "{failure}");
        assert!(!failure.contains("cannot connect"), "{failure}");
    }

    let checked = t.load_with(&checking(&url, key)).await.unwrap();
    drop(checked);
    assert_eq!(
        role_state(&mut admin, &role).await,
        (None, false),
        "left behind"
    );

    let loaded = t.load_with(&config(&url, key)).await.unwrap();
    let (password, schema) = role_state(&mut admin, &role).await;
    assert!(password.is_some() && schema, "the load provisions");
    let other_key = "another-tenant-key-abcdefghijklmn";
    drop(t.load_with(&checking(&url, other_key)).await.unwrap());
    assert_eq!(role_state(&mut admin, &role).await, (password, true));
    // The app loaded before the check still works as its role.
    assert_eq!(
        try_sql(&loaded, "SELECT 1 WHERE current_user = current_schema()").await,
        "ok 1"
    );

    drop(loaded);
    for statement in [
        format!("DROP SCHEMA IF EXISTS \"{role}\" CASCADE"),
        format!("DROP ROLE IF EXISTS \"{role}\""),
        format!("DROP ROLE IF EXISTS \"{weak}\""),
    ] {
        sqlx::query(&statement).execute(&mut admin).await.unwrap();
    }
}

/// A role's stored password (its SCRAM verifier) and whether its schema
/// exists.
async fn role_state(admin: &mut sqlx::PgConnection, role: &str) -> (Option<String>, bool) {
    sqlx::query_as(
        "SELECT (SELECT rolpassword FROM pg_authid WHERE rolname = $1), \
         EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
    )
    .bind(role)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// An admin login with CREATEROLE that owns the tenants' database, not a
/// superuser (as on managed Postgres), provisions tenants: it cannot name
/// SUPERUSER in an `ALTER ROLE` nor create a schema for a role it is not a
/// member of, so it leaves the one out and joins the role for as long as
/// that takes. The tenant is as confined as with a superuser, but for
/// PL/pgSQL, which only a superuser can take from `PUBLIC`. Checks and
/// loads pass before and after the role exists; a role given more since
/// is refused.
#[tokio::test(flavor = "multi_thread")]
async fn sql_tenants_with_a_createrole_admin_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let name = unique("tenadm_");
    let role = berth::ports::sql::pg_tenancy::tenant_role(&name, "main");
    let (admin_role, database) = (unique("berth_adm_"), unique("berth_tdb_"));
    let mut superuser = sqlx::PgConnection::connect(&url).await.unwrap();
    for statement in [
        format!("CREATE ROLE \"{admin_role}\" LOGIN CREATEROLE NOSUPERUSER"),
        format!("CREATE DATABASE \"{database}\" OWNER \"{admin_role}\""),
    ] {
        sqlx::query(&statement)
            .execute(&mut superuser)
            .await
            .unwrap();
    }
    let mut admin_url = reqwest::Url::parse(&url).unwrap();
    admin_url.set_username(&admin_role).unwrap();
    admin_url.set_path(&database);
    let t = sql_app(&name);
    let key = t.dir.path().join("tenant-key");
    std::fs::write(&key, "createrole-admin-tenant-key").unwrap();
    let config = || {
        host_config(
            &t,
            &format!(
                "[sql.main]\ntype = \"postgres\"\nurl = {:?}\ntenancy = \"role-per-app\"\ntenant_password_key = \"${{file:{}}}\"\nmax_connections = 2\n",
                admin_url.as_str(),
                key.display()
            ),
        )
    };
    let checking = || dry_run(&t, config());
    drop(t.load_with(&checking()).await.unwrap());
    drop(t.load_with(&config()).await.unwrap());
    drop(t.load_with(&checking()).await.unwrap());
    let app = t.load_with(&config()).await.unwrap();
    // The admin joined the role only to create its schema.
    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, $2, 'MEMBER')")
        .bind(&admin_role)
        .bind(&role)
        .fetch_one(&mut superuser)
        .await
        .unwrap();
    assert!(!member, "the admin keeps the tenant's rights");

    let whoami = format!("SELECT 1 WHERE current_user = '{role}' AND current_schema() = '{role}'");
    assert_eq!(try_sql(&app, &whoami).await, "ok 1");
    assert_eq!(try_sql(&app, "CREATE TABLE mine (v text)").await, "ok 0");
    for refused in [
        "CREATE TEMP TABLE scratch (v int)",
        "CREATE SCHEMA elsewhere",
        "CREATE TABLE public.planted (v int)",
        "SET ROLE pg_read_server_files",
    ] {
        let outcome = try_sql(&app, refused).await;
        assert!(
            outcome.starts_with("error Error::Denied("),
            "{refused}: {outcome}"
        );
    }
    let attributes: (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = $1",
    )
    .bind(&role)
    .fetch_one(&mut superuser)
    .await
    .unwrap();
    assert_eq!(attributes, (false, false, false, false));
    // Only a superuser can take PL/pgSQL from PUBLIC (the host warns).
    assert_eq!(try_sql(&app, "DO $$ BEGIN PERFORM 1; END $$").await, "ok 0");

    // A role changed since (given another role's membership, which it
    // could SET ROLE to) is refused at the next load, and by a check.
    let grant = format!("GRANT pg_read_server_files TO \"{role}\"");
    sqlx::query(&grant).execute(&mut superuser).await.unwrap();
    for config in [config(), checking()] {
        let refused = format!("{:#}", t.load_with(&config).await.err().expect("refused"));
        assert!(refused.contains("membership of another role"), "{refused}");
    }

    drop(app);
    for statement in [
        format!("DROP DATABASE \"{database}\" WITH (FORCE)"),
        format!("DROP ROLE \"{role}\""),
        format!("DROP ROLE \"{admin_role}\""),
    ] {
        sqlx::query(&statement)
            .execute(&mut superuser)
            .await
            .unwrap();
    }
}
