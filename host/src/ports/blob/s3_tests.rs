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

/// A ListObjectsV2 answer listing `keys` (under the container prefix
/// `berth/app/c/`), truncated with token `next` when given.
fn list_page(keys: &[&str], next: Option<&str>) -> String {
    let contents: String = keys
        .iter()
        .map(|k| {
            format!(
                "<Contents><Key>berth/app/c/{k}</Key>\
                 <LastModified>2026-01-01T00:00:00.000Z</LastModified><Size>1</Size></Contents>"
            )
        })
        .collect();
    let token = next.map_or(String::new(), |t| {
        format!("<NextContinuationToken>{t}</NextContinuationToken>")
    });
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>b</Name><Prefix>berth/app/c/</Prefix><KeyCount>{}</KeyCount>\
         <IsTruncated>{}</IsTruncated>{token}{contents}</ListBucketResult>",
        keys.len(),
        next.is_some(),
    )
}

/// The continuation tokens of the list requests a stand-in server saw.
type SeenTokens = std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A stand-in for an S3 server, for answers a real one gives only under
/// load: every bucket exists, and a listing with continuation token `tN`
/// gets `pages[N]` (`pages[0]` without a token).
async fn stand_in_s3(pages: Vec<String>) -> (S3Container, SeenTokens) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = SeenTokens::default();
    let (pages, tokens) = (std::sync::Arc::new(pages), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (pages, tokens) = (pages.clone(), tokens.clone());
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let token = req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("continuation-token="))
                        .map(str::to_string)
                });
                let body = if req.method() == hyper::Method::HEAD {
                    String::new()
                } else {
                    tokens.lock().unwrap().push(token.clone());
                    let n = token.map_or(0, |t| t[1..].parse::<usize>().unwrap());
                    pages[n.min(pages.len() - 1)].clone()
                };
                std::future::ready(Ok::<_, std::convert::Infallible>(hyper::Response::new(
                    Full::new(Bytes::from(body)),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    let container = S3Container::connect(&S3Settings {
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        bucket: "b".into(),
        prefix: "berth/app/c/".into(),
        path_style: true,
        access_key_id: Secret::new("stand-in"),
        secret_access_key: Secret::new("stand-in"),
        part_size: MIN_PART_SIZE,
        timeout: Duration::from_secs(5),
        app_buffers: app_write_buffers("stand-in"),
    })
    .await
    .expect("the stand-in's bucket exists");
    (container, seen)
}

/// A page without keys that says more follow does not end the listing:
/// the server's own token is followed to the keys behind it.
#[tokio::test]
async fn empty_truncated_pages_are_followed_by_the_servers_token() {
    let (s3, seen) = stand_in_s3(vec![
        list_page(&[], Some("t1")),
        list_page(&[], Some("t2")),
        list_page(&["a", "b"], None),
    ])
    .await;
    let page = s3.list("", None, 10).await.unwrap();
    assert_eq!(
        (keys(&page), page.cursor.as_deref()),
        (vec!["a", "b"], None)
    );
    let tokens = seen.lock().unwrap().clone();
    assert_eq!(tokens, [None, Some("t1".into()), Some("t2".into())]);
}

/// A server that only ever answers empty truncated pages gets a bounded
/// number of requests, and the guest a retriable error.
#[tokio::test]
async fn endless_empty_pages_end_in_unavailable() {
    let pages = (1..=20)
        .map(|n| list_page(&[], Some(&format!("t{n}"))))
        .collect();
    let (s3, seen) = stand_in_s3(pages).await;
    let err = s3.list("", None, 10).await.unwrap_err();
    assert!(
        matches!(&err, BlobError::Unavailable(m) if m.contains("retry")),
        "{err:?}"
    );
    let requests = seen.lock().unwrap().len();
    assert_eq!(requests, EMPTY_PAGES_FOLLOWED as usize + 1);
}

/// An app's S3 containers share one part of the upload budget, also across
/// a reload (the old containers still hold it), and apps do not share.
#[test]
fn an_app_keeps_one_share_of_the_upload_buffers() {
    let first = app_write_buffers("share-a");
    let again = app_write_buffers("share-a");
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    assert!(!std::sync::Arc::ptr_eq(
        &first,
        &app_write_buffers("share-b")
    ));
    let taken = first.clone().try_acquire_many_owned(1024).unwrap();
    assert_eq!(
        again.available_permits(),
        APP_WRITE_BUFFER_SHARE / 1024 - 1024
    );
    drop((taken, first, again));
    let fresh = app_write_buffers("share-a");
    assert_eq!(fresh.available_permits(), APP_WRITE_BUFFER_SHARE / 1024);
}

/// A writer holds of its app's upload buffers what its buffer may reach,
/// doubling as it fills, not a whole part from its first byte; a write
/// past what is left is refused before any of its bytes is taken, and a
/// dropped writer gives everything back.
#[tokio::test]
async fn a_writer_holds_what_its_buffer_may_reach() {
    let client = Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .build(),
    );
    let app = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut writer = S3Writer::new(
        client,
        "b".into(),
        "berth/app/c/k".into(),
        "k".into(),
        MIN_PART_SIZE,
        app.clone(),
    );
    writer.write(&[0]).await.unwrap();
    assert_eq!(app.available_permits(), 99, "one KiB for one byte");
    writer.write(&[0; 3000]).await.unwrap();
    assert_eq!(app.available_permits(), 97, "3 KiB for 3001 bytes");
    writer.write(&[0; 2000]).await.unwrap();
    assert_eq!(app.available_permits(), 94, "doubled to 6 KiB");
    let refused = writer.write(&[0; 200 << 10]).await.unwrap_err();
    assert!(
        matches!(&refused, BlobError::Unavailable(m) if m.contains("upload buffers")),
        "{refused:?}"
    );
    assert_eq!(app.available_permits(), 94, "a refused write takes nothing");
    // Within what is left, writing goes on where it stopped.
    writer.write(&[0; 50 << 10]).await.unwrap();
    assert!(app.available_permits() < 94);
    drop(writer);
    assert_eq!(app.available_permits(), 100);
}

/// The sizes of the parts a stand-in S3 server was sent.
type SeenParts = std::sync::Arc<std::sync::Mutex<Vec<usize>>>;

/// A client of a stand-in S3 server that takes multipart uploads (and
/// aborts), recording each part's size.
async fn stand_in_multipart() -> (Client, SeenParts) {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = SeenParts::default();
    let parts = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let parts = parts.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let parts = parts.clone();
                    async move {
                        let query = req.uri().query().unwrap_or_default().to_string();
                        let method = req.method().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut response = hyper::Response::builder();
                        let answer = if query.contains("uploads") {
                            "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>\
                         <UploadId>u1</UploadId></InitiateMultipartUploadResult>"
                        } else if method == hyper::Method::PUT && query.contains("partNumber") {
                            parts.lock().unwrap().push(body.len());
                            response =
                                response.header("ETag", "\"5d41402abc4b2a76b9719d911017c592\"");
                            ""
                        } else {
                            ""
                        };
                        Ok::<_, std::convert::Infallible>(
                            response.body(Full::new(Bytes::from(answer))).unwrap(),
                        )
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "stand-in", "stand-in", None, None, "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .endpoint_url(endpoint);
    (Client::from_conf(config.build()), seen)
}

/// Writers short of room to grow do not wait for each other's: one that
/// holds S3's smallest part uploads parts of what it holds, and one that
/// cannot double takes just what it wants.
#[tokio::test]
async fn a_writer_short_of_room_uploads_smaller_parts() {
    let (client, parts) = stand_in_multipart().await;
    // 7 MiB of room for parts of 8 MiB.
    let app = std::sync::Arc::new(tokio::sync::Semaphore::new(7 * 1024));
    let mut writer = S3Writer::new(
        client,
        "b".into(),
        "berth/app/c/k".into(),
        "k".into(),
        8 << 20,
        app.clone(),
    );
    for _ in 0..16 {
        writer.write(&[1; 1 << 20]).await.unwrap();
    }
    assert_eq!(app.available_permits(), 0, "it holds all 7 MiB");
    let mib = 1 << 20;
    assert_eq!(*parts.lock().unwrap(), [7 * mib, 7 * mib]);
    // Room coming back, the next part is a whole one again.
    app.add_permits(1024);
    for _ in 0..14 {
        writer.write(&[1; 1 << 20]).await.unwrap();
    }
    assert_eq!(*parts.lock().unwrap(), [7 * mib, 7 * mib, 7 * mib, 8 * mib]);
    drop(writer);
    assert_eq!(app.available_permits(), 8 * 1024);
}
