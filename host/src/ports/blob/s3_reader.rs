//! The S3 reader: one object's `GetObject` body, served in the guest's
//! chunks. When the body breaks off (the server's idle timeout while the
//! guest did something else, a network failure), the read resumes where it
//! stopped with a ranged `GetObject` of the same version of the object.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::map_err;
use crate::ports::blob::{BlobError, BlobReader};

/// Resumptions in a row that bring no byte before a `read` gives up (the
/// guest's next `read` tries again).
const MAX_RESUMES_WITHOUT_PROGRESS: u32 = 3;

/// A chunked read over the `GetObject` body stream.
pub(super) struct S3Reader {
    client: Client,
    bucket: String,
    /// The object's key in the bucket, container prefix included.
    key: String,
    body: ByteStream,
    /// The rest of the last network chunk, served by the next calls.
    pending: Bytes,
    /// Bytes of the object received so far (served or pending).
    received: u64,
    /// The object's length and entity tag, from the first response: a
    /// resumed read asks for this version only.
    len: Option<u64>,
    etag: Option<String>,
    /// The body broke off: the next chunk needs a resumed read first.
    broken: bool,
    /// Resumptions in this `read` since the last byte arrived.
    fruitless_resumes: u32,
    /// The body did not match the object's checksum: every later read
    /// fails too, so what was read never passes for the whole object.
    damaged: bool,
}

impl S3Reader {
    /// Opens `key` (container prefix included) of `bucket`.
    pub(super) async fn open(
        client: Client,
        bucket: String,
        key: String,
    ) -> Result<S3Reader, BlobError> {
        let out = client
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| map_err("get-object", e))?;
        Ok(S3Reader {
            len: out.content_length().map(|n| n.max(0) as u64),
            etag: out.e_tag().map(str::to_owned),
            body: out.body,
            client,
            bucket,
            key,
            pending: Bytes::new(),
            received: 0,
            broken: false,
            fruitless_resumes: 0,
            damaged: false,
        })
    }

    /// The next network chunk; `None` at the end of the object. A body
    /// that broke off, or ended before the length it declared, is resumed;
    /// until that succeeds every call fails, so a truncated object never
    /// reads as a whole one.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BlobError> {
        if self.damaged {
            return Err(damaged());
        }
        loop {
            if self.broken {
                if self.etag.is_none() {
                    return Err(BlobError::Unavailable(
                        "the object stream broke off (the store gave no entity tag to resume it by)"
                            .into(),
                    ));
                }
                if self.fruitless_resumes >= MAX_RESUMES_WITHOUT_PROGRESS {
                    return Err(BlobError::Unavailable(
                        "the object stream broke off and could not be resumed".into(),
                    ));
                }
                self.fruitless_resumes += 1;
                self.body = self.resume().await?;
                self.broken = false;
            }
            match self.body.try_next().await {
                Ok(Some(chunk)) => {
                    if !chunk.is_empty() {
                        self.fruitless_resumes = 0;
                    }
                    self.received += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                Ok(None) if self.len.is_some_and(|len| self.received < len) => {
                    tracing::debug!(received = self.received, "s3 body ended early");
                    self.broken = true;
                }
                Ok(None) => return Ok(None),
                // The SDK checks the object's checksum as its body ends:
                // what arrived is not the object.
                Err(e) if checksum_mismatch(&e) => {
                    tracing::warn!(error = %DisplayErrorContext(&e), "an s3 object's bytes did not match its checksum");
                    self.damaged = true;
                    return Err(damaged());
                }
                // Everything arrived; only the end of the body was lost.
                Err(_) if self.len == Some(self.received) => return Ok(None),
                Err(e) => {
                    tracing::debug!(error = %DisplayErrorContext(&e), "s3 body broke off");
                    self.broken = true;
                }
            }
        }
    }

    /// The object from byte `received` on, if it is still the version this
    /// read began with (`If-Match` on its entity tag).
    async fn resume(&self) -> Result<ByteStream, BlobError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={}-", self.received))
            .if_match(self.etag.as_deref().unwrap_or_default())
            .send()
            .await
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) => BlobError::Unavailable(
                    "the object was replaced while it was being read; open a new reader".into(),
                ),
                _ => map_err("get-object", e),
            })?;
        // A server that ignored the range would send the object from its
        // start, which must not be served as its continuation.
        if out.content_range().and_then(range_start) != Some(self.received) {
            tracing::debug!(content_range = ?out.content_range(), "s3 resumed read");
            return Err(BlobError::Unavailable(
                "the object stream broke off and the store cannot resume it".into(),
            ));
        }
        tracing::debug!(offset = self.received, "s3 read resumed");
        Ok(out.body)
    }
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<size>`.
fn range_start(content_range: &str) -> Option<u64> {
    let range = content_range.trim().strip_prefix("bytes ")?;
    range.split_once('-')?.0.trim().parse().ok()
}

#[async_trait]
impl BlobReader for S3Reader {
    fn size(&self) -> Option<u64> {
        self.len
    }

    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        self.fruitless_resumes = 0;
        let mut out = Vec::new();
        while out.len() < max {
            if self.pending.is_empty() {
                match self.next_chunk().await {
                    Ok(Some(chunk)) => self.pending = chunk,
                    Ok(None) => break,
                    Err(e) if out.is_empty() => return Err(e),
                    // What arrived comes first; the body stays broken, so
                    // the next call fails (or resumes) in its turn.
                    Err(_) => break,
                }
                continue;
            }
            let n = (max - out.len()).min(self.pending.len());
            out.extend_from_slice(&self.pending.split_to(n));
        }
        Ok(out)
    }
}

/// What a read of a body that failed its checksum gets, then and after.
fn damaged() -> BlobError {
    BlobError::Unavailable(
        "the object's bytes did not match its checksum (damaged on the way); discard what was read and open it again".into(),
    )
}

/// Whether `error`, or one it wraps, is the SDK's checksum mismatch.
fn checksum_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<aws_smithy_checksums::body::validate::Error>()
            .is_some()
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::range_start;

    /// As the SDK checks a body against the checksum its response gave:
    /// the error the byte stream ends with is told apart; another is not.
    #[tokio::test]
    async fn a_checksum_mismatch_is_told_from_a_broken_body() {
        use aws_sdk_s3::primitives::{ByteStream, SdkBody};
        use aws_smithy_checksums::body::validate::ChecksumBody;
        let algorithm: aws_smithy_checksums::ChecksumAlgorithm = "crc32".parse().unwrap();
        let body = ChecksumBody::new(
            SdkBody::from("the object"),
            algorithm.into_impl(),
            bytes::Bytes::from_static(b"\0\0\0\0"),
        );
        let mut stream = ByteStream::new(SdkBody::from_body_1_x(body));
        let error = loop {
            match stream.try_next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the damaged body ended cleanly"),
                Err(e) => break e,
            }
        };
        assert!(super::checksum_mismatch(&error), "{error:?}");
        let broken = aws_sdk_s3::primitives::ByteStreamError::from(std::io::Error::other("reset"));
        assert!(!super::checksum_mismatch(&broken));
    }

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("bytes 100-999/1000"), Some(100));
        assert_eq!(range_start("bytes 0-0/1"), Some(0));
        assert_eq!(range_start("bytes */1000"), None);
        assert_eq!(range_start("items 1-2/3"), None);
        assert_eq!(range_start(""), None);
    }
}
