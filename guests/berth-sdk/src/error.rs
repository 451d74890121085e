//! One error type for every port.

use std::fmt;

use crate::raw::berth::infra;

/// What a call through the SDK can fail with.
///
/// Port errors keep the port's own variant (match on it to tell a
/// constraint violation from an outage); the SDK's own failures (a column
/// that does not convert, a malformed URL) are [`Error::Decode`] and
/// [`Error::Invalid`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// From the SQL port.
    Sql(infra::sql::Error),
    /// From the key-value port.
    Kv(infra::kv::Error),
    /// From the blob port.
    Blob(infra::blob::Error),
    /// From the config port.
    Config(infra::config::Error),
    /// From the messaging port.
    Messaging(infra::messaging::Error),
    /// From the email port.
    Email(infra::email::Error),
    /// From outbound HTTP (`wasi:http`).
    Http(String),
    /// A value could not be turned into the Rust type asked for (a row
    /// column, a config value, a body).
    Decode(String),
    /// The caller passed something the SDK refuses (a column name not in an
    /// entity, a malformed URL): a bug of the component, answered with 500.
    Invalid(String),
    /// The HTTP request is malformed (a path parameter that does not parse,
    /// a body that is not UTF-8, input a handler rejects): answered with
    /// `400` and this message, which the client sees.
    BadRequest(String),
    /// A required value is absent (a config key with no value).
    Missing(String),
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sql(e) => write!(f, "sql: {e:?}"),
            Error::Kv(e) => write!(f, "kv: {e:?}"),
            Error::Blob(e) => write!(f, "blob: {e:?}"),
            Error::Config(e) => write!(f, "config: {e:?}"),
            Error::Messaging(e) => write!(f, "messaging: {e:?}"),
            Error::Email(e) => write!(f, "email: {e:?}"),
            Error::Http(m) => write!(f, "http: {m}"),
            Error::Decode(m) => write!(f, "cannot decode: {m}"),
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::BadRequest(m) => write!(f, "bad request: {m}"),
            Error::Missing(m) => write!(f, "missing: {m}"),
        }
    }
}

impl std::error::Error for Error {}

macro_rules! from_port_error {
    ($($port:ident => $variant:ident),* $(,)?) => {$(
        impl From<infra::$port::Error> for Error {
            fn from(e: infra::$port::Error) -> Self {
                Error::$variant(e)
            }
        }
    )*};
}

from_port_error!(sql => Sql, kv => Kv, blob => Blob, config => Config, messaging => Messaging, email => Email);

impl From<std::string::FromUtf8Error> for Error {
    fn from(e: std::string::FromUtf8Error) -> Self {
        Error::Decode(format!("not UTF-8: {e}"))
    }
}

impl Error {
    /// Whether retrying the same call later may succeed (the backend was
    /// unavailable, a transaction conflicted, a request timed out, the
    /// app's email rate was used up). An outbound HTTP failure
    /// ([`Error::Http`]) is not told apart, and counts as not retriable.
    pub fn is_retriable(&self) -> bool {
        use infra::{blob, config, email, kv, messaging, sql};
        matches!(
            self,
            Error::Sql(sql::Error::Unavailable(_) | sql::Error::Conflict(_) | sql::Error::Timeout)
                | Error::Email(email::Error::Unavailable(_) | email::Error::RateLimited)
                | Error::Kv(kv::Error::Unavailable(_))
                | Error::Blob(blob::Error::Unavailable(_))
                | Error::Config(config::Error::Unavailable(_))
                | Error::Messaging(messaging::Error::Unavailable(_) | messaging::Error::Timeout)
        )
    }

    /// Whether this is a "not found" of the blob port or a [`Error::Missing`].
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Blob(infra::blob::Error::NotFound) | Error::Missing(_)
        )
    }
}
