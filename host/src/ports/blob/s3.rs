//! S3 blob adapter (`aws-sdk-s3`): one logical container is a key prefix
//! in a bucket chosen by the host, so apps and containers can share a
//! bucket without seeing each other's objects.
//!
//! Small objects are single `PutObject`s; chunked writes buffer one part
//! and switch to a multipart upload once a full part is there, so host
//! memory stays bounded by the part size whatever the object size. Reads
//! stream the `GetObject` body, resuming with a ranged `GetObject` of the
//! same version when it breaks off. SDK errors are mapped here: guests see
//! generic messages, the details (which may name the endpoint or bucket)
//! only go to `tracing::debug!`.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use super::{BlobBackend, BlobError, BlobReader, BlobWriter, ObjectInfo, ObjectPage};
use crate::secret::Secret;
use reader::S3Reader;
use writer::S3Writer;
pub use writer::{APP_WRITE_BUFFER_SHARE, WRITE_BUFFER_BUDGET, app_write_buffers};

#[path = "s3_reader.rs"]
mod reader;
#[path = "s3_writer.rs"]
mod writer;

/// S3's smallest part (all parts but the last must be at least this big).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// S3's largest part number: objects are at most this many parts.
const MAX_PARTS: usize = 10_000;

/// S3's longest object key, in bytes of UTF-8, container prefix included.
const MAX_KEY_BYTES: usize = 1024;

/// Settings of an S3 container.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Endpoint URL of an S3-compatible server; AWS when `None`.
    pub endpoint: Option<String>,
    /// Region used for signing.
    pub region: String,
    /// Bucket (must exist).
    pub bucket: String,
    /// Prefix of every object key of the container.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: Secret,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Multipart part size in bytes (at least [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// Connect timeout, and the time from sending a request (including a
    /// whole part's body) to its response headers.
    pub timeout: Duration,
    /// The app's share of the host's upload buffers, shared by all its
    /// containers (see [`app_write_buffers`]).
    pub app_buffers: std::sync::Arc<tokio::sync::Semaphore>,
}

/// A container stored under a key prefix in an S3 bucket.
pub struct S3Container {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
    app_buffers: std::sync::Arc<tokio::sync::Semaphore>,
}

/// S3 error codes after which the same request may succeed.
const RETRIABLE_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "OperationAborted",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
];

/// Maps an SDK error to a [`BlobError`] whose message is safe to show a
/// guest: no endpoint, bucket URL or credential ever reaches it.
fn map_err<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(op, error = %DisplayErrorContext(&e), "s3 error");
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            BlobError::Unavailable("cannot reach the store".into())
        }
        SdkError::ResponseError(_) => {
            BlobError::Unavailable("the store sent an unreadable response".into())
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            match (status, se.err().code()) {
                // A missing bucket is a configuration problem, not a
                // missing object.
                (_, Some("NoSuchBucket")) => {
                    BlobError::Unavailable("the bucket does not exist".into())
                }
                // An upload the store lost is no missing object: the
                // writer's object must be written again.
                (_, Some("NoSuchUpload")) => BlobError::Other(
                    "the store no longer knows this upload; write the object again".into(),
                ),
                (404, _) | (_, Some("NoSuchKey" | "NotFound")) => BlobError::NotFound,
                (_, Some("InvalidObjectState")) => BlobError::Other(
                    "the object is archived; it cannot be read until it is restored".into(),
                ),
                (_, Some("AccessDenied" | "AllAccessDisabled")) => {
                    BlobError::Unavailable("the store denied access".into())
                }
                (401 | 403, _) => {
                    BlobError::Unavailable("the store refused the credentials".into())
                }
                // Busy, throttling, or failed: the same request may succeed
                // later (a 200 carrying an error is one of these too).
                (_, Some(code)) if RETRIABLE_CODES.contains(&code) => {
                    BlobError::Unavailable("the store is busy or failed; retry".into())
                }
                (429 | 500..=599, _) => BlobError::Unavailable("the store failed".into()),
                (status, _) => BlobError::Other(format!("store error (status {status})")),
            }
        }
        _ => BlobError::Other("the store request failed".into()),
    }
}

/// Milliseconds since the epoch of an S3 timestamp (0 if absent).
fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.and_then(|t| t.to_millis().ok())
        .map_or(0, |ms| ms.max(0) as u64)
}

/// Now, for objects this host just wrote: S3 does not return the
/// modification time of a write, and asking costs another round trip.
fn now_ms() -> u64 {
    crate::ports::unix_millis()
}

/// How many empty list pages that say more follow one `list` call reads
/// through before it gives up (see `list`).
const EMPTY_PAGES_FOLLOWED: u32 = 8;

