//! Blob port test guest (`wasi:cli/run` command).
//!
//! Mode (argv[1..]): `conformance <container>`, run against a fresh container;
//! `object-cap <container>`, under a manifest's `blob_max_object_mb = 1`;
//! `store-room <container>`, under a host's `[app_limits] store_mb = 1`.
//! Any failed assertion panics, which traps: the host sees a test failure.

mod chunked;

use berth_bindings::blob::{Container, Error};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["conformance", container] => conformance(container),
        ["object-cap", container] => object_cap(container),
        ["store-room", container] => store_room(container),
        other => {
            panic!("usage: blob_guest conformance|object-cap|store-room <container>; got {other:?}")
        }
    }
}

pub fn step(name: &str) {
    println!("blob: {name} ok");
}

fn conformance(name: &str) {
    let container = Container::open(name).expect("open granted container");
    step("open");
    basics(&container);
    listing(&container);
    invalid_keys(&container);
    path_prefix_keys(&container);
    chunked::write_and_read(&container);
    writer_cap(&container);
    reader_cap(&container);
    chunked::dropped_writer(&container);
    url(&container);
    oversized_put(&container);
    not_granted();
    println!("blob: conformance passed");
}

fn basics(c: &Container) {
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let info = c.put("a/b.bin", &data).expect("put");
    assert_eq!(info.key, "a/b.bin");
    assert_eq!(info.size, 1000);
    assert_eq!(c.get("a/b.bin").expect("get"), data);
    step("put/get round trip");

    let info = c.stat("a/b.bin").expect("stat");
    assert_eq!(info.size, 1000, "stat size");
    assert!(info.modified_ms > 0, "stat modified-ms");
    assert!(c.exists("a/b.bin").expect("exists"));
    step("stat and exists");

    assert!(
        c.delete("a/b.bin").expect("delete"),
        "first delete finds the object"
    );
    assert!(
        !c.delete("a/b.bin").expect("delete again"),
        "second delete finds nothing"
    );
    assert!(!c.exists("a/b.bin").expect("exists after delete"));
    step("delete");

    match c.get("a/b.bin") {
        Err(Error::NotFound) => step("get missing is not-found"),
        Ok(bytes) => panic!("get missing: expected NotFound, got {} bytes", bytes.len()),
        Err(e) => panic!("get missing: expected NotFound, got {e:?}"),
    }
}

fn listing(c: &Container) {
    let expected: Vec<String> = (0..15).map(|i| format!("dir/o{i:02}")).collect();
    for key in expected.iter().rev() {
        c.put(key, key.as_bytes()).expect("put dir object");
    }
    c.put("other", b"other").expect("put other");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.list("dir/", cursor.as_deref(), 4).expect("list");
        assert!(
            page.objects.len() <= 4,
            "page of {} exceeds the limit",
            page.objects.len()
        );
        pages += 1;
        assert!(pages <= 15, "listing does not terminate");
        for obj in page.objects {
            // Keys come back exactly as the guest named them: no tenant or
            // container prefix leaks through.
            assert_eq!(obj.size, obj.key.len() as u64, "size of {}", obj.key);
            seen.push(obj.key);
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected, "all dir/ objects, ascending, nothing else");
    step(&format!("list in {pages} pages"));
    // A cursor is a key a page ended with: one no key could be is refused
    // alike on every backend (S3 would echo it into its answer unescaped).
    for bad in ["dir/o0\u{FFFF}", "dir/\0"] {
        match c.list("dir/", Some(bad), 4) {
            Err(Error::InvalidKey(m)) => assert!(m.contains("cursor"), "{m}"),
            other => panic!("list after {bad:?}: expected InvalidKey, got {other:?}"),
        }
    }
    // One of a key another tool stored (S3 lists it) lists on after it.
    let page = c
        .list("dir/", Some("dir//o05"), 4)
        .expect("list after an odd key");
    assert_eq!(
        page.objects.first().map(|o| o.key.as_str()),
        Some("dir/o00")
    );
    step("a cursor no key could be is invalid-key");
}

/// Keys that are path prefixes of each other behave as on S3, where keys
/// are flat names: a deleted `a/b` does not block `a`, and `a/b` under the
/// object `a` is simply missing.
fn path_prefix_keys(c: &Container) {
    c.put("pk/a/b", b"inner").expect("put pk/a/b");
    assert!(c.delete("pk/a/b").expect("delete pk/a/b"));
    c.put("pk/a", b"outer")
        .expect("put pk/a after its extension was deleted");
    assert!(!c.exists("pk/a/b").expect("exists below an object"));
    match c.get("pk/a/b") {
        Err(Error::NotFound) => {}
        other => panic!("get below an object: expected NotFound, got {other:?}"),
    }
    assert!(!c.delete("pk/a/b").expect("delete below an object"));
    assert!(c.delete("pk/a").expect("delete pk/a"));
    step("path-prefix keys behave as flat names");
}

/// An instance holds at most 16 open writers; finishing or dropping one
/// frees its place.
fn writer_cap(c: &Container) {
    let writers: Vec<_> = (0..16)
        .map(|i| {
            c.write(&format!("cap/{i}"))
                .expect("open writer under the cap")
        })
        .collect();
    match c.write("cap/16") {
        Err(Error::TooLarge(m)) => assert!(m.contains("16"), "{m}"),
        Ok(_) => panic!("17th open writer: expected TooLarge, got a writer"),
        Err(e) => panic!("17th open writer: expected TooLarge, got {e:?}"),
    }
    drop(writers);
    let writer = c
        .write("cap/again")
        .expect("a writer once the others are dropped");
    writer.write(b"x").expect("write");
    writer.finish().expect("finish");
    assert!(c.delete("cap/again").expect("delete cap/again"));
    step("open writers are capped at 16");
}

