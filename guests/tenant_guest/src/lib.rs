//! # tenant_guest: one tenant of the hostile-tenant suite
//!
//! Served by `berth serve` as two apps at once, a victim and an attacker,
//! each with its own SQL database `main`, key-value bucket `cache`, blob
//! container `files` and messaging. The victim seeds and checks its data;
//! the attacker runs one attack per route. Every attack route answers 200
//! with one line per attempt (`<attempt>: <outcome>`) unless the attack is
//! meant to end the instance (a limit or a trap).
//!
//! | Path | Behaviour |
//! |---|---|
//! | `/seed?v=V` | creates `notes` and `trap_probe`, stores `V` in SQL, kv and blob |
//! | `/check?v=V` | 200 `intact` if SQL, kv and blob hold exactly `V`, no `trap_probe` row and no `partial` object; else 500 naming what differs |
//! | `/loop`, `/memory`, `/recursion`, `/host-call-loop` | spin, allocate, recurse, call `config.get` forever |
//! | `/handles` | opens the bucket a million times, keeping every handle |
//! | `/big-list` | passes a 1 GiB `list<u8>` to `writer.write` that its memory does not hold |
//! | `/trap-holding` | inserts into `trap_probe` in a transaction and writes half an object `partial`, then marks key `trap-holding` in `cache` and traps |
//! | `/trap-reached` | the value of key `trap-holding` in `cache` (`reached`), or `not reached` |
//! | `/publish?payload=P` | publishes `P` to topic `jobs` |
//! | `/kv-set?bytes=N` | sets a value of `N` bytes in `cache`: `ok`, or the error |
//! | `/pg-hold` | holds a Postgres connection for 1.2 s: `ok`, or the error |
//! | `/received` | the `count` of bucket `received` (kept by the app's `messaging_handler`) |
//! | `/traversal` | blob keys that try to leave the container |
//! | `/escapes[?dialect=postgres&other=S]` | SQL escapes: SQLite's `ATTACH`, `load_extension`, `VACUUM INTO`; or, on Postgres, reading schema `S`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `pg_read_file`, `COPY … TO PROGRAM`, `CREATE EXTENSION`, `DO`, writing `public`, `ALTER ROLE` |
//! | `/names` | names that are not its own on every port |
//! | `/email` | header injection and ungranted senders |
//! | `/config` | every config value it can read (`get-all`, and `token`) |
//! | `/forge` | writes lines posing as the host's log to stderr and stdout, and through the logging port |

use std::io::Write as _;

use berth_bindings::{blob, config, email, kv, logging, messaging, sql};
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct TenantGuest;

impl wasip2::exports::http::incoming_handler::Guest for TenantGuest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        // Under `berth serve` the path keeps the app's prefix: route on the
        // last segment.
        let route = path.rsplit('/').next().unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
                .to_owned()
        };
        let (status, body) = match route {
            "seed" => (200, seed(&param("v"))),
            "check" => check(&param("v")),
            "loop" => spin(),
            "memory" => hog_memory(),
            "recursion" => (200, format!("recursion returned {}", recurse(0))),
            "host-call-loop" => host_call_loop(),
            "handles" => (200, hoard_handles()),
            "big-list" => (200, big_list()),
            "trap-holding" => trap_holding(),
            "trap-reached" => (200, trap_reached()),
            "publish" => (200, publish(&param("payload"))),
            "received" => (200, received()),
            "pg-hold" => (200, pg_hold()),
            "kv-set" => (200, kv_set(param("bytes").parse().unwrap_or(0))),
            "traversal" => (200, traversal()),
            "escapes" => (200, escapes(&param("dialect"), &param("other"))),
            "names" => (200, names()),
            "email" => (200, email_attacks()),
            "config" => (200, read_config()),
            "forge" => (200, forge()),
            _ => (404, "not found".to_owned()),
        };
        send(out, status, body.as_bytes());
    }
}

wasip2::http::proxy::export!(TenantGuest);

