//! The S3 adapter's writer: one buffered part, then a multipart upload
//! that is completed on `finish` and aborted when the writer is dropped
//! unfinished, or when the write that started it was cancelled.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata as _};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{MAX_PARTS, MIN_PART_SIZE, map_err, now_ms, put_object};
use crate::ports::blob::{BlobError, BlobWriter, ObjectInfo};

/// The most all S3 writers of this host may buffer together, whatever app
/// or instance they belong to: a writer buffers up to a part in the host's
/// memory, outside any guest's memory limit, so without a bound a few
/// tenants holding open writers (16 per instance) could exhaust it.
pub const WRITE_BUFFER_BUDGET: usize = 2 << 30;

/// The budget in KiB, the unit of its permits (a part may pass the
/// semaphore's `u32` permits as bytes).
static WRITE_BUFFERS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| {
        std::sync::Arc::new(tokio::sync::Semaphore::new(WRITE_BUFFER_BUDGET / 1024))
    });

/// The most of [`WRITE_BUFFER_BUDGET`] one app's writers may hold
/// together, so one tenant's open writers never leave the others none. A
/// writer holds what its buffer may reach, doubling as it fills, never
/// more than a part: a writer given one byte holds a KiB, not a part.
pub const APP_WRITE_BUFFER_SHARE: usize = WRITE_BUFFER_BUDGET / 2;

/// Each app's share, by app name, while any of its containers holds it.
type AppShares = std::collections::HashMap<String, std::sync::Weak<tokio::sync::Semaphore>>;
static APP_SHARES: std::sync::LazyLock<std::sync::Mutex<AppShares>> =
    std::sync::LazyLock::new(Default::default);

/// `app`'s share of the budget ([`APP_WRITE_BUFFER_SHARE`]), which all its
/// S3 containers take from. While a reload runs, the app's old containers
/// and writers still hold its share: the new ones get the same one, not a
/// second share on top.
pub fn app_write_buffers(app: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
    let mut shares = APP_SHARES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    shares.retain(|_, share| share.strong_count() > 0);
    if let Some(share) = shares.get(app).and_then(std::sync::Weak::upgrade) {
        return share;
    }
    let share = std::sync::Arc::new(tokio::sync::Semaphore::new(APP_WRITE_BUFFER_SHARE / 1024));
    shares.insert(app.to_string(), std::sync::Arc::downgrade(&share));
    share
}

