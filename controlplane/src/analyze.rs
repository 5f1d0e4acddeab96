//! `ringmesh analyze FILE|DIR...`: offline validation with the proxy's own compiler.
//!
//! Loads the files (directories: every `*.yaml`/`*.yml`, sorted), compiles them exactly as
//! `ringmesh-proxy` would, and reports every diagnostic with `file:line`, resource and field.
//! Errors make the exit code non-zero; warnings (fields and kinds ringmesh does not implement
//! yet) do not, unless `--strict`.

use std::path::PathBuf;

use ringmesh_api::{compile_files, Diagnostic, Severity};
use serde_json::json;

/// What an analysis found.
#[derive(Debug)]
pub struct Report {
    /// Every diagnostic, errors and warnings, in file and line order.
    pub diagnostics: Vec<Diagnostic>,
    /// Summary of what compiled (absent when there were errors).
    pub summary: Option<Summary>,
}

/// Counts of what a clean config compiled into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Listeners.
    pub listeners: usize,
    /// Virtual hosts (VirtualServices and default routes of ServiceEntry hosts).
    pub virtual_hosts: usize,
    /// Routes over all virtual hosts.
    pub routes: usize,
    /// Upstream clusters.
    pub clusters: usize,
}

impl Report {
    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }

    /// The exit code: 1 with errors (or with warnings under `strict`), else 0.
    pub fn exit_code(&self, strict: bool) -> i32 {
        i32::from(self.errors() > 0 || (strict && self.warnings() > 0))
    }

    /// Human-readable output: one diagnostic a line, then a summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&d.to_string());
            out.push('\n');
        }
        match (&self.summary, self.errors()) {
            (Some(s), _) => out.push_str(&format!(
                "ok: {} listener(s), {} virtual host(s), {} route(s), {} cluster(s); {} warning(s)\n",
                s.listeners,
                s.virtual_hosts,
                s.routes,
                s.clusters,
                self.warnings()
            )),
            (None, errors) => out.push_str(&format!("{errors} error(s), {} warning(s)\n", self.warnings())),
        }
        out
    }

    /// Machine-readable output for CI pipelines.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "ok": self.errors() == 0,
            "errors": self.errors(),
            "warnings": self.warnings(),
            "diagnostics": self.diagnostics.iter().map(|d| json!({
                "severity": if d.severity == Severity::Error { "error" } else { "warning" },
                "file": d.file,
                "line": d.line,
                "resource": d.resource,
                "field": d.field,
                "message": d.message,
            })).collect::<Vec<_>>(),
            "summary": self.summary.map(|s| json!({
                "listeners": s.listeners,
                "virtual_hosts": s.virtual_hosts,
                "routes": s.routes,
                "clusters": s.clusters,
            })),
        })
    }
}

/// Analyzes `paths` (files or directories).
pub fn analyze(paths: &[PathBuf]) -> Report {
    let (mut diagnostics, summary) = match compile_files(paths, 1) {
        Ok(compiled) => {
            let s = &compiled.snapshot;
            let summary = Summary {
                listeners: s.listeners.len(),
                virtual_hosts: s.routes.virtual_hosts.len(),
                routes: s.routes.virtual_hosts.iter().map(|v| v.routes.len()).sum(),
                clusters: s.clusters.len(),
            };
            (compiled.warnings, Some(summary))
        }
        Err(diags) => (diags, None),
    };
    diagnostics.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Report { diagnostics, summary }
}