/// An instance holds at most 64 open readers (each a connection or a file
/// descriptor of the host's); dropping one frees its place.
fn reader_cap(c: &Container) {
    c.put("cap/read", b"shared").expect("put cap/read");
    let readers: Vec<_> = (0..64)
        .map(|_| c.read("cap/read").expect("open reader under the cap"))
        .collect();
    match c.read("cap/read") {
        Err(Error::TooLarge(m)) => assert!(m.contains("64"), "{m}"),
        Ok(_) => panic!("65th open reader: expected TooLarge, got a reader"),
        Err(e) => panic!("65th open reader: expected TooLarge, got {e:?}"),
    }
    drop(readers);
    let reader = c
        .read("cap/read")
        .expect("a reader once the others are dropped");
    assert_eq!(reader.read(100).expect("read"), b"shared");
    drop(reader);
    assert!(c.delete("cap/read").expect("delete cap/read"));
    step("open readers are capped at 64");
}

fn invalid_keys(c: &Container) {
    let long = "k".repeat(2000);
    let long_segment = format!("a/{}", "s".repeat(256));
    let bad = [
        long_segment.as_str(),
        "../escape",
        "/abs",
        "a\\b",
        "a/../../b",
        "nul\0byte",
        "non\u{FFFF}character",
        "",
        long.as_str(),
    ];
    for key in bad {
        let shown = &key[..key.len().min(40)];
        match c.put(key, b"x") {
            Err(Error::InvalidKey(_)) => {}
            other => panic!("put {shown:?}: expected InvalidKey, got {other:?}"),
        }
        match c.get(key) {
            Err(Error::InvalidKey(_)) => {}
            Ok(bytes) => panic!(
                "get {shown:?}: expected InvalidKey, got {} bytes",
                bytes.len()
            ),
            Err(e) => panic!("get {shown:?}: expected InvalidKey, got {e:?}"),
        }
    }
    step("invalid keys are invalid-key");
}

fn url(c: &Container) {
    let url = c.url("dir/o00", 60).expect("url");
    assert!(url.starts_with("http"), "url {url:?}");
    // For the test to fetch: it must give the object's bytes, `dir/o00`.
    println!("blob: url {url}");
    step("url");
}

/// `put` is for small objects: above the host's cap it refuses, and the
/// guest should use `write` instead.
fn oversized_put(c: &Container) {
    let data = vec![0x5au8; 17 * 1024 * 1024];
    match c.put("too/big", &data) {
        Err(Error::TooLarge(_)) => step("17 MiB put is too-large"),
        other => panic!("17 MiB put: expected TooLarge, got {other:?}"),
    }
    assert!(
        !c.exists("too/big").expect("exists too/big"),
        "refused put left an object"
    );
}

fn not_granted() {
    match Container::open("not-granted-container") {
        Err(Error::NotGranted(_)) => step("ungranted container is not-granted"),
        Err(e) => panic!("open not-granted-container: expected NotGranted, got {e:?}"),
        Ok(_) => panic!("open not-granted-container: expected NotGranted, got a container"),
    }
}

/// With `blob_max_object_mb = 1`, a writer takes 1 MiB in all: the chunk
/// that would pass it is refused and nothing of it written, and what was
/// written before is finished whole.
fn object_cap(name: &str) {
    let c = Container::open(name).expect("open granted container");
    let half = vec![7u8; 512 << 10];
    let writer = c.write("capped").expect("writer");
    writer.write(&half).expect("first half MiB");
    writer.write(&half).expect("second half MiB");
    match writer.write(&[1]) {
        Err(Error::TooLarge(m)) => assert!(m.contains("blob_max_object_mb"), "{m}"),
        other => panic!("a byte past 1 MiB: expected TooLarge, got {other:?}"),
    }
    let info = writer.finish().expect("finish what fits");
    assert_eq!(info.size, 1 << 20);
    assert_eq!(c.get("capped").expect("get").len(), 1 << 20);
    println!("blob: object cap holds");
}

/// Objects of 256 KiB fill a container of 1 MiB after three (each takes
/// 4 KiB more for its file); the fourth is `too-large`, naming the
/// setting; a delete makes room again.
fn store_room(name: &str) {
    let c = Container::open(name).expect("open granted container");
    let object = vec![9u8; 256 << 10];
    let mut kept = 0;
    let refusal = loop {
        match c.put(&format!("room/{kept}"), &object) {
            Ok(_) => kept += 1,
            Err(e) => break e,
        }
        assert!(kept < 64, "16 MiB kept under store_mb = 1");
    };
    match refusal {
        Error::TooLarge(m) => assert!(m.contains("store_mb"), "{m}"),
        other => panic!("past the room: expected TooLarge, got {other:?}"),
    }
    assert_eq!(kept, 3, "objects of 256 KiB kept within 1 MiB");
    assert!(c.delete("room/0").expect("delete"));
    c.put("room/again", &object)
        .expect("room again after a delete");
    println!("blob: store room holds {kept}");
}
