//! Whether a guest's path to a named upstream could resolve outside the
//! upstream's base path on some server or gateway: dot segments in every
//! spelling such servers are known to read as `.` or `..`.

use unicode_normalization::UnicodeNormalization as _;

/// How many rounds of percent-decoding [`leaves_base`] follows: a server or
/// a gateway in front of it may decode a path more than once.
pub(super) const DECODE_ROUNDS: usize = 4;

/// Whether `path` (with its query) could resolve outside the base path on
/// some server: a segment of only dots (`.`, `..`, also `..;x`, `..?x` and
/// `.. ` as Tomcat, a gateway that decodes and parses again, or IIS read
/// them), spelled plainly or percent-encoded any number of times (`%XX` or
/// IIS's `%uXXXX`), with `/`, `\`, their encodings and their [`LOOKALIKES`]
/// all taken as separators, and lookalike dots as dots. A path still changing
/// after [`DECODE_ROUNDS`] decodings, or holding a control character once
/// decoded, is refused too.
pub(super) fn leaves_base(path: &str) -> bool {
    let Some(decoded) = as_servers_read(path) else {
        return true;
    };
    decoded.split(|&b| b == b'/' || b == b'\\').any(|segment| {
        let segment = segment
            .split(|&b| matches!(b, b';' | b'?' | b'#'))
            .next()
            .unwrap_or_default();
        let segment = segment.trim_ascii_end();
        !segment.is_empty() && segment.iter().all(|&b| b == b'.')
    })
}

/// Characters some servers or gateways turn into a dot, a slash or a backslash (Unicode
/// compatibility normalization, overlong UTF-8 that old decoders accept),
/// as those ASCII bytes: `．．／` must not pass for a harmless name.
const LOOKALIKES: &[(&[u8], u8)] = &[
    ("\u{FF0E}".as_bytes(), b'.'),      // fullwidth full stop
    ("\u{2024}".as_bytes(), b'.'),      // one dot leader
    ("\u{FE52}".as_bytes(), b'.'),      // small full stop
    (&[0xC0, 0xAE], b'.'),              // overlong `.`
    (&[0xE0, 0x80, 0xAE], b'.'),        // overlong `.`, 3 bytes
    (&[0xF0, 0x80, 0x80, 0xAE], b'.'),  // overlong `.`, 4 bytes
    ("\u{FF0F}".as_bytes(), b'/'),      // fullwidth solidus
    ("\u{2215}".as_bytes(), b'/'),      // division slash
    ("\u{2044}".as_bytes(), b'/'),      // fraction slash
    (&[0xC0, 0xAF], b'/'),              // overlong `/`
    (&[0xE0, 0x80, 0xAF], b'/'),        // overlong `/`, 3 bytes
    (&[0xF0, 0x80, 0x80, 0xAF], b'/'),  // overlong `/`, 4 bytes
    ("\u{FF3C}".as_bytes(), b'\\'),     // fullwidth reverse solidus
    (&[0xC1, 0x9C], b'\\'),             // overlong backslash
    (&[0xE0, 0x81, 0x9C], b'\\'),       // overlong backslash, 3 bytes
    (&[0xF0, 0x80, 0x81, 0x9C], b'\\'), // overlong backslash, 4 bytes
];

/// Whether `path` (with its query), read as [`leaves_base`] reads it,
/// starts with `//` or `/\` (in any spelling a server decodes or
/// normalizes to them), which URL parsers in gateways and frameworks
/// (`new URL(path, base)`) read as a reference to another host: an
/// upstream's credential would follow it. A path that does not settle or
/// holds a control character counts as one.
pub(super) fn names_another_host(path: &str) -> bool {
    let doubled = |p: &[u8]| p.starts_with(b"//") || p.starts_with(b"/\\");
    // Every stage a server may resolve dot segments at: as sent, and after
    // each decoding (`/a%2f/..//host` resolves to `//host` before `%2f` is
    // decoded, and never after).
    let mut stage = path
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    for _ in 0..=DECODE_ROUNDS {
        if doubled(&stage) || doubled(&without_dot_segments(&stage)) {
            return true;
        }
        let next = normalized(&lenient_percent_decode(&stage));
        if next == stage {
            return stage.iter().any(u8::is_ascii_control);
        }
        stage = next;
    }
    // Still changing: refused, as `leaves_base` refuses it.
    true
}

