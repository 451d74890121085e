//! A guest's stdout and stderr on the HTTP and message triggers: each line
//! goes into the host's log under the target `berth::guest`, tagged with
//! app, component and stream, escaped and quoted (see [`crate::audit::quoted`]) and
//! counted against the app's [`LogBudget`]. Raw bytes on the host's own
//! stderr would let a tenant write lines posing as the host's (or another
//! tenant's), terminal escape sequences included, and flood the log.
//!
//! (`berth run` runs a command for the person at the terminal: its output
//! stays the guest's own.)

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::budget::LogBudget;
use crate::audit::quoted;

/// The longest line kept; the rest of a longer one is dropped.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Whose output a [`GuestOutput`] logs: built once per component at load,
/// shared by its instances.
pub struct OutputOwner {
    /// The app (tenant).
    pub app: String,
    /// The component.
    pub component: String,
    /// The app's log budget.
    pub budget: Arc<LogBudget>,
}

/// One of an instance's output streams (`stdout` or `stderr`), as given to
/// its `WasiCtx`. Every handle the guest takes of it shares one line
/// buffer: a guest taking thousands of handles holds no more host memory
/// than one.
pub struct GuestOutput {
    lines: Arc<Mutex<Lines>>,
}

impl GuestOutput {
    /// The `stream` (`"stdout"` or `"stderr"`) of an instance of `owner`.
    pub fn new(owner: Arc<OutputOwner>, stream: &'static str) -> Self {
        Self {
            lines: Arc::new(Mutex::new(Lines {
                owner,
                stream,
                line: Vec::new(),
                cut: false,
            })),
        }
    }

    fn lines(&self) -> LineLog {
        LineLog(self.lines.clone())
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.lines())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.lines())
    }
}

/// A handle of a [`GuestOutput`].
struct LineLog(Arc<Mutex<Lines>>);

impl LineLog {
    fn take(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take(bytes);
    }
}

/// Collects a stream's bytes into lines and logs each complete one; the
/// last, unfinished line is logged when the stream and its handles are
/// gone.
struct Lines {
    owner: Arc<OutputOwner>,
    stream: &'static str,
    /// The line so far, at most [`MAX_LINE_BYTES`].
    line: Vec<u8>,
    /// Whether the line so far lost bytes past [`MAX_LINE_BYTES`].
    cut: bool,
}

impl Lines {
    fn take(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            let room = MAX_LINE_BYTES - self.line.len();
            if text.len() > room {
                self.cut = true;
            }
            self.line.extend_from_slice(&text[..text.len().min(room)]);
            if ends {
                self.emit();
            }
        }
    }

    fn emit(&mut self) {
        let owner = &*self.owner;
        // A line the host's filter drops spends nothing of the budget; one
        // it keeps spends what it takes in the log, escapes included.
        if tracing::enabled!(target: "berth::guest", tracing::Level::INFO) {
            let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
            // A quoted value after the host's fields, as a logging port
            // record's text is (see `ports::logging`).
            let text = quoted(&String::from_utf8_lossy(line));
            if owner.budget.admit(&owner.app, text.len()) {
                tracing::info!(
                    target: "berth::guest",
                    app = %owner.app,
                    component = %owner.component,
                    stream = self.stream,
                    cut = self.cut,
                    line = %text
                );
            }
        }
        self.line.clear();
        self.cut = false;
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.line.is_empty() || self.cut {
            self.emit();
        }
    }
}

impl OutputStream for LineLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LineLog {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> GuestOutput {
        GuestOutput::new(
            Arc::new(OutputOwner {
                app: "shop".into(),
                component: "api".into(),
                budget: Arc::new(LogBudget::new(1000, 1024)),
            }),
            "stderr",
        )
    }

    #[test]
    fn lines_are_collected_and_long_ones_cut() {
        let output = output();
        let (log, other) = (output.lines(), output.lines());
        let state = || {
            let lines = output.lines.lock().unwrap();
            (lines.line.clone(), lines.cut)
        };
        log.take(b"one\ntw");
        assert_eq!(state().0, b"tw", "the unfinished line waits");
        other.take(b"o\n");
        assert!(state().0.is_empty(), "handles share one line");
        log.take(&vec![b'x'; MAX_LINE_BYTES + 10]);
        assert_eq!(state().0.len(), MAX_LINE_BYTES);
        assert!(state().1);
        other.take(b"\n");
        assert_eq!(state(), (Vec::new(), false));
    }
}