/// Builds a page from `(full key, size, modified)` entries in ascending
/// order: strips `prefix`, keeps at most `limit`, and sets the cursor when
/// more exist (`truncated` by the server, or beyond `limit`).
fn page_of(
    prefix: &str,
    entries: impl IntoIterator<Item = (String, u64, u64)>,
    truncated: bool,
    limit: usize,
) -> ObjectPage {
    let mut objects: Vec<ObjectInfo> = entries
        .into_iter()
        .filter_map(|(key, size, modified_ms)| {
            let key = key.strip_prefix(prefix)?.to_string();
            Some(ObjectInfo {
                key,
                size,
                modified_ms,
            })
        })
        .collect();
    let more = truncated || objects.len() > limit;
    objects.truncate(limit);
    let cursor = if more {
        objects.last().map(|o| o.key.clone())
    } else {
        None
    };
    ObjectPage { objects, cursor }
}

/// `key` under the container's `prefix`, refused as `invalid-key` when S3
/// could not store it: the host checks keys against its own limit, but here
/// the prefix (`<prefix>berth/<app>/<name>/`) takes part of S3's bytes too.
fn full_key(prefix: &str, key: &str) -> Result<String, BlobError> {
    if prefix.len() + key.len() > MAX_KEY_BYTES {
        return Err(BlobError::InvalidKey(format!(
            "key is {} bytes; with this container's {}-byte prefix in the store it would pass \
             S3's {MAX_KEY_BYTES}-byte key limit, so keys here may have at most {} bytes",
            key.len(),
            prefix.len(),
            MAX_KEY_BYTES.saturating_sub(prefix.len())
        )));
    }
    Ok(format!("{prefix}{key}"))
}

impl S3Container {
    /// Builds the client and checks the bucket with `HeadBucket`, so a wrong
    /// endpoint, bucket or credential fails at startup.
    pub async fn connect(s: &S3Settings) -> Result<S3Container, BlobError> {
        let credentials = aws_credential_types::Credentials::new(
            s.access_key_id.expose(),
            s.secret_access_key.expose(),
            None,
            None,
            "berth-host-config",
        );
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(s.timeout)
            .read_timeout(s.timeout)
            .build();
        let mut config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(s.path_style)
            .timeout_config(timeouts)
            // Checksums only where S3 requires them: the default adds
            // trailing checksums that many S3-compatible servers reject,
            // and that need per-part bookkeeping in multipart uploads.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if let Some(endpoint) = &s.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let client = Client::from_conf(config.build());
        client
            .head_bucket()
            .bucket(&s.bucket)
            .send()
            .await
            .map_err(|e| match map_err("head-bucket", e) {
                // HEAD responses have no body, so a missing bucket is a bare 404.
                BlobError::NotFound => BlobError::Unavailable("the bucket does not exist".into()),
                other => other,
            })?;
        Ok(S3Container {
            client,
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            part_size: s.part_size.max(MIN_PART_SIZE),
            app_buffers: s.app_buffers.clone(),
        })
    }

    /// The object key of `key` in the bucket.
    fn key(&self, key: &str) -> Result<String, BlobError> {
        full_key(&self.prefix, key)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, BlobError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(key)?)
            .send()
            .await
            .map_err(|e| map_err("head-object", e))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            modified_ms: millis(out.last_modified()),
        })
    }

    async fn open_body(&self, key: &str) -> Result<(ByteStream, Option<u64>), BlobError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key)?)
            .send()
            .await
            .map_err(|e| map_err("get-object", e))?;
        let len = out.content_length().map(|n| n.max(0) as u64);
        Ok((out.body, len))
    }
}

/// The type objects are stored and served with: opaque bytes, never a
/// page a browser would render. The bucket's origin is every tenant's, so
/// one tenant's HTML served from it as `text/html` could script another's
/// downloads; the file store's URLs are sent the same way.
pub(super) const OBJECT_CONTENT_TYPE: &str = "application/octet-stream";

/// How objects are presented when fetched by URL: saved, not shown.
pub(super) const OBJECT_DISPOSITION: &str = "attachment";

/// A single `PutObject` (for `put`, and writes smaller than one part).
async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    data: Vec<u8>,
) -> Result<(), BlobError> {
    let req = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(OBJECT_CONTENT_TYPE)
        .content_disposition(OBJECT_DISPOSITION);
    let body = ByteStream::from(data);
    req.body(body)
        .send()
        .await
        .map_err(|e| map_err("put-object", e))?;
    Ok(())
}

