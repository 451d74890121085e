//! The app's stream: made, given the host config's limits, or (on a dry
//! run) only looked at, each call of the JetStream API bounded by the
//! settings' timeout, and its failures told apart (no JetStream, a refusal,
//! no answer).

use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::jetstream::{ErrorCode, stream};

use super::{NatsBroker, unavailable};
use crate::ports::messaging::MessagingError;

impl NatsBroker {
    /// A dry run's look at the app's stream, changing nothing: the account
    /// must have JetStream (a load would make the stream there), and a
    /// stream already there is read, its limits that a load would change
    /// logged.
    pub(super) async fn check_stream(&self) -> Result<(), MessagingError> {
        let looked_up = self.api("look up", self.js.get_stream(&self.stream.name));
        let current = match looked_up.await? {
            Ok(stream) => stream.cached_info().config.clone(),
            Err(e) if is_stream_not_found(&e) => return Ok(()),
            Err(e) if lookup_found_no_jetstream(&e) => return Err(no_jetstream()),
            Err(e) => return Err(unavailable(e)),
        };
        if stream_limits(&current) != stream_limits(&self.stream) {
            tracing::warn!(
                stream = %self.stream.name,
                max_bytes = current.max_bytes,
                max_age_s = current.max_age.as_secs(),
                wanted_max_bytes = self.stream.max_bytes,
                wanted_max_age_s = self.stream.max_age.as_secs(),
                "a load would change the limits of the app's stream (a lower max_age or max_bytes drops its older messages)"
            );
        }
        Ok(())
    }

    /// Makes the app's stream, or gives the one there the host config's
    /// limits (JetStream changes them in place; its messages stay).
    pub(super) async fn make_stream(&self) -> Result<(), MessagingError> {
        let made = self.api("make", self.js.get_or_create_stream(self.stream.clone()));
        let mut stream = made.await?.map_err(|e| self.stream_failure(e))?;
        let current = &stream.cached_info().config;
        if stream_limits(current) != stream_limits(&self.stream) {
            let mut wanted = current.clone();
            wanted.max_bytes = self.stream.max_bytes;
            wanted.max_age = self.stream.max_age;
            wanted.discard = self.stream.discard;
            wanted.duplicate_window = self.stream.duplicate_window;
            let updated = self.api("update", self.js.update_stream(wanted));
            updated.await?.map_err(|e| self.stream_failure(e))?;
            // Read back, so a later check compares with what the server keeps.
            self.api("read", stream.info())
                .await?
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Bounds one call of the JetStream API about the app's stream (`what`
    /// it does to it) by the settings' timeout: the client waits for an
    /// answer without end (see `connect`), and a request the server's
    /// permissions refuse gets none.
    pub(super) async fn api<T, E>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, MessagingError> {
        tokio::time::timeout(self.api_timeout, call)
            .await
            .map_err(|_| {
                MessagingError::Unavailable(format!(
                    "NATS did not answer the JetStream API ({what} stream `{}`) within {} ms (`messaging.timeout_ms`): a busy server, or a user not allowed to publish to `$JS.API.>`",
                    self.stream.name,
                    self.api_timeout.as_millis()
                ))
            })
    }

    /// The error of making or changing the app's stream: no JetStream, or
    /// JetStream's own refusal (a limit of the account, say), told apart
    /// from a broker that cannot be reached.
    fn stream_failure(&self, e: CreateStreamError) -> MessagingError {
        match e.kind() {
            _ if creation_found_no_jetstream(&e) => no_jetstream(),
            CreateStreamErrorKind::JetStream(refusal) => MessagingError::Unavailable(format!(
                "JetStream refused the app's stream `{}`: {refusal}",
                self.stream.name
            )),
            _ => unavailable(e),
        }
    }
}

/// The limits of a stream the host config sets.
fn stream_limits(c: &stream::Config) -> (i64, Duration, stream::DiscardPolicy, Duration) {
    (c.max_bytes, c.max_age, c.discard, c.duplicate_window)
}

/// Whether `e` says the stream does not exist (yet).
fn is_stream_not_found(e: &GetStreamError) -> bool {
    matches!(
        e.kind(),
        GetStreamErrorKind::JetStream(ref error)
            if error.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

/// The account has no JetStream, so the app's stream cannot be made.
fn no_jetstream() -> MessagingError {
    MessagingError::Unavailable(
        "the NATS server offers no JetStream to this account, where the app's stream would be kept (nats-server runs it with `-js`)".into(),
    )
}

fn is_no_jetstream_code(code: ErrorCode) -> bool {
    code == ErrorCode::JETSTREAM_NOT_ENABLED || code == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
}

/// Whether a stream lookup failed for want of JetStream: nothing answers
/// its API (a server started without it), or the server says so.
fn lookup_found_no_jetstream(e: &GetStreamError) -> bool {
    match e.kind() {
        GetStreamErrorKind::JetStream(error) => is_no_jetstream_code(error.error_code()),
        GetStreamErrorKind::Request => std::error::Error::source(e)
            .and_then(|source| source.downcast_ref::<RequestError>())
            .is_some_and(|request| request.kind() == RequestErrorKind::NoResponders),
        _ => false,
    }
}

/// Whether making or reading the stream failed for want of JetStream.
fn creation_found_no_jetstream(e: &CreateStreamError) -> bool {
    match e.kind() {
        CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(error) => is_no_jetstream_code(error.error_code()),
        _ => false,
    }
}
