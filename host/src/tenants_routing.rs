//! What a request to `berth serve` names, before an app is chosen: dot
//! segments in any spelling a proxy in front might normalize, and the
//! host it is for (its URI's authority or its `Host` header, which must
//! agree).

/// Whether `path` has a `.` or `..` segment, plainly or percent-encoded,
/// in any spelling a proxy in front might normalize: segments end at `/`,
/// and also at `\` and at `%2f` or `%5c` (which some decode to a slash),
/// and a segment's `;` parameters are no part of it (`..;` is `..` to
/// Tomcat-like servers). Runs on every request, so without allocating.
pub(super) fn has_dot_segment(path: &str) -> bool {
    const DOT_SEGMENTS: [&str; 6] = [".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"];
    let is_dots = |piece: &str| DOT_SEGMENTS.iter().any(|d| piece.eq_ignore_ascii_case(d));
    let bytes = path.as_bytes();
    let (mut start, mut params, mut i) = (0, None, 0);
    while i <= bytes.len() {
        let delimiter = match bytes.get(i) {
            None | Some(b'/' | b'\\') => 1,
            Some(b'%')
                if bytes.get(i + 1..i + 3).is_some_and(|hex| {
                    hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c")
                }) =>
            {
                3
            }
            Some(b';') => {
                params.get_or_insert(i);
                0
            }
            Some(_) => 0,
        };
        if delimiter == 0 {
            i += 1;
            continue;
        }
        // Delimiters are ASCII, so these are character boundaries.
        if path.get(start..params.unwrap_or(i)).is_some_and(is_dots) {
            return true;
        }
        i += delimiter;
        start = i;
        params = None;
    }
    false
}

/// `host` without its port or trailing dot, in lower case.
pub(super) fn normalized_host(host: &str) -> String {
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The host a request is for: its URI's authority (absolute form, HTTP/2's
/// `:authority`), else its `Host` header, normalized. `None` when the two
/// name different hosts or the header is not text: routing by one while a
/// proxy or the guest goes by the other would be routing by two names.
pub(super) fn request_host(
    authority: Option<&str>,
    header: Option<Option<&str>>,
) -> Option<String> {
    let header = match header {
        Some(Some(h)) => Some(normalized_host(h)),
        Some(None) => return None,
        None => None,
    };
    let authority = authority.map(|a| normalized_host(a.rsplit('@').next().unwrap_or(a)));
    match (authority, header) {
        (Some(a), Some(h)) if a != h => None,
        (Some(a), _) => Some(a),
        (None, h) => Some(h.unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_any_spelling_are_found() {
        for path in [
            "/shop/../blog/",
            "/shop/./x",
            "/shop/%2e%2E/blog",
            "/a/%2E",
            "/..",
            "/shop/..;/blog/",
            "/shop/..;jsessionid=1/blog",
            "/shop/..\\blog",
            "/shop/..%2fblog",
            "/shop/x%5C..%5Cblog",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/shop/a..b",
            "/shop/.well-known/x",
            "/shop/%2Fx",
            "/",
            "/shop/v1.2",
            "/shop/a;b",
            "/shop/...;x",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn the_request_host_is_one_name_normalized() {
        let host = |authority, header| request_host(authority, header);
        assert_eq!(
            host(None, Some(Some("Shop.Apps.Example.com.:8080"))).as_deref(),
            Some("shop.apps.example.com")
        );
        assert_eq!(
            host(Some("blog.apps.example.com"), None).as_deref(),
            Some("blog.apps.example.com")
        );
        assert_eq!(
            host(
                Some("BLOG.apps.example.com:443"),
                Some(Some("blog.apps.example.com"))
            )
            .as_deref(),
            Some("blog.apps.example.com")
        );
        // Absolute form naming another host than `Host`: no app.
        assert_eq!(
            host(
                Some("blog.apps.example.com"),
                Some(Some("shop.apps.example.com"))
            ),
            None
        );
        assert_eq!(host(None, Some(None)), None);
        assert_eq!(normalized_host("[::1]:80"), "[::1]");
    }
}
