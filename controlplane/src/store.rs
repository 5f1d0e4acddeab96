//! The resource store: a watched directory of YAML files (the embedded default).
//!
//! Every file is split into its `---` documents, which travel to proxies as they were written.
//! A directory that fails to compile is refused as a whole — every diagnostic is logged and kept
//! for `status()` — and the last good set keeps being served: a typo never reaches a proxy.
//!
//! The directory is also where `ringmesh apply` keeps what it is given, so that a restart loses
//! nothing and there is one source of truth that a person can read and back up:
//!
//! - `DIR/*.yaml`, `DIR/*.yml`: files people write. Their resources can be got; applying the
//!   same content again is `unchanged`, but `apply` with different content and `delete` are
//!   refused with an error naming the file and line, because rewriting a person's file (its
//!   comments, its order) behind their back is worse than asking them to edit it.
//! - `DIR/applied/<kind>.<namespace>.<name>.yaml` ([`ResourceKey::file_name`], kind in lower
//!   case, e.g. `applied/virtualservice.default.reviews.yaml`): one resource each, written by
//!   [`DirStore::apply`] (a temporary file renamed into place, so a crash never leaves half a
//!   file) and removed by [`DirStore::delete`]. Any other file in `applied/` is loaded but
//!   treated like a person's file.
//!
//! An apply or delete is checked against the whole directory as it is on disk at that moment
//! (so a hand edit that the watcher has not seen yet is judged too): if the result would not
//! compile, nothing is written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ringmesh_api::proto::Document;
use ringmesh_api::{compile, documents, load_str, CompileInput, Diagnostic, Diagnostics};
use serde_yaml::Value;

/// The subdirectory where applied resources are kept.
pub const APPLIED_DIR: &str = "applied";

/// Longest name or namespace accepted by apply (Kubernetes' limit for object names).
pub const MAX_NAME_LEN: usize = 253;

/// One accepted set of resources.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    /// Documents in file order, with `file:line` sources.
    pub documents: Vec<Document>,
    /// The same documents with their identity and file, for `get` and `delete` (documents whose
    /// identity cannot be read, e.g. of kinds ringmesh ignores without a name, are left out).
    pub resources: Vec<StoredResource>,
}

/// Kind, namespace and name: what makes a resource unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// Kind as written, e.g. `VirtualService`.
    pub kind: String,
    /// Namespace, `default` when the document has none (as `kubectl apply` does).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    /// `Kind namespace/name`, as the compiler's diagnostics name resources.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ResourceKey {
    /// Reads the identity of one YAML document (`kind`, `metadata.name`, `metadata.namespace`).
    pub fn of_yaml(yaml: &str) -> Result<ResourceKey, String> {
        let value: Value = serde_yaml::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
        let kind = value.get("kind").and_then(Value::as_str).ok_or("missing `kind`")?;
        let meta = value.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        Ok(ResourceKey {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `<kind>.<namespace>.<name>.yaml`, the file apply keeps this resource in.
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.{}.yaml",
            self.kind.to_ascii_lowercase(),
            self.namespace,
            self.name
        )
    }

    /// Why this key cannot name a file of its own, if it cannot: Kubernetes' rules for names
    /// (lower-case letters, digits, `-` and `.`; starting and ending with a letter or digit), so
    /// that no name can reach outside `applied/` and every file name maps to one resource.
    fn check_storable(&self) -> Result<(), (String, &'static str)> {
        if self.kind.is_empty() || !self.kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err((format!("kind `{}` must be letters and digits", self.kind), "kind"));
        }
        for (value, field, dots) in [
            (&self.name, "metadata.name", true),
            (&self.namespace, "metadata.namespace", false),
        ] {
            if value.is_empty() {
                return Err((format!("{field} is required by ringmesh apply"), field_static(field)));
            }
            let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
            let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if value.len() > MAX_NAME_LEN
                || !value.bytes().all(ok_char)
                || !edge(value.as_bytes().first())
                || !edge(value.as_bytes().last())
            {
                return Err((
                    format!(
                        "`{value}` is not a valid {field}: use at most {MAX_NAME_LEN} lower-case letters, digits, \
                         `-`{}, starting and ending with a letter or digit",
                        if dots { " and `.`" } else { "" }
                    ),
                    field_static(field),
                ));
            }
        }
        Ok(())
    }
}

