//! Config and logging port test guest (`wasi:cli/run` command).
//!
//! Mode (argv[1..]): `check <secret>`. Expects the manifest to grant exactly
//! `greeting` (= "hello") and `secret_token` (resolved by the host from the
//! environment, = `<secret>`).
//! Any failed assertion panics, which traps: the host sees a test failure.

use berth_bindings::config::{self, Error};
use berth_bindings::logging::{self, Level};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["check", secret] => check(secret),
        other => panic!("usage: config_guest check <secret>; got {other:?}"),
    }
}

fn step(name: &str) {
    println!("config: {name} ok");
}

fn check(secret: &str) {
    assert_eq!(
        config::get("greeting").expect("get greeting").as_deref(),
        Some("hello")
    );
    step("greeting");
    assert_eq!(
        config::get("secret_token").expect("get secret").as_deref(),
        Some(secret)
    );
    step("secret from the environment");

    match config::get("not_granted_key") {
        Err(Error::NotGranted(_)) => step("ungranted key is not-granted"),
        other => panic!("get not_granted_key: expected NotGranted, got {other:?}"),
    }

    let mut all = config::get_all().expect("get_all");
    all.sort();
    let expected = [
        ("greeting".to_owned(), "hello".to_owned()),
        ("secret_token".to_owned(), secret.to_owned()),
    ];
    assert_eq!(all, expected, "get_all returns exactly the granted keys");
    step("get_all");

    for (level, name) in [
        (Level::Trace, "trace"),
        (Level::Debug, "debug"),
        (Level::Info, "info"),
        (Level::Warn, "warn"),
        (Level::Error, "error"),
    ] {
        let fields = [
            ("level_name".to_owned(), name.to_owned()),
            ("guest".to_owned(), "config_guest".to_owned()),
        ];
        logging::log(level, &format!("config_guest {name} record"), &fields);
    }
    step("logged one record per level");
}
