//! WIT glue for `berth:infra/blob`: grant checks, key validation, size caps,
//! writer/reader handles (at most [`MAX_OPEN_WRITERS`] open writers an
//! instance), and the mapping of [`BlobError`] to the guest's `error`.

use std::sync::Arc;

use tracing::Instrument as _;
use wasmtime::component::Resource;

use super::{
    BlobBackend, BlobError, BlobReader, BlobWriter, ObjectInfo as HostInfo, is_unlistable,
    validate_key, validate_prefix,
};
use crate::bindings::ports::blob::{self as wit, Error, ObjectInfo, ObjectPage};
use crate::metrics::Port;
use crate::ports::error_chain;
use crate::state::InstanceState;

/// Longest validity a guest may ask of a URL: 7 days (the S3 maximum).
const MAX_URL_SECS: u32 = 7 * 24 * 3600;

/// Backs a guest `container`.
pub struct ContainerHandle {
    name: Arc<str>,
    backend: Arc<dyn BlobBackend>,
}

/// Most blob writers one instance may hold open at once. An S3 writer
/// buffers up to a whole part (8 MiB by default) and a file writer holds a
/// descriptor, so a guest holding thousands of writer handles could
/// otherwise pin tens of GB of host memory.
pub const MAX_OPEN_WRITERS: usize = 16;

/// Most blob readers one instance may hold open at once: each holds a
/// connection to the store (S3) or a file descriptor, and a host's
/// descriptors are shared by every tenant.
pub const MAX_OPEN_READERS: usize = 64;

/// Backs a guest `writer`; `None` once finished.
pub struct WriterHandle {
    container: Arc<str>,
    writer: Option<Box<dyn BlobWriter>>,
    /// Bytes written so far, against `blob_max_object_bytes`.
    written: usize,
}

/// Backs a guest `reader`.
pub struct ReaderHandle {
    container: Arc<str>,
    reader: Box<dyn BlobReader>,
}

type Res<T> = wasmtime::Result<Result<T, Error>>;

fn info(i: HostInfo) -> ObjectInfo {
    ObjectInfo {
        key: i.key,
        size: i.size,
        modified_ms: i.modified_ms,
    }
}

impl InstanceState {
    fn blob_span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("blob", op, app = %self.env.app, component = %self.env.component)
    }

    /// The one place a [`BlobError`] becomes a guest error.
    fn blob_error(&self, op: &str, e: BlobError) -> Error {
        tracing::debug!(app = %self.env.app, component = %self.env.component, op, error = %error_chain(&e), "blob error");
        match &e {
            BlobError::NotGranted(n) => {
                crate::audit::refused(&self.env.app, &self.env.component, "blob.not-granted", n)
            }
            BlobError::TooLarge(_) => self.env.counters.limit("payload"),
            BlobError::TooManyWriters(_) | BlobError::TooManyReaders(_) => {
                self.env.counters.limit("handles")
            }
            _ => {}
        }
        match e {
            BlobError::NotGranted(n) => Error::NotGranted(n),
            BlobError::InvalidKey(m) => Error::InvalidKey(m),
            BlobError::NotFound => Error::NotFound,
            BlobError::TooLarge(m) => Error::TooLarge(m),
            BlobError::Closed => Error::Closed,
            // The adapters' own words, which name no endpoint, path or
            // credential (a checksum mismatch says to read again).
            BlobError::Unavailable(m) => Error::Unavailable(m),
            // A limit, like the size caps; the message names it.
            e @ (BlobError::TooManyWriters(_) | BlobError::TooManyReaders(_)) => {
                Error::TooLarge(e.to_string())
            }
            BlobError::Other(m) => Error::Other(m),
        }
    }

    fn blob_key(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key, self.env.limits.payloads.max_key_bytes)
    }

    fn blob_chunk(&self, len: usize) -> Result<(), BlobError> {
        let max = self.env.limits.payloads.blob_max_chunk_bytes;
        if len > max {
            return Err(BlobError::TooLarge(format!(
                "chunk is {len} bytes; at most {max} allowed"
            )));
        }
        Ok(())
    }

    /// Validates, then runs `f` against the container's backend, and meters
    /// the call (`bytes_in` sent by the guest, `bytes_out` of the result).
    async fn blob_call<T, F, Fut>(
        &mut self,
        this: &Resource<ContainerHandle>,
        op: &'static str,
        check: Result<(), BlobError>,
        bytes_in: usize,
        f: F,
        bytes_out: fn(&T) -> usize,
    ) -> Res<T>
    where
        F: FnOnce(Arc<dyn BlobBackend>) -> Fut,
        Fut: Future<Output = Result<T, BlobError>> + Send,
    {
        let started = crate::metrics::Started::now();
        let handle = self.table.get(this)?;
        let (backend, name) = (handle.backend.clone(), handle.name.clone());
        let result = match check {
            Ok(()) => f(backend).instrument(self.blob_span(op)).await,
            Err(e) => Err(e),
        };
        let result = result.map_err(|e| self.blob_error(op, e));
        self.meter(Port::Blob, op, &name, started, &result, bytes_in, bytes_out);
        Ok(result)
    }

    /// The logical name of the container `this` was opened from.
    fn blob_container(&self, this: &Resource<ContainerHandle>) -> wasmtime::Result<Arc<str>> {
        Ok(self.table.get(this)?.name.clone())
    }
}