fn field_static(field: &str) -> &'static str {
    if field == "metadata.name" {
        "metadata.name"
    } else {
        "metadata.namespace"
    }
}

/// A resource in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// Its identity.
    pub key: ResourceKey,
    /// The document as stored (source `file:line`).
    pub document: Document,
    /// The file holding it.
    pub file: PathBuf,
    /// Written by apply (in `applied/` under its own name): apply may replace it, delete may
    /// remove it. Otherwise it is a person's file, which the control plane never edits.
    pub applied: bool,
}

/// What an apply did or would do to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new resource.
    Created,
    /// A changed resource.
    Configured,
    /// Same content as stored (comments, order and `status` aside).
    Unchanged,
    /// This document's errors refused the apply.
    Refused,
    /// Refused because of other documents; this one was fine.
    NotApplied,
}

/// One document of an apply request and what became of it.
#[derive(Debug, Clone)]
pub struct DocumentResult {
    /// `file:line` of its first line.
    pub source: String,
    /// Its identity, when it could be read.
    pub key: Option<ResourceKey>,
    /// What happened.
    pub outcome: Outcome,
    /// Errors (and warnings) about this document.
    pub diagnostics: Vec<Diagnostic>,
}

/// The answer to an apply.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// False: refused as a whole, nothing written.
    pub applied: bool,
    /// Per request document, in request order.
    pub documents: Vec<DocumentResult>,
    /// Diagnostics about no request document (stored resources that would break, warnings).
    pub other: Vec<Diagnostic>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The resource comes from a file a person wrote, which the control plane does not edit.
    #[error("{key} is defined in {source_line}, not by ringmesh apply; edit or remove it in that file")]
    NotApplied {
        /// The resource.
        key: ResourceKey,
        /// `file:line` of its document.
        source_line: String,
    },
    /// The change would leave a directory that does not compile.
    #[error("refused, the resources left would not compile:\n{0}")]
    Refused(Diagnostics),
    /// etcd could not be read or written (the `--etcd` backend).
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// Another writer changed the same resources between the check and the write (the `--etcd`
    /// backend, where replicas write concurrently); nothing was written.
    #[error("{0} changed while this request was checked; nothing was written, try again")]
    Conflict(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory, its last good set, and the last refusal.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    fingerprint: Vec<(PathBuf, u64)>,
    /// The last set that compiled.
    pub current: ResourceSet,
    /// Every diagnostic of the last refused load, if the newest files were refused.
    pub last_error: Option<String>,
}

fn yaml_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The directory's own files, then `applied/`'s, each sorted by name.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = yaml_files_in(dir);
    files.extend(yaml_files_in(&dir.join(APPLIED_DIR)));
    files
}

fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read(f)
                    .map(|b| ringmesh_api::hash_table::hash_bytes(&b))
                    .unwrap_or(0),
            )
        })
        .collect()
}

/// A document's content for comparison: parsed (so comments, quoting and key order do not
/// count) and without `status` (which `get -o yaml` adds and the loader ignores).
fn content(yaml: &str) -> Option<Value> {
    let mut v: Value = serde_yaml::from_str(yaml).ok()?;
    if let Value::Mapping(m) = &mut v {
        m.remove("status");
    }
    Some(v)
}

