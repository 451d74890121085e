//! The `logging` port: guest records go into the host's `tracing` pipeline
//! under the target `berth::guest`, tagged with app and component, at most
//! as many per second as the app's [`budget`] allows.

pub mod budget;
pub mod output;

use crate::audit::quoted;
use crate::bindings::ports::logging::{self as wit, Level};
use crate::metrics::Port;
use crate::ports::truncate;
use crate::state::InstanceState;

/// Longest message kept; longer ones are cut so a guest cannot flood logs
/// with one record.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Most fields kept per record.
const MAX_FIELDS: usize = 32;

/// Whether the host's log filter keeps a guest record of `level`.
fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(target: "berth::guest", tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(target: "berth::guest", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "berth::guest", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "berth::guest", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "berth::guest", tracing::Level::ERROR),
    }
}

/// A guest's field name as the record shows it: characters other than
/// `A-Z a-z 0-9 _ . -` written `_`, so that a name cannot pose as more
/// fields (`x app="other"`).
fn field_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl wit::Host for InstanceState {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let started = crate::metrics::Started::now();
        let bytes_in = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let skip = |state: &Self| {
            let ok: Result<(), ()> = Ok(());
            state.meter(Port::Logging, "log", "", started, &ok, bytes_in, |_| 0);
            Ok(())
        };
        // A record the host's filter drops spends nothing of the budget:
        // debug records must not crowd out the warnings.
        if !enabled(level) {
            return skip(self);
        }
        // Neither the message nor a field can make a line of the host's
        // log of its own (see `audit::printable`), nor pose as a field of
        // the host's: both are quoted values after the host's `app` and
        // `component` (a bare message came first, so `refund app=billing`
        // read as a record of app `billing` to a parser keeping the first
        // `app`, and a field list unquoted could end in one).
        let text = quoted(truncate(&message, MAX_MESSAGE_BYTES));
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    field_name(truncate(k, 128)),
                    quoted(truncate(v, 1024))
                )
            })
            .collect();
        let fields = quoted(&fields.join(" "));
        // What the record takes in the log, escapes included, counts
        // against the budget (escaping writes a control character in six
        // bytes or more).
        if !self
            .env
            .backends
            .log_budget
            .admit(&self.env.app, text.len() + fields.len())
        {
            return skip(self);
        }
        let (app, component) = (&self.env.app, &self.env.component);
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "berth::guest", $lvl, app = %app, component = %component, text = %text, fields = %fields)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_cannot_pose_as_more_fields() {
        assert_eq!(field_name("order.id-2_x"), "order.id-2_x");
        assert_eq!(field_name("x app=\"other\"\n"), "x_app__other__");
    }
}
