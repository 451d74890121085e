//! Avatar uploads, streamed from the HTTP request straight into blob storage.
//!
//! The body is copied in chunks into a blob `writer`: neither the component
//! nor the host ever holds the whole image in memory.

use berth_bindings::blob::{Container, ObjectInfo};

use crate::http::{ApiError, BodyStream};

/// Largest accepted avatar.
const MAX_AVATAR_BYTES: u64 = 5 * 1024 * 1024;

/// Size of the chunks copied from the request to the store.
const CHUNK_BYTES: u64 = 64 * 1024;

/// The blob key of user `id`'s avatar.
pub fn key(user_id: i64) -> String {
    format!("users/{user_id}/avatar")
}

/// Copies `body` into `container` under `key`.
///
/// The object only appears when the writer is finished, so a failed or
/// oversized upload leaves the previous avatar in place: returning early
/// drops the writer, and the host discards what was written.
pub fn store(
    container: &Container,
    key: &str,
    mut body: BodyStream,
) -> Result<ObjectInfo, ApiError> {
    let writer = container.write(key)?;
    let mut total = 0u64;
    while let Some(chunk) = body.next_chunk(CHUNK_BYTES)? {
        total += chunk.len() as u64;
        if total > MAX_AVATAR_BYTES {
            return Err(ApiError::new(
                413,
                format!("avatar exceeds {MAX_AVATAR_BYTES} bytes"),
            ));
        }
        writer.write(&chunk)?;
    }
    if total == 0 {
        return Err(ApiError::bad_request("empty avatar"));
    }
    Ok(writer.finish()?)
}
