//! Tests of the file-system blob store.

use super::*;

fn container(dir: &Path) -> FsContainer {
    bounded(dir, None)
}

fn bounded(dir: &Path, max_bytes: Option<u64>) -> FsContainer {
    let signer = Arc::new(UrlSigner::new(b"k".to_vec(), "http://localhost:3000"));
    FsContainer::open(
        dir.join("root"),
        dir.join("tmp"),
        "app",
        "c",
        signer,
        max_bytes,
    )
    .unwrap()
}

/// A bounded container refuses a write past its room as `too-large`,
/// counts writes under way and each object's overhead, gives back what
/// deletes, replaced objects, failed finishes and dropped writers held,
/// shares its room with another version of the app open at once, and
/// counts what it holds when opened afresh.
#[tokio::test]
async fn a_bounded_container_holds_no_more_than_its_room() {
    const O: u64 = room::OBJECT_OVERHEAD;
    let dir = tempfile::tempdir().unwrap();
    let c = bounded(dir.path(), Some(2 * O + 1000));
    let room = c.room.clone().unwrap();
    let too_large = |r: Result<ObjectInfo, BlobError>| match r {
        Err(BlobError::TooLarge(m)) => assert!(m.contains("store_mb"), "{m}"),
        other => panic!("expected too-large, got {other:?}"),
    };
    c.put("a", vec![1; 600]).await.unwrap();
    assert_eq!(room.used(), O + 600);
    too_large(c.put("b", vec![2; 500]).await);
    assert!(c.stat("b").await.is_err(), "nothing of the refused object");
    assert_eq!(
        room.used(),
        O + 600,
        "the refused writer gave its part back"
    );
    // A write under way holds its bytes; dropped, it gives them back.
    let mut w = c.write("c").await.unwrap();
    w.write(&[3; 300]).await.unwrap();
    too_large(c.put("d", vec![4; 10]).await);
    drop(w);
    assert_eq!(room.used(), O + 600);
    // A replaced object's bytes are free once its new version is in.
    c.put("a", vec![5; 400]).await.unwrap();
    assert_eq!(room.used(), O + 400);
    assert!(c.delete("a").await.unwrap());
    assert_eq!(room.used(), 0);
    // A finish that fails (its key came to lie below an object) gives
    // back its part.
    let mut w = c.write("p/q").await.unwrap();
    w.write(&[6; 10]).await.unwrap();
    c.put("p", vec![6; 10]).await.unwrap();
    assert!(matches!(w.finish().await, Err(BlobError::InvalidKey(_))));
    assert_eq!(room.used(), O + 10);
    assert!(c.delete("p").await.unwrap());
    // Another version of the app open at once shares the room.
    let reloaded = bounded(dir.path(), Some(2 * O + 1000));
    assert!(Arc::ptr_eq(&room, reloaded.room.as_ref().unwrap()));
    reloaded.put("x/y", vec![7; 700]).await.unwrap();
    assert_eq!(room.used(), O + 700);
    drop((c, reloaded, room));
    // Opened afresh: what it holds is counted.
    let again = bounded(dir.path(), Some(2 * O + 1000));
    assert_eq!(again.room.as_ref().unwrap().used(), O + 700);
    too_large(again.put("z", vec![8; 301]).await);
    again.put("z", vec![8; 300]).await.unwrap();
}

