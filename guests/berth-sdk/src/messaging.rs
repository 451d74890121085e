//! Publishing messages, request/reply, and consuming messages with
//! [`message_handler!`](crate::message_handler).
//!
//! A handler component, delivered every message of the topics its
//! manifest's `[[trigger.message]]` names:
//!
//! ```no_run
//! use berth_sdk::messaging::Message;
//! use berth_sdk::{kv::Bucket, Result};
//!
//! fn on_message(msg: Message) -> Result<()> {
//!     // Deliveries are at least once: the message id makes the effect
//!     // happen once however often it arrives.
//!     let seen = Bucket::open("seen")?;
//!     if seen.compare_and_swap(&msg.id, None, b"1")? {
//!         berth_sdk::log::info("new message", &[("topic", &msg.topic)]);
//!     }
//!     Ok(())
//! }
//!
//! berth_sdk::message_handler!(on_message);
//! # fn main() {}
//! ```
//!
//! Returning an error makes the host redeliver the message after its
//! backoff, up to the trigger's maximum of deliveries.

use std::time::Duration;

use crate::raw::berth::infra::messaging as raw;
use crate::Result;

pub use crate::raw::berth::infra::messaging_types::{Header, Message};
pub use raw::Error as MessagingError;

/// Publishes `payload` to `topic`; returns the message id once the broker
/// has accepted it.
pub fn publish(topic: &str, payload: impl AsRef<[u8]>) -> Result<String> {
    publish_with_headers(topic, payload, &[])
}

/// Publishes with headers.
pub fn publish_with_headers(
    topic: &str,
    payload: impl AsRef<[u8]>,
    headers: &[(&str, &str)],
) -> Result<String> {
    Ok(raw::publish(topic, payload.as_ref(), &owned(headers))?)
}

/// Sends a request to `topic` and waits up to `timeout` for the reply.
pub fn request(topic: &str, payload: impl AsRef<[u8]>, timeout: Duration) -> Result<Message> {
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    Ok(raw::request(topic, payload.as_ref(), &[], ms)?)
}

fn owned(headers: &[(&str, &str)]) -> Vec<Header> {
    headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The value of header `name` of `msg`, if present.
pub fn header<'m>(msg: &'m Message, name: &str) -> Option<&'m str> {
    msg.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a message handler may return: `Result<(), E>`, or
/// `Result<Option<Vec<u8>>, E>` to answer a request with a reply.
pub trait HandlerOutcome {
    /// The outcome as the `handler` export returns it.
    fn into_outcome(self) -> std::result::Result<Option<Vec<u8>>, String>;
}

impl<E: std::fmt::Display> HandlerOutcome for std::result::Result<(), E> {
    fn into_outcome(self) -> std::result::Result<Option<Vec<u8>>, String> {
        self.map(|()| None).map_err(|e| e.to_string())
    }
}

impl<E: std::fmt::Display> HandlerOutcome for std::result::Result<Option<Vec<u8>>, E> {
    fn into_outcome(self) -> std::result::Result<Option<Vec<u8>>, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Exports `$handler`, a `fn(Message) -> Result<…>`, as the component's
/// `berth:infra/handler`: see the [`messaging`](crate::messaging) module.
#[macro_export]
macro_rules! message_handler {
    ($handler:path) => {
        struct __BerthMessageHandler;

        impl $crate::raw::exports::berth::infra::handler::Guest for __BerthMessageHandler {
            fn handle(
                msg: $crate::messaging::Message,
            ) -> ::core::result::Result<::core::option::Option<::std::vec::Vec<u8>>, ::std::string::String>
            {
                $crate::messaging::HandlerOutcome::into_outcome($handler(msg))
            }
        }

        $crate::raw::export_message_handler!(__BerthMessageHandler with_types_in $crate::raw);
    };
}
