//! Precompiled request matchers: strings, paths, headers and query parameters.
//!
//! These are the leaves of a [`crate::snapshot::RouteMatch`] and run on every request a worker
//! routes, so they are built once by the compiler (regexes compiled, names lower-cased) and then
//! only read. No method here allocates: case-insensitive comparisons use
//! [`<[u8]>::eq_ignore_ascii_case`] instead of lower-casing into a new `String`.

use regex::Regex;
use serde::{Serialize, Serializer};

/// A compiled regular expression that remembers the text it came from.
///
/// The regex is anchored at both ends (`^(?:...)$`), like Envoy's `safe_regex` that Istio
/// generates: `regex: "/api/.*"` must match the *whole* value, not a substring of it.
#[derive(Debug, Clone)]
pub struct AnchoredRegex {
    source: String,
    regex: Regex,
}

impl AnchoredRegex {
    /// Compiles `source` as a full-match regex; `ignore_case` folds ASCII and Unicode case.
    pub fn new(source: &str, ignore_case: bool) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .case_insensitive(ignore_case)
            // Bound compiled size so a hostile config cannot make the proxy allocate without
            // limit; Envoy applies a similar program-size cap.
            .size_limit(1 << 20)
            .build()?;
        Ok(AnchoredRegex {
            source: source.to_owned(),
            regex,
        })
    }

    /// The regex as the user wrote it (without the anchors we add).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl Serialize for AnchoredRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

/// Istio's `StringMatch`: exact, prefix or (full-match) regex. Case-sensitive.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    /// The value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The whole value matches this regex.
    Regex(AnchoredRegex),
}

impl StringMatch {
    /// Builds a regex match; the error names what is wrong with the pattern.
    pub fn regex(source: &str) -> Result<Self, regex::Error> {
        AnchoredRegex::new(source, false).map(StringMatch::Regex)
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }

