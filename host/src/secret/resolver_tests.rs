//! Tests of [`SecretResolver`]: references, `.env` files, secret files.

use super::*;

#[tokio::test]
async fn env_file_and_dotenv_references() {
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join(".env");
    std::fs::write(
        &dotenv,
        "# comment\nBERTH_T_DOT=\"from-dotenv\"\nexport BERTH_T_X=1\n",
    )
    .unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "hunter2\n").unwrap();
    let r = SecretResolver::new(Some(&dotenv)).unwrap();
    let raw = format!("u:${{file:{}}}@h/${{env:BERTH_T_DOT}}", file.display());
    assert_eq!(
        r.resolve(&raw).await.unwrap().expose(),
        "u:hunter2@h/from-dotenv"
    );
    let err = r
        .resolve("${env:BERTH_T_SURELY_MISSING}")
        .await
        .unwrap_err();
    assert!(err.contains("BERTH_T_SURELY_MISSING"));
    assert!(r.resolve("${vault:x}").await.is_err());
    let err = r.resolve("${aws-sm:db}").await.unwrap_err();
    assert!(err.contains("[secrets.aws]"), "{err}");
    assert!(SecretResolver::is_reference("${env:A}"));
    assert!(!SecretResolver::is_reference("plain"));
}

#[tokio::test]
async fn errors_never_repeat_an_inline_value() {
    let r = SecretResolver::new(None).unwrap();
    // A generated password that happens to contain `${`.
    let err = r.resolve("Xk${9q").await.unwrap_err();
    assert!(err.contains("at byte 2"), "{err}");
    assert!(!err.contains("Xk") && !err.contains("9q"), "{err}");
    let err = r.resolve("pa${ss}wd").await.unwrap_err();
    assert!(err.contains("unknown reference at byte 2"), "{err}");
    assert!(!err.contains("ss}") && !err.contains("pa$"), "{err}");
    // A short alphanumeric scheme is named (a typo the operator can
    // fix); anything else after it is not.
    let err = r.resolve("${vault:kv/db-pass}").await.unwrap_err();
    assert!(err.contains("`vault`"), "{err}");
    assert!(!err.contains("db-pass"), "{err}");
    let err = r.resolve("${s3cr3t!:x}").await.unwrap_err();
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[tokio::test]
async fn double_dollar_escapes_a_reference() {
    let r = SecretResolver::new(None).unwrap();
    let literal = |raw: &'static str| {
        let r = r.clone();
        async move { r.resolve(raw).await.unwrap().expose().to_string() }
    };
    assert_eq!(literal("a$${b").await, "a${b");
    assert_eq!(literal("$${env:NOT_READ}").await, "${env:NOT_READ}");
    assert_eq!(literal("$$${x}").await, "$${x}");
    assert_eq!(literal("$ {x} $").await, "$ {x} $");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "v").unwrap();
    let raw = format!("$${{file:x}}-${{file:{}}}", file.display());
    assert_eq!(r.resolve(&raw).await.unwrap().expose(), "${file:x}-v");
    let relative = r.resolve("${file:secrets/pw}").await.unwrap_err();
    assert!(relative.contains("relative path"), "{relative}");
    // An escaped reference is literal text, so it does not make an
    // inline secret pass for a reference.
    assert!(!SecretResolver::is_reference("$${env:A}"));
    assert!(SecretResolver::is_reference("$${env:A}${env:B}"));
    assert!(!SecretResolver::is_reference("${vault:x}"));
    assert!(SecretResolver::is_only_references("${env:A}${file:/b}"));
    // A resolver prints the `.env` file's keys, never its values.
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, "DB_PASSWORD=dotenv-canary\n").unwrap();
    let with_env = SecretResolver::new(Some(&env_file)).unwrap();
    let printed = format!("{with_env:?}");
    assert!(
        printed.contains("DB_PASSWORD") && !printed.contains("dotenv-canary"),
        "{printed}"
    );
    for partly_inline in ["hunter2${env:EMPTY}", "${env:A} ", "$${env:A}${env:B}", ""] {
        assert!(
            !SecretResolver::is_only_references(partly_inline),
            "{partly_inline:?}"
        );
    }
    // Only regular files of at most 1 MiB are read as secrets.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; (MAX_SECRET_FILE_BYTES + 1) as usize]).unwrap();
    for (path, words) in [
        ("/dev/zero", "not a regular file"),
        (dir.path().to_str().unwrap(), "not a regular file"),
        (big.to_str().unwrap(), "larger than"),
    ] {
        let err = read_secret_file(path).unwrap_err();
        assert!(err.contains(words), "{path}: {err}");
    }
    let ok = dir.path().join("ok");
    std::fs::write(&ok, "s3cret\n").unwrap();
    assert_eq!(read_secret_file(ok.to_str().unwrap()).unwrap(), "s3cret");
}

