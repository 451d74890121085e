//! Requests in, responses out: the incoming side of `wasi:http`.

use std::io::Write as _;
use std::str::FromStr;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::{Error, Result};

/// The largest request body [`serve`] reads into a [`Request`]; larger
/// bodies get `413`. Stream bigger uploads with the `wasip2` types.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// An incoming request, its body read whole.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) params: Vec<(String, String)>,
}

impl Request {
    /// A request built by hand, for unit tests of handlers and routers.
    pub fn new(method: &str, path_with_query: &str, body: impl Into<Vec<u8>>) -> Self {
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query, ""));
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
            body: body.into(),
            params: Vec::new(),
        }
    }

    /// The method, uppercase (`GET`).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query (`/users/7`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without `?` (empty if none).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The first value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header, in arrival order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text; [`Error::BadRequest`] (a 400) if it is not.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.body)
            .map_err(|_| Error::BadRequest("the request body is not UTF-8".into()))
    }

    /// The path parameter `name` of the matched route (`{id}` in
    /// `/users/{id}`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path parameter `name` parsed as `T`; [`Error::BadRequest`] (a 400)
    /// if absent or malformed.
    pub fn param_as<T: FromStr>(&self, name: &str) -> Result<T> {
        let raw = self
            .param(name)
            .ok_or_else(|| Error::BadRequest(format!("the route has no parameter `{name}`")))?;
        raw.parse()
            .map_err(|_| Error::BadRequest(format!("`{raw}` is not a valid {name}")))
    }
}

/// A response: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// `status` with `body` of type `content_type`.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
            body: body.into(),
        }
    }

    /// `status` with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::bytes(status, "text/plain; charset=utf-8", body.into())
    }

    /// `status` with a JSON body, given as its text.
    pub fn json(status: u16, json: impl Into<String>) -> Self {
        Self::bytes(status, "application/json", json.into())
    }

    /// `status` without a body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `404 not found`.
    pub fn not_found() -> Self {
        Self::text(404, "not found")
    }

    /// Adds a header. One the host does not let a guest set
    /// (`connection`, `transfer-encoding`, `host`…) or with a malformed
    /// value is dropped when the response is sent, with a warning in the
    /// log; the others are sent.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text.
    pub fn text_body(&self) -> Result<&str> {
        std::str::from_utf8(&self.body)
            .map_err(|_| Error::Decode("the response body is not UTF-8".into()))
    }
}

impl From<Error> for Response {
    /// The response for a handler's error: 400 with its message for
    /// [`Error::BadRequest`], 404 for a blob that does not exist, 503 for a
    /// retriable outage, else 500. Only the 4xx messages reach the client;
    /// the rest go to the host log.
    fn from(error: Error) -> Self {
        match &error {
            Error::BadRequest(m) => Response::text(400, m.clone()),
            Error::Blob(crate::blob::BlobError::NotFound) => Response::not_found(),
            e if e.is_retriable() => {
                crate::log::warn("request failed, retriable", &[("error", &e.to_string())]);
                Response::text(503, "temporarily unavailable")
            }
            e => {
                crate::log::error("request failed", &[("error", &e.to_string())]);
                Response::text(500, "internal error")
            }
        }
    }
}

/// Reads `request`, calls `handler` and writes its response: what
/// [`http_handler!`](crate::http_handler) expands to.
pub fn serve(request: IncomingRequest, out: ResponseOutparam, handler: fn(Request) -> Response) {
    let response = match read_request(&request) {
        Ok(req) => handler(req),
        Err(response) => response,
    };
    send(out, response);
}

fn read_request(request: &IncomingRequest) -> std::result::Result<Request, Response> {
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    let mut req = Request::new(
        &method_name(&request.method()),
        &path_with_query,
        Vec::new(),
    );
    req.headers = request.headers().entries();
    let body = request
        .consume()
        .map_err(|()| Response::text(500, "the request body was already taken"))?;
    req.body = read_body(body, MAX_BODY).map_err(|e| match e {
        BodyError::TooLarge => Response::text(413, format!("the body exceeds {MAX_BODY} bytes")),
        BodyError::Failed(m) => Response::text(400, m),
    })?;
    Ok(req)
}

pub(crate) fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(m) => m.to_ascii_uppercase(),
    }
}

pub(crate) enum BodyError {
    TooLarge,
    Failed(String),
}

/// Reads a whole incoming body (request or response), up to `limit` bytes.
pub(crate) fn read_body(
    body: IncomingBody,
    limit: usize,
) -> std::result::Result<Vec<u8>, BodyError> {
    let stream: InputStream = body
        .stream()
        .map_err(|()| BodyError::Failed("the body stream was already taken".into()))?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if data.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                data.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(BodyError::Failed(format!(
                    "reading the body failed: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    // The stream is a child of the body: it goes first.
    drop(stream);
    drop(body);
    Ok(data)
}

fn send(out: ResponseOutparam, response: Response) {
    // One by one: the list whole is refused for any one header the host
    // forbids (`connection`, `transfer-encoding`…) or a malformed value,
    // which would drop every other header (`content-type` too) with it.
    let headers = Fields::new();
    for (name, value) in &response.headers {
        if let Err(e) = headers.append(name, value) {
            crate::log::warn(
                "response header dropped",
                &[("header", name), ("error", &format!("{e:?}"))],
            );
        }
    }
    let outgoing = OutgoingResponse::new(headers);
    if outgoing.set_status_code(response.status).is_err() {
        let _ = outgoing.set_status_code(500);
    }
    let Ok(body) = outgoing.body() else { return };
    ResponseOutparam::set(out, Ok(outgoing));
    if let Ok(mut stream) = body.write() {
        // A client that went away cannot be told anything: ignore errors.
        if stream.write_all(&response.body).is_ok() {
            let _ = stream.blocking_flush();
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
