//! Message handler test component (world `berth:infra/message-handler`)
//! that leaves outbound requests on their way.
//!
//! For every delivered message it records, in the kv bucket `received`,
//! `instance-seq/<id>` (how many messages this instance had handled when it
//! got message `<id>`: 1 in a fresh instance, more in a reused one) and
//! then increments `count`. A payload `fire-<host:port>` also sends
//! `GET http://<host:port>/` and returns without waiting for the answer,
//! keeping the request.

wit_bindgen::generate!({
    path: "../../wit",
    world: "berth:infra/message-handler",
    generate_all,
});

use berth::infra::kv::Bucket;
use berth::infra::messaging_types::Message;

struct Handler;

export!(Handler);

impl exports::berth::infra::handler::Guest for Handler {
    fn handle(msg: Message) -> Result<Option<Vec<u8>>, String> {
        static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let failed = |e: berth::infra::kv::Error| format!("recording failed: {e}");
        let bucket = Bucket::open("received").map_err(failed)?;
        bucket
            .set(
                &format!("instance-seq/{}", msg.id),
                seq.to_string().as_bytes(),
                None,
            )
            .map_err(failed)?;
        if let Some(authority) = msg.payload.strip_prefix(b"fire-") {
            let authority = std::str::from_utf8(authority)
                .map_err(|_| "fire-<host:port> needs text".to_owned())?;
            fire(authority)?;
        }
        // Last: a test that saw the count reads the key above.
        bucket.increment("count", 1).map_err(failed)?;
        Ok(None)
    }
}

/// Sends `GET http://<authority>/` and returns without waiting for its
/// answer; the request's future is kept (never dropped) in the instance.
fn fire(authority: &str) -> Result<(), String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |part: &str| format!("invalid request {part}");
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(Some("/"))
        .map_err(|()| invalid("path"))?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    std::mem::forget(future);
    Ok(())
}
