//! The `berth` binary, as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::{TestApp, example_app, guests, single_component_manifest};

/// `target/<profile>/berth`, built by cargo alongside the test binaries.
pub(crate) fn berth() -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin: PathBuf = dir.join("berth");
    assert!(
        bin.exists(),
        "{} is missing; run `cargo test --workspace`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    // Quiet, unless a run that investigates asks for more
    // (`BERTH_TEST_HOST_LOG=info,berth::ports=debug`).
    let log = std::env::var("BERTH_TEST_HOST_LOG").unwrap_or_else(|_| "warn".into());
    cmd.env("BERTH_LOG", log);
    cmd
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_check_accepts_the_example_and_names_bad_keys() {
    let t = example_app();
    let (code, stdout, stderr) = output(berth().arg("check").arg(&t.manifest));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("app `users` is valid"), "{stdout}");
    assert!(!t.state_dir().exists(), "check leaves no state behind");

    // A custom path is checked, not claimed: nothing is created there.
    let srv = tempfile::tempdir().unwrap();
    let host = srv.path().join("host.toml");
    let db = srv.path().join("{app}/counters.db");
    std::fs::write(
        &host,
        format!("[kv.counters]\ntype = \"sqlite\"\npath = {db:?}\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = output(
        berth()
            .arg("check")
            .arg(&t.manifest)
            .arg("--host-config")
            .arg(&host),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let left: Vec<_> = std::fs::read_dir(srv.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["host.toml"], "check claims and creates nothing");
    assert!(!t.state_dir().exists());

    let bad = TestApp::new(
        &std::fs::read_to_string(&t.manifest)
            .unwrap()
            .replace("[kv.counters]", "[kv.counters]\nttl = 5"),
    );
    let (code, _, stderr) = output(berth().arg("check").arg(&bad.manifest));
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("berth.toml") && stderr.contains("ttl"),
        "{stderr}"
    );

    // `--tenant` judges the manifest as `berth serve` would: a config value
    // read from the host environment is the operator's to set.
    let nosy = TestApp::new(
        &std::fs::read_to_string(&t.manifest)
            .unwrap()
            .replace("[config]", "[config]\nhome = \"${env:HOME}\""),
    );
    let (code, stdout, stderr) = output(berth().arg("check").arg(&nosy.manifest));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = output(berth().args(["check", "--tenant"]).arg(&nosy.manifest));
    assert_eq!(code, 65, "{stderr}");
    assert!(stderr.contains("config.home"), "{stderr}");
}

/// A log the host cannot write (stderr a file on a full disk, here
/// `/dev/full`) loses its lines but stops nothing: the command ends as it
/// would have, with its own exit code, rather than panicking at its first
/// log line or error message.
#[test]
fn cli_carries_on_when_its_log_cannot_be_written() {
    let t = example_app();
    let check = || {
        let mut cmd = berth();
        cmd.env("BERTH_LOG", "debug").arg("check").arg(&t.manifest);
        cmd
    };
    let (code, stdout, stderr) = output(&mut check());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("DEBUG"), "the check logs: {stderr}");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = check().stderr(full).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("app `users` is valid"), "{stdout}");

    // A refusal it cannot print still ends with the refusal's exit code.
    let bad = TestApp::new(
        &std::fs::read_to_string(&t.manifest)
            .unwrap()
            .replace("[kv.counters]", "[kv.counters]\nttl = 5"),
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = berth()
        .arg("check")
        .arg(&bad.manifest)
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn cli_run_standalone_component_is_refused_its_ungranted_import() {
    let (code, _, stderr) = output(
        berth()
            .arg("run")
            .arg(guests::SQL_GUEST)
            .args(["--state-dir", "/nonexistent-never-used"]),
    );
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("imports `berth:infra/sql@0.1.0`"),
        "{stderr}"
    );
}

