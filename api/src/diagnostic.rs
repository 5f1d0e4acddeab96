//! Diagnostics: every error and warning the loader and compiler report.
//!
//! Config errors are a headline feature: a rejected file set lists *all* of its problems at once,
//! each naming the file, line, resource and field, like a compiler does. Loading and compiling
//! push into a [`Diagnostic`] list instead of returning at the first problem; callers decide
//! whether warnings matter.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config is accepted, but something in it is ignored or suspicious.
    Warning,
}

/// One problem found in a config, with everything a user needs to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File the resource came from, as given to the loader.
    pub file: Option<String>,
    /// 1-based line in that file.
    pub line: Option<usize>,
    /// `Kind namespace/name`, e.g. `VirtualService default/reviews`.
    pub resource: Option<String>,
    /// Field path in the resource, e.g. `spec.http[0].route[1].weight`.
    pub field: Option<String>,
    /// What is wrong, and where possible what would be right.
    pub message: String,
}

impl Diagnostic {
    /// An error with only a message; add context with the builder methods.
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: None,
            line: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// A warning with only a message; add context with the builder methods.
    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    /// Sets the file and line.
    pub fn at(mut self, file: Option<&str>, line: Option<usize>) -> Self {
        self.file = file.map(str::to_owned);
        self.line = line;
        self
    }

    /// Sets the resource name (`Kind namespace/name`).
    pub fn in_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Sets the field path.
    pub fn on_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = if field.is_empty() { None } else { Some(field) };
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line: [warning: ]Kind ns/name: field: message`, leaving out the parts not known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// A rejected config: every diagnostic, one a line. Lets callers that use `?` with
/// `std::error::Error` (or `anyhow`) keep the whole list, e.g.
/// `compile_files(&paths, 1).map_err(Diagnostics)?`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.0))]
pub struct Diagnostics(pub Vec<Diagnostic>);

fn render(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Edit distance between two short names, used for "did you mean" suggestions: Levenshtein
/// plus adjacent transpositions (`weigth` → `weight` is one edit, the commonest typo). Compares
/// ASCII case-insensitively so that `Hosts` suggests `hosts`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<u8> = a.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_lowercase()).collect();
    // d[i][j] = distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `candidates` to `name`, if close enough to be a plausible typo: distance at
/// most 1 for short names, 2 for longer ones, or a case-only difference.
pub(crate) fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if name.len() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_all_parts() {
        let d = Diagnostic::error("weights must sum to 100, got 90")
            .at(Some("deploy/x.yaml"), Some(14))
            .in_resource("VirtualService default/reviews")
            .on_field("spec.http[0].route[1].weight");
        assert_eq!(
            d.to_string(),
            "deploy/x.yaml:14: VirtualService default/reviews: spec.http[0].route[1].weight: \
             weights must sum to 100, got 90"
        );
    }

    #[test]
    fn display_warning_and_missing_parts() {
        let d = Diagnostic::warning("kind X is not supported yet; ignored").at(Some("a.yaml"), None);
        assert_eq!(d.to_string(), "a.yaml: warning: kind X is not supported yet; ignored");
        assert_eq!(Diagnostic::error("boom").to_string(), "boom");
    }

    #[test]
    fn diagnostics_render_one_per_line() {
        let d = Diagnostics(vec![Diagnostic::error("a"), Diagnostic::error("b")]);
        assert_eq!(d.to_string(), "a\nb");
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("weigth", "weight"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(did_you_mean("hostz", ["hosts", "http"]), Some("hosts"));
        assert_eq!(did_you_mean("weigth", ["weight", "headers"]), Some("weight"));
        assert_eq!(did_you_mean("Hosts", ["hosts"]), Some("hosts"));
        assert_eq!(did_you_mean("banana", ["hosts", "http"]), None);
        assert_eq!(did_you_mean("tpc", ["tcp", "tls"]), Some("tcp"));
    }
}
