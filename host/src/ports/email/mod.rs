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
/// spaces or angle brackets; dot-atoms without empty parts; domain labels of
/// 1 to 63 characters not starting or ending with `-`), which lettre, the
/// SMTP transport, also accepts: every transport refuses the same
/// addresses, before the rate limit counts the message.
///
/// Also refused: `%` and `!` in the local part (`user%other@relay`, the old
/// source routes a lax relay still follows) and a domain whose last label
/// is all digits (`root@127.0.0.1`): both would let a relay carry mail to
/// hosts the address does not name.
pub fn validate_address(address: &str) -> Result<(), String> {
    let bad = || format!("{address:?} is not a plain email address like `name@example.com`");
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    let valid_char = |c: char| c.is_ascii_graphic() && !"<>()[]\\,;:\"@%!".contains(c);
    let numeric_top_level = domain
        .rsplit('.')
        .next()
        .is_some_and(|top| !top.is_empty() && top.chars().all(|c| c.is_ascii_digit()));
    if address.len() > 254
        || local.is_empty()
        || local.len() > 64
        || domain.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || numeric_top_level
        || !local.chars().all(valid_char)
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !domain.split('.').all(|label| {
            (1..=63).contains(&label.len()) && !label.starts_with('-') && !label.ends_with('-')
        })
        || address.parse::<lettre::Address>().is_err()
    {
        return Err(bad());
    }
    Ok(())
}

/// Whether `text` holds `=?` followed later by `?=`, the shape of an RFC
/// 2047 encoded word.
fn holds_encoded_word(text: &str) -> bool {
    text.find("=?")
        .is_some_and(|start| text[start + 2..].contains("?="))
}

/// The longest subject accepted, in bytes: SMTP's longest line (RFC 5322),
/// although lettre folds longer ones.
pub const MAX_SUBJECT_BYTES: usize = 998;

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
    // U+2028 and U+2029 end a line for some mail readers and log viewers.
    if message
        .subject
        .chars()
        .any(|c| (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(invalid(
            "the subject contains control characters or line separators".into(),
        ));
    }
    // An encoded word (`=?utf-8?b?…?=`) is decoded by mail readers, and
    // could carry the line breaks refused above past these checks.
    if holds_encoded_word(&message.subject) {
        return Err(invalid(
            "the subject holds an RFC 2047 encoded word (`=?charset?…?=`); send the text itself, which is encoded as needed".into(),
        ));
    }
    if message.subject.len() > MAX_SUBJECT_BYTES {
        return Err(invalid(format!(
            "the subject is {} bytes; at most {MAX_SUBJECT_BYTES} allowed",
            message.subject.len()
        )));
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

/// Whether `sender` is one of the operator's `allowed` senders (see
/// [`EmailConfig::Smtp`]): the same address, or any address of a domain
/// given as `@domain`, compared without regard to case.
pub fn sender_allowed(allowed: &[String], sender: &str) -> bool {
    allowed.iter().any(|entry| match entry.strip_prefix('@') {
        Some(domain) => sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => entry.eq_ignore_ascii_case(sender),
    })
}

/// Checks one entry of `senders` in the host config: an address or
/// `@domain`.
pub fn validate_sender_entry(entry: &str) -> Result<(), String> {
    match entry.strip_prefix('@') {
        Some(domain) => validate_address(&format!("x@{domain}"))
            .map_err(|_| format!("{entry:?} is neither an address nor `@` and a domain")),
        None => validate_address(entry),
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig::File {}
    }
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
        for subject in [
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{85}b",
            "x".repeat(999).as_str(),
            "=?utf-8?b?SGkNCkJjYzogeEB5Lno=?=",
            "Hello =?iso-8859-1?q?x?= there",
        ] {
            let mut m = msg();
            m.subject = subject.into();
            assert!(
                matches!(check(&m), Err(EmailError::InvalidMessage(_))),
                "{subject:?}"
            );
        }
        let mut m = msg();
        m.subject = "é".repeat(499);
        assert!(check(&m).is_ok(), "998 bytes");
        for bad in [
            "",
            "a",
            "a@b",
            "<a@b.c>",
            "a b@c.d",
            "a@b.c\n",
            "Name <a@b.c>",
            "a@b..c",
            "a@-x.com",
            "a@x-.com",
            "a..b@x.com",
            ".a@x.com",
            "a.@x.com",
            &format!("a@{}.com", "x".repeat(64)),
            "user%victim.example@corp.example",
            "a!b@c.example",
            "root@127.0.0.1",
            "x@169.254.169.254",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
        for good in [
            "a+tag@x.com",
            "first.last@mail.x-y.example",
            "a@1x.example",
            "a@x.c0m",
        ] {
            assert_eq!(validate_address(good), Ok(()), "{good:?}");
        }
        // A subject may hold `=?` or `?=` alone.
        let mut m = msg();
        m.subject = "Is 2+2 =? 4, yes ?= no".into();
        assert!(check(&m).is_err(), "both, in that order");
        m.subject = "Why ?= and then =? alone".into();
        assert!(check(&m).is_ok());
    }

    #[test]
    fn operator_sender_lists_match_addresses_and_domains() {
        let allowed = ["news@shop.example".to_string(), "@mail.shop.example".into()];
        assert!(sender_allowed(&allowed, "News@Shop.Example"));
        assert!(sender_allowed(&allowed, "anyone@MAIL.shop.example"));
        assert!(!sender_allowed(&allowed, "ceo@shop.example"));
        assert!(!sender_allowed(&allowed, "x@evil-mail.shop.example"));
        assert!(!sender_allowed(&allowed, "x@mail.shop.example.evil"));
        assert!(!sender_allowed(&[], "news@shop.example"));
        assert!(validate_sender_entry("@shop.example").is_ok());
        assert!(validate_sender_entry("a@shop.example").is_ok());
        for bad in ["@", "shop.example", "@shop", "@a b.example"] {
            assert!(validate_sender_entry(bad).is_err(), "{bad:?}");
        }
    }
}

/// The app's mail transport (`[email]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(remote = "Self", rename_all = "kebab-case", deny_unknown_fields)]
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
        /// The senders each app may grant its components, by app name: an
        /// address (`news@shop.example`) or a whole domain
        /// (`@shop.example`). Required on `berth serve` for any app that
        /// grants a sender, since tenants write their own grants; elsewhere
        /// the manifest's grants stand when it is absent.
        senders: Option<std::collections::BTreeMap<String, Vec<String>>>,
    },
}

crate::config::by_type::deserialize_by_type!(EmailConfig);
