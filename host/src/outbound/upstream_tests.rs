//! Tests of named upstreams: rewriting, refusals and response locations.

use super::*;

fn upstream(url: &str, headers: &[(&str, &str)]) -> Result<Upstream, String> {
    let config = UpstreamConfig {
        url: url.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        apps: None,
    };
    let resolver = SecretResolver::new(None).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(Upstream::resolve(&config, &resolver))
}

/// The location rewrite of upstream `url` for a guest request to `guest_uri`.
fn rewrite_of(url: &str, guest_uri: &str) -> Arc<LocationRewrite> {
    let mut req = http::Request::builder().uri(guest_uri).body(()).unwrap();
    let target = upstream(url, &[]).unwrap().apply(&mut req).unwrap();
    target.locations.expect("upstream responses are rewritten")
}

/// A response's `location`, as the guest receives it after `rewrite`.
fn location_after(rewrite: &LocationRewrite, location: &str) -> Option<String> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::LOCATION,
        HeaderValue::try_from(location).unwrap(),
    );
    rewrite.apply(&mut headers);
    headers
        .get(http::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[test]
fn echoing_methods_and_rerouting_headers_never_reach_an_upstream() {
    let up = upstream(
        "https://api.example.com/v2",
        &[("Authorization", "Bearer t0ken")],
    )
    .unwrap();
    for method in ["TRACE", "TRACK", "CONNECT", "trace"] {
        let mut req = http::Request::builder()
            .method(method)
            .uri("http://payments.upstream/x")
            .body(())
            .unwrap();
        let refusal = up.apply(&mut req).unwrap_err();
        // `trace` is another method than `TRACE` to HTTP; a server
        // that reads it case-blind is not given it either.
        assert_eq!(refusal, Refusal::Method, "{method}");
    }
    let mut req = http::Request::builder()
        .uri("http://payments.upstream/charges")
        .header("X-Original-URL", "/admin")
        .header("x-http-method-override", "DELETE")
        .header("Forwarded", "host=evil;proto=http")
        .header("X-Forwarded-Uri", "/admin")
        .header("x-forwarded-proto", "http")
        .header("X-Original-Host", "evil.example")
        .header("X-Envoy-Original-Path", "/admin")
        .header("x-trace-id", "kept")
        .body(())
        .unwrap();
    up.apply(&mut req).unwrap();
    let names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
    for dropped in [
        "x-original-url",
        "x-http-method-override",
        "forwarded",
        "x-forwarded-uri",
        "x-forwarded-proto",
        "x-original-host",
        "x-envoy-original-path",
    ] {
        assert!(!names.contains(&dropped), "{dropped} in {names:?}");
    }
    assert_eq!(req.headers()["x-trace-id"], "kept");
}

#[test]
fn response_locations_never_show_the_base_path() {
    let up = upstream("https://api.example.com/bot123", &[]).unwrap();
    let mut req = http::Request::builder()
        .uri("http://tg.upstream/dir")
        .body(())
        .unwrap();
    let target = up.apply(&mut req).unwrap();
    let locations = target.locations.expect("a base path is rewritten");
    let rewrite = |value: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::LOCATION,
            HeaderValue::try_from(value).unwrap(),
        );
        headers.insert(
            http::header::CONTENT_LOCATION,
            HeaderValue::try_from(value).unwrap(),
        );
        locations.apply(&mut headers);
        let location = headers
            .get(http::header::LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let content = headers
            .get(http::header::CONTENT_LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(location, content, "{value}");
        location
    };
    assert_eq!(
        rewrite("https://api.example.com/bot123/dir/").as_deref(),
        Some("http://tg.upstream/dir/")
    );
    assert_eq!(
        rewrite("HTTPS://API.EXAMPLE.COM/bot123?page=2").as_deref(),
        Some("http://tg.upstream/?page=2")
    );
    assert_eq!(rewrite("/bot123/dir/").as_deref(), Some("/dir/"));
    assert_eq!(rewrite("/bot123#top").as_deref(), Some("/#top"));
    assert_eq!(rewrite("other/place").as_deref(), Some("other/place"));
    assert_eq!(
        rewrite("https://cdn.example/file").as_deref(),
        Some("https://cdn.example/file")
    );
    // Any other mention of the base path goes.
    for leaking in [
        "/bot1234/dir",
        "https://cdn.example/bot123/file",
        "//api.example.com/bot123/dir",
        "https://api.example.com/other?from=/bot123",
        "https://api.example.com/other?from=%2Fbot%31%323",
        "https://api.example.com/other?bad=%zz",
        "/login?next=%252Fbot123%252Fx",
        "https://cdn.example/login?next=%25252Fbot123",
        "/BOT123/dir",
    ] {
        assert_eq!(rewrite(leaking), None, "{leaking}");
    }
    // Other headers naming the base path go; the rest stay.
    let mut headers = http::HeaderMap::new();
    headers.append(
        http::header::LINK,
        HeaderValue::from_static("</bot123/p2>; rel=next"),
    );
    headers.append(
        http::header::LINK,
        HeaderValue::from_static("</p3>; rel=last"),
    );
    headers.append(
        http::header::SET_COOKIE,
        HeaderValue::from_static("s=1; Path=/bot123"),
    );
    headers.append(
        http::header::REFRESH,
        HeaderValue::from_static("0; url=/bot123/x"),
    );
    // Any other header echoing it goes too; unrelated ones stay.
    headers.append("x-request-path", HeaderValue::from_static("/bot123/dir"));
    headers.append("x-echo", HeaderValue::from_static("next=%252Fbot123"));
    headers.append("x-progress", HeaderValue::from_static("100%"));
    headers.append(
        "x-stopped",
        HeaderValue::from_static("next=%2Fbot123%2Fx&q=%zz"),
    );
    headers.append("x-version", HeaderValue::from_static("/bot1234"));
    headers.append(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    locations.apply(&mut headers);
    let links: Vec<_> = headers.get_all(http::header::LINK).iter().collect();
    assert_eq!(links, ["</p3>; rel=last"]);
    assert!(headers.get("x-request-path").is_none());
    assert!(headers.get("x-echo").is_none());
    assert_eq!(headers.get("x-progress").unwrap(), "100%");
    assert!(
        headers.get("x-stopped").is_none(),
        "a bad escape stops nothing"
    );
    assert_eq!(
        headers.get("x-version").unwrap(),
        "/bot1234",
        "another path, not the base"
    );
    assert_eq!(
        headers.get(http::header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert!(headers.get(http::header::SET_COOKIE).is_none());
    assert!(headers.get(http::header::REFRESH).is_none());
    // A base path the operator wrote with escapes is found decoded too.
    let escaped = rewrite_of(
        "https://api.example.com/bot12%3AAB",
        "http://tg.upstream/dir",
    );
    for echoed in [
        "/other/bot12:AB",
        "/login?next=%2Fbot12%253AAB%2Fx",
        "/other/bot12%3aAB",
        "https://cdn.example/bot12%3AAB",
    ] {
        assert_eq!(location_after(&escaped, echoed), None, "{echoed}");
    }
    // A location elsewhere on the upstream's host goes: it would show the
    // guest where the upstream is.
    for elsewhere in [
        "https://api.example.com/other",
        "http://API.example.com:8080/bot123/dir",
        "//api.example.com/x",
        "https://api.example.com./x",
    ] {
        assert_eq!(rewrite(elsewhere), None, "{elsewhere}");
    }
    // Without a base path the upstream's address is written back to the
    // guest's name for it too, and nothing else is touched.
    let plain = rewrite_of("http://10.0.0.5:8080", "http://pay.upstream/dir");
    for (location, expected) in [
        (
            "http://10.0.0.5:8080/x?y=1",
            Some("http://pay.upstream/x?y=1"),
        ),
        ("/x", Some("/x")),
        ("https://cdn.example/f", Some("https://cdn.example/f")),
        ("https://10.0.0.5/x", None),
        ("/\\10.0.0.5/x", None),
        ("https://user@10.0.0.5:9/a b", None),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::LOCATION,
            HeaderValue::try_from(location).unwrap(),
        );
        headers.insert(
            http::header::SET_COOKIE,
            HeaderValue::from_static("s=1; Path=/"),
        );
        plain.apply(&mut headers);
        let got = headers
            .get(http::header::LOCATION)
            .map(|v| v.to_str().unwrap());
        assert_eq!(got, expected, "{location}");
        assert!(headers.get(http::header::SET_COOKIE).is_some());
    }
    // Other headers naming the upstream's host go.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::REFRESH,
        HeaderValue::from_static("0; url=http://10.0.0.5:8080/x"),
    );
    headers.insert(
        http::header::LINK,
        HeaderValue::from_static("<http://10.0.0.5:8080/p2>; rel=next"),
    );
    plain.apply(&mut headers);
    assert!(headers.is_empty(), "{headers:?}");
    // A default port may be spelled out in the URL and left out by the
    // server, or the other way round.
    let spelled = rewrite_of("https://api.example.com:443/v2", "http://pay.upstream/dir");
    for location in [
        "https://api.example.com/v2/x",
        "https://api.example.com:443/v2/x",
    ] {
        assert_eq!(
            location_after(&spelled, location).as_deref(),
            Some("http://pay.upstream/x"),
            "{location}"
        );
    }
}

#[test]
fn rewrites_path_host_and_credentials() {
    let up = upstream(
        "https://api.example.com:8443/v2/",
        &[("Authorization", "Bearer t0ken")],
    )
    .unwrap();
    let mut req = http::Request::builder()
        .uri("http://payments.upstream/charges?id=1")
        .header("authorization", "guest forged")
        .header("host", "payments.upstream")
        .body(())
        .unwrap();
    let target = up.apply(&mut req).unwrap();
    assert_eq!(req.uri(), "https://api.example.com:8443/v2/charges?id=1");
    assert_eq!(req.headers()["host"], "api.example.com:8443");
    assert_eq!(req.headers().get_all("authorization").iter().count(), 1);
    assert_eq!(req.headers()["authorization"], "Bearer t0ken");
    assert!((target.tls, target.port) == (true, 8443));
    assert!(!format!("{up:?}").contains("t0ken"));
}

#[test]
fn paths_stay_under_the_base_and_in_origin_form() {
    let up = upstream("https://api.example.com/v2", &[("x-key", "k")]).unwrap();
    let apply = |path: &str| {
        let mut req = http::Request::builder()
            .uri(format!("http://payments.upstream{path}"))
            .body(())
            .unwrap();
        up.apply(&mut req).map(|_| req.uri().to_string())
    };
    assert_eq!(
        apply("/charges/a.b?x=..").unwrap(),
        "https://api.example.com/v2/charges/a.b?x=.."
    );
    for bad in [
        "/../admin",
        "/a/./b",
        "/%2e%2E/admin",
        "/a/%2e",
        "/..",
        // Spellings some servers or gateways read as `..`.
        "/..;/admin",
        "/..;jsessionid=1/admin",
        "/..\\admin",
        "/a%2f..%2fadmin",
        "/a%2F..%2Fadmin",
        "/%5c..%5cadmin",
        "/%252e%252e/admin",
        "/%25252e%25252e/admin",
        "/..%20/admin",
        "/...",
        "/a/%00",
        "/..%3F",
        "/..%23x",
        "/a%2F..%3Fx",
        "/..%253Bx/admin",
        // Lookalikes that Unicode normalization or old decoders turn
        // into dots and slashes.
        "/%EF%BC%8E%EF%BC%8E/admin",
        "/a%EF%BC%8F%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin",
        "/%E2%80%A4%E2%80%A4/admin",
        "/%C0%AE%C0%AE/admin",
        "/a%C0%AF..%C0%AFadmin",
        "/%EF%BC%BC..",
        "/%u002e%u002e/admin",
        "/%U002E%u002E/admin",
        // Compatibility forms (NFKC) of `..`, `...` and `\`, 3-byte
        // overlongs, and a fullwidth `%2e` decoded after normalization.
        "/%E2%80%A5/admin",
        "/%EF%B8%B0/admin",
        "/%E2%80%A6",
        "/%EF%B8%99/admin",
        "/a%EF%B9%A8..%EF%B9%A8admin",
        "/%E0%80%AE%E0%80%AE/admin",
        "/a%E0%80%AF..",
        "/%EF%BC%85%EF%BC%92%EF%BD%85%EF%BC%85%EF%BC%92%EF%BD%85/admin",
    ] {
        assert_eq!(apply(bad), Err(Refusal::LeavesBasePath), "{bad}");
    }
    // Names with `%`, dots, `;` parameters or bytes that are not UTF-8
    // are the server's business while they stay inside the base path.
    for good in [
        "/files/100%25.md",
        "/files/50%25%20off",
        "/files/100%.md",
        "/q/caf%E9",
        "/v1.2/a..b/.well-known",
        "/items;v=1/x",
        "/files/a%20",
        "/files/report%EF%BC%8Epdf",
        "/files/%u00e9t%C3%A9",
        "/files/%uZZZZ",
    ] {
        assert!(apply(good).is_ok(), "{good}");
    }
    // Encoded slashes that stay inside the base path are fine.
    assert_eq!(
        apply("/projects/group%2Fproject").unwrap(),
        "https://api.example.com/v2/projects/group%2Fproject"
    );
    assert_eq!(
        apply("?page=2").unwrap(),
        "https://api.example.com/v2/?page=2"
    );
    // The refusal is a plain denial (the integration test checks that
    // the guest sees no more), and the upstream's `Debug` shows no base
    // path either.
    let refusal = apply("/../admin").unwrap_err();
    assert!(matches!(
        refusal.error(),
        wasmtime_wasi_http::Error::HttpRequestDenied
    ));
    assert!(!format!("{up:?}").contains("/v2"));
    // A path that is not in origin form never reaches the wire.
    let mut req = http::Request::builder().uri("*").body(()).unwrap();
    assert!(matches!(up.apply(&mut req), Err(Refusal::InvalidPath)));
    // Nor does a reference to another host, with or without a base path.
    assert_eq!(apply("//evil.example/x"), Err(Refusal::InvalidPath));
    assert_eq!(apply("/\\evil.example/x"), Err(Refusal::InvalidPath));
    let root = upstream("https://api.example.com", &[]).unwrap();
    // Encoded, once or twice, or in a lookalike spelling, as a server or
    // gateway may decode and normalize it.
    for path in [
        "//evil.example/x",
        "/\\evil.example/x",
        "/%2F%2Fevil.example/x",
        "/%2f/evil.example/x",
        "/%5Cevil.example/x",
        "/%252F%252Fevil.example/x",
        "/%EF%BC%8F%EF%BC%8Fevil.example/x",
        "/a/..//evil.example/x",
        "/.//evil.example/x",
        "/%2e//evil.example/x",
        "/a/..;x//evil.example/x",
        "/a%2f/..//evil.example/x",
        "/a%2f/%2e%2e//evil.example/x",
        "/a%2F/.%2E//evil.example/x",
    ] {
        let mut req = http::Request::builder()
            .uri(format!("http://payments.upstream{path}"))
            .body(())
            .unwrap();
        assert!(
            matches!(root.apply(&mut req), Err(Refusal::InvalidPath)),
            "{path}"
        );
    }
    // Without a base path, dot segments are the server's business.
    let root = upstream("https://api.example.com", &[]).unwrap();
    let mut req = http::Request::builder()
        .uri("http://payments.upstream/a/../b")
        .body(())
        .unwrap();
    assert!(root.apply(&mut req).is_ok());
}

#[test]
fn tenants_get_only_the_upstreams_listed_for_them() {
    let config = |apps: Option<&[&str]>| UpstreamConfig {
        url: "https://api.example.com".into(),
        headers: BTreeMap::new(),
        apps: apps.map(|a| a.iter().map(|s| s.to_string()).collect()),
    };
    // One app of the operator's own (`berth up`, `berth run`).
    assert!(config(None).admits("shop", false));
    // Tenants (`berth serve`): only those listed.
    assert!(!config(None).admits("shop", true));
    assert!(config(Some(&["shop"])).admits("shop", true));
    assert!(!config(Some(&["shop"])).admits("shopper", true));
    assert!(!config(Some(&["shop"])).admits("other", false));
    assert!(!config(Some(&[])).admits("shop", false));
}

#[test]
fn names_and_bad_urls() {
    assert_eq!(upstream_name("Payments.upstream."), Some("payments".into()));
    assert_eq!(upstream_name("a.b.upstream"), None);
    assert_eq!(upstream_name("upstream"), None);
    assert_eq!(upstream_name("example.com"), None);
    for bad in ["ftp://x", "https://u:p@h", "not a url", "https://h/?q=1"] {
        assert!(upstream(bad, &[]).is_err(), "{bad}");
    }
    assert!(upstream("https://h", &[("bad header", "v")]).is_err());
    assert!(upstream("https://h", &[("x-key", "${env:BERTH_NOT_SET_ANYWHERE}")]).is_err());
}
