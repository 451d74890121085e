//! The host's log: where it goes, and the filter that keeps credentials
//! out of it whatever `BERTH_LOG` asks.

/// Sends the host's log to stderr, filtered by `BERTH_LOG` ([`log_filter`]).
pub(super) fn init() {
    let requested = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter(&requested))
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a file on a full disk)
        // is dropped. By default the subscriber reports that with
        // `eprintln!`, which panics when stderr fails again: in whatever
        // task logged, a guest's `logging` call or a trigger's loop.
        .log_internal_errors(false)
        .try_init();
}

/// Crates whose debug/trace events print credentials they were given (the
/// AWS SDK logs resolved identities, including access key ids; async-nats
/// logs server URLs with their passwords; lapin logs AMQP frames); they are
/// capped at `info` whatever `BERTH_LOG` asks, so no secret reaches a log.
const CREDENTIAL_ECHOING_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_sigv4",
    "aws_sdk_s3",
    "aws_runtime",
    "aws_credential_types",
    "aws_sdk_secretsmanager",
    "aws_smithy_http_client",
    "async_nats",
    // lapin's trace events print AMQP frames, the login's password included.
    "lapin",
    "amq_protocol",
    // sqlx logs each statement's text at debug: tenants' literals, and any
    // DDL that carries a password.
    "sqlx",
];

/// The host's log filter: `requested` (the `BERTH_LOG` syntax, falling back
/// to `info` when malformed) with the credential-echoing crates capped.
/// The requested directives naming those crates or their modules are
/// dropped, since the most specific directive wins (`sqlx::query=debug`
/// would pass the cap `sqlx=info`), and so are span directives
/// (`[sql]=trace`), which enable every event inside the span whatever its
/// crate.
pub fn log_filter(requested: &str) -> tracing_subscriber::EnvFilter {
    let capped = |directive: &str| {
        if directive.contains('[') {
            return true;
        }
        let target = directive.split('=').next().unwrap_or_default().trim();
        CREDENTIAL_ECHOING_TARGETS.iter().any(|t| {
            target
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
    };
    let requested: Vec<&str> = requested
        .split(',')
        .filter(|d| !d.trim().is_empty() && !capped(d))
        .collect();
    let requested = match requested.is_empty() {
        true => "info".to_string(),
        false => requested.join(","),
    };
    // The cap lowers those crates to `info`, never raises them above what
    // was asked of every target (`BERTH_LOG=warn` or `off`).
    let cap = requested
        .split(',')
        .rev()
        .map(str::trim)
        .find(|d| !d.contains('='))
        .and_then(|global| {
            ["off", "error", "warn"]
                .into_iter()
                .find(|quiet| global.eq_ignore_ascii_case(quiet))
        })
        .unwrap_or("info");
    let mut filter = tracing_subscriber::EnvFilter::try_new(requested)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in CREDENTIAL_ECHOING_TARGETS {
        if let Ok(directive) = format!("{target}={cap}").parse() {
            filter = filter.add_directive(directive);
        }
    }
    // lapin logs every channel the broker closes as an error, including the
    // expected refusals of the RabbitMQ adapter's id claims; the adapter
    // reports the failures that matter itself.
    if let Ok(directive) = "lapin::channel=off".parse() {
        filter = filter.add_directive(directive);
    }
    // Postgres notices carry text a guest chose (`DROP TABLE IF EXISTS
    // "<anything>"`), without naming the app.
    if let Ok(directive) = "sqlx::postgres::notice=off".parse() {
        filter = filter.add_directive(directive);
    }
    filter
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_filter_caps_credential_echoing_crates_whatever_is_asked() {
        let filter = super::log_filter(
            "info,sqlx::query=debug,aws_sdk_s3::operation=trace,sqlxtra=debug,berth=debug,[sql]=trace",
        )
        .to_string()
        .to_lowercase();
        assert!(!filter.contains("sqlx::query"), "{filter}");
        assert!(!filter.contains("aws_sdk_s3::operation"), "{filter}");
        assert!(!filter.contains("[sql]"), "{filter}");
        for kept in ["sqlx=info", "sqlxtra=debug", "berth=debug", "notice=off"] {
            assert!(filter.contains(kept), "{kept}: {filter}");
        }
        let only_capped = super::log_filter("sqlx=trace").to_string().to_lowercase();
        assert!(!only_capped.contains("trace"), "{only_capped}");
        // A quieter log for every target quiets those crates too.
        for quiet in ["warn", "off", "berth=debug,error"] {
            let filter = super::log_filter(quiet).to_string().to_lowercase();
            assert!(!filter.contains("async_nats=info"), "{quiet}: {filter}");
        }
    }
}
