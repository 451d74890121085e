//! A thin layer over `wasi:http`: reading request bodies, writing JSON
//! responses, and an error type that becomes a JSON error response.

use std::fmt::Debug;
use std::io::Write as _;

use berth_bindings::logging::Level;
use berth_bindings::{blob, config, kv, log, sql};
use serde::Serialize;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{InputStream, StreamError};

/// A response: a status code and a JSON body.
pub struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    /// A response with `value` serialized as its JSON body.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("response types always serialize");
        Self { status, body }
    }
}

/// Writes `response` to the host.
pub fn send(out: ResponseOutparam, response: Response) {
    let headers = Fields::from_list(&[("content-type".to_owned(), b"application/json".to_vec())])
        .expect("static header is valid");
    let outgoing = OutgoingResponse::new(headers);
    outgoing
        .set_status_code(response.status)
        .expect("status code is valid");
    let body = outgoing.body().expect("body is taken once");
    // The status and headers go out now; the body follows.
    ResponseOutparam::set(out, Ok(outgoing));

    let mut stream = body.write().expect("body stream is taken once");
    // If the client went away there is nobody left to tell: ignore errors.
    if stream.write_all(&response.body).is_ok() {
        let _ = stream.blocking_flush();
    }
    drop(stream); // the stream must be gone before its body is finished
    let _ = OutgoingBody::finish(body, None);
}

/// Why a request failed; becomes a JSON `{"error": ...}` response.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// An unexpected failure: the details go to the log, the client only
    /// learns that something went wrong.
    pub fn internal(context: &str, detail: impl Debug) -> Self {
        log(Level::Error, context, &[("detail", &format!("{detail:?}"))]);
        Self::new(500, "internal error")
    }
}

impl From<ApiError> for Response {
    fn from(err: ApiError) -> Self {
        Response::json(err.status, &serde_json::json!({ "error": err.message }))
    }
}

// Port errors that a handler does not handle itself are unexpected: `?`
// turns them into a 500.
impl From<sql::Error> for ApiError {
    fn from(err: sql::Error) -> Self {
        Self::internal("database error", err)
    }
}

impl From<kv::Error> for ApiError {
    fn from(err: kv::Error) -> Self {
        Self::internal("key-value error", err)
    }
}

impl From<blob::Error> for ApiError {
    fn from(err: blob::Error) -> Self {
        Self::internal("blob storage error", err)
    }
}

impl From<config::Error> for ApiError {
    fn from(err: config::Error) -> Self {
        Self::internal("configuration error", err)
    }
}

/// A request body, read chunk by chunk as it arrives.
pub struct BodyStream {
    // Field order matters: the stream is a child of the body and must be
    // dropped first, and Rust drops fields in declaration order.
    stream: InputStream,
    _body: IncomingBody,
}

impl BodyStream {
    /// Takes the body of `request`.
    pub fn open(request: &IncomingRequest) -> Result<Self, ApiError> {
        let body = request
            .consume()
            .map_err(|()| ApiError::internal("request body", "already consumed"))?;
        let stream = body
            .stream()
            .map_err(|()| ApiError::internal("request body", "stream already taken"))?;
        Ok(Self {
            stream,
            _body: body,
        })
    }

    /// The next chunk of at most `max` bytes, or `None` at the end.
    pub fn next_chunk(&mut self, max: u64) -> Result<Option<Vec<u8>>, ApiError> {
        match self.stream.blocking_read(max) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(StreamError::Closed) => Ok(None),
            Err(StreamError::LastOperationFailed(e)) => Err(ApiError::bad_request(format!(
                "reading the body failed: {}",
                e.to_debug_string()
            ))),
        }
    }

    /// The whole body, refused with 413 if it is longer than `limit`.
    pub fn read_to_end(mut self, limit: usize) -> Result<Vec<u8>, ApiError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk(64 * 1024)? {
            if body.len() + chunk.len() > limit {
                return Err(ApiError::new(413, format!("body exceeds {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