fn stream_err(e: aws_sdk_s3::primitives::ByteStreamError) -> BlobError {
    tracing::debug!(error = %DisplayErrorContext(&e), "s3 body error");
    BlobError::Unavailable("the object stream broke off".into())
}

#[async_trait]
impl BlobBackend for S3Container {
    fn largest_object(&self) -> Option<(u64, String)> {
        let largest = (self.part_size as u64).saturating_mul(MAX_PARTS as u64);
        Some((
            largest,
            format!(
                "an S3 upload has at most {MAX_PARTS} parts of `part_size_mb` ({} MiB here)",
                self.part_size >> 20
            ),
        ))
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<ObjectInfo, BlobError> {
        let size = data.len() as u64;
        put_object(&self.client, &self.bucket, &self.key(key)?, data).await?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size,
            modified_ms: now_ms(),
        })
    }

    async fn get(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, BlobError> {
        let too_large = |size: u64| {
            BlobError::TooLarge(format!(
                "object is {size} bytes, `get` returns at most {max_bytes}; use `read`"
            ))
        };
        let (mut body, len) = self.open_body(key).await?;
        if let Some(len) = len.filter(|&n| n > max_bytes as u64) {
            return Err(too_large(len));
        }
        // The declared length is checked above; the cap below also holds
        // if a server sends more than it declared.
        let mut out = Vec::with_capacity(len.unwrap_or(0) as usize);
        while let Some(chunk) = body.try_next().await.map_err(stream_err)? {
            if out.len() + chunk.len() > max_bytes {
                return Err(too_large((out.len() + chunk.len()) as u64));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        // DeleteObject succeeds whether or not the object exists, so ask first.
        match self.head(key).await {
            Ok(_) => {}
            Err(BlobError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key)?)
            .send()
            .await
            .map_err(|e| map_err("delete-object", e))?;
        Ok(true)
    }

    async fn stat(&self, key: &str) -> Result<ObjectInfo, BlobError> {
        self.head(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ObjectPage, BlobError> {
        // No key passes S3's limit, so none starts with a longer prefix
        // (the file backend finds none either).
        let Ok(full_prefix) = self.key(prefix) else {
            return Ok(ObjectPage::default());
        };
        // One more than asked tells whether another page exists.
        let request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(full_prefix)
            .set_start_after(after.map(|a| format!("{}{a}", self.prefix)))
            .max_keys(i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX));
        let mut out = request
            .clone()
            .send()
            .await
            .map_err(|e| map_err("list-objects", e))?;
        // S3 may answer a page without keys that says more follow. The
        // guest's cursor is a key, so such a page would end the listing
        // early: follow the server's own token instead, a few times.
        let mut empty_pages = 0;
        while out.contents().is_empty() && out.is_truncated().unwrap_or(false) {
            let token = out.next_continuation_token().map(str::to_string);
            empty_pages += 1;
            if token.is_none() || empty_pages > EMPTY_PAGES_FOLLOWED {
                return Err(BlobError::Unavailable(
                    "the store answered empty list pages that say more follow; retry".into(),
                ));
            }
            out = request
                .clone()
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| map_err("list-objects", e))?;
        }
        let entries = out.contents().iter().filter_map(|o| {
            Some((
                o.key()?.to_string(),
                o.size().unwrap_or(0).max(0) as u64,
                millis(o.last_modified()),
            ))
        });
        Ok(page_of(
            &self.prefix,
            entries,
            out.is_truncated().unwrap_or(false),
            limit,
        ))
    }

    async fn write(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(S3Writer::new(
            self.client.clone(),
            self.bucket.clone(),
            self.key(key)?,
            key.to_string(),
            self.part_size,
            self.app_buffers.clone(),
        )))
    }

    async fn read(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError> {
        let reader = S3Reader::open(self.client.clone(), self.bucket.clone(), self.key(key)?);
        Ok(Box::new(reader.await?))
    }

    async fn url(&self, key: &str, expires_secs: u32) -> Result<String, BlobError> {
        let presigning = PresigningConfig::expires_in(Duration::from_secs(expires_secs.into()))
            .map_err(|e| {
                tracing::debug!(error = %e, "s3 presigning config");
                BlobError::Other("invalid URL validity".into())
            })?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key)?)
            // Whatever the object was stored with (by an older Berth, or
            // by hand), the URL serves it as opaque bytes to be saved.
            .response_content_type(OBJECT_CONTENT_TYPE)
            .response_content_disposition(OBJECT_DISPOSITION)
            .presigned(presigning)
            .await
            .map_err(|e| map_err("presign-get-object", e))?;
        Ok(req.uri().to_string())
    }
}

#[cfg(test)]
#[path = "s3_tests.rs"]
mod tests;