impl wit::Host for InstanceState {}

impl wit::HostContainer for InstanceState {
    async fn open(&mut self, name: String) -> Res<Resource<ContainerHandle>> {
        let started = crate::metrics::Started::now();
        let backend =
            crate::ports::granted_backend(&self.env.grants.blob, &self.env.backends.blob, &name);
        let result = match backend {
            Some(backend) => Ok(self.table.push(ContainerHandle {
                name: name.as_str().into(),
                backend,
            })?),
            None => Err(self.blob_error("open", BlobError::NotGranted(name.clone()))),
        };
        self.meter(Port::Blob, "open", &name, started, &result, 0, |_| 0);
        Ok(result)
    }

    async fn put(
        &mut self,
        this: Resource<ContainerHandle>,
        key: String,
        data: Vec<u8>,
    ) -> Res<ObjectInfo> {
        let max = self.env.limits.payloads.blob_max_put_bytes;
        let check = self.blob_key(&key).and_then(|()| {
            if data.len() > max {
                Err(BlobError::TooLarge(format!(
                    "object is {} bytes; `put` takes at most {max}, use `write`",
                    data.len()
                )))
            } else {
                Ok(())
            }
        });
        let bytes_in = key.len() + data.len();
        self.blob_call(
            &this,
            "put",
            check,
            bytes_in,
            move |b| async move { b.put(&key, data).await.map(info) },
            |_| 0,
        )
        .await
    }

    async fn get(&mut self, this: Resource<ContainerHandle>, key: String) -> Res<Vec<u8>> {
        let max = self.env.limits.payloads.blob_max_put_bytes;
        let check = self.blob_key(&key);
        let bytes_in = key.len();
        self.blob_call(
            &this,
            "get",
            check,
            bytes_in,
            move |b| async move { b.get(&key, max).await },
            Vec::len,
        )
        .await
    }

    async fn delete(&mut self, this: Resource<ContainerHandle>, key: String) -> Res<bool> {
        let check = self.blob_key(&key);
        let bytes_in = key.len();
        self.blob_call(
            &this,
            "delete",
            check,
            bytes_in,
            move |b| async move { b.delete(&key).await },
            |_| 0,
        )
        .await
    }

    async fn exists(&mut self, this: Resource<ContainerHandle>, key: String) -> Res<bool> {
        let check = self.blob_key(&key);
        let bytes_in = key.len();
        self.blob_call(
            &this,
            "exists",
            check,
            bytes_in,
            move |b| async move {
                match b.stat(&key).await {
                    Ok(_) => Ok(true),
                    Err(BlobError::NotFound) => Ok(false),
                    Err(e) => Err(e),
                }
            },
            |_| 0,
        )
        .await
    }