#[tokio::test]
async fn planted_symlink_cannot_lead_outside() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("root/link")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("root/dirlink")).unwrap();
    assert!(c.get("link", 100).await.is_err());
    assert!(c.get("dirlink/secret", 100).await.is_err());
    assert!(c.put("dirlink/new", b"x".to_vec()).await.is_err());
    assert!(!dir.path().join("new").exists());
    let listed = c.list("", None, 10).await.unwrap();
    assert!(listed.objects.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    let mut w = c.write("a/b").await.unwrap();
    w.write(b"partial").await.unwrap();
    drop(w);
    assert_eq!(c.stat("a/b").await.unwrap_err(), BlobError::NotFound);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

/// A full disk gives `unavailable` (retriable once space is freed) at the
/// write that hit it or at `finish`, whichever learns of it (tokio reports
/// a background write's failure on the next call), and leaves no object
/// and no temporary file. `/dev/full` answers every write with `ENOSPC`,
/// as a full file system does.
#[tokio::test]
async fn a_full_disk_gives_unavailable_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    for chunks in [1, 3] {
        let mut w = c.new_writer("a/b").unwrap();
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        w.file = Some(tokio::fs::File::from_std(full));
        let mut w: Box<dyn BlobWriter> = Box::new(w);
        let mut failed = None;
        for _ in 0..chunks {
            if let Err(e) = w.write(&[7; 64 * 1024]).await {
                failed = Some(e);
                break;
            }
        }
        let failed = match failed {
            Some(e) => {
                drop(w);
                e
            }
            None => w.finish().await.unwrap_err(),
        };
        assert!(
            matches!(&failed, BlobError::Unavailable(why) if why.contains("out of space")),
            "{failed:?}"
        );
        assert_eq!(c.stat("a/b").await.unwrap_err(), BlobError::NotFound);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}

#[tokio::test]
async fn leftovers_of_a_crash_are_swept_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    let mut live = c.write("live").await.unwrap();
    live.write(b"in progress").await.unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::write(tmp.join("old"), b"cut off").unwrap();
    // Written just now: nothing is old enough at the default age.
    sweep_leftovers(&tmp, LEFTOVER_AGE);
    assert_eq!(count(&tmp), 2);
    // With no age every file counts as left over; the writer's is gone too,
    // so only the age keeps a live writer's file.
    sweep_leftovers(&tmp, std::time::Duration::ZERO);
    assert_eq!(count(&tmp), 0);
    drop(live);
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn delete_removes_the_directories_it_empties() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    c.put("a/b", b"1".to_vec()).await.unwrap();
    assert!(c.delete("a/b").await.unwrap());
    assert!(!dir.path().join("root/a").exists());
    // As on S3: once `a/b` is gone, `a` can be an object.
    c.put("a", b"2".to_vec()).await.unwrap();
    assert_eq!(c.get("a", 10).await.unwrap(), b"2");

    // Only directories left empty go.
    c.put("x/y/z", b"3".to_vec()).await.unwrap();
    c.put("x/w", b"4".to_vec()).await.unwrap();
    assert!(c.delete("x/y/z").await.unwrap());
    assert!(!dir.path().join("root/x/y").exists());
    assert!(dir.path().join("root/x").is_dir());
    assert_eq!(c.get("x/w", 10).await.unwrap(), b"4");
    assert!(c.delete("x/w").await.unwrap());
    assert!(c.delete("a").await.unwrap());
    // The root itself stays, empty.
    assert!(dir.path().join("root").is_dir());
    assert_eq!(count(&dir.path().join("root")), 0);

    // An empty directory left by an older version holds no key.
    std::fs::create_dir_all(dir.path().join("root/old/dir")).unwrap();
    c.put("old/dir", b"5".to_vec()).await.unwrap();
    assert_eq!(c.get("old/dir", 10).await.unwrap(), b"5");
}

#[tokio::test]
async fn keys_below_an_object_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    c.put("a", b"1".to_vec()).await.unwrap();
    for key in ["a/b", "a/b/c"] {
        assert_eq!(c.stat(key).await.unwrap_err(), BlobError::NotFound, "{key}");
        assert_eq!(
            c.get(key, 10).await.unwrap_err(),
            BlobError::NotFound,
            "{key}"
        );
        assert!(
            matches!(c.read(key).await, Err(BlobError::NotFound)),
            "{key}"
        );
        assert!(!c.delete(key).await.unwrap(), "{key}");
    }
    assert_eq!(c.get("a", 10).await.unwrap(), b"1");
}

#[tokio::test]
async fn keys_files_cannot_hold_together_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    c.put("a", b"1".to_vec()).await.unwrap();
    for key in ["a/b", "a/b/c"] {
        match c.put(key, b"2".to_vec()).await {
            Err(BlobError::InvalidKey(m)) => assert!(m.contains("path prefix"), "{m}"),
            other => panic!("put {key}: {other:?}"),
        }
    }
    c.put("d/e", b"3".to_vec()).await.unwrap();
    match c.put("d", b"4".to_vec()).await {
        Err(BlobError::InvalidKey(m)) => assert!(m.contains("path extensions"), "{m}"),
        other => panic!("put d: {other:?}"),
    }
    // The same through a chunked writer.
    let mut w = c.write("d").await.unwrap();
    w.write(b"5").await.unwrap();
    assert!(matches!(w.finish().await, Err(BlobError::InvalidKey(_))));
    // Nothing was overwritten, and the refused writes left no file.
    assert_eq!(c.get("a", 10).await.unwrap(), b"1");
    assert_eq!(c.get("d/e", 10).await.unwrap(), b"3");
    assert_eq!(count(&dir.path().join("tmp")), 0);
}

