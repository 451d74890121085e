//! Outbound HTTP through `wasi:http/outgoing-handler`: the host checks
//! every request against the component's grants and adds the credentials
//! of named upstreams, so the component never holds them.

use std::io::Write as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

use super::server::{read_body, BodyError};
use super::Response;
use crate::{Error, Result};

/// The largest response body [`fetch`] reads; larger ones are an error.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// An outbound request: method, URL, headers and body.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl OutboundRequest {
    /// A `method` request to `url` (`http://` or `https://`).
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response> {
        fetch(self)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response> {
    fetch(OutboundRequest::new("GET", url))
}

/// Sends `request` and reads the whole response. Redirects are not
/// followed (the host never follows them either); a destination the
/// manifest does not grant is an [`Error::Http`].
pub fn fetch(request: OutboundRequest) -> Result<Response> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let headers = Fields::from_list(&request.headers)
        .map_err(|e| Error::Invalid(format!("request headers: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let invalid = |what: &str| Error::Invalid(format!("{what} of {}", request.url));
    outgoing
        .set_method(&method(&request.method))
        .map_err(|()| invalid("the method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("the scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| invalid("the authority"))?;
    outgoing
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid("the path"))?;
    let body = outgoing
        .body()
        .map_err(|()| Error::Http("the request body was already taken".into()))?;

    let future = outgoing_handler::handle(outgoing, None)
        .map_err(|e| Error::Http(format!("{} {}: {e:?}", request.method, request.url)))?;
    write_body(body, request.body.as_deref())?;

    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => {
            return Err(Error::Http(format!(
                "{} {}: {code:?}",
                request.method, request.url
            )));
        }
        Some(Err(())) | None => {
            return Err(Error::Http("the response was already taken".into()));
        }
    };
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| Error::Http("the response body was already taken".into()))?;
    let body = read_body(incoming, MAX_RESPONSE_BODY).map_err(|e| match e {
        BodyError::TooLarge => Error::Http(format!(
            "the response of {} exceeds {MAX_RESPONSE_BODY} bytes",
            request.url
        )),
        BodyError::Failed(m) => Error::Http(m),
    })?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn write_body(body: OutgoingBody, data: Option<&[u8]>) -> Result<()> {
    if let Some(data) = data {
        let mut stream = body
            .write()
            .map_err(|()| Error::Http("the request body stream was already taken".into()))?;
        stream
            .write_all(data)
            .and_then(|()| std::io::Write::flush(&mut stream))
            .map_err(|e| Error::Http(format!("writing the request body: {e}")))?;
    }
    OutgoingBody::finish(body, None)
        .map_err(|e| Error::Http(format!("finishing the request body: {e:?}")))
}

fn split_url(url: &str) -> Result<(Scheme, &str, String)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::Invalid(format!(
            "`{url}` is not an http:// or https:// URL"
        )));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => rest.split_at(i),
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(Error::Invalid(format!("`{url}` has no host")));
    }
    // A query without a path (`http://h?q`) still needs the leading `/`.
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((scheme, authority, path))
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        "TRACE" => Method::Trace,
        "CONNECT" => Method::Connect,
        other => Method::Other(other.to_owned()),
    }
}