    /// Whether raw header bytes match. Exact and prefix compare bytes; a regex needs UTF-8, so a
    /// value that is not UTF-8 never matches a regex (Envoy behaves the same way).
    pub fn matches_bytes(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(s) => value == s.as_bytes(),
            StringMatch::Prefix(p) => value.starts_with(p.as_bytes()),
            StringMatch::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// A path condition: a [`StringMatch`] plus Istio's `ignoreUriCase`.
///
/// Kept separate from [`StringMatch`] because the route index needs to know whether it may use
/// the path as a hash key (only when the comparison is case-sensitive).
#[derive(Debug, Clone, Serialize)]
pub struct PathMatch {
    /// The comparison. For `ignore_case` regexes the regex itself is compiled case-insensitive.
    pub matcher: StringMatch,
    /// Compare ASCII letters without regard to case (Istio `ignoreUriCase`).
    pub ignore_case: bool,
}

impl PathMatch {
    /// Builds a path match. For a regex with `ignore_case`, pass a [`StringMatch::Regex`]
    /// compiled with [`AnchoredRegex::new`]`(source, true)`; [`PathMatch::regex`] does that.
    pub fn new(matcher: StringMatch, ignore_case: bool) -> Self {
        PathMatch { matcher, ignore_case }
    }

    /// Builds a regex path match, case-insensitive when `ignore_case`.
    pub fn regex(source: &str, ignore_case: bool) -> Result<Self, regex::Error> {
        Ok(PathMatch {
            matcher: StringMatch::Regex(AnchoredRegex::new(source, ignore_case)?),
            ignore_case,
        })
    }

    /// Whether `path` (without query string) matches.
    pub fn matches(&self, path: &str) -> bool {
        if !self.ignore_case {
            return self.matcher.matches(path);
        }
        match &self.matcher {
            StringMatch::Exact(s) => path.eq_ignore_ascii_case(s),
            StringMatch::Prefix(p) => {
                path.len() >= p.len() && path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StringMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Length in bytes of the part of `path` this match consumed, used by `rewrite.uri`:
    /// the prefix for a prefix match, the whole path otherwise. Call only after a match.
    pub fn matched_len(&self, path: &str) -> usize {
        match &self.matcher {
            StringMatch::Prefix(p) => p.len().min(path.len()),
            StringMatch::Exact(_) | StringMatch::Regex(_) => path.len(),
        }
    }
}

/// A header condition (Istio `headers` and `withoutHeaders`).
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// Value condition; `None` means "the header is present" (Istio's empty `StringMatch`).
    pub value: Option<StringMatch>,
    /// Negate the result (Istio `withoutHeaders`): the route matches when the header condition
    /// does *not* hold, including when the header is absent.
    pub invert: bool,
}

impl HeaderMatch {
    /// Whether the header condition holds for a request whose header value is `value`.
    pub fn matches_value(&self, value: Option<&[u8]>) -> bool {
        let holds = match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches_bytes(v),
        };
        holds != self.invert
    }
}

/// A query parameter condition (Istio `queryParams`).
#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    /// Parameter name, compared exactly (no percent-decoding, as in Envoy).
    pub name: String,
    /// Value condition; `None` means "the parameter is present".
    pub value: Option<StringMatch>,
}

impl QueryMatch {
    /// Whether the condition holds for the query string (without `?`). Scans the string in
    /// place; the first parameter with this name decides.
    pub fn matches_query(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        for pair in query.split('&') {
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, v),
                None => (pair, ""),
            };
            if name == self.name {
                return match &self.value {
                    None => true,
                    Some(m) => m.matches(value),
                };
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_kinds() {
        assert!(StringMatch::Exact("/a".into()).matches("/a"));
        assert!(!StringMatch::Exact("/a".into()).matches("/a/"));
        assert!(StringMatch::Prefix("/a".into()).matches("/abc"));
        assert!(!StringMatch::Prefix("/a".into()).matches("/"));
        let r = StringMatch::regex("/v[0-9]+/.*").expect("valid regex");
        assert!(r.matches("/v1/x"));
        // Anchored: a substring match is not enough.
        assert!(!r.matches("/x/v1/x"));
        assert!(!StringMatch::regex("a").expect("valid").matches("ba"));
    }

    #[test]
    fn regex_alternation_is_anchored_as_a_whole() {
        // Without the (?:...) group, `^a|b$` would match "ax".
        let r = StringMatch::regex("a|b").expect("valid");
        assert!(!r.matches("ax"));
        assert!(r.matches("b"));
    }

    #[test]
    fn invalid_regex_names_the_problem() {
        let err = StringMatch::regex("(unclosed").expect_err("invalid");
        assert!(err.to_string().contains("unclosed"), "{err}");
    }

    #[test]
    fn regex_serializes_as_its_source() {
        let r = StringMatch::regex("/a.*").expect("valid");
        assert_eq!(serde_json::to_string(&r).expect("serializes"), r#"{"regex":"/a.*"}"#);
    }

    #[test]
    fn path_ignore_case() {
        let p = PathMatch::new(StringMatch::Prefix("/Api".into()), true);
        assert!(p.matches("/API/x"));
        assert!(p.matches("/api"));
        assert!(!p.matches("/ap"));
        let e = PathMatch::new(StringMatch::Exact("/Login".into()), true);
        assert!(e.matches("/LOGIN"));
        let r = PathMatch::regex("/img/[a-z]+", true).expect("valid");
        assert!(r.matches("/IMG/PNG"));
        let cs = PathMatch::new(StringMatch::Prefix("/Api".into()), false);
        assert!(!cs.matches("/api"));
    }

    #[test]
    fn prefix_ignore_case_on_multibyte_path_does_not_panic() {
        let p = PathMatch::new(StringMatch::Prefix("/ab".into()), true);
        assert!(!p.matches("/é"));
        assert!(!p.matches("/"));
    }

    #[test]
    fn header_presence_value_and_invert() {
        let present = HeaderMatch {
            name: "x-user".into(),
            value: None,
            invert: false,
        };
        assert!(present.matches_value(Some(b"")));
        assert!(!present.matches_value(None));
        let exact = HeaderMatch {
            name: "x-user".into(),
            value: Some(StringMatch::Exact("jason".into())),
            invert: false,
        };
        assert!(exact.matches_value(Some(b"jason")));
        assert!(!exact.matches_value(Some(b"json")));
        let without = HeaderMatch {
            invert: true,
            ..exact.clone()
        };
        assert!(!without.matches_value(Some(b"jason")));
        assert!(without.matches_value(Some(b"other")));
        assert!(without.matches_value(None));
        let re = HeaderMatch {
            name: "x".into(),
            value: Some(StringMatch::regex(".*").expect("valid")),
            invert: false,
        };
        assert!(!re.matches_value(Some(&[0xff, 0xfe])));
    }

    #[test]
    fn query_params() {
        let q = QueryMatch {
            name: "v".into(),
            value: Some(StringMatch::Exact("2".into())),
        };
        assert!(q.matches_query(Some("a=1&v=2")));
        assert!(!q.matches_query(Some("a=1&v=3")));
        assert!(!q.matches_query(Some("vv=2")));
        assert!(!q.matches_query(None));
        let present = QueryMatch {
            name: "debug".into(),
            value: None,
        };
        assert!(present.matches_query(Some("x=1&debug")));
        assert!(!present.matches_query(Some("")));
    }
}
