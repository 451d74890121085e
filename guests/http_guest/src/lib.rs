//! # http_guest: a test guest for Berth's `wasi:http` handling
//!
//! Imports nothing but `wasi:http` (and what `std` needs), no Berth port.
//! Routes on the request path, ignoring the method:
//!
//! | Path            | Behaviour                                                  |
//! |-----------------|------------------------------------------------------------|
//! | `/hello`        | 200 `hello from berth`                                     |
//! | `/sleep?ms=N`   | waits N milliseconds (the WASI clock), then 200 `slept N ms` |
//! | `/echo`         | streams the request body back as it arrives (64 KiB at a time), 200 |
//! | `/loop`         | spins forever, never responds                              |
//! | `/memory`       | allocates 1 MiB chunks forever, never responds normally    |
//! | `/fetch?url=U[&header=N:V][&times=K][&path=P][&method=HEAD]` | outgoing `GET U` (or `HEAD U`; with header `N: V`, and `P` as the raw path with query), `K` times (default 1); 200 `upstream <status>: <body>` of the last, or 502 `error: <ErrorCode>` of the first failure |
//! | anything else   | 404 `not found`                                            |

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};

struct HttpGuest;

impl wasip2::exports::http::incoming_handler::Guest for HttpGuest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, query),
            None => (path_with_query.as_str(), ""),
        };
        if path == "/echo" {
            return echo(request, response_out);
        }
        let (status, body) = match path {
            "/hello" => (200, "hello from berth".to_owned()),
            "/sleep" => sleep(query),
            "/loop" => spin(),
            "/memory" => hog_memory(),
            "/fetch" => fetch(query),
            _ => (404, "not found".to_owned()),
        };
        send(response_out, status, body.as_bytes());
    }
}

wasip2::http::proxy::export!(HttpGuest);

/// Waits `ms` milliseconds on the WASI monotonic clock.
fn sleep(query: &str) -> (u16, String) {
    let ms: u64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    (200, format!("slept {ms} ms"))
}

/// Copies the request body to the response body chunk by chunk, so bodies
/// far larger than the guest's memory pass through.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let incoming = request.consume().expect("body is consumed once");
    let mut input = incoming.stream().expect("stream is taken once");
    let mut output = outgoing.write().expect("stream is taken once");
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match std::io::Read::read(&mut input, &mut chunk) {
            Ok(0) | Err(_) => break, // the whole body was read
            Ok(n) => {
                if output.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = output.flush();
    drop(input);
    drop(output);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Loops forever; `black_box` keeps the optimizer from removing the loop.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

/// Allocates and fills 1 MiB chunks, keeping every one, until memory runs out.
fn hog_memory() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let chunk = vec![0xA5u8; 1 << 20];
        chunks.push(std::hint::black_box(chunk));
    }
}

/// `GET`s (or, with `method=HEAD`, `HEAD`s) the URL in the `url` query
/// parameter through `wasi:http/outgoing-handler`.
fn fetch(query: &str) -> (u16, String) {
    let Some(url) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("url="))
        .map(percent_decode)
    else {
        return (400, "missing url parameter".to_owned());
    };
    let Some((scheme, authority, path_with_query)) = parse_url(&url) else {
        return (400, format!("bad url: {url}"));
    };
    // A raw `path-with-query`, to test what the host puts on the wire.
    let path_with_query = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("path="))
        .map_or(path_with_query, percent_decode);
    let header = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("header="))
        .map(percent_decode);
    let header = header.as_deref().and_then(|h| h.split_once(':'));
    let times: u32 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("times="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let method = match query.split('&').any(|pair| pair == "method=HEAD") {
        true => Method::Head,
        false => Method::Get,
    };
    let request_once = |scheme| get(&method, scheme, authority, &path_with_query, header);
    for _ in 1..times {
        if let Err(error) = request_once(scheme.clone()) {
            return (502, format!("error: {}", error_name(&error)));
        }
    }
    match request_once(scheme) {
        Ok((status, body)) => (
            200,
            format!("upstream {status}: {}", String::from_utf8_lossy(&body)),
        ),
        Err(error) => (502, format!("error: {}", error_name(&error))),
    }
}

/// `ErrorCode::X(..)` printed as `X(..)`.
fn error_name(error: &ErrorCode) -> String {
    let debug = format!("{error:?}");
    debug
        .strip_prefix("ErrorCode::")
        .unwrap_or(&debug)
        .to_owned()
}

fn get(
    method: &Method,
    scheme: Scheme,
    authority: &str,
    path: &str,
    header: Option<(&str, &str)>,
) -> Result<(u16, Vec<u8>), ErrorCode> {
    let fields = Fields::new();
    if let Some((name, value)) = header {
        fields
            .append(&name.to_owned(), &value.as_bytes().to_vec())
            .map_err(|e| ErrorCode::InternalError(Some(format!("header: {e:?}"))))?;
    }
    let request = OutgoingRequest::new(fields);
    let invalid = |_| ErrorCode::InternalError(Some("invalid request part".to_owned()));
    request.set_method(method).map_err(invalid)?;
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(path)).map_err(invalid)?;

    let future = outgoing_handler::handle(request, None)?;
    future.subscribe().block();
    let response = future
        .get()
        .expect("the pollable is ready")
        .expect("the response is taken once")?;
    Ok((response.status(), read_body(&response)?))
}

fn read_body(response: &IncomingResponse) -> Result<Vec<u8>, ErrorCode> {
    let failed = |detail: &str| ErrorCode::InternalError(Some(detail.to_owned()));
    let body = response.consume().map_err(|()| failed("body consumed"))?;
    let mut stream = body.stream().map_err(|()| failed("stream taken"))?;
    let mut bytes = Vec::new();
    let read = stream.read_to_end(&mut bytes);
    drop(stream); // the stream must be gone before its body
    read.map_err(|e| failed(&e.to_string()))?;
    Ok(bytes)
}

/// Splits `scheme://authority/path?query` into its parts.
fn parse_url(url: &str) -> Option<(Scheme, &str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return None;
    }
    let path = match path.starts_with('/') {
        true => path.to_owned(),
        false => format!("/{path}"),
    };
    Some((scheme, authority, path))
}

/// Decodes `%XX` escapes; a malformed escape is kept as it is.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|hex| bytes[i] == b'%' && hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes a `text/plain` response.
fn send(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
        .expect("static header is valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("status is valid");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream is taken once");
    if stream.write_all(body).is_ok() {
        let _ = stream.blocking_flush();
    }
    drop(stream); // the stream must be gone before its body is finished
    let _ = OutgoingBody::finish(outgoing, None);
}
