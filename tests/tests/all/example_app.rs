//! The example app of `guests/example`, end to end over real HTTP: on the
//! embedded defaults, and unchanged on Postgres, S3, Redis, NATS and SMTP by
//! switching only the host config (`guests/example/host-real.toml`).

use std::path::Path;
use std::time::Duration;

use berth_tests::{
    Server, TestApp, example_app, guests, host_config, serve, serve_with, service, unique,
};
use serde_json::{Value, json};
use sqlx::Connection as _;

/// What a client run of the API leaves for the backend-specific checks.
struct Visit {
    avatar: Vec<u8>,
    avatar_url: String,
}

/// Uses the API as a client would: creates a user with `email`, refuses a
/// duplicate and bad JSON, reads the user back, uploads an avatar and waits
/// for the worker to count the new user.
async fn visit(server: &Server, email: &str) -> Visit {
    let http = reqwest::Client::new();
    let base = &server.base;
    let created = http
        .post(format!("{base}/users"))
        .json(&json!({"name": "Ada", "email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["name"], "Ada");
    let id = user["id"].as_i64().expect("numeric id");

    let dup = http
        .post(format!("{base}/users"))
        .json(&json!({"name": "Ada 2", "email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        dup.status(),
        409,
        "duplicate email is a constraint violation"
    );
    let bad = http
        .post(format!("{base}/users"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let found: Value = http
        .get(format!("{base}/users/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["email"], email);
    let missing = http
        .get(format!("{base}/users/99999"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let avatar: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
    let uploaded = http
        .put(format!("{base}/users/{id}/avatar"))
        .body(avatar.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let avatar_url = uploaded.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let fetched = http.get(&avatar_url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    // Served as bytes to be saved, never as a page, by the file store and
    // S3 alike: the origin is every tenant's.
    for (header, value) in [
        ("content-type", "application/octet-stream"),
        ("content-disposition", "attachment"),
    ] {
        let got = fetched.headers().get(header).map(|v| v.to_str().unwrap());
        assert_eq!(got, Some(value), "{header} of {avatar_url}");
    }
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), avatar.as_slice());

    // The worker consumes `user.created` and bumps the counter.
    let mut stats = Value::Null;
    for _ in 0..200 {
        stats = http
            .get(format!("{base}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["users_created"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats["users_created"], 1, "{stats}");
    assert_eq!(stats["greeting"], "Welcome to Berth");
    Visit { avatar, avatar_url }
}

#[tokio::test(flavor = "multi_thread")]
async fn example_app_end_to_end_over_http() {
    let t = example_app();
    let server = serve(&t).await;
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let visit = visit(&server, "ada@example.com").await;

    // Embedded blob URLs are served and verified by this host, from the
    // origin every tenant shares: never as a page.
    assert!(visit.avatar_url.starts_with(&base), "{}", visit.avatar_url);
    let fetched = http.get(&visit.avatar_url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    for (header, value) in [
        ("content-type", "application/octet-stream"),
        ("content-disposition", "attachment"),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", "sandbox"),
    ] {
        assert_eq!(fetched.headers()[header], value, "{header}");
    }
    let tampered = visit.avatar_url.replace("avatar?", "avatar2?");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    let unsigned = format!("{base}/_berth/blob/users/avatars/x");
    assert_eq!(http.get(unsigned).send().await.unwrap().status(), 403);

    let mails: Vec<_> = std::fs::read_dir(t.state_dir().join("users/email"))
        .unwrap()
        .collect();
    assert_eq!(mails.len(), 1, "one welcome email");
    let mail = std::fs::read_to_string(mails[0].as_ref().unwrap().path()).unwrap();
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    server.stop().await;
}

/// Postgres, S3, Redis, NATS and SMTP at the test services' addresses.
struct RealServices {
    postgres: String,
    s3: String,
    redis: String,
    nats: String,
    maildir: String,
}

impl RealServices {
    fn from_env() -> Option<RealServices> {
        Some(RealServices {
            postgres: service("BERTH_TEST_POSTGRES_URL")?,
            s3: service("BERTH_TEST_S3_ENDPOINT")?,
            redis: service("BERTH_TEST_REDIS_URL")?,
            nats: service("BERTH_TEST_NATS_URL")?,
            maildir: service("BERTH_TEST_MAILDIR")?,
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn example_app_unchanged_on_real_backends() {
    let Some(real) = RealServices::from_env() else {
        return;
    };
    // The app and its data are made unique so runs never meet on the shared
    // servers; the components and the manifest's grants are untouched.
    let app = unique("users");
    let (schema, bucket, prefix) = (unique("users_"), unique("berth-ex-"), unique("ex") + ":");
    let t = TestApp::new(
        &std::fs::read_to_string(example_app().manifest)
            .unwrap()
            .replace("name = \"users\"", &format!("name = \"{app}\"")),
    );
    let mut pg = sqlx::PgConnection::connect(&real.postgres).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut pg)
        .await
        .unwrap();
    let s3 = berth_tests::s3_client(&real.s3);
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    // The documented host config, pointed at this test's schema, bucket and
    // prefix, with the S3 credentials in a file instead of the environment.
    let key_file = t.dir.path().join("aws-key");
    std::fs::write(&key_file, "testing").unwrap();
    let documented = Path::new(guests::REPO_ROOT).join("guests/example/host-real.toml");
    let text = std::fs::read_to_string(documented).unwrap();
    let key_ref = format!("${{file:{}}}", key_file.display());
    let text = [
        (
            "postgres://postgres@127.0.0.1:5432/test",
            real.postgres.as_str(),
        ),
        ("\"users_example\"", &format!("{schema:?}")),
        ("redis://127.0.0.1:6379", &real.redis),
        ("\"example:\"", &format!("{prefix:?}")),
        ("http://127.0.0.1:9000", &real.s3),
        ("\"berth-example\"", &format!("{bucket:?}")),
        ("${env:AWS_ACCESS_KEY_ID}", &key_ref),
        ("${env:AWS_SECRET_ACCESS_KEY}", &key_ref),
        ("nats://127.0.0.1:4222", &real.nats),
    ]
    .iter()
    .fold(text, |text, (from, to)| {
        assert!(text.contains(from), "host-real.toml no longer holds {from}");
        text.replace(from, to)
    });
    let server = serve_with(&t, host_config(&t, &text)).await;

    let email = format!("{}@example.org", unique("ada"));
    let visit = visit(&server, &email).await;
    server.stop().await;

    // Each effect landed in its real server.
    let users: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.users"))
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(users, 1, "one user row in Postgres");
    assert!(
        visit.avatar_url.starts_with(&real.s3),
        "a presigned S3 URL: {}",
        visit.avatar_url
    );
    let objects = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let sizes: Vec<i64> = objects.contents().iter().filter_map(|o| o.size()).collect();
    assert_eq!(
        sizes,
        [visit.avatar.len() as i64],
        "one avatar object in S3"
    );
    let keys = berth_tests::redis_keys(&real.redis, &prefix).await;
    assert!(
        keys.iter().any(|k| !k.contains('#')),
        "the counter lives in Redis: {keys:?}"
    );
    let mail = berth_tests::wait_for_mail(&real.maildir, &email).await;
    assert!(mail.contains(&format!("To: {email}")), "{mail}");

    // Cleanup.
    berth_tests::redis_delete_prefix(&real.redis, &prefix).await;
    berth_tests::delete_bucket(&s3, &bucket).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut pg)
        .await
        .unwrap();
    let nats = async_nats::connect(&real.nats).await.unwrap();
    async_nats::jetstream::new(nats)
        .delete_stream(format!("BERTH_{app}"))
        .await
        .unwrap();
}
