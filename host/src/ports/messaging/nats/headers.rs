//! Message headers between the port and NATS: Berth's id travels as
//! `Nats-Msg-Id` (JetStream deduplicates by it), JetStream's own headers are
//! never passed on, and a message's size is counted as the server counts it.

use async_nats::HeaderMap;

/// Header carrying Berth's message id.
const MSG_ID: &str = "Nats-Msg-Id";
/// Header carrying a request's timeout in ms, from which its trigger
/// counts what is left of it (core NATS has no expiry of its own).
pub(super) const TIMEOUT_MS: &str = "Berth-Timeout-Ms";

/// The NATS headers of a message with the port's `headers` and Berth's `id`.
pub(super) fn headers_to_nats(headers: &[(String, String)], id: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    // JetStream's own headers are never passed on: guests cannot set them
    // (the port refuses them), and a dead letter does not carry over those
    // another producer put on the original.
    for (k, v) in headers
        .iter()
        .filter(|(k, _)| !crate::ports::messaging::host::is_broker_header(k))
    {
        // `append`: a header given twice keeps both values.
        map.append(k.as_str(), v.as_str());
    }
    map.insert(MSG_ID, id);
    map
}

/// The bytes a message counts against the server's `max_payload`: its
/// payload and its headers as NATS encodes them (`NATS/1.0`, a
/// `name: value` line each, a blank line).
pub(super) fn wire_size(payload: usize, headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            let name = AsRef::<str>::as_ref(name).len();
            values.iter().map(move |v| name + 2 + v.as_str().len() + 2)
        })
        .sum();
    payload + "NATS/1.0\r\n".len() + lines + 2
}

pub(super) fn headers_from_nats(
    map: Option<&HeaderMap>,
) -> (Option<String>, Vec<(String, String)>) {
    let mut id = None;
    let mut out = Vec::new();
    for (name, values) in map.into_iter().flat_map(|m| m.iter()) {
        for v in values {
            let name_str: &str = name.as_ref();
            if name_str == MSG_ID {
                id = Some(v.to_string());
            } else if name_str.eq_ignore_ascii_case(TIMEOUT_MS) {
                // The host's own, read by `request_timeout`.
            } else {
                out.push((name.to_string(), v.to_string()));
            }
        }
    }
    out.sort();
    (id, out)
}

/// The timeout a request's caller gave it ([`TIMEOUT_MS`]), if any.
pub(super) fn request_timeout(map: Option<&HeaderMap>) -> Option<std::time::Duration> {
    let value = map?.get(TIMEOUT_MS)?;
    value
        .as_str()
        .parse()
        .ok()
        .map(std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_count_as_the_server_counts_them() {
        let headers = vec![
            ("x-a".to_string(), "1".to_string()),
            ("x-a".to_string(), "2".to_string()),
        ];
        let map = headers_to_nats(&headers, "id-1");
        // A header given twice keeps both values; the id comes back apart.
        assert_eq!(
            headers_from_nats(Some(&map)),
            (Some("id-1".into()), headers)
        );
        // `NATS/1.0\r\n`, `x-a: 1\r\n`, `x-a: 2\r\n`,
        // `Nats-Msg-Id: id-1\r\n`, `\r\n` and the payload.
        assert_eq!(wire_size(100, &map), 100 + 10 + 8 + 8 + 19 + 2);
    }
}