    async fn stat(&mut self, this: Resource<ContainerHandle>, key: String) -> Res<ObjectInfo> {
        let check = self.blob_key(&key);
        let bytes_in = key.len();
        self.blob_call(
            &this,
            "stat",
            check,
            bytes_in,
            move |b| async move { b.stat(&key).await.map(info) },
            |_| 0,
        )
        .await
    }

    async fn list(
        &mut self,
        this: Resource<ContainerHandle>,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Res<ObjectPage> {
        let limit = limit.clamp(1, self.env.limits.payloads.max_page_size) as usize;
        let max = self.env.limits.payloads.max_key_bytes;
        // A cursor is a key a page ended with. Its length and characters
        // are checked on every backend alike: S3 would refuse a long one,
        // and echo a character XML cannot hold into an answer it cannot
        // read (a retriable error for the guest's own bad input). Not its
        // shape: a page of S3 can end with a key another tool stored that
        // no guest could name (`a//b`), and the listing must go on past it.
        let check = validate_prefix(&prefix, max).and_then(|()| match &cursor {
            Some(c) if c.len() > max => Err(BlobError::InvalidKey(format!(
                "cursor is longer than {max} bytes"
            ))),
            Some(c) if c.chars().any(is_unlistable) => Err(BlobError::InvalidKey(
                "cursor: no key holds control characters or U+FFFE/U+FFFF".into(),
            )),
            _ => Ok(()),
        });
        let bytes_in = prefix.len();
        self.blob_call(
            &this,
            "list",
            check,
            bytes_in,
            move |b| async move {
                let page = b.list(&prefix, cursor.as_deref(), limit).await?;
                Ok(ObjectPage {
                    objects: page.objects.into_iter().map(info).collect(),
                    cursor: page.cursor,
                })
            },
            |page: &ObjectPage| page.objects.iter().map(|o| o.key.len()).sum(),
        )
        .await
    }

    async fn write(
        &mut self,
        this: Resource<ContainerHandle>,
        key: String,
    ) -> Res<Resource<WriterHandle>> {
        let writers = if self.open_blob_writers < MAX_OPEN_WRITERS {
            Ok(())
        } else {
            Err(BlobError::TooManyWriters(MAX_OPEN_WRITERS))
        };
        let check = self.blob_key(&key).and(writers);
        let container = self.blob_container(&this)?;
        let bytes_in = key.len();
        match self
            .blob_call(
                &this,
                "write",
                check,
                bytes_in,
                move |b| async move { b.write(&key).await },
                |_| 0,
            )
            .await?
        {
            Ok(writer) => {
                let handle = self.table.push(WriterHandle {
                    container,
                    writer: Some(writer),
                    written: 0,
                })?;
                self.open_blob_writers += 1;
                Ok(Ok(handle))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    async fn read(
        &mut self,
        this: Resource<ContainerHandle>,
        key: String,
    ) -> Res<Resource<ReaderHandle>> {
        let readers = if self.open_blob_readers < MAX_OPEN_READERS {
            Ok(())
        } else {
            Err(BlobError::TooManyReaders(MAX_OPEN_READERS))
        };
        let check = self.blob_key(&key).and(readers);
        let container = self.blob_container(&this)?;
        let bytes_in = key.len();
        match self
            .blob_call(
                &this,
                "read",
                check,
                bytes_in,
                move |b| async move { b.read(&key).await },
                |_| 0,
            )
            .await?
        {
            Ok(reader) => {
                let handle = self.table.push(ReaderHandle { container, reader })?;
                self.open_blob_readers += 1;
                Ok(Ok(handle))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    async fn url(
        &mut self,
        this: Resource<ContainerHandle>,
        key: String,
        expires_secs: u32,
    ) -> Res<String> {
        let check = self.blob_key(&key);
        let secs = expires_secs.clamp(1, MAX_URL_SECS);
        let bytes_in = key.len();
        self.blob_call(
            &this,
            "url",
            check,
            bytes_in,
            move |b| async move { b.url(&key, secs).await },
            |_| 0,
        )
        .await
    }

    async fn drop(&mut self, rep: Resource<ContainerHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl wit::HostWriter for InstanceState {
    async fn write(&mut self, this: Resource<WriterHandle>, chunk: Vec<u8>) -> Res<()> {
        let started = crate::metrics::Started::now();
        let check = self.blob_chunk(chunk.len());
        let max_object = self.env.limits.payloads.blob_max_object_bytes;
        let span = self.blob_span("writer.write");
        let handle = self.table.get_mut(&this)?;
        let container = handle.container.clone();
        let total = handle.written.saturating_add(chunk.len());
        let check = check.and(match total > max_object {
            true => Err(BlobError::TooLarge(format!(
                "the object would pass {max_object} bytes, the most one writer may write \
                 (blob_max_object_mb); nothing of this chunk was written"
            ))),
            false => Ok(()),
        });
        let r = match (check, handle.writer.as_mut()) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(BlobError::Closed),
            (Ok(()), Some(writer)) => writer.write(&chunk).instrument(span).await,
        };
        if r.is_ok() {
            handle.written = total;
        }
        let r = r.map_err(|e| self.blob_error("writer.write", e));
        let (op, len) = ("writer.write", chunk.len());
        self.meter(Port::Blob, op, &container, started, &r, len, |_| 0);
        Ok(r)
    }

    async fn finish(&mut self, this: Resource<WriterHandle>) -> Res<ObjectInfo> {
        let started = crate::metrics::Started::now();
        let span = self.blob_span("writer.finish");
        let handle = self.table.get_mut(&this)?;
        let container = handle.container.clone();
        let writer = handle.writer.take();
        if writer.is_some() {
            // Finished or failed, the writer is gone: its place is free.
            self.open_blob_writers -= 1;
        }
        let r = match writer {
            None => Err(BlobError::Closed),
            Some(writer) => writer.finish().instrument(span).await.map(info),
        };
        let r = r.map_err(|e| self.blob_error("writer.finish", e));
        self.meter(
            Port::Blob,
            "writer.finish",
            &container,
            started,
            &r,
            0,
            |_| 0,
        );
        Ok(r)
    }

    async fn drop(&mut self, rep: Resource<WriterHandle>) -> wasmtime::Result<()> {
        // An unfinished writer is aborted by the adapter's Drop.
        if self.table.delete(rep)?.writer.is_some() {
            self.open_blob_writers -= 1;
        }
        Ok(())
    }
}

impl wit::HostReader for InstanceState {
    async fn read(&mut self, this: Resource<ReaderHandle>, max_bytes: u32) -> Res<Vec<u8>> {
        let max = (max_bytes as usize).clamp(1, self.env.limits.payloads.blob_max_chunk_bytes);
        let started = crate::metrics::Started::now();
        let span = self.blob_span("reader.read");
        let handle = self.table.get_mut(&this)?;
        let container = handle.container.clone();
        let r = handle.reader.read(max).instrument(span).await;
        let r = r.map_err(|e| self.blob_error("reader.read", e));
        self.meter(
            Port::Blob,
            "reader.read",
            &container,
            started,
            &r,
            0,
            Vec::len,
        );
        Ok(r)
    }

    async fn drop(&mut self, rep: Resource<ReaderHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.open_blob_readers -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_writers_names_the_limit() {
        let message = BlobError::TooManyWriters(MAX_OPEN_WRITERS).to_string();
        assert!(message.contains("16"), "{message}");
        let message = BlobError::TooManyReaders(MAX_OPEN_READERS).to_string();
        assert!(message.contains("64 blob readers"), "{message}");
    }
}