/// `path` with its dot segments resolved as RFC 3986 (5.2.4) and URL
/// parsers resolve them: `\` read as `/`, `%2e` as a dot (as WHATWG URL
/// parsers read it) and a segment read up to a `;` (as Tomcat reads
/// `..;x`): `/a/..//host` is `//host`. The root is never left.
fn without_dot_segments(path: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = path.split(|&b| b == b'/' || b == b'\\').collect();
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        let last = i + 1 == segments.len();
        match dots(name) {
            Some(count) => {
                if count == 2 && out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push(b"");
                }
            }
            None => out.push(segment),
        }
    }
    out.join(&b'/')
}

/// 1 for a `.` segment and 2 for a `..` one, each dot spelled `.` or
/// `%2e` (either case); `None` for any other segment.
fn dots(mut name: &[u8]) -> Option<usize> {
    let mut count = 0;
    while !name.is_empty() {
        if let Some(rest) = name.strip_prefix(b".") {
            name = rest;
        } else if name.len() >= 3 && name[..3].eq_ignore_ascii_case(b"%2e") {
            name = &name[3..];
        } else {
            return None;
        }
        count += 1;
    }
    (1..=2).contains(&count).then_some(count)
}

/// The path of `path` (its query and fragment cut) as far as servers may
/// decode and normalize it; `None` if it still changes after
/// [`DECODE_ROUNDS`] or then holds a control character.
fn as_servers_read(path: &str) -> Option<Vec<u8>> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut decoded = path.as_bytes().to_vec();
    for _ in 0..DECODE_ROUNDS {
        let next = normalized(&lenient_percent_decode(&decoded));
        if next == decoded {
            return (!decoded.iter().any(u8::is_ascii_control)).then_some(decoded);
        }
        decoded = next;
    }
    None
}

/// `bytes` as a server or gateway that normalizes paths may read them:
/// Unicode compatibility normalization (NFKC: `‥` U+2025 is `..`, `﹨`
/// U+FE68 is `\`, `％` U+FF05 is `%`), with overlong bytes folded first (a
/// lossy reading would make them U+FFFD) and what NFKC leaves (the division
/// and fraction slashes) folded after. Applied after each decoding round,
/// so a `％２ｅ` is decoded in the next.
fn normalized(bytes: &[u8]) -> Vec<u8> {
    let text: String = String::from_utf8_lossy(&fold_lookalikes(bytes))
        .nfkc()
        .collect();
    fold_lookalikes(text.as_bytes())
}

/// `bytes` with every [`LOOKALIKES`] sequence replaced by its ASCII byte.
fn fold_lookalikes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    'next: while let Some((&first, tail)) = rest.split_first() {
        for (from, to) in LOOKALIKES {
            if let Some(after) = rest.strip_prefix(*from) {
                out.push(*to);
                rest = after;
                continue 'next;
            }
        }
        out.push(first);
        rest = tail;
    }
    out
}

/// `bytes` with each `%XX` (two hex digits) decoded, and each `%uXXXX` (IIS)
/// as the UTF-8 of that code point; any other `%` is kept
/// as it is, as servers do (`100%.md`, bytes that are not UTF-8).
pub(super) fn lenient_percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        if let Some(c) = iis_escape(&bytes[i..]) {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            i += 6;
            continue;
        }
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The character of a `%uXXXX` escape at the start of `bytes`, if there is
/// one (IIS decodes them; `%u002e` is a dot).
fn iis_escape(bytes: &[u8]) -> Option<char> {
    let digits = match bytes {
        [b'%', b'u' | b'U', rest @ ..] => rest.get(..4)?,
        _ => return None,
    };
    let digits = std::str::from_utf8(digits).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    char::from_u32(u32::from_str_radix(digits, 16).ok()?)
}

/// Whether `text` holds `path` followed by the end of a path: nothing, or
/// a character no path segment goes on with (`/v1` is not in `/v10`).
pub(super) fn holds_path(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(at, _)| {
        text[at + path.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || "-._~+%".contains(c)))
    })
}
