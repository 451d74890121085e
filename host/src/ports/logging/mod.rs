//! The `logging` port: guest records go into the host's `tracing` pipeline
//! under the target `berth::guest`, tagged with app and component.

use crate::bindings::ports::logging::{self as wit, Level};
use crate::metrics::Port;
use crate::ports::truncate;
use crate::state::InstanceState;

/// Longest message kept; longer ones are cut so a guest cannot flood logs
/// with one record.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Most fields kept per record.
const MAX_FIELDS: usize = 32;

impl wit::Host for InstanceState {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let started = crate::metrics::Started::now();
        let bytes_in = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| format!("{}={:?}", truncate(k, 128), truncate(v, 1024)))
            .collect();
        let fields = fields.join(" ");
        let (app, component) = (&self.env.app, &self.env.component);
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "berth::guest", $lvl, app = %app, component = %component, fields = %fields, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
        let ok: Result<(), ()> = Ok(());
        self.meter(Port::Logging, "log", "", started, &ok, bytes_in, |_| 0);
        Ok(())
    }
}
