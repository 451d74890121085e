//! A per-app send rate for email: a token bucket in front of the app's mail
//! transport, so one tenant cannot flood the shared SMTP relay (or get it
//! blocklisted for everyone).

use std::sync::Arc;

use async_trait::async_trait;

use super::{EmailBackend, EmailError, EmailMessage};
use crate::rate::TokenBucket;

/// Default messages per minute per app.
pub const DEFAULT_PER_MINUTE: u32 = 120;

/// Allows `per_minute` messages a minute, in bursts of up to `per_minute`.
pub struct RateLimited {
    inner: Arc<dyn EmailBackend>,
    bucket: Arc<TokenBucket>,
}

impl RateLimited {
    /// Limits `inner` to what `bucket` allows: the app's
    /// (`app_limits.emails_per_minute`, see [`crate::rate::AppAllowance`]),
    /// shared by its versions. 0 would refuse every message as
    /// `rate-limited` (which invites a retry), so the host config refuses
    /// it at load.
    pub fn new(inner: Arc<dyn EmailBackend>, bucket: Arc<TokenBucket>) -> Self {
        Self { inner, bucket }
    }
}

#[async_trait]
impl EmailBackend for RateLimited {
    async fn send(&self, message: &EmailMessage) -> Result<String, EmailError> {
        if !self.bucket.take() {
            tracing::warn!("email send rate of the app ([app_limits] emails_per_minute) reached");
            return Err(EmailError::RateLimited);
        }
        self.inner.send(message).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Sink;

    #[async_trait]
    impl EmailBackend for Sink {
        async fn send(&self, _: &EmailMessage) -> Result<String, EmailError> {
            Ok("id".into())
        }
    }

    #[tokio::test]
    async fn bursts_up_to_the_rate_then_refuses() {
        let bucket = Arc::new(TokenBucket::new(3, Duration::from_secs(60)));
        let limited = RateLimited::new(Arc::new(Sink), bucket);
        let msg = EmailMessage::default();
        for _ in 0..3 {
            assert!(limited.send(&msg).await.is_ok());
        }
        assert_eq!(limited.send(&msg).await, Err(EmailError::RateLimited));
    }
}
