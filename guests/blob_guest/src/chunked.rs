//! Chunked writing and reading: 8 MiB streamed through in 64 KiB pieces,
//! never held in memory at once by the guest.

use berth_bindings::blob::Container;

use crate::step;

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 8 * 1024 * 1024;

/// The deterministic content of byte `i` of the big object. 251 is prime, so
/// the pattern does not line up with chunk boundaries.
fn pattern(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// Fills `buf` with the pattern for the bytes starting at `offset`.
fn fill(buf: &mut [u8], offset: usize) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + j);
    }
}

pub fn write_and_read(c: &Container) {
    let writer = c.write("big/object").expect("open writer");
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < TOTAL {
        fill(&mut buf, offset);
        writer.write(&buf).expect("write chunk");
        offset += CHUNK;
    }
    // Nothing is visible until the writer is finished.
    assert!(!c.exists("big/object").expect("exists before finish"));
    let info = writer.finish().expect("finish");
    assert_eq!(info.size, TOTAL as u64, "size after finish");
    assert_eq!(c.stat("big/object").expect("stat big").size, TOTAL as u64);
    step("chunked write of 8 MiB");

    let reader = c.read("big/object").expect("open reader");
    let mut offset = 0;
    loop {
        let chunk = reader.read(CHUNK as u32).expect("read chunk");
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= CHUNK, "read returned more than max-bytes");
        for (j, &b) in chunk.iter().enumerate() {
            if b != pattern(offset + j) {
                panic!(
                    "byte {} is {b}, expected {}",
                    offset + j,
                    pattern(offset + j)
                );
            }
        }
        offset += chunk.len();
        assert!(offset <= TOTAL, "read past the end of the object");
    }
    assert_eq!(offset, TOTAL, "bytes read");
    step("chunked read of 8 MiB");
}

/// A writer dropped before `finish` must leave no object behind.
pub fn dropped_writer(c: &Container) {
    let writer = c.write("aborted/x").expect("open writer");
    let mut buf = vec![0u8; CHUNK];
    for k in 0..4 {
        fill(&mut buf, k * CHUNK);
        writer.write(&buf).expect("write chunk");
    }
    drop(writer);
    assert!(
        !c.exists("aborted/x").expect("exists aborted/x"),
        "dropped writer left an object"
    );
    step("dropped writer leaves nothing");
}
