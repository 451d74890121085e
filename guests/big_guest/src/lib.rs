//! # big_guest: a ~2 MB `wasi:http` component for the cold-start benchmark
//!
//! `/hello` answers 200 `hello from berth`, after calling one generated
//! function (chosen by the path, so none is optimised away) and reading one
//! byte of the generated data; anything else is 404.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

static DATA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/data.bin"));

struct BigGuest;

impl wasip2::exports::http::incoming_handler::Guest for BigGuest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let pick = path.len() * 7919 % FUNCTIONS.len();
        let mixed = FUNCTIONS[pick](u64::from(DATA[pick % DATA.len()]));
        std::hint::black_box(mixed);
        let (status, body): (u16, &[u8]) = match path.as_str() {
            "/hello" => (200, b"hello from berth"),
            _ => (404, b"not found"),
        };
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).expect("status is valid");
        let outgoing = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut stream = outgoing.write().expect("stream is taken once");
        if stream.write_all(body).is_ok() {
            let _ = stream.blocking_flush();
        }
        drop(stream);
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

wasip2::http::proxy::export!(BigGuest);
