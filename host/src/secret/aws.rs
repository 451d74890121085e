//! AWS Secrets Manager as a secret provider: `${aws-sm:<secret-id>}` gives
//! the secret's string, `${aws-sm:<secret-id>#<field>}` one field of a JSON
//! secret.
//!
//! ```toml
//! [secrets.aws]
//! region = "eu-west-1"
//! endpoint = "https://secretsmanager.eu-west-1.amazonaws.com"  # optional
//! access_key_id = "${env:AWS_ACCESS_KEY_ID}"
//! secret_access_key = "${env:AWS_SECRET_ACCESS_KEY}"
//! ```
//!
//! Each secret is fetched once per resolver (one app load) and kept in
//! memory as a [`Secret`].

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::error::SdkError;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::Secret;

/// `[secrets.aws]` in the host config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSecretsConfig {
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint override (LocalStack, moto, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Access key id; a `${env:…}` / `${file:…}` reference.
    pub access_key_id: String,
    /// Secret access key; a `${env:…}` / `${file:…}` reference.
    pub secret_access_key: String,
    /// Connect and read timeout; default 10 000.
    pub timeout_ms: Option<u64>,
}

impl AwsSecretsConfig {
    /// The connect and read timeout. 0 is refused, as for every other
    /// `*_ms` setting of the host config: a typo should not make every
    /// fetch fail at once (or wait forever).
    pub fn timeout(&self) -> Result<Duration, String> {
        match self.timeout_ms {
            None => Ok(Duration::from_millis(10_000)),
            Some(0) => {
                Err("`secrets.aws.timeout_ms` is 0; it must be at least 1 (milliseconds)".into())
            }
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }
}

/// A Secrets Manager client with a per-load cache.
#[derive(Debug)]
pub struct AwsSecrets {
    client: Client,
    cache: Mutex<HashMap<String, Secret>>,
}

impl AwsSecrets {
    /// Builds the client; credentials are already resolved and `timeout`
    /// checked ([`AwsSecretsConfig::timeout`]).
    pub fn new(
        config: &AwsSecretsConfig,
        timeout: Duration,
        key_id: &Secret,
        secret_key: &Secret,
    ) -> AwsSecrets {
        let credentials = aws_credential_types::Credentials::new(
            key_id.expose(),
            secret_key.expose(),
            None,
            None,
            "berth-host-config",
        );
        let mut builder = aws_sdk_secretsmanager::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .read_timeout(timeout)
                    // A whole lookup, retries included, is bounded too: a
                    // server that answers slowly without stopping would
                    // otherwise hold the load (and, on `berth serve`, the
                    // loads of the apps after it).
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout.saturating_mul(3))
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        AwsSecrets {
            client: Client::from_conf(builder.build()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `<secret-id>` or `<secret-id>#<field>`. Errors name the
    /// reference and the kind of failure, never a value.
    pub async fn get(&self, reference: &str) -> Result<Secret, String> {
        let (id, field) = match reference.split_once('#') {
            Some((id, field)) => (id, Some(field)),
            None => (reference, None),
        };
        if id.is_empty() {
            return Err("`${aws-sm:}` needs a secret id".into());
        }
        let whole = self.fetch(id).await?;
        let Some(field) = field else {
            return Ok(whole);
        };
        let json: serde_json::Value = serde_json::from_str(whole.expose()).map_err(|_| {
            format!("AWS secret `{id}` is not a JSON object, so it has no field `{field}`")
        })?;
        match json.get(field) {
            Some(serde_json::Value::String(s)) => Ok(Secret::new(s.clone())),
            Some(v) if !v.is_null() => Ok(Secret::new(v.to_string())),
            _ => Err(format!("AWS secret `{id}` has no field `{field}`")),
        }
    }

    async fn fetch(&self, id: &str) -> Result<Secret, String> {
        let mut cache = self.cache.lock().await;
        if let Some(hit) = cache.get(id) {
            return Ok(hit.clone());
        }
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| describe(id, e))?;
        let value = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => s.to_owned(),
            (None, Some(b)) => String::from_utf8(b.as_ref().to_vec())
                .map_err(|_| format!("AWS secret `{id}` is binary, not UTF-8 text"))?,
            (None, None) => return Err(format!("AWS secret `{id}` has no value")),
        };
        let secret = Secret::new(value);
        cache.insert(id.to_owned(), secret.clone());
        Ok(secret)
    }
}

/// The kind of failure, without anything the SDK echoed back.
fn describe<E, R>(id: &str, e: SdkError<E, R>) -> String
where
    E: aws_sdk_secretsmanager::error::ProvideErrorMetadata,
{
    match &e {
        SdkError::ServiceError(s) => format!(
            "cannot read AWS secret `{id}`: {}",
            s.err().code().unwrap_or("service error")
        ),
        SdkError::TimeoutError(_) => format!("cannot read AWS secret `{id}`: timed out"),
        SdkError::DispatchFailure(_) => {
            format!("cannot read AWS secret `{id}`: cannot connect to Secrets Manager at startup")
        }
        _ => format!("cannot read AWS secret `{id}`: request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(timeout_ms: Option<u64>) -> AwsSecretsConfig {
        AwsSecretsConfig {
            region: "eu-west-1".into(),
            endpoint: None,
            access_key_id: "${env:A}".into(),
            secret_access_key: "${env:B}".into(),
            timeout_ms,
        }
    }

    #[test]
    fn timeout_defaults_and_refuses_zero() {
        assert_eq!(config(None).timeout(), Ok(Duration::from_secs(10)));
        assert_eq!(config(Some(250)).timeout(), Ok(Duration::from_millis(250)));
        let err = config(Some(0)).timeout().unwrap_err();
        assert!(err.contains("secrets.aws.timeout_ms"), "{err}");
    }
}