fn send(out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response
        .set_status_code(status)
        .expect("status code is valid");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("body stream is taken once");
    if stream.write_all(body).is_ok() {
        let _ = stream.blocking_flush();
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

fn db() -> sql::Connection {
    sql::Connection::open("main").expect("open granted db")
}

fn seed(v: &str) -> String {
    let db = db();
    db.execute("CREATE TABLE IF NOT EXISTS notes (v TEXT)", &[])
        .expect("create notes");
    db.execute("CREATE TABLE IF NOT EXISTS trap_probe (v TEXT)", &[])
        .expect("create trap_probe");
    db.execute("DELETE FROM notes", &[]).expect("clear notes");
    db.execute(
        "INSERT INTO notes (v) VALUES (?)",
        &[sql::Value::Text(v.into())],
    )
    .expect("insert note");
    kv::Bucket::open("cache")
        .expect("open granted bucket")
        .set("note", v.as_bytes(), None)
        .expect("set note");
    blob::Container::open("files")
        .expect("open granted container")
        .put("note", v.as_bytes())
        .expect("put note");
    "seeded".to_owned()
}

fn check(v: &str) -> (u16, String) {
    let mut wrong = Vec::new();
    let rows = db()
        .query("SELECT v FROM notes", &[])
        .expect("read notes")
        .rows;
    let one_row_v = matches!(rows.as_slice(), [row] if matches!(row.as_slice(), [sql::Value::Text(t)] if t == v));
    if !one_row_v {
        wrong.push(format!("sql notes {rows:?}"));
    }
    let probes = db()
        .query("SELECT v FROM trap_probe", &[])
        .expect("read trap_probe")
        .rows;
    if !probes.is_empty() {
        wrong.push(format!("trap_probe {probes:?}"));
    }
    let note = kv::Bucket::open("cache").and_then(|b| b.get("note"));
    if !matches!(&note, Ok(Some(n)) if n == v.as_bytes()) {
        wrong.push(format!("kv note {note:?}"));
    }
    let files = blob::Container::open("files").expect("open granted container");
    let object = files.get("note");
    if !matches!(&object, Ok(d) if d == v.as_bytes()) {
        wrong.push(format!("blob note {object:?}"));
    }
    if !matches!(files.exists("partial"), Ok(false)) {
        wrong.push("blob partial exists".to_owned());
    }
    match wrong.is_empty() {
        true => (200, "intact".to_owned()),
        false => (500, wrong.join("; ")),
    }
}

fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn hog_memory() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(std::hint::black_box(vec![0x5Au8; 1 << 20]));
    }
}

/// Non-tail recursion with a live buffer in every frame.
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth as u8; 256]);
    recurse(depth + 1) + u64::from(frame[(depth % 256) as usize])
}

fn host_call_loop() -> ! {
    loop {
        std::hint::black_box(config::get("greeting").ok());
    }
}

fn hoard_handles() -> String {
    let mut kept = Vec::new();
    for i in 0..1_000_000 {
        match kv::Bucket::open("cache") {
            Ok(b) => kept.push(b),
            Err(e) => return format!("open number {i}: {e:?}"),
        }
    }
    format!("holding {} handles", kept.len())
}

#[link(wasm_import_module = "berth:infra/blob@0.1.0")]
extern "C" {
    /// `[method]writer.write` as the canonical ABI lowers it: the writer
    /// handle, the list's address and length, and the result area.
    #[link_name = "[method]writer.write"]
    fn raw_writer_write(writer: i32, data: *const u8, len: usize, result: *mut u8);
}

/// Claims a 1 GiB list at an address whose memory holds 4 KiB: the host
/// must refuse to read past the guest's memory (a trap), never allocate it.
fn big_list() -> String {
    let files = blob::Container::open("files").expect("open granted container");
    let writer = files.write("big").expect("open a writer");
    let small = [7u8; 4096];
    let mut result = [0u32; 8];
    // SAFETY: deliberately not: the length lies. The host checks it against
    // the guest's memory before reading, so nothing outside it is touched.
    unsafe {
        raw_writer_write(
            writer.handle() as i32,
            small.as_ptr(),
            1 << 30,
            result.as_mut_ptr().cast(),
        )
    };
    format!("a 1 GiB list was accepted?! {result:?}")
}

