//! Request path and host normalization: the one form that authorization matching sees, and that
//! the upstream receives, so that the two cannot disagree about which resource was asked for.
//!
//! The data plane calls [`normalize_path`] on every request's path (the part before `?`) before
//! routing and authorization, and forwards the result; a refusal becomes a 400. It must not
//! allocate for a path that is already normal (the common case): it returns
//! [`Cow::Borrowed`] then.
//!
//! What every mode does:
//!
//! - a raw control byte (0x00–0x1F), space or DEL is refused ([`PathRejection::ForbiddenByte`]);
//! - `%00` is refused ([`PathRejection::DecodedNul`]): a NUL ends a string in C upstreams;
//! - a malformed escape (`%`, `%4`, `%zz`) is refused ([`PathRejection::BadEscape`]): servers
//!   disagree on what it means;
//! - a `#fragment` is cut off (clients never send one; a path that holds one is an attack or a
//!   bug, and the upstream must not see a different path than matching did).
//!
//! The modes are Istio's `meshConfig.pathNormalization.normalization`:
//!
//! - `NONE`: only the checks above.
//! - `BASE` (RFC 3986 and Envoy's `normalize_path`): escapes of unreserved characters are decoded
//!   (`%61` → `a`, `%2e` → `.`), the hex of escapes that stay is upper-cased, `\` becomes `/`,
//!   and dot segments are removed (`/./`, `/x/../`; `/..` at the root stays at the root).
//! - `MERGE_SLASHES` (**the default**): `BASE`, then runs of `/` become one.
//! - `DECODE_AND_MERGE_SLASHES`: also `%2F` and `%5C` (any case) become `/` *before* dot segments
//!   are removed, then slashes are merged.
//!
//! In `BASE` and `MERGE_SLASHES` a path holding an escaped slash or backslash (`%2F`, `%5C`) is
//! refused ([`PathRejection::EscapedSlash`]), as Envoy's `REJECT_REQUEST` does: left as it is,
//! `/x/..%2fadmin` would be matched as a path under `/x/` while an upstream that decodes it
//! serves `/admin`. `NONE` passes them (the user chose no normalization).
//!
//! **Why the default is stricter than Istio's.** Istio's default is `BASE`, which leaves `//admin`
//! as it is: a `DENY` on `/admin` does not match `//admin`, yet most upstreams (nginx, most web
//! frameworks) merge slashes and serve `/admin`. Istio's own security guidance tells operators to
//! choose `MERGE_SLASHES`; ringmesh makes the safe choice the default, and rejects escaped
//! slashes instead of forwarding them, so a policy written for a path cannot be walked around
//! with a different spelling of it.
//!
//! Path parameters (`;x`) stay in the path: the upstream receives them, and RFC 3986 gives them no
//! meaning to normalize. Authorization matching strips them where it compares whole paths (see
//! `crate::authz`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PathNormalization {
    /// Only the checks every mode makes.
    #[serde(rename = "NONE")]
    None,
    /// RFC 3986 normalization: unreserved escapes decoded, `\` to `/`, dot segments removed.
    #[serde(rename = "BASE")]
    Base,
    /// `BASE`, then runs of `/` merged (ringmesh's default, see the module doc for why).
    #[default]
    #[serde(rename = "MERGE_SLASHES")]
    MergeSlashes,
    /// Also `%2F` and `%5C` decoded to `/` before dot segments are removed, then slashes merged.
    #[serde(rename = "DECODE_AND_MERGE_SLASHES")]
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// The names Istio gives the modes, for messages.
    pub const NAMES: &'static [&'static str] = &["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"];

    fn rewrites(self) -> bool {
        self != PathNormalization::None
    }

    fn merges(self) -> bool {
        matches!(
            self,
            PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
        )
    }

    fn decodes_slashes(self) -> bool {
        self == PathNormalization::DecodeAndMergeSlashes
    }
}

