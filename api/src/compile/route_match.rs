//! An http route's `match` list: path, method, authority, header, query conditions compiled
//! into the snapshot's matchers (regexes anchored and checked here, once).

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::matcher::{AnchoredRegex, HeaderMatch, PathMatch, QueryMatch, StringMatch};
use crate::resources::{HttpMatchRequest, StringMatchSpec};
use crate::snapshot::RouteMatch;

impl Compiler {
    pub(super) fn route_match(&mut self, site: &Site<'_>, p: &FieldPath, m: &HttpMatchRequest) -> Option<RouteMatch> {
        let mut ok = true;
        let path = match &m.uri {
            Some(uri) => {
                let up = p.key("uri");
                match self.string_match(site, &up, uri, false, m.ignore_uri_case) {
                    Some(Some(matcher)) => Some(PathMatch::new(matcher, m.ignore_uri_case)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let method = match &m.method {
            Some(s) => match self.string_match(site, &p.key("method"), s, false, false) {
                Some(Some(matcher)) => Some(matcher),
                _ => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let mut headers = Vec::new();
        if let Some(a) = &m.authority {
            match self.string_match(site, &p.key("authority"), a, false, false) {
                Some(value) => headers.push(HeaderMatch {
                    name: "host".into(),
                    value,
                    invert: false,
                }),
                None => ok = false,
            }
        }
        for (field, map, invert) in [
            ("headers", &m.headers, false),
            ("withoutHeaders", &m.without_headers, true),
        ] {
            for (name, spec) in map {
                let hp = p.key(field).key(name);
                if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                    self.error(site, &hp, format!("{name:?} is not a valid header name"));
                    ok = false;
                    continue;
                }
                match self.string_match(site, &hp, spec, true, false) {
                    Some(value) => headers.push(HeaderMatch {
                        name: name.to_ascii_lowercase(),
                        value,
                        invert,
                    }),
                    None => ok = false,
                }
            }
        }
        let mut query = Vec::new();
        for (name, spec) in &m.query_params {
            match self.string_match(site, &p.key("queryParams").key(name), spec, true, false) {
                Some(value) => query.push(QueryMatch {
                    name: name.clone(),
                    value,
                }),
                None => ok = false,
            }
        }
        ok.then_some(RouteMatch {
            path,
            method,
            headers,
            query,
        })
    }

    /// Compiles a `StringMatch`. `Some(None)` is an empty match ("present"), allowed only when
    /// `allow_empty`; `None` means an error was reported.
    fn string_match(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        s: &StringMatchSpec,
        allow_empty: bool,
        ignore_case: bool,
    ) -> Option<Option<StringMatch>> {
        let set: Vec<&str> = [
            (s.exact.is_some(), "exact"),
            (s.prefix.is_some(), "prefix"),
            (s.regex.is_some(), "regex"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if set.len() > 1 {
            self.error(
                site,
                p,
                format!("set only one of exact, prefix or regex (found {})", set.join(", ")),
            );
            return None;
        }
        if let Some(e) = &s.exact {
            return Some(Some(StringMatch::Exact(e.clone())));
        }
        if let Some(pre) = &s.prefix {
            return Some(Some(StringMatch::Prefix(pre.clone())));
        }
        if let Some(r) = &s.regex {
            return match AnchoredRegex::new(r, ignore_case) {
                Ok(re) => Some(Some(StringMatch::Regex(re))),
                Err(e) => {
                    let detail = e.to_string().replace('\n', " ");
                    self.error(site, &p.key("regex"), format!("invalid regex {r:?}: {detail}"));
                    None
                }
            };
        }
        if allow_empty {
            Some(None)
        } else {
            self.error(site, p, "set one of exact, prefix or regex");
            None
        }
    }
}