fn trap_holding() -> ! {
    let db = db();
    let tx = db.begin().expect("begin");
    tx.execute(
        "INSERT INTO trap_probe (v) VALUES (?)",
        &[sql::Value::Text("uncommitted".into())],
    )
    .expect("insert in tx");
    let files = blob::Container::open("files").expect("open granted container");
    let writer = files.write("partial").expect("open a writer");
    writer
        .write(&[1u8; 64 * 1024])
        .expect("write half an object");
    // Outside the transaction, so it stays: the test knows the trap came
    // here, with both held, not from a step above that failed.
    kv::Bucket::open("cache")
        .and_then(|b| b.set("trap-holding", b"reached", None))
        .expect("mark the trap reached");
    // Trap with the transaction and the writer still open.
    std::process::abort();
}

/// Whether `/trap-holding` reached its trap with everything held.
fn trap_reached() -> String {
    match kv::Bucket::open("cache").and_then(|b| b.get("trap-holding")) {
        Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
        Ok(None) => "not reached".to_owned(),
        Err(e) => case(&e),
    }
}

fn publish(payload: &str) -> String {
    match messaging::publish("jobs", payload.as_bytes(), &[]) {
        Ok(id) => format!("published {id}"),
        Err(e) => format!("publish: {e:?}"),
    }
}

fn kv_set(bytes: usize) -> String {
    let bucket = kv::Bucket::open("cache").expect("open granted bucket");
    match bucket.set("sized", &vec![b'x'; bytes], None) {
        Ok(()) => "ok".to_owned(),
        Err(e) => case(&e),
    }
}

fn pg_hold() -> String {
    match db().query("SELECT 1 FROM pg_sleep(1.2)", &[]) {
        Ok(_) => "ok".to_owned(),
        Err(e) => case(&e),
    }
}

fn received() -> String {
    let count = kv::Bucket::open("received").and_then(|b| b.get("count"));
    match count {
        Ok(Some(n)) => String::from_utf8_lossy(&n).into_owned(),
        Ok(None) => "0".to_owned(),
        Err(e) => case(&e),
    }
}

/// Blob keys that try to leave the container, in every spelling.
fn traversal() -> String {
    let files = blob::Container::open("files").expect("open granted container");
    let long = "k".repeat(4096);
    let keys = [
        "../note",
        "../../victim/blob/files/note",
        "a/../../note",
        "./note",
        "/etc/passwd",
        "a\\..\\note",
        "note\0",
        "a//note",
        long.as_str(),
        "",
    ];
    let mut lines = Vec::new();
    for key in keys {
        let shown: String = key.chars().take(40).collect();
        let outcome = match files.get(key) {
            Ok(data) => format!("read {} bytes", data.len()),
            Err(e) => case(&e),
        };
        lines.push(format!("get {shown:?}: {outcome}"));
        let outcome = match files.put(key, b"attacker") {
            Ok(_) => "written".to_owned(),
            Err(e) => case(&e),
        };
        lines.push(format!("put {shown:?}: {outcome}"));
    }
    match files.list("../", None, 100) {
        Ok(page) => lines.push(format!("list \"../\": {} objects", page.objects.len())),
        Err(e) => lines.push(format!("list \"../\": {}", case(&e))),
    }
    lines.join("\n")
}