#[test]
fn cli_run_exit_codes() {
    let t = TestApp::new(&format!(
        "{}[component.guest.limits]\ntimeout_ms = 200\n",
        single_component_manifest(
            "hostile",
            guests::HOSTILE_GUEST,
            "[sql.main]\n[config]\ngreeting = \"hi\"",
            "sql = [\"main\"]\nconfig = [\"greeting\"]"
        )
    ));
    let (code, out, err) = output(
        berth()
            .arg("run")
            .arg(&t.manifest)
            .args(["--", "not-granted-sql"]),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = output(berth().arg("run").arg(&t.manifest).args(["--", "loop"]));
    assert_eq!(code, 70, "{err}");
    assert!(err.contains("time limit exceeded"), "{err}");
}

#[test]
fn cli_up_serves_then_drains_on_sigterm() {
    let t = example_app();
    let mut child = berth()
        .args(["up", "--no-build", "--listen", "127.0.0.1:0"])
        .arg(&t.manifest)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("berth up prints its URL").unwrap();
    let url = first
        .split("is up at ")
        .nth(1)
        .expect("URL in the first line")
        .trim()
        .to_string();
    let body = reqwest::blocking_get(&format!("{url}/stats"));
    assert!(body.contains("Welcome to Berth"), "{body}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "berth up exits 0 after SIGTERM: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("berth up did not exit after SIGTERM");
}

/// A tiny blocking GET so this test needs no runtime.
mod reqwest {
    pub fn blocking_get(url: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}

/// Every `.wit` file under `dir`, by path relative to it.
fn wit_files(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    berth_tests::files_under(dir, |path| path.extension().is_some_and(|e| e == "wit"))
}

#[test]
fn cli_wit_writes_what_guest_authors_need_in_sync_with_the_repository() {
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = output(berth().arg("wit").arg("--out").arg(out.path()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let repo = std::path::Path::new(guests::REPO_ROOT).join("wit");
    let mut written = wit_files(out.path());
    let wasi: Vec<PathBuf> = written
        .keys()
        .filter(|p| p.starts_with("wasi"))
        .cloned()
        .collect();
    for path in &wasi {
        written.remove(path);
    }
    assert_eq!(
        written,
        wit_files(&repo),
        "`berth wit` and wit/ differ: update host/src/cli/wit.rs"
    );
    for package in ["cli.wit", "http.wit", "io.wit"] {
        assert!(
            wasi.contains(&PathBuf::from("wasi").join(package)),
            "{wasi:?}"
        );
    }
    // A world of an author's own resolves against what was written: the
    // berth:infra package and the WASI packages as its deps.
    let project = tempfile::tempdir().unwrap();
    let deps = project.path().join("deps");
    std::fs::create_dir_all(deps.join("berth-infra")).unwrap();
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wit") {
            std::fs::copy(
                &path,
                deps.join("berth-infra").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    for entry in std::fs::read_dir(out.path().join("wasi")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, deps.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        project.path().join("world.wit"),
        "package my:app;\nworld app {\n  include berth:infra/data@0.1.0;\n  include wasi:cli/command@0.2.12;\n}\n",
    )
    .unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let (app, _) = resolve.push_dir(project.path()).unwrap();
    assert!(resolve.select_world(&[app], Some("app")).is_ok());
    // What it wrote is usable as is: every package parses and resolves.
    let mut resolve = wit_parser::Resolve::default();
    let (infra, _) = resolve.push_dir(out.path()).unwrap();
    assert!(resolve.select_world(&[infra], Some("ports")).is_ok());
    for std_package in std::fs::read_dir(out.path().join("std")).unwrap() {
        let mut resolve = wit_parser::Resolve::default();
        let (pkg, _) = resolve.push_dir(std_package.unwrap().path()).unwrap();
        assert!(resolve.select_world(&[pkg], Some("imports")).is_ok());
    }
    let (code, printed, _) = output(berth().arg("wit"));
    assert_eq!(code, 0);
    assert!(printed.contains("// ==> kv.wit <=="), "{printed}");
    assert!(printed.contains("package wasi:keyvalue@0.2.0-draft2;"));
}

/// What a guest writes to stdout and stderr, and logs through the logging
/// port, reaches the host's log a line at a time, escaped, under
/// `berth::guest`: no tenant writes a line posing as the host's (an audit
/// event blaming another app, say), nor moves the terminal's cursor.
#[test]
fn guests_cannot_write_lines_of_the_hosts_log() {
    let dir = tempfile::tempdir().unwrap();
    // The grants the tenant guest's imports need.
    let grants = "kv = [\"cache\"]\npublish = [\"notes\"]\nemail_senders = [\"app@forger.test\"]\nconfig = [\"greeting\"]";
    berth_tests::write_tenant_app(dir.path(), "forger", grants, "", "");
    let mut child = berth()
        .arg("up")
        .arg(dir.path().join("forger/berth.toml"))
        .args(["--no-build", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("state"))
        .env("BERTH_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let base = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|line| Some(line.split_once(" is up at ")?.1.to_string()))
        .expect("berth up prints its address");
    let answer = {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        stream
            .write_all(b"GET /forge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("forged"),
        "{answer}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = log.join().unwrap();
    assert!(!log.contains('\u{1b}'), "a raw escape sequence: {log}");
    // Each forged text lies inside one line the host wrote for the guest;
    // a line break, a carriage return or an escape sequence in it is
    // written out.
    for (forged, escaped) in [
        ("FORGED-STDERR", ""),
        ("FORGED-STDOUT", "\\u{d}\\u{1b}[2K"),
        ("FORGED-LOG", "ok\\u{a}"),
        // A field's value is quoted inside the quoted list of fields.
        ("FORGED-FIELD", "v\\\\u{a}"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(forged)).collect();
        assert_eq!(lines.len(), 1, "{forged}: {log}");
        assert!(
            lines[0].contains("berth::guest") && lines[0].contains(escaped),
            "{forged} is the guest's, escaped: {}",
            lines[0]
        );
        // The host's `app` comes first, and the guest's `app="victim"`
        // only inside a quoted value, its quotes escaped.
        let first_app = lines[0].split_once("app=").map(|(_, rest)| rest);
        assert!(
            first_app.is_some_and(|rest| rest.starts_with("forger ")),
            "{forged}: {}",
            lines[0]
        );
        assert!(
            !lines[0].contains(" app=\"victim\""),
            "{forged}: {}",
            lines[0]
        );
    }
    assert!(
        log.contains("x_app__victim__="),
        "a field name poses as no other field: {log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-07T00:00:00")),
        "no line of the guest's own: {log}"
    );
}

/// `[engine] sqlite_memory_mb` bounds what the host's SQLite databases
/// allocate together: a statement making more (many columns of huge
/// values, each under the value bound) gets `unavailable`, where with
/// room SQLite makes them all and only the result cap refuses the row,
/// and the host goes on serving. Run as its own process, since SQLite's
/// heap limit is the process's.
#[test]
fn sqlite_memory_is_bounded_for_the_whole_host() {
    let t = TestApp::new(&single_component_manifest(
        "sqlmem",
        guests::SQL_GUEST,
        "[sql.main]",
        "sql = [\"main\"]",
    ));
    let host = t.dir.path().join("host.toml");
    let run = |memory_mb: u32, statement: &str| {
        std::fs::write(&host, format!("[engine]\nsqlite_memory_mb = {memory_mb}\n")).unwrap();
        let (code, out, err) = output(
            berth()
                .arg("run")
                .arg(&t.manifest)
                .arg("--host-config")
                .arg(&host)
                .args(["--", "try", "main", statement]),
        );
        assert_eq!(code, 0, "{out}{err}");
        (out.trim().to_owned(), err)
    };
    let limit_warning = "reached the host's memory limit ([engine] sqlite_memory_mb)";
    let wide = format!("SELECT {}", ["randomblob(30000000)"; 8].join(", "));
    let (roomy, log) = run(1024, &wide);
    assert!(roomy.starts_with("error Error::TooLarge("), "{roomy}");
    assert!(!log.contains(limit_warning), "{log}");
    let (bounded, log) = run(128, &wide);
    assert!(
        bounded.starts_with("error Error::Unavailable("),
        "{bounded}"
    );
    // The operator hears of it: every app's SQLite shares the limit.
    assert!(log.contains(limit_warning), "{log}");
    assert_eq!(run(128, "SELECT length(randomblob(30000000))").0, "ok 1");
}
