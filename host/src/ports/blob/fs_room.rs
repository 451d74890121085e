//! The room a file-backed container may fill on disk (`[app_limits]
//! store_mb`): its objects and the writes under way to it, counted as
//! they are written, each object with [`OBJECT_OVERHEAD`] more for the
//! file itself (so empty objects are not free). Objects are replaced and
//! removed one at a time, on a blocking thread that finishes what it
//! started even when its caller is gone, so the size taken off is the
//! size the object had. Every loaded version of an app shares its
//! containers' rooms (during a reload, the old version drains while the
//! new one runs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use super::BlobError;

/// What an object costs beyond its bytes: its file's inode, directory
/// entry and last partial block.
pub(super) const OBJECT_OVERHEAD: u64 = 4096;

/// What a container holds on disk, and the most it may.
#[derive(Debug)]
pub(super) struct Room {
    max: AtomicU64,
    used: AtomicU64,
    /// Held while an object is replaced or removed.
    changes: Mutex<()>,
}

/// The rooms of the containers open now, by root.
static ROOMS: LazyLock<Mutex<HashMap<PathBuf, Weak<Room>>>> = LazyLock::new(Default::default);

impl Room {
    /// The room of the container whose objects lie in `root`, bounded to
    /// `max` bytes: the one a loaded version of the app holds already, or
    /// one counting what `root` holds now (blocking: it walks `root`).
    pub(super) fn of(root: &Path, max: u64) -> Arc<Room> {
        let key = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        if let Some(live) = rooms().get(&key).and_then(Weak::upgrade) {
            // The newest version's host config decides.
            live.max.store(max, Ordering::SeqCst);
            return live;
        }
        let used = size_of_objects(&key);
        if used > max {
            tracing::warn!(root = %key.display(), held_mib = used >> 20, max_mib = max >> 20, "a blob container already holds more than [app_limits] store_mb allows: it takes no more writes until objects are deleted");
        }
        let mut rooms = rooms();
        // Another load of the same container may have counted it meanwhile.
        if let Some(live) = rooms.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        rooms.retain(|_, room| room.strong_count() > 0);
        let room = Arc::new(Room {
            max: AtomicU64::new(max),
            used: AtomicU64::new(used),
            changes: Mutex::new(()),
        });
        rooms.insert(key, Arc::downgrade(&room));
        room
    }

    /// Takes `n` bytes of the room, or refuses past its bound.
    pub(super) fn take(self: &Arc<Self>, n: u64) -> Result<Taken, BlobError> {
        let max = self.max.load(Ordering::SeqCst);
        let taken = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|&after| after <= max)
            });
        match taken {
            Ok(_) => Ok(Taken {
                room: Some(self.clone()),
                bytes: n,
            }),
            Err(used) => Err(BlobError::TooLarge(format!(
                "the container holds {} MiB of the {} MiB the host gives it ([app_limits] \
                 store_mb; objects, 4 KiB more each, and writes under way together, an object \
                 being replaced counted until its new version is complete); delete objects, or \
                 ask the operator for more room",
                used >> 20,
                max >> 20
            ))),
        }
    }

    /// Gives `n` bytes back.
    fn give_back(&self, n: u64) {
        // Never below zero: files removed behind the host's back are not
        // known to it, so a count could otherwise wrap.
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Held while an object is replaced or removed (see the module's
    /// comment); blocking.
    pub(super) fn changing(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The object of `len` bytes, replaced or removed, gives back its
    /// room.
    pub(super) fn object_gone(&self, len: u64) {
        self.give_back(len.saturating_add(OBJECT_OVERHEAD));
    }

    /// Bytes held now (for tests).
    #[cfg(test)]
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// Bytes taken of a room, given back when dropped unless [`Taken::keep`]
/// made them an object's.
#[derive(Debug, Default)]
pub(super) struct Taken {
    room: Option<Arc<Room>>,
    bytes: u64,
}

impl Taken {
    /// Adds `more` to these bytes.
    pub(super) fn add(&mut self, mut more: Taken) {
        self.bytes += std::mem::take(&mut more.bytes);
        if self.room.is_none() {
            self.room = more.room.take();
        }
    }

    /// The bytes are an object's now: kept taken.
    pub(super) fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(room) = &self.room {
            room.give_back(self.bytes);
        }
    }
}

fn rooms() -> MutexGuard<'static, HashMap<PathBuf, Weak<Room>>> {
    // A map of weak references: no invariant a panic could break.
    ROOMS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The room the regular files below `dir` take (links not followed;
/// entries that cannot be read are skipped).
fn size_of_objects(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len().saturating_add(OBJECT_OVERHEAD));
            }
        }
    }
    total
}
