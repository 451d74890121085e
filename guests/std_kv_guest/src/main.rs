//! # std_kv_guest: portability of the standard `wasi:keyvalue`
//!
//! Bindings come from the standard WIT alone (`wit/std/`), as a component
//! written for another host would have them. `std_kv_guest <bucket>
//! <denied-bucket>` runs the same script through `0.2.0-draft` and
//! `0.2.0-draft2` (keys prefixed `d1-` and `d2-`), printing one line per
//! step: `<version> <step> <result>`. `std_kv_guest <bucket> <denied>
//! limits` runs the host's bounds instead (see [`limits`]).

mod draft {
    wit_bindgen::generate!({
        path: "../../wit/std/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
    });
}

mod draft2 {
    wit_bindgen::generate!({
        path: "../../wit/std/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
    });
}

/// The `list-keys` cursor as the call takes it: `u64` in `draft`, a
/// borrowed string in `draft2`.
trait CursorArg {
    type Arg<'a>
    where
        Self: 'a;
    fn arg(&self) -> Self::Arg<'_>;
}

impl CursorArg for u64 {
    type Arg<'a> = u64;
    fn arg(&self) -> u64 {
        *self
    }
}

impl CursorArg for String {
    type Arg<'a> = &'a str;
    fn arg(&self) -> &str {
        self
    }
}

fn text(value: Option<Vec<u8>>) -> String {
    value.map_or("none".into(), |v| String::from_utf8_lossy(&v).into_owned())
}

macro_rules! script {
    ($version:ident, $name:literal, $p:literal, $bucket:expr, $denied:expr) => {{
        use $version::wasi::keyvalue::{atomics, batch, store};
        let say = |step: &str, result: String| println!("{} {step} {result}", $name);
        match store::open($denied) {
            Ok(_) => say("open-denied", "opened".into()),
            Err(e) => say("open-denied", format!("{e:?}")),
        }
        let b = store::open($bucket).expect("open the granted bucket");
        b.set(concat!($p, "a"), b"1").unwrap();
        say("get", text(b.get(concat!($p, "a")).unwrap()));
        say("exists", b.exists(concat!($p, "a")).unwrap().to_string());
        b.delete(concat!($p, "a")).unwrap();
        say(
            "exists-after-delete",
            b.exists(concat!($p, "a")).unwrap().to_string(),
        );
        say("get-after-delete", text(b.get(concat!($p, "a")).unwrap()));
        batch::set_many(
            &b,
            &[
                (concat!($p, "k1").to_string(), b"v1".to_vec()),
                (concat!($p, "k2").to_string(), b"v2".to_vec()),
            ],
        )
        .unwrap();
        let many = batch::get_many(
            &b,
            &[
                concat!($p, "k1").into(),
                concat!($p, "missing").into(),
                concat!($p, "k2").into(),
            ],
        )
        .unwrap();
        let many: Vec<String> = many
            .into_iter()
            .map(|kv| {
                kv.map_or("none".into(), |(k, v)| {
                    format!("{k}={}", String::from_utf8_lossy(&v))
                })
            })
            .collect();
        say("get-many", many.join(","));
        let mut keys = Vec::new();
        let mut page = b.list_keys(None).unwrap();
        loop {
            keys.extend(page.keys.drain(..).filter(|k| k.starts_with($p)));
            match page.cursor.take() {
                Some(next) => page = b.list_keys(Some(next.arg())).unwrap(),
                None => break,
            }
        }
        keys.sort();
        say("list-keys", keys.join(","));
        say(
            "increment",
            atomics::increment(&b, concat!($p, "n"), 5)
                .unwrap()
                .to_string(),
        );
        say(
            "increment",
            atomics::increment(&b, concat!($p, "n"), 5)
                .unwrap()
                .to_string(),
        );
        batch::delete_many(&b, &[concat!($p, "k1").into(), concat!($p, "k2").into()]).unwrap();
        say("after-delete-many", text(b.get(concat!($p, "k1")).unwrap()));
        b
    }};
}

/// Every key of a `draft` listing, page by page from `cursor`, and how
/// many calls it took.
fn draft_list(
    b: &draft::wasi::keyvalue::store::Bucket,
    mut cursor: Option<u64>,
) -> (Vec<String>, u32) {
    let (mut keys, mut calls) = (Vec::new(), 0);
    loop {
        let page = b.list_keys(cursor).unwrap();
        calls += 1;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return (keys, calls),
        }
    }
}

