//! The standard `wasi:keyvalue` interfaces (`store`, `atomics`, `batch`) at
//! the two versions other hosts serve: `0.2.0-draft` (wasmtime's) and
//! `0.2.0-draft2` (Spin's), so a component written against either runs on
//! Berth unchanged. Every call goes through the `berth:infra/kv` glue: the
//! same grants (a bucket not granted is `access-denied`, whether or not it
//! exists), key and value limits, backends, metering and audit.

use wasmtime::component::{HasSelf, Linker, Resource};

use super::host::BucketHandle;
use crate::bindings::ports::kv::{Error as BerthError, HostBucket as _};
use crate::state::InstanceState;

mod draft {
    wasmtime::component::bindgen!({
        path: "../wit/std/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": crate::ports::kv::host::BucketHandle },
    });
}

mod draft2 {
    wasmtime::component::bindgen!({
        path: "../wit/std/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::ports::kv::host::BucketHandle,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

/// The versions linked, for messages naming what this host provides.
pub const VERSIONS: &[&str] = &["0.2.0-draft", "0.2.0-draft2"];

/// A `draft2` compare-and-swap: its own handle to the bucket it was
/// started on (so the guest dropping its bucket first changes nothing), the
/// key and the value seen then.
pub struct CasHandle {
    bucket: Resource<BucketHandle>,
    key: String,
    seen: Option<Vec<u8>>,
}

/// Most `draft2` compare-and-swap handles one instance may hold open: each
/// keeps the value it saw (up to the value cap) in the host's memory.
pub const MAX_OPEN_CAS: usize = 16;

/// Where the `draft` listings an instance was given cursors for stand: the
/// `draft` cursor counts the keys already returned, and this lets the next
/// page go on from the key it stands for instead of walking the bucket from
/// its start (a listing would cost O(n²) otherwise).
#[derive(Default)]
pub struct DraftCursors(std::collections::VecDeque<DraftCursor>);

/// A `draft` cursor of bucket `bucket`, `cursor`, standing for the keys
/// past the first `target`, and how far towards them the walk got: past
/// `seen` keys, the last of them `after`. `seen` is short of `target`
/// while a walk is under way (from a cursor this instance did not give,
/// or through a long run of expired keys).
struct DraftCursor {
    bucket: std::sync::Arc<str>,
    cursor: u64,
    target: u64,
    seen: u64,
    after: String,
}

/// The cursor of a walk from the start still under way: a count cursor of
/// 0 would start it again.
const DRAFT_WALK_FROM_START: u64 = u64::MAX;

/// Cursors remembered per instance: enough for listings interleaved.
const DRAFT_CURSORS_KEPT: usize = 16;

/// Most backend pages one `draft` `list-keys` call walks towards a cursor
/// it does not know (forged, or from another instance); it then returns
/// an empty page with the same cursor, and the next call goes on.
const DRAFT_WALK_PAGES: u32 = 16;

impl DraftCursors {
    /// Where `cursor` stands: the keys to skip, and the walk towards them
    /// so far (`None` to begin at the start). A cursor of 0 (or none) is
    /// the start, whatever was remembered.
    fn find(&self, bucket: &str, cursor: u64) -> (u64, u64, Option<String>) {
        if cursor == 0 {
            return (0, 0, None);
        }
        self.0
            .iter()
            .find(|c| &*c.bucket == bucket && c.cursor == cursor)
            .map_or((cursor, 0, None), |c| {
                (c.target, c.seen, Some(c.after.clone()))
            })
    }

    fn remember(
        &mut self,
        bucket: &std::sync::Arc<str>,
        cursor: u64,
        target: u64,
        seen: u64,
        after: String,
    ) {
        self.0
            .retain(|c| !(c.bucket == *bucket && c.cursor == cursor));
        if self.0.len() == DRAFT_CURSORS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(DraftCursor {
            bucket: bucket.clone(),
            cursor,
            target,
            seen,
            after,
        });
    }
}

/// Links both versions' `store`, `atomics` and `batch`.
pub fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    use anyhow::Error as E;
    draft::wasi::keyvalue::store::add_to_linker::<_, HasSelf<_>>(linker, |s| s).map_err(E::from)?;
    draft::wasi::keyvalue::atomics::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        .map_err(E::from)?;
    draft::wasi::keyvalue::batch::add_to_linker::<_, HasSelf<_>>(linker, |s| s).map_err(E::from)?;
    draft2::wasi::keyvalue::store::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        .map_err(E::from)?;
    draft2::wasi::keyvalue::atomics::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        .map_err(E::from)?;
    draft2::wasi::keyvalue::batch::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        .map_err(E::from)?;
    Ok(())
}

/// A borrow of the same handle, to call the Berth glue with.
fn borrow(bucket: &Resource<BucketHandle>) -> Resource<BucketHandle> {
    Resource::new_borrow(bucket.rep())
}

/// How many keys one `list-keys` page of the standard interface holds.
const PAGE: u32 = 1_000;

macro_rules! std_error {
    ($version:ident) => {
        impl From<BerthError> for $version::wasi::keyvalue::store::Error {
            fn from(e: BerthError) -> Self {
                use $version::wasi::keyvalue::store::Error as E;
                match e {
                    BerthError::NotGranted(_) => E::AccessDenied,
                    BerthError::InvalidInput(m)
                    | BerthError::NotANumber(m)
                    | BerthError::Unavailable(m)
                    | BerthError::Other(m) => E::Other(m),
                }
            }
        }
    };
}
std_error!(draft);
std_error!(draft2);

type Res<T, E> = wasmtime::Result<Result<T, E>>;

/// `store`, `batch` and the bucket methods, alike in both versions but for
/// the `list-keys` cursor.
macro_rules! common {
    ($version:ident) => {
        impl $version::wasi::keyvalue::store::Host for InstanceState {
            async fn open(
                &mut self,
                identifier: String,
            ) -> Res<Resource<BucketHandle>, $version::wasi::keyvalue::store::Error> {
                Ok(
                    crate::bindings::ports::kv::HostBucket::open(self, identifier)
                        .await?
                        .map_err(Into::into),
                )
            }
        }

        impl $version::wasi::keyvalue::batch::Host for InstanceState {
            async fn get_many(
                &mut self,
                bucket: Resource<BucketHandle>,
                keys: Vec<String>,
            ) -> Res<Vec<Option<(String, Vec<u8>)>>, $version::wasi::keyvalue::store::Error> {
                // The answer goes into the guest's memory: one larger than
                // the component may have is refused before the host holds
                // it (a key asked for many times would multiply it).
                let most = usize::try_from(self.env.limits.memory_bytes).unwrap_or(usize::MAX);
                let mut bytes = 0usize;
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    match self.get(borrow(&bucket), key.clone()).await? {
                        Ok(value) => {
                            bytes = bytes.saturating_add(
                                key.len() + value.as_ref().map_or(0, Vec::len),
                            );
                            if bytes > most {
                                return Ok(Err($version::wasi::keyvalue::store::Error::Other(
                                    format!("the values asked for take more than the component's memory limit ({most} bytes); ask for fewer keys at a time"),
                                )));
                            }
                            out.push(value.map(|v| (key, v)))
                        }
                        Err(e) => return Ok(Err(e.into())),
                    }
                }
                Ok(Ok(out))
            }

            async fn set_many(
                &mut self,
                bucket: Resource<BucketHandle>,
                key_values: Vec<(String, Vec<u8>)>,
            ) -> Res<(), $version::wasi::keyvalue::store::Error> {
                for (key, value) in key_values {
                    if let Err(e) = self.set(borrow(&bucket), key, value, None).await? {
                        return Ok(Err(e.into()));
                    }
                }
                Ok(Ok(()))
            }

            async fn delete_many(
                &mut self,
                bucket: Resource<BucketHandle>,
                keys: Vec<String>,
            ) -> Res<(), $version::wasi::keyvalue::store::Error> {
                for key in keys {
                    if let Err(e) = self.delete(borrow(&bucket), key).await? {
                        return Ok(Err(e.into()));
                    }
                }
                Ok(Ok(()))
            }
        }

        impl $version::wasi::keyvalue::store::HostBucket for InstanceState {
            async fn get(
                &mut self,
                this: Resource<BucketHandle>,
                key: String,
            ) -> Res<Option<Vec<u8>>, $version::wasi::keyvalue::store::Error> {
                Ok(
                    crate::bindings::ports::kv::HostBucket::get(self, borrow(&this), key)
                        .await?
                        .map_err(Into::into),
                )
            }

            async fn set(
                &mut self,
                this: Resource<BucketHandle>,
                key: String,
                value: Vec<u8>,
            ) -> Res<(), $version::wasi::keyvalue::store::Error> {
                Ok(crate::bindings::ports::kv::HostBucket::set(
                    self,
                    borrow(&this),
                    key,
                    value,
                    None,
                )
                .await?
                .map_err(Into::into))
            }

            async fn delete(
                &mut self,
                this: Resource<BucketHandle>,
                key: String,
            ) -> Res<(), $version::wasi::keyvalue::store::Error> {
                Ok(
                    crate::bindings::ports::kv::HostBucket::delete(self, borrow(&this), key)
                        .await?
                        .map(|_existed| ())
                        .map_err(Into::into),
                )
            }

            async fn exists(
                &mut self,
                this: Resource<BucketHandle>,
                key: String,
            ) -> Res<bool, $version::wasi::keyvalue::store::Error> {
                Ok(
                    crate::bindings::ports::kv::HostBucket::exists(self, borrow(&this), key)
                        .await?
                        .map_err(Into::into),
                )
            }

            async fn list_keys(
                &mut self,
                this: Resource<BucketHandle>,
                cursor: Option<Cursor!($version)>,
            ) -> Res<
                $version::wasi::keyvalue::store::KeyResponse,
                $version::wasi::keyvalue::store::Error,
            > {
                list_keys!($version, self, this, cursor)
            }

            async fn drop(&mut self, rep: Resource<BucketHandle>) -> wasmtime::Result<()> {
                crate::bindings::ports::kv::HostBucket::drop(self, rep).await
            }
        }
    };
}

macro_rules! Cursor {
    (draft) => {
        u64
    };
    (draft2) => {
        String
    };
}

macro_rules! list_keys {
    // `draft`: the cursor counts the keys already returned; where it
    // stands is remembered (see `DraftCursors`).
    (draft, $self:ident, $this:ident, $cursor:ident) => {{
        use draft::wasi::keyvalue::store::KeyResponse;
        let asked = $cursor.unwrap_or(0);
        let bucket = $self.table.get(&$this)?.name().clone();
        let (skip, mut seen, mut after) = $self.kv_draft_cursors.find(&bucket, asked);
        for _ in 0..DRAFT_WALK_PAGES {
            let page = match crate::bindings::ports::kv::HostBucket::list_keys(
                $self,
                borrow(&$this),
                String::new(),
                after.clone(),
                PAGE,
            )
            .await?
            {
                Ok(page) => page,
                Err(e) => return Ok(Err(e.into())),
            };
            let n = page.keys.len() as u64;
            if seen + n > skip || page.cursor.is_none() {
                let start = skip.saturating_sub(seen).min(n) as usize;
                let keys: Vec<String> = page.keys[start..].to_vec();
                let cursor = page.cursor.map(|last| {
                    $self
                        .kv_draft_cursors
                        .remember(&bucket, seen + n, seen + n, seen + n, last);
                    seen + n
                });
                return Ok(Ok(KeyResponse { keys, cursor }));
            }
            seen += n;
            after = page.cursor;
        }
        // Still short of where the page starts: go on from here at the
        // next call, under a cursor that is not 0 (the start).
        let cursor = if skip == 0 {
            DRAFT_WALK_FROM_START
        } else {
            asked
        };
        if let Some(last) = after {
            $self
                .kv_draft_cursors
                .remember(&bucket, cursor, skip, seen, last);
        }
        Ok(Ok(KeyResponse {
            keys: Vec::new(),
            cursor: Some(cursor),
        }))
    }};
    // `draft2`: the cursor is the last key returned, as in `berth:infra/kv`.
    (draft2, $self:ident, $this:ident, $cursor:ident) => {{
        Ok(crate::bindings::ports::kv::HostBucket::list_keys(
            $self,
            borrow(&$this),
            String::new(),
            $cursor,
            PAGE,
        )
        .await?
        .map(|page| draft2::wasi::keyvalue::store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
        .map_err(Into::into))
    }};
}

common!(draft);
common!(draft2);

impl draft::wasi::keyvalue::atomics::Host for InstanceState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: u64,
    ) -> Res<u64, draft::wasi::keyvalue::store::Error> {
        use draft::wasi::keyvalue::store::Error as E;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(E::Other(
                "delta is larger than a signed 64-bit integer".into(),
            )));
        };
        Ok(
            match crate::bindings::ports::kv::HostBucket::increment(
                self,
                borrow(&bucket),
                key,
                delta,
            )
            .await?
            {
                // The store's counters are signed; this version's are not.
                Ok(n) => u64::try_from(n).map_err(|_| {
                    E::Other(format!(
                        "the counter was incremented, but its value, {n}, is negative, which this version of wasi:keyvalue cannot return (0.2.0-draft2's increment can)"
                    ))
                }),
                Err(e) => Err(e.into()),
            },
        )
    }
}

