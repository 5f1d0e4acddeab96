//! Field paths and finding their line in a YAML document's text.
//!
//! Semantic errors are found after deserialization, when the YAML's positions are gone. Rather
//! than carry spans through every resource type, the loader keeps each document's text and this
//! module walks it by the field path (`spec.http[0].route[1].weight`) using indentation and
//! `- ` list items, the way a reader's eye does. It understands block mappings and sequences,
//! including the compact `key:\n- item` form; inside flow collections (`[a, b]`, `{a: 1}`) it
//! stops at the enclosing key's line. When a field is missing (e.g. a required field that was
//! not written) the line of the deepest part of the path that exists is returned, which is where
//! the user has to add it.

use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A field path inside a resource, displayed as `spec.http[0].route[1].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub(crate) Vec<Seg>);

impl FieldPath {
    /// The empty path (the resource itself).
    pub(crate) fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path extended by a key.
    pub(crate) fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        FieldPath(v)
    }

    /// This path extended by an index.
    pub(crate) fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        FieldPath(v)
    }

    /// Parses `spec.http[0].route` (as serde_yaml prints paths) back into segments.
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Self {
        let mut segs = Vec::new();
        for part in text.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                segs.push(Seg::Key(name.to_owned()));
            }
            while let Some(inner) = rest.strip_prefix('[') {
                let Some(end) = inner.find(']') else { break };
                if let Ok(i) = inner[..end].parse() {
                    segs.push(Seg::Index(i));
                }
                rest = &inner[end + 1..];
            }
        }
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dash,
    Key(String),
    Scalar,
}

#[derive(Debug, Clone)]
struct Entry {
    /// 0-based line within the document.
    line: usize,
    col: usize,
    kind: Kind,
}

/// A document's text tokenized into block-structure entries, ready for path lookups.
#[derive(Debug, Clone, Default)]
pub(crate) struct Locator {
    entries: Vec<Entry>,
}

impl Locator {
    /// Tokenizes `text` (one YAML document, without `---`).
    pub(crate) fn new(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut block_scalar_indent: Option<usize> = None;
        for (line, raw) in text.lines().enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = raw.trim_start_matches(' ');
            let mut col = raw.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            // Lines of a `|` / `>` block scalar are text, not structure.
            if let Some(indent) = block_scalar_indent {
                if col > indent {
                    continue;
                }
                block_scalar_indent = None;
            }
            let mut rest = trimmed;
            loop {
                if rest == "-" || rest.starts_with("- ") {
                    entries.push(Entry {
                        line,
                        col,
                        kind: Kind::Dash,
                    });
                    let after = &rest[1..];
                    let next = after.trim_start_matches(' ');
                    col += 1 + (after.len() - next.len());
                    rest = next;
                    if rest.is_empty() || rest.starts_with('#') {
                        break;
                    }
                    continue;
                }
                match parse_key(rest) {
                    Some((key, value)) => {
                        let v = value.trim();
                        if v.starts_with('|') || v.starts_with('>') {
                            block_scalar_indent = Some(col);
                        }
                        entries.push(Entry {
                            line,
                            col,
                            kind: Kind::Key(key),
                        });
                    }
                    None => entries.push(Entry {
                        line,
                        col,
                        kind: Kind::Scalar,
                    }),
                }
                break;
            }
        }
        Locator { entries }
    }

    /// 0-based line of the deepest part of `path` present in the text; `None` for an empty
    /// document.
    pub(crate) fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let first = self.entries.first()?;
        let mut best = first.line;
        // Index of the entry where the current node starts; None once the value is inline.
        let mut node = Some(0usize);
        for seg in &path.0 {
            let Some(start) = node else { break };
            let Some(head) = self.entries.get(start) else {
                break;
            };
            let col = head.col;
            match seg {
                Seg::Key(k) => {
                    if !matches!(head.kind, Kind::Key(_)) {
                        break;
                    }
                    let mut found = None;
                    for (i, e) in self.entries.iter().enumerate().skip(start) {
                        if e.col < col {
                            break;
                        }
                        if e.col == col {
                            if let Kind::Key(name) = &e.kind {
                                if name == k {
                                    found = Some(i);
                                    break;
                                }
                            }
                        }
                    }
                    let Some(i) = found else { break };
                    best = self.entries[i].line;
                    node = self.entries.get(i + 1).and_then(|next| {
                        let value_below = next.line > self.entries[i].line
                            && (next.col > col || (next.col == col && next.kind == Kind::Dash));
                        value_below.then_some(i + 1)
                    });
                }
                Seg::Index(n) => {
                    if head.kind != Kind::Dash {
                        break;
                    }
                    let mut count = 0;
                    let mut found = None;
                    for (i, e) in self.entries.iter().enumerate().skip(start) {
                        if e.col < col {
                            break;
                        }
                        if e.col == col {
                            if e.kind != Kind::Dash {
                                break;
                            }
                            if count == *n {
                                found = Some(i);
                                break;
                            }
                            count += 1;
                        }
                    }
                    let Some(i) = found else { break };
                    let dash = &self.entries[i];
                    best = dash.line;
                    node = self.entries.get(i + 1).and_then(|next| {
                        let inside = next.line == dash.line || next.col > col;
                        inside.then_some(i + 1)
                    });
                }
            }
        }
        Some(best)
    }
}

/// `key: value` or `key:` at the start of `rest` → `(key, value text)`.
fn parse_key(rest: &str) -> Option<(String, &str)> {
    if rest.starts_with(['{', '[', '&', '*', '!', '|', '>', '?']) {
        return None;
    }
    if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = &rest[1..];
        let end = inner.find(q)?;
        let after = &inner[end + 1..];
        let value = after.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with(' ')) {
            return None;
        }
        return Some((inner[..end].to_owned(), value));
    }
    let bytes = rest.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'#' && i > 0 && bytes[i - 1] == b' ' {
            return None;
        }
        if bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            return Some((rest[..i].trim_end().to_owned(), &rest[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
      - destination:
          host: reviews
          subset: v1
        weight: 90
      # a comment
      - destination: {host: reviews, subset: v3}
        weight: 10
  tcp: [{route: []}]
";

    fn line(path: &str) -> Option<usize> {
        Locator::new(DOC).line_of(&FieldPath::parse(path)).map(|l| l + 1)
    }

    #[test]
    fn finds_fields_by_path() {
        assert_eq!(line("kind"), Some(2));
        assert_eq!(line("metadata.name"), Some(4));
        assert_eq!(line("spec.hosts[0]"), Some(7));
        assert_eq!(line("spec.http[0].match[0].headers.end-user.exact"), Some(12));
        assert_eq!(line("spec.http[0].route[0].destination.subset"), Some(16));
        assert_eq!(line("spec.http[1].route[0].weight"), Some(21));
        assert_eq!(line("spec.http[1].route[1].weight"), Some(24));
        assert_eq!(line("spec.http[1].route[1]"), Some(23));
    }

    #[test]
    fn missing_and_flow_fields_fall_back_to_the_deepest_present() {
        // Inside a flow mapping: the key that holds it.
        assert_eq!(line("spec.http[1].route[1].destination.subset"), Some(23));
        assert_eq!(line("spec.tcp[0].route"), Some(25));
        // Missing field: its parent.
        assert_eq!(line("spec.http[0].route[0].destination.port"), Some(14));
        assert_eq!(line("spec.http[5]"), Some(8));
        assert_eq!(line(""), Some(1));
        assert_eq!(Locator::new("# only\n").line_of(&FieldPath::root()), None);
    }

    #[test]
    fn block_scalars_and_quoted_keys() {
        let doc = "spec:\n  body: |\n    weight: 1\n    - x\n  \"weight\": 2\n";
        let l = Locator::new(doc);
        assert_eq!(l.line_of(&FieldPath::parse("spec.weight")), Some(4));
    }

    #[test]
    fn path_round_trip() {
        let p = FieldPath::parse("spec.http[0].route[12].weight");
        assert_eq!(p.to_string(), "spec.http[0].route[12].weight");
        assert_eq!(FieldPath::root().key("a").index(2).to_string(), "a[2]");
        assert_eq!(FieldPath::parse("a[1][2]").0.len(), 3);
    }

    #[test]
    fn keys_with_colons_in_values() {
        assert_eq!(parse_key("host: http://x:80").map(|(k, _)| k), Some("host".to_owned()));
        assert_eq!(parse_key("http://x:80"), None);
        assert_eq!(parse_key("'a b': 1").map(|(k, _)| k), Some("a b".to_owned()));
        assert_eq!(parse_key("{a: 1}"), None);
    }
}