/// The host's bounds on the standard interface, in a bucket of its own
/// (empty, in memory) and a component with `memory_mb = 16`: open
/// compare-and-swap handles, `get-many`'s answer, and `draft` listings
/// by their counting cursor.
fn limits(bucket: &str) {
    let say = |step: &str, result: String| println!("limits {step} {result}");
    {
        use draft2::wasi::keyvalue::{atomics::Cas, store};
        let b = store::open(bucket).unwrap();
        let open: Vec<Cas> = (0..16).map(|_| Cas::new(&b, "cap").unwrap()).collect();
        match Cas::new(&b, "cap") {
            Ok(_) => say("cas-17th", "opened".into()),
            Err(e) => say("cas-17th", format!("{e:?}")),
        }
        drop(open);
        say(
            "cas-after-drop",
            format!("{:?}", Cas::new(&b, "cap").is_ok()),
        );
    }
    use draft::wasi::keyvalue::{batch, store};
    let b = store::open(bucket).unwrap();
    b.set("big", &vec![7u8; 1 << 20]).unwrap();
    let asked: Vec<String> = vec!["big".into(); 17];
    match batch::get_many(&b, &asked) {
        Ok(v) => say("get-many-17-mib", format!("{} values", v.len())),
        Err(e) => say("get-many-17-mib", format!("{e:?}")),
    }
    say(
        "get-many-8-mib",
        format!("{:?}", batch::get_many(&b, &asked[..8]).map(|v| v.len())),
    );
    b.delete("big").unwrap();
    // 17,000 keys: more than one `draft` call walks towards a cursor it
    // did not give (16 pages of 1,000).
    for chunk in (0..17_000).collect::<Vec<u32>>().chunks(1000) {
        let pairs: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|i| (format!("k{i:05}"), vec![1]))
            .collect();
        batch::set_many(&b, &pairs).unwrap();
    }
    let (keys, calls) = draft_list(&b, None);
    let sorted = keys.windows(2).all(|w| w[0] < w[1]);
    say(
        "draft-list",
        format!("{} keys in {calls} calls, sorted {sorted}", keys.len()),
    );
    let (keys, calls) = draft_list(&b, Some(16_500));
    say(
        "draft-list-from-16500",
        format!(
            "{} keys in {calls} calls, first {:?}",
            keys.len(),
            keys.first()
        ),
    );
    let (keys, calls) = draft_list(&b, Some(u64::MAX));
    say(
        "draft-list-from-max",
        format!("{} keys in {calls} calls", keys.len()),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (bucket, denied) = (&args[1], &args[2]);
    if args.get(3).is_some_and(|a| a == "limits") {
        return limits(bucket);
    }
    script!(draft, "0.2.0-draft", "d1-", bucket, denied);
    let b = script!(draft2, "0.2.0-draft2", "d2-", bucket, denied);
    // Compare-and-swap (draft2 only).
    use draft2::wasi::keyvalue::atomics::{self, Cas, CasError};
    let say = |step: &str, result: String| println!("0.2.0-draft2 {step} {result}");
    let cas = Cas::new(&b, "d2-c").unwrap();
    say("cas-current", text(cas.current().unwrap()));
    say(
        "cas-swap",
        format!("{:?}", atomics::swap(cas, b"x").is_ok()),
    );
    let stale = Cas::new(&b, "d2-c").unwrap();
    say("cas-current", text(stale.current().unwrap()));
    b.set("d2-c", b"y").unwrap();
    drop(b); // the handle keeps its own hold on the bucket
    match atomics::swap(stale, b"lost") {
        Err(CasError::CasFailed(fresh)) => {
            say(
                "cas-stale",
                format!("failed, now {}", text(fresh.current().unwrap())),
            );
            say(
                "cas-retry",
                format!("{:?}", atomics::swap(fresh, b"z").is_ok()),
            );
        }
        other => say("cas-stale", format!("{:?}", other.is_ok())),
    }
    let b = draft2::wasi::keyvalue::store::open(bucket).unwrap();
    say("cas-final", text(b.get("d2-c").unwrap()));
}
