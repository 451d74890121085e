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
        let tmp = self.dir.join(format!(".{id}.eml.tmp"));
        let written = match tokio::fs::File::create_new(&tmp).await {
            Ok(file) => write_whole(file, &tmp, &path, render(message, &id).as_bytes()).await,
            Err(e) => Err(e),
        };
        written.map_err(|e| {
            // The operator's to fix (a full disk, say): the guest only
            // learns the transport is unavailable.
            tracing::warn!(error = %e.kind(), "cannot write an email to the local sink");
            EmailError::Unavailable(format!("cannot write email file: {}", e.kind()))
        })?;
        tracing::info!(
            message_id = %id,
            from = %message.from,
            to = ?message.to,
            subject = %crate::audit::printable(&message.subject),
            file = %path.display(),
            "email written to the local sink"
        );
        Ok(id)
    }
}

/// Writes `contents` into `file`, open at `tmp`, and renames it to `path`:
/// a reader of the sink's directory never sees part of a message, and a
/// write that fails (a full disk) leaves no file behind.
async fn write_whole(
    mut file: tokio::fs::File,
    tmp: &std::path::Path,
    path: &std::path::Path,
    contents: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let written = async {
        file.write_all(contents).await?;
        file.flush().await?;
        // Synced before it is named and the name synced after: a message
        // the guest was told is sent survives a power cut.
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(tmp, path).await?;
        let dir = path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_owned();
        tokio::task::spawn_blocking(move || crate::state_file::sync_dir(&dir))
            .await
            .map_err(std::io::Error::other)?
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/dev/full` answers every write with `ENOSPC`, as a full disk does.
    #[tokio::test]
    async fn a_message_that_cannot_be_written_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, path) = (dir.path().join(".m.tmp"), dir.path().join("m.eml"));
        std::fs::write(&tmp, b"").unwrap();
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let failed = write_whole(full.into(), &tmp, &path, &[b'x'; 64 * 1024])
            .await
            .unwrap_err();
        assert_eq!(failed.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let file = tokio::fs::File::create_new(&tmp).await.unwrap();
        write_whole(file, &tmp, &path, b"whole").await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert!(!tmp.exists());
    }
}