#[tokio::test]
async fn aws_timeout_of_zero_is_refused() {
    let config = AwsSecretsConfig {
        region: "eu-west-1".into(),
        endpoint: None,
        access_key_id: "${env:A}".into(),
        secret_access_key: "${env:B}".into(),
        timeout_ms: Some(0),
    };
    let err = SecretResolver::new(None)
        .unwrap()
        .with_aws(&config)
        .await
        .unwrap_err();
    assert!(err.contains("secrets.aws.timeout_ms"), "{err}");
}

#[test]
fn dotenv_export_bom_and_comments() {
    let text = "\u{feff}A=1\nexport\tB=2\nexport  C = 3 \nexported=4\n\
                D=val # a comment\nE=p#ss\nF=\"quoted # kept\" # dropped\n\
                G='single'#dropped\nH= # only a comment\nI=\"a\"b\"\n\
                J=\"a\\\"b\\\\c\\nd\\qe\" # c\n  # indented comment\n\nK=\n\
                L='x\\ny'\nK=again\nM.N_1=ok\n";
    let map = parse_dotenv(text).unwrap();
    let get = |k: &str| map.get(k).map(String::as_str);
    assert_eq!(get("A"), Some("1"), "the BOM is not part of the first key");
    assert_eq!(get("B"), Some("2"));
    assert_eq!(get("C"), Some("3"));
    assert_eq!(get("exported"), Some("4"));
    assert_eq!(get("D"), Some("val"));
    assert_eq!(get("E"), Some("p#ss"));
    assert_eq!(get("F"), Some("quoted # kept"));
    assert_eq!(get("G"), Some("single"));
    assert_eq!(get("H"), Some(""));
    assert_eq!(get("I"), Some("a\"b"));
    assert_eq!(get("J"), Some("a\"b\\c\nd\\qe"), "double-quoted escapes");
    assert_eq!(
        get("L"),
        Some("x\\ny"),
        "single quotes take the text as it is"
    );
    assert_eq!(get("K"), Some("again"), "the last value of a key counts");
    assert_eq!(get("M.N_1"), Some("ok"));
    assert_eq!(map.len(), 14);
    assert_eq!(parse_dotenv("A=1\nsecret-without-equals\n"), Err(2));
    assert_eq!(parse_dotenv("=x\n"), Err(1));
    // An unclosed quote, and keys that are not names.
    assert_eq!(parse_dotenv("A=1\nPW=\"abc\n"), Err(2));
    assert_eq!(parse_dotenv("PW='abc\n"), Err(1));
    assert_eq!(
        parse_dotenv("PW=\"abc\\\"\n"),
        Err(1),
        "the quote is escaped"
    );
    assert_eq!(parse_dotenv("DB PASS=x\n"), Err(1));
    assert_eq!(parse_dotenv("1A=x\n"), Err(1));
}

#[tokio::test]
async fn dotenv_file_with_bom_and_tab_export() {
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join(".env");
    std::fs::write(
        &dotenv,
        "\u{feff}BERTH_T_BOM=x # c\nexport\tBERTH_T_TAB=\"y\" # c\n",
    )
    .unwrap();
    let r = SecretResolver::new(Some(&dotenv)).unwrap();
    let v = r
        .resolve("${env:BERTH_T_BOM}/${env:BERTH_T_TAB}")
        .await
        .unwrap();
    assert_eq!(v.expose(), "x/y");
    std::fs::write(&dotenv, "OK=1\nhunter2\n").unwrap();
    let err = SecretResolver::new(Some(&dotenv)).unwrap_err();
    assert!(err.ends_with(":2: expected KEY=VALUE"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
