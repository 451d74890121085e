//! The `email` port: sending messages through the host's mail transport.
//!
//! Messages are validated here, before any backend sees them: the sender
//! must be granted, addresses must be plain `local@domain`, no header value
//! may contain CR or LF, and recipients and body size are capped. A message
//! that fails validation is never sent.

pub mod file;
pub mod host;
pub mod rate;
pub mod smtp;

use async_trait::async_trait;

use crate::limits::PayloadLimits;

/// Why sending failed, as adapters and validation report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Sender not granted.
    #[error("sender {0:?} is not granted to this component")]
    SenderNotGranted(String),
    /// Malformed message.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// Over the size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Rate limit hit.
    #[error("rate limited")]
    RateLimited,
    /// Transport unreachable.
    #[error("mail transport unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EmailMessage {
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Cc recipients.
    pub cc: Vec<String>,
    /// Bcc recipients.
    pub bcc: Vec<String>,
    /// Reply-to.
    pub reply_to: Option<String>,
    /// Subject.
    pub subject: String,
    /// Text body.
    pub text_body: String,
    /// HTML body.
    pub html_body: Option<String>,
}

/// A mail transport.
#[async_trait]
pub trait EmailBackend: Send + Sync {
    /// Sends a validated message; returns its message id.
    async fn send(&self, message: &EmailMessage) -> Result<String, EmailError>;
}

/// Checks a plain `local@domain` address (no display name, no CR/LF, no
/// spaces or angle brackets).
pub fn validate_address(address: &str) -> Result<(), String> {
    let bad = || format!("{address:?} is not a plain email address like `name@example.com`");
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    let valid_char = |c: char| c.is_ascii_graphic() && !"<>()[]\\,;:\"@".contains(c);
    if address.len() > 254
        || local.is_empty()
        || local.len() > 64
        || domain.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || !local.chars().all(valid_char)
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad());
    }
    Ok(())
}

/// Validates `message` for a component allowed to send from `senders`.
pub fn validate_message(
    message: &EmailMessage,
    senders: &[String],
    limits: &PayloadLimits,
) -> Result<(), EmailError> {
    let invalid = |m: String| EmailError::InvalidMessage(m);
    validate_address(&message.from).map_err(invalid)?;
    if !senders
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&message.from))
    {
        return Err(EmailError::SenderNotGranted(message.from.clone()));
    }
    let recipients: Vec<&String> = message
        .to
        .iter()
        .chain(&message.cc)
        .chain(&message.bcc)
        .collect();
    if message.to.is_empty() {
        return Err(invalid("the message has no `to` recipient".into()));
    }
    if recipients.len() > limits.email_max_recipients {
        return Err(invalid(format!(
            "{} recipients; at most {} allowed",
            recipients.len(),
            limits.email_max_recipients
        )));
    }
    for r in recipients.iter().copied().chain(&message.reply_to) {
        validate_address(r).map_err(invalid)?;
    }
    if message.subject.contains(['\r', '\n']) {
        return Err(invalid(
            "the subject contains a line break (header injection)".into(),
        ));
    }
    if message.subject.chars().any(|c| c.is_control() && c != '\t') {
        return Err(invalid("the subject contains control characters".into()));
    }
    let body = message.text_body.len() + message.html_body.as_ref().map_or(0, String::len);
    if body > limits.email_max_body_bytes {
        return Err(EmailError::TooLarge(format!(
            "body is {body} bytes; at most {} allowed",
            limits.email_max_body_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> EmailMessage {
        EmailMessage {
            from: "app@example.com".into(),
            to: vec!["user@example.org".into()],
            subject: "Hi".into(),
            text_body: "Hello".into(),
            ..Default::default()
        }
    }

    fn check(m: &EmailMessage) -> Result<(), EmailError> {
        validate_message(m, &["app@example.com".into()], &PayloadLimits::default())
    }

    #[test]
    fn injection_and_bad_addresses_are_refused() {
        assert!(check(&msg()).is_ok());
        let mut m = msg();
        m.subject = "Hi\r\nBcc: evil@example.com".into();
        assert!(matches!(check(&m), Err(EmailError::InvalidMessage(_))));
        let mut m = msg();
        m.to = vec!["user@example.org\r\nBcc: evil@example.com".into()];
        assert!(matches!(check(&m), Err(EmailError::InvalidMessage(_))));
        let mut m = msg();
        m.to.clear();
        assert!(matches!(check(&m), Err(EmailError::InvalidMessage(_))));
        let mut m = msg();
        m.from = "other@example.com".into();
        assert!(matches!(check(&m), Err(EmailError::SenderNotGranted(_))));
        let mut m = msg();
        m.to = (0..51).map(|i| format!("u{i}@example.org")).collect();
        assert!(matches!(check(&m), Err(EmailError::InvalidMessage(_))));
        for bad in [
            "",
            "a",
            "a@b",
            "<a@b.c>",
            "a b@c.d",
            "a@b.c\n",
            "Name <a@b.c>",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
    }
}

/// The app's mail transport (`[email]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EmailConfig {
    /// Write `.eml` files into `<state>/<app>/email`.
    File {},
    /// Send through an SMTP server.
    Smtp {
        /// Server host name.
        host: String,
        /// Server port; default 587 (465 with `tls = "tls"`).
        port: Option<u16>,
        /// `none`, `starttls` (default) or `tls`.
        tls: Option<smtp::SmtpTls>,
        /// User name, if the server needs authentication.
        username: Option<String>,
        /// Password reference (`${env:SMTP_PASSWORD}`); required with `username`.
        password: Option<String>,
        /// Per-command timeout, in ms; default 10000.
        timeout_ms: Option<u64>,
    },
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig::File {}
    }
}
