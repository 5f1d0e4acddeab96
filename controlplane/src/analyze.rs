//! `ringmesh analyze FILE|DIR...`: offline validation with the proxy's own compiler.
//!
//! Reads the files (directories: every `*.yaml`/`*.yml` inside, subdirectories included —
//! `applied/` too, as the control plane does — skipping entries whose name starts with `.`;
//! see [`yaml_files_under`]), compiles them exactly as `ringmesh-proxy` and `ringmesh-control`
//! would, and reports every diagnostic with `file:line`, resource and field, and which files
//! were read. Errors make the exit code non-zero; warnings (fields and kinds ringmesh does not
//! implement yet, hosts referenced but not defined) do not, unless `--strict`.
//!
//! What is compiled together follows what each program would read:
//!
//! - at most one file with a `ProxyConfig`: everything together, as
//!   `ringmesh-proxy --config PATHS` would (one proxy, its files);
//! - several files with a `ProxyConfig` (a tree with one file per proxy, like
//!   `deploy/examples/control-plane/`): the files without one are the shared resources, checked
//!   alone as the control plane checks its directory; then each proxy's file is compiled on its
//!   own plus, when its `ProxyConfig` subscribes to a control plane (`spec.controlPlane`), the
//!   shared resources it would be sent. A standalone proxy's file is compiled alone; name its
//!   files explicitly to check it with others. Two `ProxyConfig`s in one file stay an error:
//!   no proxy takes that file.

use std::collections::HashSet;
use std::path::PathBuf;

use ringmesh_api::resources::Resource;
use ringmesh_api::snapshot::Snapshot;
use ringmesh_api::{compile, load_str, yaml_files_under, CompileInput, Diagnostic, Severity};
use serde_json::json;

/// What an analysis found.
#[derive(Debug)]
pub struct Report {
    /// The files read, in the order they were loaded.
    pub files: Vec<String>,
    /// Every diagnostic, errors and warnings, in file and line order, each once.
    pub diagnostics: Vec<Diagnostic>,
    /// Summary of what compiled (absent when there were errors): one entry per proxy checked,
    /// named by its file, or one unnamed entry when everything compiled together.
    pub summary: Option<Vec<(Option<String>, Summary)>>,
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
            (Some(units), _) => {
                for (name, s) in units {
                    let name = name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default();
                    out.push_str(&format!(
                        "ok: {name}{} listener(s), {} virtual host(s), {} route(s), {} cluster(s)\n",
                        s.listeners, s.virtual_hosts, s.routes, s.clusters,
                    ));
                }
                out.push_str(&format!("{} warning(s)\n", self.warnings()));
            }
            (None, errors) => out.push_str(&format!("{errors} error(s), {} warning(s)\n", self.warnings())),
        }
        out
    }

    /// The header naming the files read (the CLI prints it to stderr, so stdout stays the
    /// diagnostics).
    pub fn files_line(&self) -> String {
        format!("read {} file(s): {}\n", self.files.len(), self.files.join(", "))
    }

    /// Machine-readable output for CI pipelines.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "ok": self.errors() == 0,
            "files": self.files,
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
            "summary": self.summary.as_ref().map(|units| units.iter().map(|(name, s)| json!({
                "proxy": name,
                "listeners": s.listeners,
                "virtual_hosts": s.virtual_hosts,
                "routes": s.routes,
                "clusters": s.clusters,
            })).collect::<Vec<_>>()),
        })
    }
}

/// One file's resources, or its load errors.
struct Loaded {
    name: String,
    resources: Vec<Resource>,
}

impl Loaded {
    fn proxy_config(&self) -> Option<&ringmesh_api::resources::ProxyConfig> {
        self.resources.iter().find_map(|r| match r {
            Resource::ProxyConfig(p) => Some(p),
            _ => None,
        })
    }
}

/// Files named by `paths`, directories expanded with [`yaml_files_under`].
fn expand(paths: &[PathBuf], diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match yaml_files_under(p) {
                Ok(mut found) => files.append(&mut found),
                Err(d) => diagnostics.push(d),
            }
        } else {
            files.push(p.clone());
        }
    }
    files
}

fn summary_of(s: &Snapshot) -> Summary {
    Summary {
        listeners: s.listeners.len(),
        virtual_hosts: s.routes.virtual_hosts.len(),
        routes: s.routes.virtual_hosts.iter().map(|v| v.routes.len()).sum(),
        clusters: s.clusters.len(),
    }
}

/// Analyzes `paths` (files or directories); see the module's doc for what compiles together.
pub fn analyze(paths: &[PathBuf]) -> Report {
    let mut diagnostics = Vec::new();
    let mut loaded = Vec::new();
    let mut files = Vec::new();
    for file in expand(paths, &mut diagnostics) {
        let name = file.display().to_string();
        files.push(name.clone());
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                diagnostics.push(Diagnostic::error(format!("cannot read file: {e}")).at(Some(&name), None));
                continue;
            }
        };
        match load_str(&name, &text) {
            Ok((resources, mut warnings)) => {
                diagnostics.append(&mut warnings);
                loaded.push(Loaded { name, resources });
            }
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    let mut summary = None;
    if !diagnostics.iter().any(Diagnostic::is_error) {
        let (proxies, shared): (Vec<&Loaded>, Vec<&Loaded>) = loaded.iter().partition(|l| l.proxy_config().is_some());
        let mut units: Vec<(Option<String>, Vec<&Loaded>)> = Vec::new();
        if proxies.len() <= 1 {
            units.push((None, loaded.iter().collect()));
        } else {
            if !shared.is_empty() {
                units.push((Some("shared resources".to_owned()), shared.clone()));
            }
            for p in &proxies {
                let subscribes = p.proxy_config().is_some_and(|pc| pc.spec.control_plane.is_some());
                let mut unit = vec![*p];
                if subscribes {
                    unit.extend(shared.iter().copied());
                }
                units.push((Some(p.name.clone()), unit));
            }
        }
        let mut compiled = Vec::new();
        for (name, unit) in units {
            let input = CompileInput {
                resources: unit.iter().flat_map(|l| l.resources.iter().cloned()).collect(),
                extra_endpoints: Vec::new(),
                version: 1,
            };
            match compile(&input) {
                Ok(c) => {
                    diagnostics.extend(c.warnings);
                    compiled.push((name, summary_of(&c.snapshot)));
                }
                Err(mut errors) => diagnostics.append(&mut errors),
            }
        }
        if !diagnostics.iter().any(Diagnostic::is_error) {
            summary = Some(compiled);
        }
    }
    // The shared resources are compiled once alone and again with every proxy: each finding
    // is reported once.
    let mut seen = HashSet::new();
    diagnostics.retain(|d| seen.insert(d.clone()));
    diagnostics.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Report {
        files,
        diagnostics,
        summary,
    }
}