impl draft2::wasi::keyvalue::atomics::Host for InstanceState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> Res<i64, draft2::wasi::keyvalue::store::Error> {
        Ok(
            crate::bindings::ports::kv::HostBucket::increment(self, borrow(&bucket), key, delta)
                .await?
                .map_err(Into::into),
        )
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> Res<(), draft2::wasi::keyvalue::atomics::CasError> {
        use draft2::wasi::keyvalue::atomics::CasError;
        let CasHandle { bucket, key, seen } = self.table.delete(cas)?;
        self.open_kv_cas -= 1;
        let swapped = crate::bindings::ports::kv::HostBucket::compare_and_swap(
            self,
            borrow(&bucket),
            key.clone(),
            seen,
            value,
        )
        .await?;
        let result = match swapped {
            Ok(true) => Ok(()),
            Ok(false) => match self.cas_on(&bucket, key).await? {
                Ok(fresh) => Err(CasError::CasFailed(fresh)),
                Err(e) => Err(CasError::StoreError(e)),
            },
            Err(e) => Err(CasError::StoreError(e.into())),
        };
        self.table.delete(bucket)?;
        Ok(result)
    }
}

impl InstanceState {
    /// A new CAS handle on `key`, noting its current value.
    async fn cas_on(
        &mut self,
        bucket: &Resource<BucketHandle>,
        key: String,
    ) -> Res<Resource<CasHandle>, draft2::wasi::keyvalue::store::Error> {
        if self.open_kv_cas >= MAX_OPEN_CAS {
            return Ok(Err(draft2::wasi::keyvalue::store::Error::Other(format!(
                "at most {MAX_OPEN_CAS} compare-and-swap handles may be open at once; drop one first"
            ))));
        }
        let seen =
            match crate::bindings::ports::kv::HostBucket::get(self, borrow(bucket), key.clone())
                .await?
            {
                Ok(seen) => seen,
                Err(e) => return Ok(Err(e.into())),
            };
        let own = self.table.get(bucket)?.clone();
        let handle = CasHandle {
            bucket: self.table.push(own)?,
            key,
            seen,
        };
        // A failed push traps the instance, which goes with its counts.
        let handle = self.table.push(handle)?;
        self.open_kv_cas += 1;
        Ok(Ok(handle))
    }
}

impl draft2::wasi::keyvalue::atomics::HostCas for InstanceState {
    async fn new(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Res<Resource<CasHandle>, draft2::wasi::keyvalue::store::Error> {
        self.cas_on(&bucket, key).await
    }

    async fn current(
        &mut self,
        this: Resource<CasHandle>,
    ) -> Res<Option<Vec<u8>>, draft2::wasi::keyvalue::store::Error> {
        Ok(Ok(self.table.get(&this)?.seen.clone()))
    }

    async fn drop(&mut self, rep: Resource<CasHandle>) -> wasmtime::Result<()> {
        let cas = self.table.delete(rep)?;
        self.open_kv_cas -= 1;
        self.table.delete(cas.bucket)?;
        Ok(())
    }
}
