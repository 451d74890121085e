//! A per-app send rate for email: a token bucket in front of the app's mail
//! transport, so one tenant cannot flood the shared SMTP relay (or get it
//! blocklisted for everyone).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{EmailBackend, EmailError, EmailMessage};
use crate::rate::TokenBucket;

/// Default messages per minute per app.
pub const DEFAULT_PER_MINUTE: u32 = 120;

/// Allows `per_minute` messages a minute, in bursts of up to `per_minute`.
pub struct RateLimited {
    inner: Arc<dyn EmailBackend>,
    per_minute: u32,
    bucket: TokenBucket,
}

impl RateLimited {
    /// Limits `inner` to `per_minute` messages a minute. 0 would refuse
    /// every message as `rate-limited` (which invites a retry), so the host
    /// config refuses it at load (`app_limits.emails_per_minute`).
    pub fn new(inner: Arc<dyn EmailBackend>, per_minute: u32) -> Self {
        Self {
            inner,
            per_minute,
            bucket: TokenBucket::new(per_minute, Duration::from_secs(60)),
        }
    }
}

#[async_trait]
impl EmailBackend for RateLimited {
    async fn send(&self, message: &EmailMessage) -> Result<String, EmailError> {
        if !self.bucket.take() {
            tracing::warn!(
                per_minute = self.per_minute,
                "email send rate of the app reached"
            );
            return Err(EmailError::RateLimited);
        }
        self.inner.send(message).await
    }
}

#[cfg(test)]
mod tests {
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
        let limited = RateLimited::new(Arc::new(Sink), 3);
        let msg = EmailMessage::default();
        for _ in 0..3 {
            assert!(limited.send(&msg).await.is_ok());
        }
        assert_eq!(limited.send(&msg).await, Err(EmailError::RateLimited));
    }
}
