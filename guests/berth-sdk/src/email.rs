//! Sending email from a sender the manifest grants (`email_senders =
//! ["noreply@example.com"]` among the component's grants).
//!
//! ```no_run
//! use berth_sdk::{email::Email, Result};
//!
//! fn welcome(to: &str) -> Result<String> {
//!     Email::new("noreply@example.com", "Welcome", "Glad you are here.").to(to).send()
//! }
//! # fn main() {}
//! ```

use crate::raw::berth::infra::email as raw;
use crate::Result;

pub use raw::Error as EmailError;

/// A message being composed; [`Email::send`] hands it to the host.
pub struct Email {
    message: raw::Message,
}

impl Email {
    /// A plain-text message from `from` with `subject` and `text`.
    pub fn new(from: &str, subject: &str, text: &str) -> Self {
        Self {
            message: raw::Message {
                from: from.to_owned(),
                to: Vec::new(),
                cc: Vec::new(),
                bcc: Vec::new(),
                reply_to: None,
                subject: subject.to_owned(),
                text_body: text.to_owned(),
                html_body: None,
            },
        }
    }

    /// Adds a recipient.
    pub fn to(mut self, address: &str) -> Self {
        self.message.to.push(address.to_owned());
        self
    }

    /// Adds a copy recipient.
    pub fn cc(mut self, address: &str) -> Self {
        self.message.cc.push(address.to_owned());
        self
    }

    /// Adds a blind copy recipient.
    pub fn bcc(mut self, address: &str) -> Self {
        self.message.bcc.push(address.to_owned());
        self
    }

    /// Sets the reply-to address.
    pub fn reply_to(mut self, address: &str) -> Self {
        self.message.reply_to = Some(address.to_owned());
        self
    }

    /// Adds an HTML alternative to the text body.
    pub fn html(mut self, html: &str) -> Self {
        self.message.html_body = Some(html.to_owned());
        self
    }

    /// Sends the message; returns the id the host gave it. Invalid
    /// addresses, header injection and ungranted senders are refused before
    /// anything is sent.
    pub fn send(self) -> Result<String> {
        Ok(raw::send(&self.message)?)
    }
}
