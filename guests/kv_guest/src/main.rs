//! Key-value port test guest (`wasi:cli/run` command).
//!
//! Modes (argv[1..]):
//! - `conformance <bucket>`, run against a fresh bucket.
//! - `fill <bucket>`: sets values of 64 KiB until the bucket refuses one,
//!   under a host's `[app_limits] store_mb = 1`.
//! Any failed assertion panics, which traps: the host sees a test failure.

use std::time::Duration;

use berth_bindings::kv::{Bucket, Error};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["conformance", bucket] => conformance(bucket),
        ["fill", bucket] => fill(bucket),
        other => panic!("usage: kv_guest conformance|fill <bucket>; got {other:?}"),
    }
}

fn step(name: &str) {
    println!("kv: {name} ok");
}

fn conformance(name: &str) {
    let bucket = Bucket::open(name).expect("open granted bucket");
    step("open");
    basics(&bucket);
    ttl(&bucket);
    increment(&bucket);
    compare_and_swap(&bucket);
    list_keys(&bucket);
    errors();
    empty_key(&bucket);
    println!("kv: conformance passed");
}

fn basics(bucket: &Bucket) {
    assert_eq!(bucket.get("missing").expect("get missing"), None);
    assert!(!bucket.exists("missing").expect("exists missing"));
    step("get missing is none");

    // Binary value with every byte, including ones that are not valid UTF-8.
    let value: Vec<u8> = (0..=255u8).rev().collect();
    bucket.set("bin", &value, None).expect("set");
    assert_eq!(bucket.get("bin").expect("get"), Some(value));
    assert!(bucket.exists("bin").expect("exists"));
    step("set/get round trip");

    assert!(
        bucket.delete("bin").expect("delete"),
        "first delete finds the key"
    );
    assert!(
        !bucket.delete("bin").expect("delete again"),
        "second delete finds nothing"
    );
    assert_eq!(bucket.get("bin").expect("get deleted"), None);
    step("delete");
}

fn ttl(bucket: &Bucket) {
    bucket
        .set("short-lived", b"soon gone", Some(200))
        .expect("set with ttl");
    assert!(bucket.exists("short-lived").expect("exists before expiry"));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(bucket.get("short-lived").expect("get after expiry"), None);
    assert!(!bucket.exists("short-lived").expect("exists after expiry"));
    step("ttl expiry");
}

fn increment(bucket: &Bucket) {
    assert_eq!(bucket.increment("counter", 5).expect("increment absent"), 5);
    assert_eq!(bucket.increment("counter", -2).expect("decrement"), 3);
    // Counters are stored as decimal text, readable with a plain get.
    assert_eq!(
        bucket.get("counter").expect("get counter"),
        Some(b"3".to_vec())
    );
    step("increment");

    bucket.set("not-a-number", b"abc", None).expect("set text");
    match bucket.increment("not-a-number", 1) {
        Err(Error::NotANumber(_)) => step("increment of text is not-a-number"),
        other => panic!("increment of 'abc': expected NotANumber, got {other:?}"),
    }
}

fn compare_and_swap(bucket: &Bucket) {
    let key = "cas";
    assert!(
        bucket
            .compare_and_swap(key, None, b"v1")
            .expect("cas absent"),
        "create if absent"
    );
    assert!(
        !bucket
            .compare_and_swap(key, None, b"v2")
            .expect("cas absent again"),
        "conflict"
    );
    assert!(
        bucket
            .compare_and_swap(key, Some(b"v1"), b"v2")
            .expect("cas matching"),
        "swap"
    );
    assert!(
        !bucket
            .compare_and_swap(key, Some(b"v1"), b"v3")
            .expect("cas stale"),
        "stale"
    );
    assert_eq!(bucket.get(key).expect("get cas"), Some(b"v2".to_vec()));
    step("compare-and-swap");
}

fn list_keys(bucket: &Bucket) {
    let expected: Vec<String> = (0..25).map(|i| format!("page/k{i:02}")).collect();
    // Insert out of order so the listing order is the store's, not ours.
    for key in expected.iter().rev() {
        bucket.set(key, key.as_bytes(), None).expect("set page key");
    }
    bucket.set("other/x", b"x", None).expect("set other key");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = bucket
            .list_keys("page/", cursor.as_deref(), 10)
            .expect("list keys");
        assert!(
            page.keys.len() <= 10,
            "page of {} keys exceeds the limit",
            page.keys.len()
        );
        pages += 1;
        assert!(pages <= 25, "listing does not terminate");
        seen.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected, "all page/ keys, ascending, nothing else");
    step(&format!("list-keys in {pages} pages"));
}

fn errors() {
    match Bucket::open("not-granted-bucket") {
        Err(Error::NotGranted(_)) => step("ungranted bucket is not-granted"),
        Err(e) => panic!("open not-granted-bucket: expected NotGranted, got {e:?}"),
        Ok(_) => panic!("open not-granted-bucket: expected NotGranted, got a bucket"),
    }
}

fn empty_key(bucket: &Bucket) {
    match bucket.set("", b"x", None) {
        Err(Error::InvalidInput(_)) => step("empty key is invalid-input"),
        other => panic!("set with empty key: expected InvalidInput, got {other:?}"),
    }
}

/// Values of 64 KiB fill a bucket whose store is bounded to 1 MiB after
/// a dozen or so (the file's pages, the index and the journal take the
/// rest); the one past it is `invalid-input`, naming the setting, and
/// leaves the bucket as it was; a delete makes room again.
fn fill(name: &str) {
    let bucket = Bucket::open(name).expect("open granted bucket");
    let value = vec![7u8; 64 << 10];
    let mut kept = 0;
    let refusal = loop {
        match bucket.set(&format!("fill/{kept}"), &value, None) {
            Ok(()) => kept += 1,
            Err(e) => break e,
        }
        assert!(kept < 256, "16 MiB kept under store_mb = 1");
    };
    match refusal {
        Error::InvalidInput(m) => assert!(m.contains("store_mb"), "{m}"),
        other => panic!("past the bound: expected InvalidInput, got {other:?}"),
    }
    assert!(kept >= 4, "only {kept} values of 64 KiB kept within 1 MiB");
    assert!(
        !bucket
            .exists(&format!("fill/{kept}"))
            .expect("exists refused key"),
        "the refused set left nothing"
    );
    for k in 0..kept {
        assert_eq!(
            bucket
                .get(&format!("fill/{k}"))
                .expect("get kept")
                .as_deref(),
            Some(&value[..]),
            "value {k} kept whole"
        );
    }
    assert!(bucket.delete("fill/0").expect("delete"));
    bucket
        .set("fill/again", &value, None)
        .expect("room again after a delete");
    println!("kv: bucket filled after {kept}");
}
