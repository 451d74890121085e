//! SMTP adapter (lettre): the host holds the server, TLS mode and
//! credentials; guests only name granted senders. Messages reach this
//! adapter validated (no CR/LF in headers, plain addresses, recipient and
//! size caps), and are rebuilt with lettre's typed builder, which encodes
//! every header itself.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{EmailBackend, EmailError, EmailMessage};
use crate::secret::Secret;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain SMTP (loopback relays and tests only).
    None,
    /// Upgrade with STARTTLS, required.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// Settings of the SMTP transport.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Server host name.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// TLS mode.
    pub tls: SmtpTls,
    /// User name and password, if the server wants them.
    pub credentials: Option<(String, Secret)>,
    /// Timeout of each SMTP command.
    pub timeout: Duration,
}

/// Sends through an SMTP server.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    domain: String,
}

/// A failure the guest may retry. Its cause goes to the operator's log at
/// `warn`: a wrong relay or TLS setting is theirs to fix.
fn unavailable(e: impl std::fmt::Display) -> EmailError {
    tracing::warn!(error = %e, "smtp failure");
    EmailError::Unavailable("the mail server cannot be reached or refused the message".into())
}

/// SMTP replies that refuse the host's login (RFC 4954: 530 authentication
/// required, 534 mechanism too weak, 535 credentials invalid, 454
/// temporary failure): the operator's relay credential, not the guest's
/// message.
const LOGIN_REFUSED: &[&str] = &["530", "534", "535", "454"];

/// A failed send. A permanent (5xx) rejection is not `unavailable`, which
/// tells the guest that retrying may succeed: the same message would be
/// refused again. The guest gets the reply code only; the server's text
/// (which may name hosts, accounts or policies) stays in the host log.
fn send_failure(e: lettre::transport::smtp::Error) -> EmailError {
    let code = e.status().map(|code| code.to_string());
    if code.as_deref().is_some_and(|c| LOGIN_REFUSED.contains(&c)) {
        tracing::warn!(error = %e, "the SMTP relay refused the host's login");
        return EmailError::Unavailable("the mail server refused the host's login".into());
    }
    if !e.is_permanent() {
        return unavailable(e);
    }
    tracing::debug!(error = %e, "smtp permanent rejection");
    EmailError::Other(rejected_message(code))
}

/// Why the relay could not be used at startup, for the operator: a login
/// refused, a TLS failure, a timeout, a refusal with its reply code, or a
/// connection that failed. The server's own words go to the log only.
fn startup_failure(e: lettre::transport::smtp::Error) -> EmailError {
    tracing::warn!(error = %e, "smtp startup check failed");
    let code = e.status().map(|code| code.to_string());
    let why = if code.as_deref().is_some_and(|c| LOGIN_REFUSED.contains(&c)) {
        "the mail server refused the host's login (check `email.username` and `email.password`)"
            .to_string()
    } else if e.is_tls() {
        "the TLS handshake with the mail server failed (check `email.tls` and `email.port`)"
            .to_string()
    } else if e.is_timeout() {
        "the mail server did not answer in time".to_string()
    } else if e.is_client() {
        // lettre's own refusals, such as a server offering no login
        // mechanism it supports.
        "the mail server offers no login the host can use, or the SMTP session failed (see the host's log)"
            .to_string()
    } else if let Some(code) = code {
        format!("the mail server refused the session (SMTP {code})")
    } else {
        "cannot connect to the mail server (check `email.host` and `email.port`)".to_string()
    };
    EmailError::Unavailable(why)
}

/// The guest's message for a permanent rejection with reply `code`.
fn rejected_message(code: Option<String>) -> String {
    let code = code.map_or_else(String::new, |c| format!(" (SMTP {c})"));
    format!(
        "the mail server rejected the message{code}; sending it again unchanged will not succeed"
    )
}

impl SmtpSender {
    /// Builds the transport and, when `probe`, checks the server answers
    /// and takes the login, so a wrong host or credential fails at startup
    /// with what went wrong (never the server's own words).
    pub async fn connect(s: &SmtpSettings, probe: bool) -> Result<SmtpSender, EmailError> {
        let builder = match s.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                .map_err(unavailable)?,
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host).map_err(unavailable)?
            }
        };
        let mut builder = builder.port(s.port).timeout(Some(s.timeout));
        if let Some((user, password)) = &s.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        let transport = builder.build();
        if probe {
            match transport.test_connection().await {
                Ok(true) => {}
                Ok(false) => return Err(unavailable("the server did not answer NOOP")),
                Err(e) => return Err(startup_failure(e)),
            }
        }
        Ok(SmtpSender {
            transport,
            domain: "berth.local".into(),
        })
    }
}

fn mailbox(address: &str) -> Result<Mailbox, EmailError> {
    address
        .parse()
        .map_err(|_| EmailError::InvalidMessage(format!("{address:?} is not a valid address")))
}

/// Builds the lettre message of a validated [`EmailMessage`].
pub fn build(message: &EmailMessage, id: &str) -> Result<lettre::Message, EmailError> {
    let mut b = lettre::Message::builder()
        .message_id(Some(format!("<{id}>")))
        .from(mailbox(&message.from)?)
        .subject(message.subject.clone());
    for to in &message.to {
        b = b.to(mailbox(to)?);
    }
    for cc in &message.cc {
        b = b.cc(mailbox(cc)?);
    }
    for bcc in &message.bcc {
        b = b.bcc(mailbox(bcc)?);
    }
    if let Some(r) = &message.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    let built = match &message.html_body {
        None => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(message.text_body.clone()),
        ),
        Some(html) => b.multipart(MultiPart::alternative_plain_html(
            message.text_body.clone(),
            html.clone(),
        )),
    };
    built.map_err(|e| EmailError::InvalidMessage(e.to_string()))
}

#[async_trait]
impl EmailBackend for SmtpSender {
    async fn send(&self, message: &EmailMessage) -> Result<String, EmailError> {
        let id = format!("{}@{}", uuid::Uuid::new_v4(), self.domain);
        let email = build(message, &id)?;
        self.transport.send(email).await.map_err(send_failure)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_names_only_the_code() {
        let m = rejected_message(Some("550".into()));
        assert!(
            m.contains("(SMTP 550)") && m.contains("will not succeed"),
            "{m}"
        );
        let m = rejected_message(None);
        assert!(!m.contains("SMTP") && m.contains("rejected"), "{m}");
    }
}
