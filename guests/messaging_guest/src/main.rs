//! Messaging port test guest (`wasi:cli/run` command).
//!
//! Modes (argv[1..]):
//! - `publish <topic> <count>`: publishes `msg-<i>` with header `seq = i`.
//! - `publish-burst <topic> <count>`: publishes `count` messages at once and
//!   prints how many were taken and how many refused for the app's rate.
//! - `request <topic>`: request/reply, expects the handler to answer `pong:ping`.
//! - `not-granted <topic>`: publishing to `<topic>` must be refused.
//! - `reserved-header <topic>`: publishing with a `nats-` header (the
//!   broker's namespace) must be refused as invalid input, and a payload
//!   that fits only without its headers as too large.
//!
//! Any failed assertion panics, which traps: the host sees a test failure.

use berth_bindings::messaging::{self, Error};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["publish", topic, count] => {
            publish(topic, count.parse().expect("<count> must be an integer"));
        }
        ["publish-burst", topic, count] => {
            publish_burst(topic, count.parse().expect("<count> must be an integer"));
        }
        ["request", topic] => request(topic),
        ["not-granted", topic] => not_granted(topic),
        ["reserved-header", topic] => reserved_header(topic),
        other => panic!(
            "usage: messaging_guest publish|request|not-granted|reserved-header <topic> [count]; got {other:?}"
        ),
    }
}

fn publish_burst(topic: &str, count: u32) {
    let (mut taken, mut refused) = (0, 0);
    for i in 0..count {
        match messaging::publish(topic, format!("burst-{i}").as_bytes(), &[]) {
            Ok(_) => taken += 1,
            Err(Error::Unavailable(m)) if m.contains("rate") => refused += 1,
            Err(e) => panic!("publish burst-{i} on {topic}: {e:?}"),
        }
    }
    println!("taken {taken} refused {refused}");
}

fn publish(topic: &str, count: u32) {
    for i in 0..count {
        let payload = format!("msg-{i}");
        let headers = [("seq".to_owned(), i.to_string())];
        let id = messaging::publish(topic, payload.as_bytes(), &headers)
            .unwrap_or_else(|e| panic!("publish {payload} on {topic}: {e:?}"));
        assert!(!id.is_empty(), "publish returned an empty id");
        println!("messaging: published {payload} as {id}");
    }
    println!("messaging: published {count} messages ok");
}

fn request(topic: &str) {
    let reply = messaging::request(topic, b"ping", &[], 5000)
        .unwrap_or_else(|e| panic!("request on {topic}: {e:?}"));
    assert_eq!(
        reply.payload,
        b"pong:ping",
        "reply payload {:?}",
        String::from_utf8_lossy(&reply.payload)
    );
    println!("messaging: request/reply ok (reply id {})", reply.id);
}

fn not_granted(topic: &str) {
    match messaging::publish(topic, b"should not be sent", &[]) {
        Err(Error::NotGranted(_)) => println!("messaging: ungranted topic is not-granted ok"),
        other => panic!("publish on {topic}: expected NotGranted, got {other:?}"),
    }
}

fn reserved_header(topic: &str) {
    // The broker's namespace, and the host's own (dead-letter headers).
    for name in [
        "Nats-Rollup",
        "nats-msg-id",
        "NATS-Expected-Last-Sequence",
        "berth-error",
        "BERTH-Attempts",
    ] {
        let headers = [(name.to_owned(), "all".to_owned())];
        match messaging::publish(topic, b"should not be sent", &headers) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("reserved"), "{name}: {m}"),
            other => panic!("header {name}: expected InvalidInput, got {other:?}"),
        }
    }
    // Headers count against the message size limit (1 MiB by default).
    let payload = vec![b'x'; (1 << 20) - 4];
    let headers = [("h".to_owned(), "12345".to_owned())];
    match messaging::publish(topic, &payload, &headers) {
        Err(Error::TooLarge(m)) => assert!(m.contains("headers"), "{m}"),
        other => panic!("payload at the limit with headers: expected TooLarge, got {other:?}"),
    }
    println!("messaging: broker headers refused ok");
}
