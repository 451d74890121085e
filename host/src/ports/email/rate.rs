//! A per-app send rate for email: a token bucket in front of the app's mail
//! transport, so one tenant cannot flood the shared SMTP relay (or get it
//! blocklisted for everyone).

use std::sync::Arc;

use async_trait::async_trait;

use super::{EmailBackend, EmailError, EmailMessage};
use crate::rate::TokenBucket;

/// Default messages per minute per app.
pub const DEFAULT_PER_MINUTE: u32 = 120;

/// Default recipients per minute per app (to, cc and bcc together).
pub const DEFAULT_RECIPIENTS_PER_MINUTE: u32 = 600;

/// Allows so many messages and so many recipients a minute, each in bursts
/// of up to its rate.
pub struct RateLimited {
    /// The app whose rates these are, named in the host's warnings.
    app: String,
    inner: Arc<dyn EmailBackend>,
    messages: Arc<TokenBucket>,
    recipients: Arc<TokenBucket>,
}

impl RateLimited {
    /// Limits `inner` to what `messages` and `recipients` allow: the app's
    /// (`app_limits.emails_per_minute` and
    /// `app_limits.email_recipients_per_minute`, see
    /// [`crate::rate::AppAllowance`]), shared by its versions. A message
    /// to n recipients takes n of the recipients' rate, so fifty
    /// recipients a message cannot multiply the message rate by fifty. 0
    /// would refuse every message as `rate-limited` (which invites a
    /// retry), so the host config refuses it at load.
    pub fn new(
        app: &str,
        inner: Arc<dyn EmailBackend>,
        messages: Arc<TokenBucket>,
        recipients: Arc<TokenBucket>,
    ) -> Self {
        Self {
            app: app.to_string(),
            inner,
            messages,
            recipients,
        }
    }
}

#[async_trait]
impl EmailBackend for RateLimited {
    async fn send(&self, message: &EmailMessage) -> Result<String, EmailError> {
        let count = message.to.len() + message.cc.len() + message.bcc.len();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        // A message to more recipients than the rate holds takes the whole
        // rate, once it is full (see `TokenBucket::take_n`).
        // Each refusal is warned of at a bounded rate per app: a guest can
        // call `send` in a loop once its rate is spent.
        if !self.recipients.take_n(count) {
            if crate::audit::app_warning_due(&self.app) {
                tracing::warn!(
                    app = %self.app,
                    "email recipient rate of the app ([app_limits] email_recipients_per_minute) reached"
                );
            }
            return Err(EmailError::RateLimited);
        }
        if !self.messages.take() {
            // Not sent: its recipients do not count.
            self.recipients.give_back(count);
            if crate::audit::app_warning_due(&self.app) {
                tracing::warn!(
                    app = %self.app,
                    "email send rate of the app ([app_limits] emails_per_minute) reached"
                );
            }
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

    fn per_minute(count: u32) -> Arc<TokenBucket> {
        Arc::new(TokenBucket::new(count, Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn bursts_up_to_the_rate_then_refuses() {
        let limited = RateLimited::new("shop", Arc::new(Sink), per_minute(3), per_minute(100));
        let msg = EmailMessage {
            to: vec!["a@example.com".into()],
            ..Default::default()
        };
        for _ in 0..3 {
            assert!(limited.send(&msg).await.is_ok());
        }
        assert_eq!(limited.send(&msg).await, Err(EmailError::RateLimited));
    }

    /// Recipients count one by one, to, cc and bcc alike: messages to many
    /// recipients reach the recipient rate before the message rate.
    #[tokio::test]
    async fn recipients_count_one_by_one() {
        let limited = RateLimited::new("shop", Arc::new(Sink), per_minute(100), per_minute(10));
        let msg = EmailMessage {
            to: vec!["a@example.com".into(), "b@example.com".into()],
            cc: vec!["c@example.com".into()],
            bcc: vec!["d@example.com".into()],
            ..Default::default()
        };
        assert!(limited.send(&msg).await.is_ok());
        assert!(limited.send(&msg).await.is_ok());
        assert_eq!(limited.send(&msg).await, Err(EmailError::RateLimited));
    }

    /// A message refused by the message rate takes nothing of the
    /// recipients' rate.
    #[tokio::test]
    async fn a_message_not_sent_counts_no_recipients() {
        let limited = RateLimited::new("shop", Arc::new(Sink), per_minute(1), per_minute(10));
        let msg = EmailMessage {
            to: vec!["a@example.com".into(); 5],
            ..Default::default()
        };
        assert!(limited.send(&msg).await.is_ok());
        for _ in 0..3 {
            assert_eq!(limited.send(&msg).await, Err(EmailError::RateLimited));
        }
        assert!(limited.recipients.take_n(5), "five recipients are left");
    }
}