/// `kib` KiB of `budget` (in KiB permits), added to `held`; `None` if
/// the budget has not that much left now.
fn reserve_more(
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    kib: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit, Option<tokio::sync::OwnedSemaphorePermit>> {
    let Some(more) = u32::try_from(kib)
        .ok()
        .and_then(|kib| budget.clone().try_acquire_many_owned(kib).ok())
    else {
        return Err(held);
    };
    Ok(match held {
        Some(mut held) => {
            held.merge(more);
            held
        }
        None => more,
    })
}

/// A writer's part of its app's share and of the host's budget, in KiB.
#[derive(Default)]
struct Reservation {
    app: Option<tokio::sync::OwnedSemaphorePermit>,
    host: Option<tokio::sync::OwnedSemaphorePermit>,
    kib: usize,
}

/// A chunked write: one buffered part, then a multipart upload.
pub(super) struct S3Writer {
    client: Client,
    bucket: String,
    /// Full key (with the container prefix).
    key: String,
    /// Key as the guest named it.
    user_key: String,
    part_size: usize,
    /// The size at which the buffer goes up as a part: `part_size`, or
    /// less (never under S3's smallest part) once room to grow ran short.
    part_limit: usize,
    /// Bytes not yet uploaded; never more than one part.
    buf: Vec<u8>,
    /// Set once the first full part is there; Drop aborts it.
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    size: u64,
    /// A part failed to upload: the object can no longer be completed.
    failed: bool,
    /// Its app's share of the budget ([`app_write_buffers`]).
    app_buffers: std::sync::Arc<tokio::sync::Semaphore>,
    /// Its part of its app's share and of the host's
    /// [`WRITE_BUFFER_BUDGET`]: what its buffer may reach.
    reserved: Reservation,
}

impl S3Writer {
    /// A writer of `key` (with its container prefix; `user_key` as the guest
    /// named it) in parts of `part_size` bytes.
    pub(super) fn new(
        client: Client,
        bucket: String,
        key: String,
        user_key: String,
        part_size: usize,
        app_buffers: std::sync::Arc<tokio::sync::Semaphore>,
    ) -> S3Writer {
        S3Writer {
            client,
            bucket,
            key,
            user_key,
            part_size,
            part_limit: part_size,
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            size: 0,
            failed: false,
            app_buffers,
            reserved: Reservation::default(),
        }
    }

    /// Reserves, before any byte of a write is taken (so a refused write
    /// can be retried), room for the buffer to hold `wanted` bytes:
    /// doubling what it holds, as a `Vec` grows, never past one part, or
    /// just what is wanted when doubling finds no room.
    fn reserve_room(&mut self, wanted: usize) -> Result<(), BlobError> {
        let wanted_kib = wanted.min(self.part_size).div_ceil(1024);
        let held = self.reserved.kib;
        if wanted_kib <= held {
            return Ok(());
        }
        let doubled = wanted_kib.max(held * 2).min(self.part_size.div_ceil(1024));
        let mut refusal = None;
        for target in [doubled, wanted_kib] {
            match self.reserve_up_to(target, true) {
                Ok(()) => return Ok(()),
                Err(e) => refusal = Some(e),
            }
        }
        Err(refusal.unwrap_or_else(|| BlobError::Unavailable("no room".into())))
    }

    /// Holds `target` KiB of the app's share and of the host's budget
    /// (more than it holds), or, refused, what it held before; a host
    /// budget used up is logged when `warn`.
    fn reserve_up_to(&mut self, target: usize, warn: bool) -> Result<(), BlobError> {
        let more = target - self.reserved.kib;
        let app =
            reserve_more(&self.app_buffers, self.reserved.app.take(), more).map_err(|held| {
                self.reserved.app = held;
                BlobError::Unavailable(format!(
                    "this app's writers hold all the upload buffers it may ({} MiB); \
                     finish or drop some, or retry later",
                    APP_WRITE_BUFFER_SHARE >> 20
                ))
            })?;
        let host = match reserve_more(&WRITE_BUFFERS, self.reserved.host.take(), more) {
            Ok(host) => host,
            Err(held_host) => {
                // The app's share goes back to what it was.
                let mut app = app;
                drop(app.split(more));
                self.reserved.app = Some(app);
                self.reserved.host = held_host;
                // Any app's writers can refuse themselves at will once it
                // is used up: warned of once a second at most.
                if warn && crate::audit::host_warning_due("s3 write buffers") {
                    tracing::warn!(
                        budget_bytes = WRITE_BUFFER_BUDGET,
                        "every S3 upload buffer of this host is in use"
                    );
                }
                return Err(BlobError::Unavailable(
                    "the host's upload buffers are all in use; retry later".into(),
                ));
            }
        };
        self.reserved = Reservation {
            app: Some(app),
            host: Some(host),
            kib: target,
        };
        Ok(())
    }

    /// Uploads the buffer as the next part, starting the upload if needed.
    async fn upload_part(&mut self) -> Result<(), BlobError> {
        if self.parts.len() >= MAX_PARTS {
            return Err(BlobError::TooLarge(format!(
                "object exceeds {MAX_PARTS} parts of {} bytes",
                self.part_limit
            )));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = create_upload(&self.client, &self.bucket, &self.key).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let body = ByteStream::from(std::mem::take(&mut self.buf));
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(|e| map_err("upload-part", e))?;
        self.parts.push(
            CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_string))
                .part_number(number)
                .build(),
        );
        Ok(())
    }

    /// Uploads the buffer as the next part; if that fails, the part's
    /// bytes are gone: the object cannot be completed, and the writer
    /// buffers nothing more. The writer counts as failed until the part
    /// is in: a call dropped while the part is on its way has taken its
    /// bytes with it, and a later `finish` would complete an object a part
    /// short.
    async fn upload_or_fail(&mut self) -> Result<(), BlobError> {
        self.failed = true;
        let uploaded = self.upload_part().await;
        if uploaded.is_err() {
            self.buf = Vec::new();
            self.reserved = Reservation::default();
            return uploaded;
        }
        self.failed = false;
        if self.part_limit < self.part_size && self.reserve_up_to_quietly(self.part_size) {
            // Room came back: whole parts again, so the object's 10,000
            // parts reach as far as the configured part size promises.
            self.part_limit = self.part_size;
        }
        uploaded
    }

    /// Holds room for a whole part of `bytes` if the budgets have it now,
    /// saying nothing when they have not (the writer goes on as it was).
    fn reserve_up_to_quietly(&mut self, bytes: usize) -> bool {
        let target = bytes.div_ceil(1024);
        target <= self.reserved.kib || self.reserve_up_to(target, false).is_ok()
    }

    /// Refuses to go on after a lost part.
    fn check(&self) -> Result<(), BlobError> {
        match self.failed {
            true => Err(BlobError::Other(
                "an earlier write failed; start a new writer".into(),
            )),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, mut chunk: &[u8]) -> Result<(), BlobError> {
        self.check()?;
        if !chunk.is_empty()
            && let Err(short) = self.reserve_room(
                // Never past the part this writer uploads.
                self.buf
                    .len()
                    .saturating_add(chunk.len())
                    .min(self.part_limit),
            )
        {
            // Short of room to grow: a writer holding S3's smallest part
            // uploads parts of what it holds rather than wait for room
            // other writers hold, who may be waiting for its (S3 takes
            // parts of differing sizes, all but the last of 5 MiB or more).
            let held = (self.reserved.kib * 1024).min(self.part_size);
            if held < MIN_PART_SIZE {
                return Err(short);
            }
            self.part_limit = held;
            if self.buf.len() >= held {
                self.upload_or_fail().await?;
            }
        }
        // Fill the buffer to exactly one part before uploading, so memory
        // is bounded by the part size whatever the chunk sizes are.
        while !chunk.is_empty() {
            let n = (self.part_limit - self.buf.len()).min(chunk.len());
            let want = self.buf.len() + n;
            if want > self.buf.capacity() {
                // Doubling as `Vec` would, but never past one part (left to
                // itself the buffer could reach twice the part size) nor
                // past what is reserved.
                let target = want
                    .max(self.buf.capacity() * 2)
                    .min(self.part_limit)
                    .min(self.reserved.kib * 1024);
                self.buf.reserve_exact(target - self.buf.len());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            self.size += n as u64;
            if self.buf.len() == self.part_limit {
                self.upload_or_fail().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        self.check()?;
        if self.upload_id.is_none() {
            // Smaller than one part: a single PutObject.
            let data = std::mem::take(&mut self.buf);
            put_object(&self.client, &self.bucket, &self.key, data).await?;
        } else {
            if !self.buf.is_empty() {
                self.upload_part().await?;
            }
            let expected_tag = multipart_etag(&self.parts);
            let parts = CompletedMultipartUpload::builder()
                .set_parts(Some(std::mem::take(&mut self.parts)))
                .build();
            let completed = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .set_upload_id(self.upload_id.clone())
                .multipart_upload(parts)
                .send()
                .await;
            match completed {
                Ok(_) => {}
                // The SDK retries a request whose answer was lost; when the
                // first try had completed the upload, the retry finds it
                // gone. The object tells whether it was this upload.
                Err(e) if e.code() == Some("NoSuchUpload") => {
                    if !self.completed_as_written(expected_tag.as_deref()).await {
                        return Err(map_err("complete-multipart-upload", e));
                    }
                }
                Err(e) => return Err(map_err("complete-multipart-upload", e)),
            }
            // Completed: nothing left for Drop to abort.
            self.upload_id = None;
        }
        Ok(ObjectInfo {
            key: self.user_key.clone(),
            size: self.size,
            modified_ms: now_ms(),
        })
    }
}

impl S3Writer {
    /// Whether the object now at the key is this writer's upload: its size,
    /// and the entity tag S3 gives the object its parts made, `expected`.
    /// Unknown (`None`: a part's tag is no MD5, as under SSE-KMS) is not
    /// confirmed: the guest is told the write failed and writes it again.
    async fn completed_as_written(&self, expected: Option<&str>) -> bool {
        let Some(expected) = expected else {
            return false;
        };
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await;
        let Ok(head) = head else { return false };
        head.content_length() == i64::try_from(self.size).ok() && head.e_tag() == Some(expected)
    }
}

/// The entity tag S3 gives a multipart object, `"<md5 of the parts'
/// MD5s>-<parts>"`, from its parts' tags; `None` if one is no MD5.
fn multipart_etag(parts: &[CompletedPart]) -> Option<String> {
    use md5::Digest as _;
    let mut md5 = md5::Md5::new();
    for part in parts {
        let tag = part.e_tag()?.trim_matches('"');
        let digest = hex::decode(tag).ok().filter(|d| d.len() == 16)?;
        md5.update(digest);
    }
    Some(format!(
        "\"{}-{}\"",
        hex::encode(md5.finalize()),
        parts.len()
    ))
}

/// Starts a multipart upload of `key` and returns its id. The request runs
/// in a task of its own: when the writer's call is cancelled meanwhile (the
/// invocation's time limit), the task aborts the upload S3 created, which
/// no writer knows of and which would otherwise keep its parts billed.
async fn create_upload(client: &Client, bucket: &str, key: &str) -> Result<String, BlobError> {
    let (created_tx, created_rx) = tokio::sync::oneshot::channel();
    let request = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(super::OBJECT_CONTENT_TYPE)
        .content_disposition(super::OBJECT_DISPOSITION);
    let abort = client.abort_multipart_upload().bucket(bucket).key(key);
    tokio::spawn(async move {
        let created = match request.send().await {
            Ok(out) => out
                .upload_id()
                .map(str::to_string)
                .ok_or_else(|| BlobError::Other("the store returned no upload id".into())),
            Err(e) => Err(map_err("create-multipart-upload", e)),
        };
        if let Err(Ok(orphan)) = created_tx.send(created) {
            abort_upload(abort.upload_id(orphan)).await;
        }
    });
    created_rx
        .await
        .unwrap_or_else(|_| Err(BlobError::Other("the upload could not be started".into())))
}

/// Sends an abort of a multipart upload; a failure is only logged (a
/// bucket lifecycle rule is the backstop, see `docs/operating.md`).
async fn abort_upload(
    request: aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder,
) {
    if let Err(e) = request.send().await {
        tracing::debug!(error = %DisplayErrorContext(&e), "s3 abort-multipart-upload");
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // An unfinished (or failed) multipart upload keeps its parts stored
        // and billed until aborted. Drop cannot await, so abort in the
        // background; without a runtime, a bucket lifecycle rule must do it.
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no runtime to abort an unfinished s3 multipart upload");
            return;
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        runtime.spawn(abort_upload(request));
    }
}

#[cfg(test)]
mod tests {
    use super::{CompletedPart, multipart_etag, reserve_more};

    /// S3's tag of a two-part object whose parts were `hello` and `world`.
    #[test]
    fn the_multipart_tag_is_the_md5_of_the_parts_md5s() {
        let part = |n, tag: &str| {
            CompletedPart::builder()
                .part_number(n)
                .e_tag(format!("\"{tag}\""))
                .build()
        };
        let parts = [
            part(1, "5d41402abc4b2a76b9719d911017c592"),
            part(2, "7d793037a0760186574b0282f2f435e7"),
        ];
        assert_eq!(
            multipart_etag(&parts).as_deref(),
            Some("\"065947336a2f2a95ba8899f3675c3be6-2\"")
        );
        // A tag that is no MD5 (SSE-KMS) leaves it unknown.
        assert_eq!(multipart_etag(&[part(1, "not-an-md5")]), None);
    }

    #[test]
    fn room_is_reserved_from_a_budget_until_released() {
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(20 * 1024));
        let first = reserve_more(&budget, None, 8 * 1024).expect("8 of 20 MiB");
        let both = reserve_more(&budget, Some(first), 8 * 1024).expect("16 of 20 MiB");
        assert_eq!(both.num_permits(), 16 * 1024);
        // Refused, what was held comes back as it was.
        let held = reserve_more(&budget, Some(both), 8 * 1024).expect_err("24 of 20 MiB");
        let held = held.expect("still held");
        assert_eq!(held.num_permits(), 16 * 1024);
        drop(held);
        assert_eq!(budget.available_permits(), 20 * 1024);
        // Room too large for any budget is refused, not wrapped.
        assert!(matches!(reserve_more(&budget, None, usize::MAX), Err(None)));
    }
}
