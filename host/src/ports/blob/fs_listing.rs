//! Listing a file container: its keys in S3's order, a page at a time,
//! from the directories that can hold them.

use std::path::Path;

use super::{info_of, is_missing};
use crate::ports::blob::{ObjectInfo, ObjectPage};

/// The first `limit` keys under `root` that start with `prefix` and sort
/// after `after`, with the cursor of the next page if there are more.
pub(super) fn page(
    root: &Path,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> std::io::Result<ObjectPage> {
    let wanted = Wanted {
        prefix,
        after,
        count: limit.saturating_add(1),
    };
    let mut objects = Vec::new();
    walk(root, "", &wanted, &mut objects, 0)?;
    let more = objects.len() > limit;
    objects.truncate(limit);
    let cursor = if more {
        objects.last().map(|o| o.key.clone())
    } else {
        None
    };
    Ok(ObjectPage { objects, cursor })
}

/// Most directory entries the levels of one walk hold at once: a level
/// keeps the entries after the subdirectory it walks into, so without a
/// bound a deep chain of directories each beside a page of files would
/// hold the page once per level.
const HELD_MOST: usize = 4096;

/// What each level keeps at first once [`HELD_MOST`] is reached (a key is
/// at most 512 levels deep, so all together stay within a few MiB); the
/// level being read doubles it at each read it needs.
const HELD_PAST_THE_BOUND: usize = 16;

/// Collects the regular files below `dir` (whose key is `dir_key`) that
/// `wanted` takes, in key order, skipping symlinks and names no key can
/// spell. `held_above`: the entries the levels above hold meanwhile.
///
/// A directory's entries come from the system in no order, so each is read
/// whole, but only the first entries in key order that can still be wanted
/// are kept ([`first_entries`]): memory stays bounded by the page (and all
/// levels together by [`HELD_MOST`]), however many files a tenant put in
/// one directory or however deep. Should the kept entries hold too few
/// wanted keys (empty subdirectories: emptied meanwhile, or left by a
/// crash; or fewer kept, deep down), the directory is read again past the
/// last entry walked, keeping twice as many each time, so that many empty
/// subdirectories cost a few reads of the directory, not one per page.
/// No directory stays open while another is read.
fn walk(
    dir: &Path,
    dir_key: &str,
    wanted: &Wanted<'_>,
    out: &mut Vec<ObjectInfo>,
    held_above: usize,
) -> std::io::Result<()> {
    // At least a few, so a level past the bound still reads its
    // directory a handful of times per page, not once per key.
    let may_hold = |room: usize| {
        room.min(HELD_MOST.saturating_sub(held_above))
            .max(HELD_PAST_THE_BOUND)
    };
    let mut past: Option<String> = None;
    let mut room = may_hold(wanted.count.saturating_sub(out.len()));
    while out.len() < wanted.count {
        let entries = first_entries(dir, dir_key, wanted, past.as_deref(), room)?;
        let read_all = entries.len() < room;
        let mut left = entries.len();
        for listed in entries {
            left -= 1;
            if out.len() >= wanted.count {
                return Ok(());
            }
            let path = dir.join(listed.name(dir_key));
            if listed.is_dir {
                let key = &listed.key[..listed.key.len() - 1];
                walk(&path, key, wanted, out, held_above + left)?;
            } else {
                // Not following links, as the entry was read.
                match std::fs::symlink_metadata(&path) {
                    // Replaced by a link or a directory since it was read.
                    Ok(meta) if !meta.is_file() => {}
                    Ok(meta) => out.push(info_of(&listed.key, &meta)),
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            past = Some(listed.key);
        }
        if read_all {
            return Ok(());
        }
        // Doubling from what it kept, past the bound too: a level kept
        // small by the levels above reads its directory a few times per
        // page, not once per few keys. Only the level being read grows.
        room = may_hold(wanted.count.saturating_sub(out.len())).max(room.saturating_mul(2));
    }
    Ok(())
}

/// An entry of a directory being listed, ordered by its key. A directory
/// `d` stands for the keys under `d/`, and its key is `d/`, so that it
/// sorts among its siblings as S3 orders keys (`d-x` < `d/…` < `d0`).
struct Listed {
    key: String,
    is_dir: bool,
}

impl Listed {
    /// Its name in its directory, whose key is `dir_key`.
    fn name(&self, dir_key: &str) -> &str {
        let skip = if dir_key.is_empty() {
            0
        } else {
            dir_key.len() + 1
        };
        self.key[skip..].trim_end_matches('/')
    }
}

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Listed {}

impl PartialOrd for Listed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Listed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// The first `room` entries of `dir` in key order that `wanted` may take
/// (files it takes, directories that may hold keys it takes), after
/// `past`, read with at most `room + 1` of them held at once.
fn first_entries(
    dir: &Path,
    dir_key: &str,
    wanted: &Wanted<'_>,
    past: Option<&str>,
    room: usize,
) -> std::io::Result<Vec<Listed>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // Removed meanwhile (a delete takes emptied directories away).
        Err(e) if is_missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // The largest kept entry on top, to be dropped for a smaller one.
    let mut kept = std::collections::BinaryHeap::with_capacity(room.min(1024) + 1);
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // No key contains `\`: such a file (a probe of `open` left
        // behind, or one the operator put there) could not be read by key.
        if name.contains('\\') {
            continue;
        }
        // Does not follow symlinks.
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(e),
        };
        let key = if dir_key.is_empty() {
            name
        } else {
            format!("{dir_key}/{name}")
        };
        let listed = if kind.is_dir() {
            let key = format!("{key}/");
            if !wanted.may_hold_under(&key) {
                continue;
            }
            Listed { key, is_dir: true }
        } else if kind.is_file() && wanted.takes(&key) {
            Listed { key, is_dir: false }
        } else {
            continue;
        };
        if past.is_some_and(|p| listed.key.as_str() <= p) {
            continue;
        }
        kept.push(listed);
        if kept.len() > room {
            kept.pop();
        }
    }
    Ok(kept.into_sorted_vec())
}