/// Why a request path is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    /// A raw control byte, space or DEL.
    #[error("path holds the forbidden byte 0x{0:02x}")]
    ForbiddenByte(u8),
    /// `%00`.
    #[error("path holds an escaped NUL (%00)")]
    DecodedNul,
    /// `%` not followed by two hex digits.
    #[error("path holds a malformed percent-escape")]
    BadEscape,
    /// `%2F` or `%5C` in a mode that neither decodes nor passes them.
    #[error("path holds an escaped slash or backslash (%2F, %5C)")]
    EscapedSlash,
}

/// `raw` is the request target's path part up to (not including) '?' — the caller splits the
/// query off; a '#' fragment, if present in raw, is stripped here.
pub fn normalize_path(raw: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathRejection> {
    let path = match raw.find('#') {
        Some(i) => &raw[..i],
        None => raw,
    };
    let needs_rewrite = scan(path.as_bytes(), mode)?;
    if !needs_rewrite {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path.as_bytes(), mode);
    let mut out = remove_dot_segments(&decoded);
    if mode.merges() {
        merge_slashes(&mut out);
    }
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Host for matching: ASCII-lowercased, one trailing dot removed, port kept as the caller gives it.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let (name, port) = split_port(host);
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.len() == name.len() && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(host);
    }
    let mut out = String::with_capacity(host.len());
    out.push_str(trimmed);
    out.push_str(port);
    out.make_ascii_lowercase();
    Cow::Owned(out)
}

/// `("example.com", ":8080")`; a bracketed IPv6 address keeps its brackets in the name; a bare
/// IPv6 address (several colons) has no port.
pub(crate) fn split_port(host: &str) -> (&str, &str) {
    let after_bracket = host.rfind(']').map_or(0, |i| i + 1);
    match host[after_bracket..].rfind(':') {
        Some(i) if after_bracket > 0 || host.bytes().filter(|&b| b == b':').count() == 1 => {
            host.split_at(after_bracket + i)
        }
        _ => (host, ""),
    }
}

/// Checks every byte and escape; returns whether the mode would change the path.
fn scan(p: &[u8], mode: PathNormalization) -> Result<bool, PathRejection> {
    let mut rewrite = false;
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        match b {
            0x00..=0x20 | 0x7f => return Err(PathRejection::ForbiddenByte(b)),
            b'%' => {
                let (Some(&h), Some(&l)) = (p.get(i + 1), p.get(i + 2)) else {
                    return Err(PathRejection::BadEscape);
                };
                let v = hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l);
                match v {
                    None => return Err(PathRejection::BadEscape),
                    Some(0) => return Err(PathRejection::DecodedNul),
                    Some(b'/' | b'\\') if mode.decodes_slashes() => rewrite = true,
                    Some(b'/' | b'\\') if mode.rewrites() => return Err(PathRejection::EscapedSlash),
                    Some(v) if is_unreserved(v) || h.is_ascii_lowercase() || l.is_ascii_lowercase() => {
                        rewrite = true;
                    }
                    Some(_) => {}
                }
                i += 3;
                continue;
            }
            b'\\' => rewrite = true,
            b'/' if mode.merges() && p.get(i + 1) == Some(&b'/') => rewrite = true,
            _ => {}
        }
        i += 1;
    }
    if !mode.rewrites() {
        return Ok(false);
    }
    // Only '/' separates segments here: a backslash already asked for a rewrite.
    let dots = p.split(|&b| b == b'/').any(|s| s == b"." || s == b"..");
    Ok(rewrite || dots)
}

/// Escapes decoded as the mode says and `\` turned into `/`. `p` passed [`scan`].
fn decode(p: &[u8], mode: PathNormalization) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'%' => {
                // `scan` refused malformed escapes; a short one here is kept as it is.
                let Some(v) = p
                    .get(i + 1..i + 3)
                    .and_then(|h| hex(h[0]).zip(hex(h[1])))
                    .map(|(h, l)| h << 4 | l)
                else {
                    out.push(b'%');
                    i += 1;
                    continue;
                };
                if is_unreserved(v) {
                    out.push(v);
                } else if mode.decodes_slashes() && (v == b'/' || v == b'\\') {
                    out.push(b'/');
                } else {
                    out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
                }
                i += 3;
            }
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII escapes were decoded and every other byte was copied whole, so multi-byte
    // characters are intact; the fallback never runs.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// RFC 3986 section 5.2.4: `.` segments dropped, `..` drops the segment before it (none at the