/// SQL that tries to reach another tenant (schema `other` on Postgres)
/// or the host.
fn escapes(dialect: &str, other: &str) -> String {
    let statements: Vec<String> = match dialect {
        "postgres" => vec![
            format!("SELECT v FROM \"{other}\".notes"),
            format!("SET ROLE \"{other}\""),
            format!("SET SESSION AUTHORIZATION \"{other}\""),
            "SET ROLE postgres".to_owned(),
            "SELECT pg_read_file('/etc/hostname')".to_owned(),
            "COPY (SELECT 1) TO PROGRAM 'true'".to_owned(),
            "CREATE EXTENSION IF NOT EXISTS citext".to_owned(),
            "DO $$ BEGIN PERFORM 1; END $$".to_owned(),
            "CREATE TABLE public.planted (v int)".to_owned(),
            "ALTER ROLE CURRENT_USER SUPERUSER".to_owned(),
        ],
        _ => vec![
            "ATTACH DATABASE '../../victim/sql/main.db' AS other".to_owned(),
            "ATTACH DATABASE ':memory:' AS scratch".to_owned(),
            "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libc.so.6')".to_owned(),
            "VACUUM INTO '/tmp/berth-stolen.db'".to_owned(),
        ],
    };
    let db = db();
    statements
        .iter()
        .map(|s| {
            let outcome = match db.execute(s, &[]) {
                Ok(_) => "ok".to_owned(),
                Err(e) => case(&e),
            };
            format!("{s}: {outcome}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Logical names it was not granted, on every port.
fn names() -> String {
    let mut lines = Vec::new();
    let mut line = |what: &str, outcome: String| lines.push(format!("{what}: {outcome}"));
    line(
        "sql victim",
        sql::Connection::open("victim")
            .map(|_| "opened".into())
            .unwrap_or_else(|e| case(&e)),
    );
    line(
        "kv victim",
        kv::Bucket::open("victim")
            .map(|_| "opened".into())
            .unwrap_or_else(|e| case(&e)),
    );
    line(
        "blob victim",
        blob::Container::open("victim")
            .map(|_| "opened".into())
            .unwrap_or_else(|e| case(&e)),
    );
    for topic in [
        "victim.jobs",
        "_INBOX.steal",
        "$JS.API.STREAM.LIST",
        "*",
        ">",
        "jobs.>",
        "",
    ] {
        line(
            &format!("publish {topic:?}"),
            messaging::publish(topic, b"attacker", &[])
                .map(|_| "published".into())
                .unwrap_or_else(|e| case(&e)),
        );
    }
    line(
        "config token",
        config::get("token")
            .map(|v| format!("read {v:?}"))
            .unwrap_or_else(|e| case(&e)),
    );
    lines.join("\n")
}

fn email_attacks() -> String {
    let message = |from: &str, to: &str, subject: &str| email::Message {
        from: from.to_owned(),
        to: vec![to.to_owned()],
        cc: Vec::new(),
        bcc: Vec::new(),
        reply_to: None,
        subject: subject.to_owned(),
        text_body: "hello".to_owned(),
        html_body: None,
    };
    let attempts = [
        (
            "injected subject",
            message(
                "app@attacker.test",
                "a@example.com",
                "hi\r\nBcc: all@victim.test",
            ),
        ),
        (
            "injected recipient",
            message(
                "app@attacker.test",
                "a@example.com\r\nBcc: all@victim.test",
                "hi",
            ),
        ),
        (
            "victim's sender",
            message("app@victim.test", "a@example.com", "hi"),
        ),
        ("empty recipient", message("app@attacker.test", "", "hi")),
    ];
    attempts
        .into_iter()
        .map(|(what, m)| {
            let outcome = email::send(&m)
                .map(|id| format!("sent {id}"))
                .unwrap_or_else(|e| case(&e));
            format!("{what}: {outcome}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_config() -> String {
    let all = config::get_all()
        .map(|all| format!("{all:?}"))
        .unwrap_or_else(|e| case(&e));
    let token = config::get("token")
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|e| case(&e));
    format!("get-all: {all}\ntoken: {token}")
}

/// The case of an error and its message, as the guest received it.
fn case(e: &impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// Tries to write lines of the host's log of its own: after a line break,
/// after a carriage return and a terminal's erase-line sequence, in a
/// logging record's message and in its field names and values.
fn forge() -> String {
    let forged = "2026-12-07T00:00:00.000000Z  WARN berth::audit: refused app=\"victim\"";
    eprintln!("ok\n{forged} FORGED-STDERR");
    print!("ok\r\u{1b}[2K{forged} FORGED-STDOUT\n");
    let _ = std::io::stdout().flush();
    logging::log(
        logging::Level::Warn,
        &format!("ok\n{forged} FORGED-LOG"),
        &[(
            "x app=\"victim\"\n".to_owned(),
            format!("v\n{forged} FORGED-FIELD"),
        )],
    );
    "forged".to_owned()
}
