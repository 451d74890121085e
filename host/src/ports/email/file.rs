//! Embedded email sink: writes each message as an `.eml` file into the
//! app's state directory and logs it, so a newcomer sees what would have
//! been sent without any mail server.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{EmailBackend, EmailError, EmailMessage};

/// Writes messages to `<dir>/<id>.eml`.
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    /// A sink writing into `dir` (created if needed).
    pub fn open(dir: PathBuf) -> Result<FileSink, EmailError> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            EmailError::Unavailable(format!("cannot create email directory: {}", e.kind()))
        })?;
        Ok(FileSink { dir })
    }
}

/// Renders a validated message as RFC 5322 text.
pub fn render(message: &EmailMessage, id: &str) -> String {
    let mut out = String::new();
    let mut header = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    };
    header("Message-ID", &format!("<{id}>"));
    header("From", &message.from);
    header("To", &message.to.join(", "));
    if !message.cc.is_empty() {
        header("Cc", &message.cc.join(", "));
    }
    if !message.bcc.is_empty() {
        header("Bcc", &message.bcc.join(", "));
    }
    if let Some(r) = &message.reply_to {
        header("Reply-To", r);
    }
    header("Subject", &message.subject);
    header("MIME-Version", "1.0");
    match &message.html_body {
        None => {
            header("Content-Type", "text/plain; charset=utf-8");
            out.push_str("\r\n");
            out.push_str(&message.text_body);
        }
        Some(html) => {
            let boundary = format!("berth-{id}");
            header(
                "Content-Type",
                &format!("multipart/alternative; boundary=\"{boundary}\""),
            );
            out.push_str(&format!(
                "\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--{boundary}--\r\n",
                message.text_body
            ));
        }
    }
    out
}

#[async_trait]
impl EmailBackend for FileSink {
    async fn send(&self, message: &EmailMessage) -> Result<String, EmailError> {
        let id = format!("{}@berth.local", uuid::Uuid::new_v4());
        let path = self.dir.join(format!("{id}.eml"));
        tokio::fs::write(&path, render(message, &id))
            .await
            .map_err(|e| {
                EmailError::Unavailable(format!("cannot write email file: {}", e.kind()))
            })?;
        tracing::info!(
            message_id = %id,
            from = %message.from,
            to = ?message.to,
            subject = %message.subject,
            file = %path.display(),
            "email written to the local sink"
        );
        Ok(id)
    }
}