/// Loads and compiles `files` together (without endpoints, as the directory is checked on
/// every reload), returning errors and warnings.
fn check(files: &[Unit]) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for f in files {
        match load_str(&f.name, &f.text) {
            Ok((mut r, mut w)) => {
                resources.append(&mut r);
                warnings.append(&mut w);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        match compile(&CompileInput {
            resources,
            extra_endpoints: Vec::new(),
            version: 0,
        }) {
            Ok(mut c) => warnings.append(&mut c.warnings),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (errors, warnings)
}

/// One document of an apply request.
struct Incoming {
    source_file: String,
    first_line: usize,
    /// First line of the next document of the same file (to attribute diagnostics by line).
    end_line: usize,
    yaml: String,
    key: Option<ResourceKey>,
    outcome: Outcome,
    diagnostics: Vec<Diagnostic>,
}

/// One stored unit of text as the shared checks see it: a file of the directory, or a key of
/// etcd. `name` is what diagnostics name (the file's path, the etcd key).
#[derive(Debug, Clone)]
pub struct Unit {
    /// Path or key.
    pub name: String,
    /// Its YAML stream.
    pub text: String,
}

/// What an apply would do, decided the same way for every backend.
#[derive(Debug)]
pub struct ApplyPlan {
    /// The answer; `applied` is false when the request is refused.
    pub report: ApplyReport,
    /// `(unit name, key, YAML)` to write when not refused: created and configured resources only.
    pub writes: Vec<(String, ResourceKey, String)>,
}

/// Where `key` is defined now: `(unit name, first line, document)`.
fn find_in<'a>(units: &'a [Unit], key: &ResourceKey) -> Option<(&'a str, usize, String)> {
    units.iter().find_map(|u| {
        documents(&u.text).into_iter().find_map(|(line, yaml)| {
            (ResourceKey::of_yaml(&yaml).as_ref() == Ok(key)).then_some((u.name.as_str(), line, yaml))
        })
    })
}

/// Checks an apply of `files` (`(source name, YAML stream)` each) against `units`, the whole
/// store as it is now. `own` names the unit apply keeps a resource in; a resource found in any
/// other unit belongs to a person and is not replaced. The store as it would be after the apply
/// must compile, or nothing is written; every diagnostic is attributed to the request document
/// (by file and line) it is about.
pub fn plan_apply(units: &[Unit], files: &[(String, String)], own: &dyn Fn(&ResourceKey) -> String) -> ApplyPlan {
    let mut incoming = Vec::new();
    for (source, text) in files {
        let docs = documents(text);
        let ends: Vec<usize> = docs.iter().skip(1).map(|(l, _)| *l).chain([usize::MAX]).collect();
        for ((first_line, yaml), end_line) in docs.into_iter().zip(ends) {
            incoming.push(Incoming {
                source_file: source.clone(),
                first_line,
                end_line,
                yaml,
                key: None,
                outcome: Outcome::Created,
                diagnostics: Vec::new(),
            });
        }
    }

    // Identity, storable names, duplicates within the request, and ownership.
    let mut seen: BTreeMap<ResourceKey, String> = BTreeMap::new();
    for doc in &mut incoming {
        let at = |d: Diagnostic| d.at(Some(&doc.source_file), Some(doc.first_line));
        let key = match ResourceKey::of_yaml(&doc.yaml) {
            Ok(k) => k,
            Err(e) => {
                // The loader below reports the details (line, field) of unreadable documents.
                doc.diagnostics.push(at(Diagnostic::error(e)));
                continue;
            }
        };
        if let Err((msg, field)) = key.check_storable() {
            doc.diagnostics
                .push(at(Diagnostic::error(msg).in_resource(key.to_string()).on_field(field)));
        }
        let here = format!("{}:{}", doc.source_file, doc.first_line);
        if let Some(first) = seen.insert(key.clone(), here) {
            doc.diagnostics.push(at(Diagnostic::error(format!(
                "{key} appears twice in this apply; the first is at {first}"
            ))
            .in_resource(key.to_string())));
        }
        if let Some((unit, line, stored)) = find_in(units, &key) {
            if content(&stored).is_some() && content(&stored) == content(&doc.yaml) {
                doc.outcome = Outcome::Unchanged;
            } else if unit == own(&key) {
                doc.outcome = Outcome::Configured;
            } else {
                doc.diagnostics.push(at(Diagnostic::error(format!(
                    "{key} is defined in {unit}:{line}, not by ringmesh apply; edit it in that file"
                ))
                .in_resource(key.to_string())));
            }
        }
        doc.key = Some(key);
    }

    // The store as it would be: untouched units, then the request's changed documents, each
    // padded to its line so that diagnostics name the line in the user's file.
    let replaced: Vec<String> = incoming
        .iter()
        .filter(|d| d.outcome == Outcome::Configured)
        .filter_map(|d| d.key.as_ref().map(own))
        .collect();
    let mut candidates: Vec<Unit> = units.iter().filter(|u| !replaced.contains(&u.name)).cloned().collect();
    for doc in incoming.iter().filter(|d| d.outcome != Outcome::Unchanged) {
        candidates.push(Unit {
            name: doc.source_file.clone(),
            text: format!("{}{}", "\n".repeat(doc.first_line.saturating_sub(1)), doc.yaml),
        });
    }
    let (errors, warnings) = check(&candidates);
    let mut other = Vec::new();
    for d in errors.into_iter().chain(warnings) {
        let owner = incoming.iter_mut().find(|doc| {
            d.file.as_deref() == Some(doc.source_file.as_str())
                && d.line.is_some_and(|l| l >= doc.first_line && l < doc.end_line)
        });
        match owner {
            // The pre-check already said why an unreadable document is refused.
            Some(doc) if doc.key.is_none() && d.is_error() => doc.diagnostics = vec![d],
            Some(doc) => doc.diagnostics.push(d),
            None => other.push(d),
        }
    }

    let refused = incoming.iter().any(|d| d.diagnostics.iter().any(Diagnostic::is_error))
        || other.iter().any(Diagnostic::is_error);
    if refused {
        for doc in &mut incoming {
            doc.outcome = if doc.diagnostics.iter().any(Diagnostic::is_error) {
                Outcome::Refused
            } else {
                Outcome::NotApplied
            };
        }
    }
    let writes = if refused {
        Vec::new()
    } else {
        incoming
            .iter()
            .filter(|d| matches!(d.outcome, Outcome::Created | Outcome::Configured))
            .filter_map(|d| d.key.as_ref().map(|k| (own(k), k.clone(), d.yaml.clone())))
            .collect()
    };
    ApplyPlan {
        report: ApplyReport {
            applied: !refused,
            documents: incoming
                .into_iter()
                .map(|d| DocumentResult {
                    source: format!("{}:{}", d.source_file, d.first_line),
                    key: d.key,
                    outcome: d.outcome,
                    diagnostics: d.diagnostics,
                })
                .collect(),
            other,
        },
        writes,
    }
}

/// Checks the removal of `key` from `units`: `Ok(None)` when there is no such resource,
/// `Ok(Some(unit name))` to remove. A resource in a unit apply did not write (a person's file),
/// or whose removal would leave a store that does not compile (e.g. a ServiceEntry a
/// VirtualService routes to), is refused.
pub fn plan_delete(
    units: &[Unit],
    key: &ResourceKey,
    own: &dyn Fn(&ResourceKey) -> String,
) -> Result<Option<String>, StoreError> {
    let Some((unit, line, _)) = find_in(units, key) else {
        return Ok(None);
    };
    if unit != own(key) {
        return Err(StoreError::NotApplied {
            key: key.clone(),
            source_line: format!("{unit}:{line}"),
        });
    }
    let rest: Vec<Unit> = units.iter().filter(|u| u.name != unit).cloned().collect();
    let (errors, _) = check(&rest);
    if !errors.is_empty() {
        return Err(StoreError::Refused(Diagnostics(errors)));
    }
    Ok(Some(unit.to_owned()))
}

/// Loads and compiles `units` together, as the stores do before accepting a set: `Err` with
/// every diagnostic, one a line, when they do not compile.
pub fn check_units(units: &[Unit]) -> Result<(), String> {
    let (errors, _) = check(units);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
    }
}

impl DirStore {
    /// Opens `dir`; fails when the directory cannot be read or its files do not compile.
    pub fn open(dir: &Path) -> Result<DirStore, String> {
        if !dir.is_dir() {
            return Err(format!("--config-dir {}: not a readable directory", dir.display()));
        }
        let mut store = DirStore {
            dir: dir.to_path_buf(),
            fingerprint: Vec::new(),
            current: ResourceSet::default(),
            last_error: None,
        };
        match store.reload() {
            Ok(_) => Ok(store),
            Err(e) => Err(e),
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where apply keeps resources.
    pub fn applied_dir(&self) -> PathBuf {
        self.dir.join(APPLIED_DIR)
    }

    /// Re-reads the directory if any file changed. `Ok(true)`: a new set was accepted;
    /// `Ok(false)`: nothing changed; `Err`: the new files were refused (the old set stays).
    pub fn refresh(&mut self) -> Result<bool, String> {
        let files = yaml_files(&self.dir);
        if fingerprint(&files) == self.fingerprint {
            return Ok(false);
        }
        self.reload().map(|_| true)
    }

    fn reload(&mut self) -> Result<(), String> {
        let files = yaml_files(&self.dir);
        self.fingerprint = fingerprint(&files);
        if let Err(diags) = ringmesh_api::compile_files(&files, 0) {
            let msg = diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
            self.last_error = Some(msg.clone());
            return Err(msg);
        }
        let applied_dir = self.applied_dir();
        let mut set = ResourceSet::default();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            for (line, yaml) in documents(&text) {
                let document = Document {
                    source: format!("{}:{line}", f.display()),
                    yaml,
                };
                if let Ok(key) = ResourceKey::of_yaml(&document.yaml) {
                    let applied = f.parent() == Some(applied_dir.as_path())
                        && f.file_name().and_then(|n| n.to_str()) == Some(key.file_name().as_str());
                    set.resources.push(StoredResource {
                        key,
                        document: document.clone(),
                        file: f.clone(),
                        applied,
                    });
                }
                set.documents.push(document);
            }
        }
        self.current = set;
        self.last_error = None;
        Ok(())
    }

    /// Every file of the directory as it is on disk now, with its resources' keys.
    fn read_disk(&self) -> Result<Vec<(PathBuf, String)>, StoreError> {
        yaml_files(&self.dir)
            .into_iter()
            .map(|f| std::fs::read_to_string(&f).map_err(io(&f)).map(|t| (f, t)))
            .collect()
    }

    /// Creates or replaces the resources in `files` (`(source name, YAML stream)` each), or
    /// refuses them all. `dry_run` checks and reports without writing.
    pub fn apply(&mut self, files: &[(String, String)], dry_run: bool) -> Result<ApplyReport, StoreError> {
        let units = self.units()?;
        let applied_dir = self.applied_dir();
        let own = |k: &ResourceKey| applied_dir.join(k.file_name()).display().to_string();
        let plan = plan_apply(&units, files, &own);
        if !plan.report.applied || dry_run {
            let mut report = plan.report;
            report.applied &= !dry_run;
            return Ok(report);
        }
        let writes: Vec<(PathBuf, String)> = plan
            .writes
            .into_iter()
            .map(|(name, _, yaml)| (PathBuf::from(name), yaml))
            .collect();
        if !writes.is_empty() {
            std::fs::create_dir_all(&applied_dir).map_err(io(&applied_dir))?;
            self.write_all(&writes)?;
        }
        Ok(plan.report)
    }

    /// The directory's files as the shared checks see them.
    fn units(&self) -> Result<Vec<Unit>, StoreError> {
        Ok(self
            .read_disk()?
            .into_iter()
            .map(|(f, text)| Unit {
                name: f.display().to_string(),
                text,
            })
            .collect())
    }

    /// Writes every file or none: on a failure (disk full, or the directory no longer compiles
    /// because of a hand edit made meanwhile) the files written so far are put back.
    fn write_all(&mut self, writes: &[(PathBuf, String)]) -> Result<(), StoreError> {
        let mut undo: Vec<(PathBuf, Option<String>)> = Vec::new();
        let mut result = Ok(());
        for (path, text) in writes {
            undo.push((path.clone(), std::fs::read_to_string(path).ok()));
            if let Err(e) = write_atomic(path, text) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            if let Err(msg) = self.reload() {
                result = Err(StoreError::Refused(Diagnostics(vec![Diagnostic::error(msg)])));
            }
        }
        if result.is_err() {
            for (path, old) in undo.into_iter().rev() {
                let _ = match old {
                    Some(text) => write_atomic(&path, &text),
                    None => std::fs::remove_file(&path).map_err(io(&path)),
                };
            }
            let _ = self.reload();
        }
        result
    }

    /// Removes an applied resource. `Ok(None)`: there is no such resource; `Ok(Some(file))`:
    /// the file removed. A resource from a person's file, or one whose removal would leave a
    /// directory that does not compile (e.g. a ServiceEntry a VirtualService routes to), is
    /// refused.
    pub fn delete(&mut self, key: &ResourceKey) -> Result<Option<PathBuf>, StoreError> {
        let units = self.units()?;
        let applied_dir = self.applied_dir();
        let own = |k: &ResourceKey| applied_dir.join(k.file_name()).display().to_string();
        let Some(name) = plan_delete(&units, key, &own)? else {
            return Ok(None);
        };
        let file = PathBuf::from(name);
        let old = std::fs::read_to_string(&file).map_err(io(&file))?;
        std::fs::remove_file(&file).map_err(io(&file))?;
        if let Err(msg) = self.reload() {
            let _ = write_atomic(&file, &old);
            let _ = self.reload();
            return Err(StoreError::Refused(Diagnostics(vec![Diagnostic::error(msg)])));
        }
        Ok(Some(file))
    }
}

/// Writes `text` to a temporary file beside `path` and renames it into place, so that the
/// watcher (and a crash) sees the old file or the new one, never half of one.
fn write_atomic(path: &Path, text: &str) -> Result<(), StoreError> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n";
    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  http:\n  - route: [{destination: {host: reviews.test}}]\n";

    /// An empty directory for one test, removed when the returned guard drops: the caller keeps
    /// it for the whole test (a panicking test unwinds through the drop and cleans up too).
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("ringmesh-store-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn keys_come_from_the_document() {
        let k = ResourceKey::of_yaml(VS).unwrap();
        assert_eq!(k.to_string(), "VirtualService default/reviews");
        assert_eq!(k.file_name(), "virtualservice.default.reviews.yaml");
        assert!(ResourceKey::of_yaml("metadata: {name: x}\n").is_err());
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for name in ["../x", "a/b", "UPPER", "-a", ""] {
            let k = ResourceKey {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: name.into(),
            };
            assert!(k.check_storable().is_err(), "{name:?}");
        }
    }

    #[test]
    fn apply_writes_one_file_per_resource_and_reports_each() {
        let tmp = temp_dir("apply");
        let d = tmp.path();
        std::fs::write(d.join("se.yaml"), SE).unwrap();
        let mut store = DirStore::open(d).unwrap();
        let r = store
            .apply(&[("in.yaml".into(), format!("{SE}---\n{VS}"))], false)
            .unwrap();
        assert!(r.applied, "{r:?}");
        let outcomes: Vec<_> = r.documents.iter().map(|d| d.outcome).collect();
        assert_eq!(outcomes, vec![Outcome::Unchanged, Outcome::Created]);
        assert!(d.join("applied/virtualservice.default.reviews.yaml").is_file());
        assert!(store
            .current
            .resources
            .iter()
            .any(|r| r.applied && r.key.kind == "VirtualService"));

        let changed = VS.replace("reviews.test}}]", "reviews.test}, weight: 100}]");
        let r = store.apply(&[("in.yaml".into(), changed)], false).unwrap();
        assert_eq!(r.documents[0].outcome, Outcome::Configured);

        // A person's file is never rewritten.
        let r = store
            .apply(&[("in.yaml".into(), SE.replace("9080", "9081"))], false)
            .unwrap();
        assert!(!r.applied);
        assert!(r.documents[0].diagnostics[0].message.contains("se.yaml:1"), "{r:?}");
    }
}
