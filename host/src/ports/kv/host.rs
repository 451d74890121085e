//! WIT glue for `berth:infra/kv`: grant checks, key and value limits, and
//! the mapping of [`KvError`] to the guest's `error`.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;
use wasmtime::component::Resource;

use super::{KvBackend, KvError, MAX_TTL_MS};
use crate::bindings::ports::kv::{self as wit, Error, KeyPage};
use crate::metrics::Port;
use crate::ports::error_chain;
use crate::state::InstanceState;

/// Backs a guest `bucket`.
#[derive(Clone)]
pub struct BucketHandle {
    name: Arc<str>,
    backend: Arc<dyn KvBackend>,
}

impl BucketHandle {
    /// The bucket's logical name.
    pub(super) fn name(&self) -> &Arc<str> {
        &self.name
    }
}

type Res<T> = wasmtime::Result<Result<T, Error>>;

/// A guest's `ttl-ms` as the adapters take it: capped at [`MAX_TTL_MS`],
/// so a huge TTL (`u64::MAX`) means "effectively forever" on every backend
/// instead of failing on the one whose clock it overflows (Redis); and at
/// least 1 ms, the least Redis takes, so that a TTL of 0 behaves alike on
/// every backend (the key lives for at most a millisecond).
fn guest_ttl(ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms.clamp(1, MAX_TTL_MS))
}

impl InstanceState {
    fn kv_span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("kv", op, app = %self.env.app, component = %self.env.component)
    }

    /// The one place a [`KvError`] becomes a guest error.
    fn kv_error(&self, op: &str, e: KvError) -> Error {
        tracing::debug!(app = %self.env.app, component = %self.env.component, op, error = %error_chain(&e), "kv error");
        if let KvError::NotGranted(n) = &e {
            crate::audit::refused(&self.env.app, &self.env.component, "kv.not-granted", n);
        }
        match e {
            KvError::NotGranted(n) => Error::NotGranted(n),
            KvError::InvalidInput(m) => Error::InvalidInput(m),
            KvError::NotANumber(m) => Error::NotANumber(m),
            KvError::Unavailable(_) => Error::Unavailable("the store is unavailable".into()),
            KvError::Other(m) => Error::Other(m),
        }
    }

    fn kv_check_key(&self, key: &str) -> Result<(), KvError> {
        let max = self.env.limits.payloads.max_key_bytes;
        if key.is_empty() {
            return Err(KvError::InvalidInput("key is empty".into()));
        }
        if key.len() > max {
            return Err(KvError::InvalidInput(format!(
                "key is longer than {max} bytes"
            )));
        }
        Ok(())
    }

    fn kv_check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max = self.env.limits.payloads.kv_max_value_bytes;
        if value.len() > max {
            self.env.counters.limit("payload");
            return Err(KvError::InvalidInput(format!(
                "value is {} bytes; at most {max} allowed",
                value.len()
            )));
        }
        Ok(())
    }

    /// Validates, then runs `op` against the bucket's backend, and meters
    /// the call (`bytes_in` sent by the guest, `bytes_out` of the result).
    async fn kv_call<T, F, Fut>(
        &mut self,
        this: &Resource<BucketHandle>,
        op: &'static str,
        check: Result<(), KvError>,
        bytes_in: usize,
        f: F,
        bytes_out: fn(&T) -> usize,
    ) -> Res<T>
    where
        F: FnOnce(Arc<dyn KvBackend>) -> Fut,
        Fut: Future<Output = Result<T, KvError>> + Send,
    {
        let started = crate::metrics::Started::now();
        let handle = self.table.get(this)?;
        let (backend, name) = (handle.backend.clone(), handle.name.clone());
        let result = match check {
            Ok(()) => f(backend).instrument(self.kv_span(op)).await,
            Err(e) => Err(e),
        };
        let result = result.map_err(|e| self.kv_error(op, e));
        self.meter(Port::Kv, op, &name, started, &result, bytes_in, bytes_out);
        Ok(result)
    }
}

impl wit::Host for InstanceState {}

impl wit::HostBucket for InstanceState {
    async fn open(&mut self, name: String) -> Res<Resource<BucketHandle>> {
        let started = crate::metrics::Started::now();
        let backend =
            crate::ports::granted_backend(&self.env.grants.kv, &self.env.backends.kv, &name);
        let result = match backend {
            Some(backend) => Ok(self.table.push(BucketHandle {
                name: name.as_str().into(),
                backend,
            })?),
            None => Err(self.kv_error("open", KvError::NotGranted(name.clone()))),
        };
        self.meter(Port::Kv, "open", &name, started, &result, 0, |_| 0);
        Ok(result)
    }