#[tokio::test]
async fn get_caps_the_bytes_read_not_the_size_seen() {
    let data = [7u8; 10];
    // A file that grew after its size was taken: 3 bytes declared, 10 there.
    match read_capped(&data[..], 3, 5).await {
        Err(BlobError::TooLarge(m)) => assert!(m.contains("grew"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(read_capped(&data[..], 10, 10).await.unwrap(), data.to_vec());
    assert!(matches!(
        read_capped(&data[..], 10, 9).await,
        Err(BlobError::TooLarge(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    c.put("big", vec![1; 11]).await.unwrap();
    assert!(matches!(
        c.get("big", 10).await,
        Err(BlobError::TooLarge(_))
    ));
    assert_eq!(c.get("big", 11).await.unwrap(), vec![1u8; 11]);
}

#[tokio::test]
async fn the_rename_probe_leaves_nothing_and_is_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    assert_eq!(count(&dir.path().join("root")), 0);
    assert_eq!(count(&dir.path().join("tmp")), 0);
    // A probe left behind (the host died between rename and removal).
    std::fs::write(
        dir.path().join("root").join(format!("{PROBE_PREFIX}left")),
        b"x",
    )
    .unwrap();
    assert!(super::super::validate_key(&format!("{PROBE_PREFIX}left"), 1024).is_err());
    c.put("k", b"1".to_vec()).await.unwrap();
    let page = c.list("", None, 10).await.unwrap();
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, vec!["k"]);
}

#[test]
fn a_root_on_another_filesystem_is_refused_at_open() {
    use std::os::unix::fs::MetadataExt;
    // Needs two filesystems: /dev/shm is a tmpfs of its own on Linux,
    // apart from the default temporary directory.
    let other = tempfile::tempdir_in("/dev/shm").expect("this test needs a writable /dev/shm");
    let dir = tempfile::tempdir().unwrap();
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(other.path()),
        dev(dir.path()),
        "this test needs /dev/shm and the temporary directory on two filesystems"
    );
    let (root, tmp) = (other.path().join("root"), dir.path().join("tmp"));
    let signer = Arc::new(UrlSigner::new(b"k".to_vec(), "http://localhost:3000"));
    let Err(BlobError::Other(m)) =
        FsContainer::open(root.clone(), tmp.clone(), "a", "c", signer, None)
    else {
        panic!("a root on another filesystem was accepted");
    };
    assert!(m.contains("different filesystems"), "{m}");
    assert!(m.contains(&root.display().to_string()), "{m}");
    assert!(m.contains(&tmp.display().to_string()), "{m}");
    assert_eq!(count(&tmp), 0);
    assert_eq!(count(&root), 0);
}

/// Pages come in S3's byte order whatever the directories (`d-x` before
/// `d/…` before `d0`), under the prefix, from the cursor on, with every
/// key once across pages.
#[tokio::test]
async fn listing_pages_follow_key_order_across_directories() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    let keys = [
        "d-x", "d/a", "d/b/c", "d/b/d", "d/b0", "d0", "d.e", "e/f/g", "dd",
    ];
    for key in keys {
        c.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let mut sorted = keys.to_vec();
    sorted.sort();
    let listed = |prefix: &'static str, page: usize| {
        let c = &c;
        async move {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let p = c.list(prefix, cursor.as_deref(), page).await.unwrap();
                assert!(p.objects.len() <= page);
                seen.extend(p.objects.into_iter().map(|o| o.key));
                match p.cursor {
                    Some(next) => cursor = Some(next),
                    None => return seen,
                }
            }
        }
    };
    for page in [1, 2, 3, 100] {
        assert_eq!(listed("", page).await, sorted, "page of {page}");
        assert_eq!(
            listed("d/", page).await,
            ["d/a", "d/b/c", "d/b/d", "d/b0"],
            "page of {page}"
        );
        assert_eq!(
            listed("d/b", page).await,
            ["d/b/c", "d/b/d", "d/b0"],
            "page of {page}"
        );
    }
    // A cursor inside a directory resumes there.
    let p = c.list("", Some("d/b/c"), 3).await.unwrap();
    let page: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(page, ["d/b/d", "d/b0", "d0"]);
    assert_eq!(p.objects[0].size, 5);
}

/// A listing keeps only the page's first entries of each directory, and
/// reads a directory again when the kept subdirectories held too few
/// keys: empty ones (emptied meanwhile) do not end the page early.
#[tokio::test]
async fn listing_reads_past_empty_directories_in_bounded_pages() {
    let dir = tempfile::tempdir().unwrap();
    let c = container(dir.path());
    for key in ["d", "e", "f/g"] {
        c.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    for empty in ["a", "b", "c/x", "c/y"] {
        std::fs::create_dir_all(dir.path().join("root").join(empty)).unwrap();
    }
    // Three entries are kept by the first read (the page of 2, plus one
    // to tell whether more follow): `a/`, `b/` and `c/`, all empty.
    let p = c.list("", None, 2).await.unwrap();
    let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["d", "e"]);
    assert_eq!(p.cursor.as_deref(), Some("e"));
    let p = c.list("", Some("e"), 2).await.unwrap();
    let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["f/g"]);
    assert_eq!(p.cursor, None);

    // Many files in one directory, listed a page at a time in key order.
    for i in 0..250 {
        c.put(&format!("many/{i:03}"), vec![1]).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = c.list("many/", cursor.as_deref(), 100).await.unwrap();
        seen.extend(p.objects.into_iter().map(|o| o.key));
        match p.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..250).map(|i| format!("many/{i:03}")).collect();
    assert_eq!(seen, expected);
}
