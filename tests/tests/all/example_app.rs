//! The example app of `guests/example`, end to end over real HTTP.

use std::time::Duration;

use berth_tests::{example_app, serve};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn example_app_end_to_end_over_http() {
    let t = example_app();
    let server = serve(&t).await;
    let http = reqwest::Client::new();
    let base = server.base.clone();

    let created = http
        .post(format!("{base}/users"))
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["name"], "Ada");
    let id = user["id"].as_i64().expect("numeric id");

    let dup = http
        .post(format!("{base}/users"))
        .json(&json!({"name": "Ada 2", "email": "ada@example.com"}))
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
    assert_eq!(found["email"], "ada@example.com");
    assert_eq!(
        http.get(format!("{base}/users/99999"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let avatar: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
    let uploaded = http
        .put(format!("{base}/users/{id}/avatar"))
        .body(avatar.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let url = uploaded.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with(&base), "{url} is served by this host");
    let fetched = http.get(&url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), avatar.as_slice());
    let tampered = url.replace("avatar?", "avatar2?");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);

    // The worker consumes `user.created` and bumps the counter.
    let mut stats = Value::Null;
    for _ in 0..100 {
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

    let mails: Vec<_> = std::fs::read_dir(t.state_dir().join("users/email"))
        .unwrap()
        .collect();
    assert_eq!(mails.len(), 1, "one welcome email");
    let mail = std::fs::read_to_string(mails[0].as_ref().unwrap().path()).unwrap();
    assert!(mail.contains("To: ada@example.com"), "{mail}");

    assert_eq!(
        http.get(format!("{base}/_berth/blob/users/avatars/x"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    server.stop().await;
}