/// What a listing collects: keys under `prefix`, after `after`, the first
/// `count` of them in order. The walk reads only the directories that can
/// hold such keys, and stops once it has them.
struct Wanted<'a> {
    prefix: &'a str,
    after: Option<&'a str>,
    count: usize,
}

impl Wanted<'_> {
    fn takes(&self, key: &str) -> bool {
        key.starts_with(self.prefix) && self.after.is_none_or(|a| key > a)
    }

    /// Whether a key starting with `dir` (ending in `/`) can be wanted.
    fn may_hold_under(&self, dir: &str) -> bool {
        let meets_prefix = dir.starts_with(self.prefix) || self.prefix.starts_with(dir);
        // Every key under `dir` sorts before a cursor past `dir` that is
        // not itself under it.
        let all_before_cursor = self.after.is_some_and(|a| a > dir && !a.starts_with(dir));
        meets_prefix && !all_before_cursor
    }
}

#[cfg(test)]
mod tests {
    /// A chain of directories, each sorting before a page of files beside
    /// it: the levels would hold more than [`super::HELD_MOST`] entries
    /// together, so the deeper ones keep fewer and read their directory
    /// again; every key is still listed once, in order. (What is held is
    /// not observed here, only that paging past the bound stays right.)
    #[test]
    fn deep_chains_past_the_bound_are_listed_once_in_order() {
        let root = tempfile::tempdir().unwrap();
        let (depth, files) = (6, 1000);
        let mut dir = root.path().to_path_buf();
        let mut expected = Vec::new();
        for level in 0..depth {
            let dir_key = "a/".repeat(level);
            for i in 0..files {
                std::fs::write(dir.join(format!("b{i:04}")), b"x").unwrap();
                expected.push(format!("{dir_key}b{i:04}"));
            }
            dir = dir.join("a");
            std::fs::create_dir(&dir).unwrap();
        }
        assert!(depth * files > super::HELD_MOST, "the bound is reached");
        expected.sort();
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = super::page(root.path(), "", cursor.as_deref(), 1000).unwrap();
            listed.extend(page.objects.into_iter().map(|o| o.key));
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(listed.len(), expected.len());
        assert!(listed == expected, "every key once, in order");
    }
}
