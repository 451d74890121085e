//! Tests of the S3 blob store's key and URL handling.

use super::*;

fn keys(page: &ObjectPage) -> Vec<&str> {
    page.objects.iter().map(|o| o.key.as_str()).collect()
}

#[test]
fn pages_strip_the_prefix_and_set_the_cursor() {
    let p = "berth/app/c/";
    let full = |ks: &[&str]| {
        ks.iter()
            .map(|k| (format!("{p}{k}"), 1, 2))
            .collect::<Vec<_>>()
    };
    let page = page_of(p, full(&["a", "b", "c"]), false, 2);
    assert_eq!(
        (keys(&page), page.cursor.as_deref()),
        (vec!["a", "b"], Some("b"))
    );
    let page = page_of(p, full(&["a", "b"]), false, 2);
    assert_eq!(
        (keys(&page), page.cursor.as_deref()),
        (vec!["a", "b"], None)
    );
    // The server's own page limit (1000) also yields a cursor.
    let page = page_of(p, full(&["a"]), true, 5);
    assert_eq!(page.cursor.as_deref(), Some("a"));
    // Nothing outside the prefix ever comes back.
    let outside = vec![("berth/app/other/x".to_string(), 1, 2)];
    assert!(page_of(p, outside, false, 5).objects.is_empty());
}

#[test]
fn keys_past_s3s_limit_with_the_prefix_are_invalid() {
    let p = "berth/app/c/";
    assert_eq!(full_key(p, "a/b").unwrap(), "berth/app/c/a/b");
    let fits = "k".repeat(MAX_KEY_BYTES - p.len());
    assert_eq!(full_key(p, &fits).unwrap().len(), MAX_KEY_BYTES);
    match full_key(p, &format!("{fits}k")) {
        Err(BlobError::InvalidKey(m)) => {
            assert!(m.contains("1024"), "{m}");
            assert!(m.contains(&format!("at most {} bytes", fits.len())), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

/// S3's errors by status and code: what a guest may retry is `unavailable`,
/// a missing object `not-found`, an archived one `other`.
#[test]
fn service_errors_map_by_code_then_status() {
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    let error = |status: u16, code: &str| {
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        let err = GetObjectError::generic(ErrorMetadata::builder().code(code).build());
        map_err("get-object", SdkError::service_error(err, raw))
    };
    let unavailable = |e: &BlobError| matches!(e, BlobError::Unavailable(_));
    for (status, code) in [
        (503, "SlowDown"),
        (400, "RequestTimeout"),
        (409, "OperationAborted"),
        (200, "InternalError"),
        (429, "Whatever"),
        (500, "InternalError"),
        (403, "AccessDenied"),
        (403, "SignatureDoesNotMatch"),
        (404, "NoSuchBucket"),
    ] {
        let mapped = error(status, code);
        assert!(unavailable(&mapped), "{status} {code}: {mapped:?}");
    }
    assert_eq!(error(404, "NoSuchKey"), BlobError::NotFound);
    let archived = error(403, "InvalidObjectState");
    assert!(
        matches!(&archived, BlobError::Other(m) if m.contains("archived")),
        "{archived:?}"
    );
    let refused = error(400, "InvalidArgument");
    assert!(matches!(refused, BlobError::Other(_)), "{refused:?}");
}
