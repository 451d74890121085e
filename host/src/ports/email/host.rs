//! WIT glue for `berth:infra/email`: validation against the component's
//! granted senders and the mapping of [`EmailError`] to the guest's `error`.

use tracing::Instrument as _;

use super::{EmailError, EmailMessage, validate_message};
use crate::bindings::ports::email::{self as wit, Error, Message};
use crate::metrics::Port;
use crate::ports::error_chain;
use crate::state::InstanceState;

impl InstanceState {
    /// The one place an [`EmailError`] becomes a guest error.
    fn email_error(&self, e: EmailError) -> Error {
        tracing::debug!(app = %self.env.app, component = %self.env.component, error = %error_chain(&e), "email error");
        let audit = |what: &str, subject: &str| {
            crate::audit::refused(&self.env.app, &self.env.component, what, subject)
        };
        match &e {
            EmailError::SenderNotGranted(s) => audit("email.sender-not-granted", s),
            EmailError::RateLimited => self.env.counters.limit("email_rate"),
            EmailError::TooLarge(_) => self.env.counters.limit("payload"),
            _ => {}
        }
        match e {
            EmailError::SenderNotGranted(s) => Error::SenderNotGranted(s),
            EmailError::InvalidMessage(m) => Error::InvalidMessage(m),
            EmailError::TooLarge(m) => Error::TooLarge(m),
            EmailError::RateLimited => Error::RateLimited,
            EmailError::Unavailable(_) => {
                Error::Unavailable("the mail transport is unavailable".into())
            }
            EmailError::Other(m) => Error::Other(m),
        }
    }
}

impl wit::Host for InstanceState {
    async fn send(&mut self, m: Message) -> wasmtime::Result<Result<String, Error>> {
        let started = crate::metrics::Started::now();
        let message = EmailMessage {
            from: m.from,
            to: m.to,
            cc: m.cc,
            bcc: m.bcc,
            reply_to: m.reply_to,
            subject: m.subject,
            text_body: m.text_body,
            html_body: m.html_body,
        };
        let bytes_in = message.subject.len()
            + message.text_body.len()
            + message.html_body.as_ref().map_or(0, String::len);
        let r = match validate_message(
            &message,
            &self.env.grants.email_senders,
            &self.env.limits.payloads,
        ) {
            Err(e) => Err(self.email_error(e)),
            Ok(()) => {
                let span = tracing::debug_span!("email", op = "send", app = %self.env.app, component = %self.env.component);
                let backend = self.env.backends.email.clone();
                backend
                    .send(&message)
                    .instrument(span)
                    .await
                    .map_err(|e| self.email_error(e))
            }
        };
        self.meter(
            Port::Email,
            "send",
            &message.from,
            started,
            &r,
            bytes_in,
            |_| 0,
        );
        Ok(r)
    }
}