    async fn get(&mut self, this: Resource<BucketHandle>, key: String) -> Res<Option<Vec<u8>>> {
        let check = self.kv_check_key(&key);
        let bytes_in = key.len();
        self.kv_call(
            &this,
            "get",
            check,
            bytes_in,
            move |b| async move { b.get(&key).await },
            |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len),
        )
        .await
    }

    async fn set(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Res<()> {
        let check = self
            .kv_check_key(&key)
            .and_then(|()| self.kv_check_value(&value));
        let ttl = ttl_ms.map(guest_ttl);
        let bytes_in = key.len() + value.len();
        self.kv_call(
            &this,
            "set",
            check,
            bytes_in,
            move |b| async move { b.set(&key, value, ttl).await },
            |_| 0,
        )
        .await
    }

    async fn delete(&mut self, this: Resource<BucketHandle>, key: String) -> Res<bool> {
        let check = self.kv_check_key(&key);
        let bytes_in = key.len();
        self.kv_call(
            &this,
            "delete",
            check,
            bytes_in,
            move |b| async move { b.delete(&key).await },
            |_| 0,
        )
        .await
    }

    async fn exists(&mut self, this: Resource<BucketHandle>, key: String) -> Res<bool> {
        let check = self.kv_check_key(&key);
        let bytes_in = key.len();
        self.kv_call(
            &this,
            "exists",
            check,
            bytes_in,
            move |b| async move { b.exists(&key).await },
            |_| 0,
        )
        .await
    }

    async fn list_keys(
        &mut self,
        this: Resource<BucketHandle>,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Res<KeyPage> {
        let limit = limit.clamp(1, self.env.limits.payloads.max_page_size) as usize;
        let max = self.env.limits.payloads.max_key_bytes;
        // A cursor is a key a page ended with: no longer than a key.
        let check = if prefix.len() > max {
            Err(KvError::InvalidInput(format!(
                "prefix is longer than {max} bytes"
            )))
        } else if cursor.as_ref().is_some_and(|c| c.len() > max) {
            Err(KvError::InvalidInput(format!(
                "cursor is longer than {max} bytes"
            )))
        } else {
            Ok(())
        };
        let bytes_in = prefix.len();
        self.kv_call(
            &this,
            "list-keys",
            check,
            bytes_in,
            move |b| async move {
                let page = b.list_keys(&prefix, cursor.as_deref(), limit).await?;
                Ok(KeyPage {
                    keys: page.keys,
                    cursor: page.cursor,
                })
            },
            |page: &KeyPage| page.keys.iter().map(String::len).sum(),
        )
        .await
    }

    async fn increment(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> Res<i64> {
        let check = self.kv_check_key(&key);
        let bytes_in = key.len();
        self.kv_call(
            &this,
            "increment",
            check,
            bytes_in,
            move |b| async move { b.increment(&key, delta).await },
            |_| 0,
        )
        .await
    }

    async fn compare_and_swap(
        &mut self,
        this: Resource<BucketHandle>,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Res<bool> {
        // `expected` is capped like a value, so a guest cannot make the
        // store take (and compare) an argument of any size.
        let check = self
            .kv_check_key(&key)
            .and_then(|()| self.kv_check_value(&new))
            .and_then(|()| {
                expected
                    .as_deref()
                    .map_or(Ok(()), |e| self.kv_check_value(e))
            });
        let bytes_in = key.len() + new.len() + expected.as_ref().map_or(0, Vec::len);
        self.kv_call(
            &this,
            "compare-and-swap",
            check,
            bytes_in,
            move |b| async move { b.compare_and_swap(&key, expected.as_deref(), new).await },
            |_| 0,
        )
        .await
    }

    async fn drop(&mut self, rep: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ttls_are_capped_at_the_maximum() {
        assert_eq!(guest_ttl(0), Duration::from_millis(1));
        assert_eq!(guest_ttl(1_500), Duration::from_millis(1_500));
        assert_eq!(guest_ttl(MAX_TTL_MS), Duration::from_millis(MAX_TTL_MS));
        assert_eq!(guest_ttl(MAX_TTL_MS + 1), Duration::from_millis(MAX_TTL_MS));
        assert_eq!(guest_ttl(u64::MAX), Duration::from_millis(MAX_TTL_MS));
    }
}