/// root). A trailing `.` or `..` leaves a trailing `/`, as the RFC's algorithm does.
fn remove_dot_segments(path: &str) -> String {
    let absolute = path.starts_with('/');
    let body = if absolute { &path[1..] } else { path };
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = body.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                kept.pop();
            }
            s => {
                kept.push(s);
                continue;
            }
        }
        if last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    if absolute {
        out.push('/');
    }
    for (i, seg) in kept.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg);
    }
    out
}

fn merge_slashes(path: &mut String) {
    let mut prev_slash = false;
    path.retain(|c| {
        let keep = !(c == '/' && prev_slash);
        prev_slash = c == '/';
        keep
    });
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `unreserved`: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes, None as NoNorm};
    use super::*;
    use proptest::prelude::*;

    const ALL: [PathNormalization; 4] = [NoNorm, Base, MergeSlashes, DecodeAndMergeSlashes];

    fn norm(p: &str, mode: PathNormalization) -> Result<String, PathRejection> {
        normalize_path(p, mode).map(Cow::into_owned)
    }

    /// The spellings of `/admin` an attacker would try: with the default mode each one is
    /// `/admin` or refused; the other modes are pinned so a change to them is a visible choice.
    #[test]
    fn spellings_of_admin_per_mode() {
        use PathRejection::EscapedSlash;
        let admin = || Ok("/admin".to_owned());
        #[rustfmt::skip]
        let table: &[(&str, [Result<String, PathRejection>; 4])] = &[
            // input            NONE                          BASE                     MERGE_SLASHES     DECODE_AND_MERGE
            ("//admin",        [Ok("//admin".into()),          Ok("//admin".into()),     admin(), admin()]),
            ("/./admin",       [Ok("/./admin".into()),         admin(),                  admin(), admin()]),
            ("/x/../admin",    [Ok("/x/../admin".into()),      admin(),                  admin(), admin()]),
            ("/%61dmin",       [Ok("/%61dmin".into()),         admin(),                  admin(), admin()]),
            ("/adm%69n",       [Ok("/adm%69n".into()),         admin(),                  admin(), admin()]),
            ("/%2e/admin",     [Ok("/%2e/admin".into()),       admin(),                  admin(), admin()]),
            ("/a/../admin",    [Ok("/a/../admin".into()),      admin(),                  admin(), admin()]),
            ("/x/..%2fadmin",  [Ok("/x/..%2fadmin".into()),    Err(EscapedSlash),        Err(EscapedSlash), admin()]),
            ("/%2fadmin",      [Ok("/%2fadmin".into()),        Err(EscapedSlash),        Err(EscapedSlash), admin()]),
            ("/\\admin",       [Ok("/\\admin".into()),         Ok("//admin".into()),     admin(), admin()]),
            ("\\admin",        [Ok("\\admin".into()),          admin(),                  admin(), admin()]),
            ("/admin#frag",    [admin(),                       admin(),                  admin(), admin()]),
        ];
        for (input, want) in table {
            for (mode, want) in ALL.iter().zip(want) {
                assert_eq!(&norm(input, *mode), want, "{input:?} in {mode:?}");
            }
            let default = norm(input, PathNormalization::default());
            assert!(
                default == admin() || default.is_err(),
                "{input:?} gives {default:?} by default"
            );
        }
    }

    #[test]
    fn checks_every_mode_makes() {
        for mode in ALL {
            for (input, want) in [
                ("/a\x00", PathRejection::ForbiddenByte(0)),
                ("/a\tb", PathRejection::ForbiddenByte(b'\t')),
                ("/a b", PathRejection::ForbiddenByte(b' ')),
                ("/a\x7f", PathRejection::ForbiddenByte(0x7f)),
                ("/a%00", PathRejection::DecodedNul),
                ("/a%", PathRejection::BadEscape),
                ("/a%4", PathRejection::BadEscape),
                ("/a%zz", PathRejection::BadEscape),
                ("/a%4g/b", PathRejection::BadEscape),
            ] {
                assert_eq!(norm(input, mode), Err(want), "{input:?} in {mode:?}");
            }
            // Bytes after the fragment are never looked at: the fragment is gone.
            assert_eq!(norm("/a#b c", mode), Ok("/a".into()), "{mode:?}");
        }
    }

    #[test]
    fn base_details() {
        for (input, want) in [
            ("/a%2fb", Err(PathRejection::EscapedSlash)),
            ("/a%5Cb", Err(PathRejection::EscapedSlash)),
            ("/a%5cb", Err(PathRejection::EscapedSlash)),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3fb", Ok("/a%3Fb")),
            ("/%7e%2D%5f", Ok("/~-_")),
            ("/%2525", Ok("/%2525")),
            ("/..", Ok("/")),
            ("/../..", Ok("/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/.", Ok("/a/")),
            ("/a/..;x/b", Ok("/a/..;x/b")),
            ("/a;x/./b", Ok("/a;x/b")),
            ("/é/./b", Ok("/é/b")),
            ("/a//../b", Ok("/a/b")),
        ] {
            assert_eq!(
                normalize_path(input, Base).as_deref().map_err(|e| *e),
                want,
                "{input:?}"
            );
        }
        assert_eq!(norm("/a%2fb", NoNorm), Ok("/a%2fb".into()));
        assert_eq!(norm("/a%5Cb/../c", DecodeAndMergeSlashes), Ok("/a/c".into()));
        assert_eq!(norm("///a///b//", MergeSlashes), Ok("/a/b/".into()));
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for mode in ALL {
            for p in ["/a/b/c", "/", "/a/b/", "/a%20b", "/a;x=1/b", "/é"] {
                assert!(
                    matches!(normalize_path(p, mode), Ok(Cow::Borrowed(b)) if b == p),
                    "{p:?} in {mode:?}"
                );
            }
            assert!(matches!(normalize_path("/a#f", mode), Ok(Cow::Borrowed("/a"))));
        }
        // A change gives an owned path.
        assert!(matches!(normalize_path("/a/./b", Base), Ok(Cow::Owned(_))));
    }

    #[test]
    fn hosts() {
        for (input, want) in [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("Example.com.:8080", "example.com:8080"),
            ("example.com:8080", "example.com:8080"),
            ("[::1]:80", "[::1]:80"),
            ("[FE80::1]", "[fe80::1]"),
            ("example.com..", "example.com."),
        ] {
            assert_eq!(normalize_host(input), want, "{input:?}");
        }
        assert!(matches!(normalize_host("a.b:1"), Cow::Borrowed(_)));
    }

    #[test]
    fn mode_names_are_istios() {
        for (mode, name) in ALL.iter().zip(PathNormalization::NAMES) {
            assert_eq!(serde_json::to_string(mode).unwrap(), format!("\"{name}\""));
        }
        assert_eq!(PathNormalization::default(), MergeSlashes);
    }

    fn has_unreserved_escape(p: &str) -> bool {
        let b = p.as_bytes();
        (0..b.len()).any(|i| {
            b[i] == b'%'
                && b.get(i + 1..i + 3)
                    .and_then(|h| hex(h[0]).zip(hex(h[1])))
                    .is_some_and(|(h, l)| is_unreserved(h << 4 | l))
        })
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent_and_clean(
            raw in "\\\\?(/|\\\\|\\.|\\.\\.|a|b|;x|%2[eEfF]|%5[cC]|%6[19]|%20|%|#)*",
            mode_i in 0usize..4,
        ) {
            let mode = ALL[mode_i];
            if let Ok(once) = normalize_path(&raw, mode) {
                let twice = normalize_path(&once, mode);
                prop_assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent");
                if raw.starts_with('/') {
                    prop_assert!(once.starts_with('/'));
                }
                if mode.rewrites() {
                    prop_assert!(!once.contains("/./") && !once.contains("/../"), "{}", once);
                    prop_assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{}", once);
                    prop_assert!(!once.contains('\\'), "{}", once);
                    prop_assert!(!has_unreserved_escape(&once), "{}", once);
                }
                if mode.merges() {
                    prop_assert!(!once.contains("//"), "{}", once);
                }
            }
        }
    }
}
