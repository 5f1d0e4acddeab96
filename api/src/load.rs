//! Loading resources from multi-document YAML, with precise diagnostics.
//!
//! First step of every config path: the proxy's `--config`, the control plane's watched
//! directory and `ringmesh analyze` all call [`load_files`] or [`load_str`]. Each `---`
//! document is parsed on its own (so one broken document does not hide the errors of the others),
//! dispatched on `kind`, checked field by field against the type's [`Schema`] — unknown Istio
//! fields that ringmesh does not implement yet are warnings, anything else unknown is an error
//! with a "did you mean" — and then deserialized into the typed resource. Every problem of every
//! file is collected before returning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::locate::FieldPath;
use crate::resources::{
    AuthorizationPolicy, DestinationRule, Origin, PeerAuthentication, ProxyConfig, Resource, ResourceMeta,
    ServiceEntry, Telemetry, VirtualService, WorkloadEntry, ISTIO_SECURITY_VERSIONS, ISTIO_TELEMETRY_VERSIONS,
};
use crate::schema::{Schema, Shape};

/// Loaded resources and the warnings found while loading them.
pub type Loaded = (Vec<Resource>, Vec<Diagnostic>);

/// API versions accepted for Istio's networking kinds.
pub const ISTIO_NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// API version of ringmesh's own kinds.
pub const RINGMESH_VERSION: &str = "ringmesh.io/v1alpha1";

/// Kinds that exist in Istio but ringmesh does not implement yet: a warning, not an error, so
/// that a directory of real Istio config still loads.
const UNSUPPORTED_KINDS: &[&str] = &[
    "RequestAuthentication",
    "WorkloadGroup",
    "Gateway",
    "Sidecar",
    "EnvoyFilter",
    "WasmPlugin",
];

const SUPPORTED_KINDS: &[&str] = &[
    "ServiceEntry",
    "VirtualService",
    "DestinationRule",
    "ProxyConfig",
    "WorkloadEntry",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "Telemetry",
];

/// Kubernetes bookkeeping in `metadata` that `kubectl get -o yaml` prints; meaningless here
/// but not a mistake.
const K8S_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "selfLink",
];

/// Istio fields ringmesh does not implement yet, per kind, as path patterns. A DestinationRule's
/// `spec.subsets[].trafficPolicy` is checked as `spec.trafficPolicy`.
const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    ("VirtualService", "spec.tls"),
    ("VirtualService", "spec.http[].corsPolicy"),
    ("VirtualService", "spec.http[].delegate"),
    ("VirtualService", "spec.http[].rewrite.uriRegexRewrite"),
    ("VirtualService", "spec.http[].redirect.derivePort"),
    ("VirtualService", "spec.http[].retries.retryRemoteLocalities"),
    ("VirtualService", "spec.http[].retries.retryIgnorePreviousHosts"),
    ("VirtualService", "spec.http[].retries.backoff"),
    ("VirtualService", "spec.http[].match[].port"),
    ("VirtualService", "spec.http[].match[].scheme"),
    ("VirtualService", "spec.http[].match[].sourceLabels"),
    ("VirtualService", "spec.http[].match[].gateways"),
    ("VirtualService", "spec.http[].match[].sourceNamespace"),
    ("VirtualService", "spec.http[].match[].statPrefix"),
    ("VirtualService", "spec.tcp[].match[].destinationSubnets"),
    ("VirtualService", "spec.tcp[].match[].sourceLabels"),
    ("VirtualService", "spec.tcp[].match[].gateways"),
    ("VirtualService", "spec.tcp[].match[].sourceNamespace"),
    ("VirtualService", "spec.tcp[].match[].sourceSubnet"),
    (
        "DestinationRule",
        "spec.trafficPolicy.outlierDetection.consecutiveErrors",
    ),
    ("DestinationRule", "spec.trafficPolicy.tls.caCrl"),
    ("DestinationRule", "spec.trafficPolicy.portLevelSettings[].tls.caCrl"),
    ("DestinationRule", "spec.trafficPolicy.portLevelSettings[].loadBalancer"),
    (
        "DestinationRule",
        "spec.trafficPolicy.portLevelSettings[].connectionPool",
    ),
    (
        "DestinationRule",
        "spec.trafficPolicy.portLevelSettings[].outlierDetection.consecutiveErrors",
    ),
    ("DestinationRule", "spec.trafficPolicy.tunnel"),
    ("DestinationRule", "spec.trafficPolicy.proxyProtocol"),
    ("DestinationRule", "spec.trafficPolicy.retryBudget"),
    ("DestinationRule", "spec.trafficPolicy.loadBalancer.warmupDurationSecs"),
    ("DestinationRule", "spec.trafficPolicy.loadBalancer.warmup"),
    (
        "DestinationRule",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName",
    ),
    (
        "DestinationRule",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
    ),
    (
        "DestinationRule",
        "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
    ),
    ("DestinationRule", "spec.trafficPolicy.connectionPool.tcp.idleTimeout"),
    ("WorkloadEntry", "spec.network"),
    ("WorkloadEntry", "spec.serviceAccount"),
    ("AuthorizationPolicy", "spec.targetRef"),
    ("AuthorizationPolicy", "spec.targetRefs"),
    ("PeerAuthentication", "spec.targetRef"),
    ("ServiceEntry", "spec.subjectAltNames"),
    ("ServiceEntry", "spec.addresses"),
    ("ServiceEntry", "spec.endpoints[].network"),
    ("ServiceEntry", "spec.endpoints[].serviceAccount"),
    ("Telemetry", "spec.tracing[].customTags"),
    ("Telemetry", "spec.tracing[].useRequestIdForTraceSampling"),
    ("Telemetry", "spec.tracing[].enableIstioTags"),
    ("Telemetry", "spec.tracing[].disableContextPropagation"),
    ("Telemetry", "spec.metrics[].reportingInterval"),
    ("Telemetry", "spec.metrics[].overrides[].tagOverrides"),
];

fn schemas() -> &'static HashMap<&'static str, Schema> {
    static SCHEMAS: OnceLock<HashMap<&'static str, Schema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        HashMap::from([
            ("ServiceEntry", Schema::of::<ServiceEntry>()),
            ("WorkloadEntry", Schema::of::<WorkloadEntry>()),
            ("VirtualService", Schema::of::<VirtualService>()),
            ("DestinationRule", Schema::of::<DestinationRule>()),
            ("ProxyConfig", Schema::of::<ProxyConfig>()),
            ("AuthorizationPolicy", Schema::of::<AuthorizationPolicy>()),
            ("PeerAuthentication", Schema::of::<PeerAuthentication>()),
            ("Telemetry", Schema::of::<Telemetry>()),
        ])
    })
}

/// The unsupported-field pattern for `pattern` in `kind`, normalizing subset policies.
fn is_unsupported(kind: &str, pattern: &str) -> bool {
    let normalized;
    let pattern = match pattern.strip_prefix("spec.subsets[].trafficPolicy") {
        Some(rest) if kind == "DestinationRule" => {
            normalized = format!("spec.trafficPolicy{rest}");
            normalized.as_str()
        }
        _ => pattern,
    };
    UNSUPPORTED_FIELDS.iter().any(|(k, p)| *k == kind && *p == pattern)
}

/// Names of unsupported fields directly under `parent` (for suggestions).
fn unsupported_children<'a>(kind: &'a str, parent: &'a str) -> impl Iterator<Item = &'static str> + 'a {
    UNSUPPORTED_FIELDS.iter().filter_map(move |(k, p)| {
        if *k != kind {
            return None;
        }
        let rest = p.strip_prefix(parent)?;
        let rest = if parent.is_empty() {
            rest
        } else {
            rest.strip_prefix('.')?
        };
        (!rest.contains('.') && !rest.contains('[')).then_some(rest)
    })
}

/// One `---` document of a file.
struct Document {
    /// 1-based line of the document's first line in the file.
    first_line: usize,
    text: String,
}

/// Splits a YAML stream at `---` lines. A `---` with content after it on the same line starts
/// a document whose first line keeps the content (the marker blanked, so columns stay right).
fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = Document {
        first_line: 1,
        text: String::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end = line == "..." || line.starts_with("... ");
        if is_marker || is_end {
            docs.push(std::mem::replace(
                &mut current,
                Document {
                    first_line: i + 2,
                    text: String::new(),
                },
            ));
            if is_marker && line.len() > 3 {
                current.first_line = i + 1;
                current.text.push_str("   ");
                current.text.push_str(&line[3..]);
                current.text.push('\n');
            }
            continue;
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    docs.push(current);
    docs.retain(|d| {
        d.text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
    });
    docs
}

/// The `---` documents of a YAML stream as `(first line in the file, text)`, comment-only
/// documents left out. The control plane sends resources to proxies one document at a time, in
/// the language users wrote them in.
pub fn documents(text: &str) -> Vec<(usize, String)> {
    split_documents(text)
        .into_iter()
        .map(|d| (d.first_line, d.text))
        .collect()
}

/// Loads every resource in `text`; `name` is used as the file name in diagnostics.
/// Returns the resources and warnings, or every error (warnings are left out of the error
/// list so that it is exactly what must be fixed).
pub fn load_str(name: &str, text: &str) -> Result<Loaded, Vec<Diagnostic>> {
    let mut resources = Vec::new();
    let mut diags = Vec::new();
    load_text(Some(name), text, &mut resources, &mut diags);
    finish(resources, diags)
}

/// Loads every resource in `paths`. A path may be a directory: its `*.yaml` and `*.yml` files
/// are loaded in name order (not recursively). Errors from all files are reported together.
pub fn load_files(paths: &[PathBuf]) -> Result<Loaded, Vec<Diagnostic>> {
    let mut resources = Vec::new();
    let mut diags = Vec::new();
    for file in expand_paths(paths, &mut diags) {
        let name = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(Some(&name), &text, &mut resources, &mut diags),
            Err(e) => diags.push(Diagnostic::error(format!("cannot read file: {e}")).at(Some(&name), None)),
        }
    }
    finish(resources, diags)
}

fn finish(resources: Vec<Resource>, diags: Vec<Diagnostic>) -> Result<Loaded, Vec<Diagnostic>> {
    let (errors, warnings): (Vec<_>, Vec<_>) = diags.into_iter().partition(Diagnostic::is_error);
    if errors.is_empty() {
        Ok((resources, warnings))
    } else {
        Err(errors)
    }
}

/// Files named by `paths`, directories expanded to their YAML files in name order.
fn expand_paths(paths: &[PathBuf], diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_yaml(p))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => diags.push(
                    Diagnostic::error(format!("cannot read directory: {e}"))
                        .at(Some(&path.display().to_string()), None),
                ),
            }
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// Every `*.yaml`/`*.yml` file under `dir`, subdirectories included, sorted by path (so a
/// directory's files come before those of its subdirectories that sort after them). Entries
/// whose name starts with `.` are skipped — hidden directories such as `.git`, and the `..data`
/// and `..<timestamp>` directories Kubernetes mounts a ConfigMap with, which hold the same files
/// again — and so are symbolic links to directories, so a link loop cannot recurse forever.
/// `ringmesh analyze` reads directories this way; the proxy's `--config DIR` reads only the top
/// level ([`load_files`]).
pub fn yaml_files_under(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            Diagnostic::error(format!("cannot read directory: {e}")).at(Some(&d.display().to_string()), None)
        })?;
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if path.is_dir() {
                if !is_link {
                    pending.push(path);
                }
            } else if path.is_file() && is_yaml(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Loads one file's text into `out`, pushing every diagnostic into `diags`.
pub(crate) fn load_text(file: Option<&str>, text: &str, out: &mut Vec<Resource>, diags: &mut Vec<Diagnostic>) {
    for doc in split_documents(text) {
        if let Some(resource) = load_document(file, &doc, diags) {
            out.push(resource);
        }
    }
}

fn load_document(file: Option<&str>, doc: &Document, diags: &mut Vec<Diagnostic>) -> Option<Resource> {
    let origin = Arc::new(Origin::new(file, doc.first_line, &doc.text));
    let value: Value = match serde_yaml::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            diags.push(yaml_diagnostic(&e, file, doc.first_line, None));
            return None;
        }
    };
    let Value::Mapping(map) = &value else {
        diags.push(
            Diagnostic::error("a resource must be a mapping with apiVersion, kind, metadata and spec")
                .at(file, Some(doc.first_line)),
        );
        return None;
    };
    let at = |path: &FieldPath| (file, origin.line_of(path));
    let str_field = |name: &str| map.get(name).and_then(Value::as_str);
    let Some(kind) = str_field("kind") else {
        let (f, l) = at(&FieldPath::root());
        diags.push(
            Diagnostic::error(format!(
                "missing `kind`; expected one of {}",
                SUPPORTED_KINDS.join(", ")
            ))
            .at(f, l),
        );
        return None;
    };
    let api_version = str_field("apiVersion").unwrap_or("");
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let label = format!("{kind} {namespace}/{name}");
    let kind_path = FieldPath::root().key("kind");
    let version_path = FieldPath::root().key("apiVersion");

    if UNSUPPORTED_KINDS.contains(&kind) || (kind == "ProxyConfig" && api_version.starts_with("networking.istio.io/")) {
        let (f, l) = at(&kind_path);
        let extra = if kind == "ProxyConfig" {
            format!(" (Istio's ProxyConfig; ringmesh's own is {RINGMESH_VERSION})")
        } else {
            String::new()
        };
        diags.push(
            Diagnostic::warning(format!("kind {kind} is not supported yet{extra}; ignored"))
                .at(f, l)
                .in_resource(label),
        );
        return None;
    }
    if !SUPPORTED_KINDS.contains(&kind) {
        let (f, l) = at(&kind_path);
        let hint = did_you_mean(kind, SUPPORTED_KINDS.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| format!("; expected one of {}", SUPPORTED_KINDS.join(", ")));
        diags.push(Diagnostic::error(format!("unknown kind `{kind}`{hint}")).at(f, l));
        return None;
    }

    let mut ok = true;
    let expected_versions: &[&str] = match kind {
        "ProxyConfig" => &[RINGMESH_VERSION],
        "AuthorizationPolicy" | "PeerAuthentication" => ISTIO_SECURITY_VERSIONS,
        "Telemetry" => ISTIO_TELEMETRY_VERSIONS,
        _ => ISTIO_NETWORKING_VERSIONS,
    };
    if !expected_versions.contains(&api_version) {
        let (f, l) = at(&version_path);
        let got = if api_version.is_empty() {
            "missing apiVersion".to_owned()
        } else {
            format!("apiVersion `{api_version}` is not supported")
        };
        diags.push(
            Diagnostic::error(format!("{got} for kind {kind}; use {}", expected_versions[0]))
                .at(f, l)
                .in_resource(label.clone())
                .on_field("apiVersion"),
        );
        ok = false;
    }
    if name.is_empty() && kind != "ProxyConfig" {
        let path = FieldPath::root().key("metadata").key("name");
        let (f, l) = at(&path);
        diags.push(
            Diagnostic::error("metadata.name is required")
                .at(f, l)
                .in_resource(label.clone())
                .on_field(path.to_string()),
        );
        ok = false;
    }

    if let Some(schema) = schemas().get(kind) {
        let mut walker = Walker {
            kind,
            schema,
            origin: &origin,
            label: &label,
            diags,
            errors: 0,
        };
        walker.walk(&value, "", &FieldPath::root());
        if walker.errors > 0 {
            ok = false;
        }
    }
    let unknown_reported = !ok;

    let typed = match kind {
        "ServiceEntry" => typed::<ServiceEntry>(&doc.text).map(Resource::ServiceEntry),
        "WorkloadEntry" => typed::<WorkloadEntry>(&doc.text).map(Resource::WorkloadEntry),
        "VirtualService" => typed::<VirtualService>(&doc.text).map(Resource::VirtualService),
        "DestinationRule" => typed::<DestinationRule>(&doc.text).map(Resource::DestinationRule),
        "AuthorizationPolicy" => typed::<AuthorizationPolicy>(&doc.text).map(Resource::AuthorizationPolicy),
        "PeerAuthentication" => typed::<PeerAuthentication>(&doc.text).map(Resource::PeerAuthentication),
        "Telemetry" => typed::<Telemetry>(&doc.text).map(Resource::Telemetry),
        _ => typed::<ProxyConfig>(&doc.text).map(Resource::ProxyConfig),
    };
    match typed {
        Ok(mut resource) if ok => {
            resource.set_origin(origin);
            Some(resource)
        }
        Ok(_) => None,
        Err(e) => {
            // `deny_unknown_fields` repeats what the walker already said, with less help.
            let duplicate = unknown_reported && e.to_string().contains("unknown field");
            if !duplicate {
                diags.push(yaml_diagnostic(&e, file, doc.first_line, Some(&label)));
            }
            None
        }
    }
}

fn typed<T: DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

/// Turns a serde_yaml error into a diagnostic: the path it printed becomes the field, its
/// location (relative to the document) becomes a file line.
fn yaml_diagnostic(e: &serde_yaml::Error, file: Option<&str>, first_line: usize, label: Option<&str>) -> Diagnostic {
    static AT_LINE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let at_line = AT_LINE.get_or_init(|| regex::Regex::new(r" at line \d+ column \d+").ok());
    let raw = e.to_string();
    let message = match at_line {
        Some(re) => re.replace_all(&raw, "").into_owned(),
        None => raw,
    };
    let (field, message) = match message.split_once(": ") {
        Some((path, rest))
            if !path.is_empty() && path.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c)) =>
        {
            (Some(path.to_owned()), rest.to_owned())
        }
        _ => (None, message),
    };
    let line = e.location().map(|l| l.line() + first_line - 1);
    let mut d = Diagnostic::error(message).at(file, line);
    if let Some(label) = label {
        d = d.in_resource(label);
    }
    if let Some(field) = field {
        d = d.on_field(field);
    }
    d
}

/// Walks a parsed document against a kind's schema, reporting unknown and unsupported fields.
struct Walker<'a> {
    kind: &'a str,
    schema: &'a Schema,
    origin: &'a Origin,
    label: &'a str,
    diags: &'a mut Vec<Diagnostic>,
    errors: usize,
}

impl Walker<'_> {
    fn walk(&mut self, value: &Value, pattern: &str, path: &FieldPath) {
        let value = match value {
            Value::Tagged(t) => &t.value,
            v => v,
        };
        match (self.schema.shape(pattern), value) {
            (Some(Shape::Struct(fields)), Value::Mapping(map)) => {
                for (key, child) in map {
                    let Some(key) = key.as_str() else { continue };
                    let child_pattern = if pattern.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{pattern}.{key}")
                    };
                    let child_path = path.key(key);
                    if fields.contains(&key) {
                        self.walk(child, &child_pattern, &child_path);
                    } else if (pattern.is_empty() && (key == "kind" || key == "status"))
                        || (pattern == "metadata" && K8S_METADATA.contains(&key))
                    {
                        continue;
                    } else if is_unsupported(self.kind, &child_pattern) {
                        self.unsupported(&child_path, &child_pattern);
                    } else {
                        self.unknown(key, fields, pattern, &child_path);
                    }
                }
            }
            (Some(Shape::Map), Value::Mapping(map)) => {
                let child_pattern = format!("{pattern}.*");
                for (key, child) in map {
                    let Some(key) = key.as_str() else { continue };
                    self.walk(child, &child_pattern, &path.key(key));
                }
            }
            (Some(Shape::Seq), Value::Sequence(items)) => {
                let child_pattern = format!("{pattern}[]");
                for (i, child) in items.iter().enumerate() {
                    self.walk(child, &child_pattern, &path.index(i));
                }
            }
            // Type mismatches are reported by the typed deserialization with serde's message.
            _ => {}
        }
    }

    fn unsupported(&mut self, path: &FieldPath, pattern: &str) {
        let narrowing = pattern.contains(".match[].");
        let note = if narrowing {
            "; this condition is ignored, so the match is broader than written"
        } else {
            "; ignored"
        };
        let line = self.origin.line_of(path);
        self.diags.push(
            Diagnostic::warning(format!(
                "field `{}` is not supported by ringmesh yet{note}",
                last_key(path)
            ))
            .at(self.origin.file.as_deref(), line)
            .in_resource(self.label)
            .on_field(path.to_string()),
        );
    }

    fn unknown(&mut self, key: &str, fields: &[&'static str], parent: &str, path: &FieldPath) {
        let candidates = fields.iter().copied().chain(unsupported_children(self.kind, parent));
        let hint = match did_you_mean(key, candidates) {
            Some(s) => format!("; did you mean `{s}`?"),
            None => format!("; expected one of: {}", fields.join(", ")),
        };
        let line = self.origin.line_of(path);
        self.errors += 1;
        self.diags.push(
            Diagnostic::error(format!("unknown field `{key}`{hint}"))
                .at(self.origin.file.as_deref(), line)
                .in_resource(self.label)
                .on_field(path.to_string()),
        );
    }
}

fn last_key(path: &FieldPath) -> String {
    match path.0.last() {
        Some(crate::locate::Seg::Key(k)) => k.clone(),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<Diagnostic> {
        match load_str("t.yaml", text) {
            Ok((r, w)) => panic!("expected errors, got {} resources, warnings {w:?}", r.len()),
            Err(e) => e,
        }
    }

    fn warnings(text: &str) -> Vec<Diagnostic> {
        match load_str("t.yaml", text) {
            Ok((_, w)) => w,
            Err(e) => panic!("expected success, got {e:#?}"),
        }
    }

    const SE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 10.0.0.1
";

    #[test]
    fn splits_documents_and_keeps_line_numbers() {
        let text = format!("# header\n---\n{SE}---\n\n---\n{SE}");
        let docs = split_documents(&text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].first_line, 3);
        assert_eq!(docs[1].first_line, 3 + SE.lines().count() + 3);
        let (resources, warnings) = load_str("t.yaml", &text).expect("loads");
        assert_eq!(resources.len(), 2);
        assert!(warnings.is_empty());
        let origin = resources[1].origin().expect("has origin");
        assert_eq!(origin.first_line, docs[1].first_line);
    }

    #[test]
    fn marker_with_content_on_the_same_line() {
        let docs = split_documents("--- {a: 1}\n--- \nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].first_line, 1);
        assert_eq!(docs[0].text, "    {a: 1}\n");
    }

    #[test]
    fn typo_is_an_error_with_suggestion_and_line() {
        let text = SE.replace("  hosts:", "  hostz:");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field.as_deref(), Some("spec.hostz"));
        assert_eq!(e[0].line, Some(6));
        assert_eq!(e[0].resource.as_deref(), Some("ServiceEntry default/reviews"));
        assert!(e[0].message.contains("did you mean `hosts`"), "{}", e[0].message);
    }

    #[test]
    fn nested_typos_all_reported_with_paths() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
      weigth: 50
    - destination:
        hots: reviews
      weight: 50
";
        let e = errors(text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert_eq!(e[0].field.as_deref(), Some("spec.http[0].route[0].weigth"));
        assert_eq!(e[0].line, Some(11));
        assert!(e[0].message.contains("did you mean `weight`"));
        assert_eq!(e[1].field.as_deref(), Some("spec.http[0].route[1].destination.hots"));
        assert_eq!(e[1].line, Some(13));
        assert!(e[1].message.contains("did you mean `host`"));
        assert_eq!(
            e[0].to_string(),
            "t.yaml:11: VirtualService default/reviews: spec.http[0].route[0].weigth: \
             unknown field `weigth`; did you mean `weight`?"
        );
    }

    #[test]
    fn unsupported_istio_fields_are_warnings() {
        let text = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ratings
  namespace: bookinfo
  resourceVersion: \"123\"
spec:
  hosts: [ratings]
  tls: []
  http:
  - corsPolicy:
      allowOrigins: [{exact: x}]
    match:
    - sourceLabels: {app: reviews}
    route:
    - destination: {host: ratings}
status: {}
";
        let w = warnings(text);
        let fields: Vec<_> = w.iter().filter_map(|d| d.field.clone()).collect();
        assert_eq!(
            fields,
            [
                "spec.tls",
                "spec.http[0].corsPolicy",
                "spec.http[0].match[0].sourceLabels"
            ]
        );
        assert_eq!(w[1].line, Some(11));
        assert!(w[2].message.contains("broader than written"));
        assert_eq!(w[0].resource.as_deref(), Some("VirtualService bookinfo/ratings"));
    }

    #[test]
    fn subset_traffic_policy_unsupported_fields_are_warnings() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      outlierDetection: {consecutiveErrors: 3}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: RANDOM}
";
        let w = warnings(text);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert_eq!(
            w[0].field.as_deref(),
            Some("spec.subsets[0].trafficPolicy.outlierDetection.consecutiveErrors")
        );
        assert_eq!(
            w[1].field.as_deref(),
            Some("spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer")
        );
    }

    #[test]
    fn type_errors_have_field_and_file_line() {
        let text = format!("---\n{}", SE.replace("number: 9080", "number: lots"));
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field.as_deref(), Some("spec.ports[0].number"));
        assert_eq!(e[0].line, Some(9));
        assert!(e[0].message.contains("invalid type"), "{}", e[0].message);
        assert!(!e[0].message.contains("at line"), "{}", e[0].message);
    }

    #[test]
    fn bad_enum_value_names_the_choices() {
        let e = errors(&SE.replace("resolution: STATIC", "resolution: STATIK"));
        assert_eq!(e[0].field.as_deref(), Some("spec.resolution"));
        assert_eq!(e[0].line, Some(11));
        assert!(e[0].message.contains("STATIK") && e[0].message.contains("STATIC"));
    }

    #[test]
    fn syntax_error_reports_file_line() {
        let text = format!("{SE}---\nkind: VirtualService\nspec:\n  hosts: [a\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].file.as_deref(), Some("t.yaml"));
        let se_lines = SE.lines().count();
        // The error is found at the line after the unclosed flow sequence.
        assert_eq!(e[0].line, Some(se_lines + 5));
    }

    #[test]
    fn errors_from_every_document_are_collected() {
        let text = format!(
            "{}---\n{}---\nkind: Foo\n---\napiVersion: v1\nkind: VirtualServce\n",
            SE.replace("hosts:", "hostz:"),
            SE.replace("ports:", "portz:")
        );
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[2].message.contains("unknown kind `Foo`"));
        assert!(e[3].message.contains("did you mean `VirtualService`"), "{}", e[3]);
    }

    #[test]
    fn unsupported_kinds_warn() {
        let w = warnings("apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec: {}\n");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].message, "kind Sidecar is not supported yet; ignored");
        let w = warnings("apiVersion: networking.istio.io/v1beta1\nkind: ProxyConfig\nspec: {}\n");
        assert!(w[0].message.contains("ringmesh.io/v1alpha1"));
    }

    /// Istio's own documentation examples load: the mesh-wide access log with the `envoy`
    /// provider, a namespace's sampling, a workload's log turned off, a filter, client metrics
    /// off; what ringmesh ignores is a warning naming the field.
    #[test]
    fn telemetry_loads_istio_documentation_examples() {
        let text = "\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  accessLogging:
    - providers:
      - name: envoy
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: namespace-override
  namespace: myapp
spec:
  tracing:
  - randomSamplingPercentage: 10
    customTags:
      userId:
        header:
          name: userId
          defaultValue: unknown
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata:
  name: disable-sleep-logging
  namespace: default
spec:
  selector:
    matchLabels:
      app: sleep
  accessLogging:
  - providers:
    - name: envoy
    disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: default-exception-logging
  namespace: istio-system
spec:
  accessLogging:
  - providers:
    - name: envoy
    filter:
      expression: \"response.code >= 400\"
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: remove-client-metrics
  namespace: istio-system
spec:
  metrics:
    - providers:
        - name: prometheus
      overrides:
        - match:
            metric: ALL_METRICS
            mode: CLIENT
          disabled: true
        - match:
            metric: REQUEST_COUNT
          tagOverrides:
            response_code:
              operation: REMOVE
";
        let (resources, w) = load_str("t.yaml", text).expect("loads");
        let labels: Vec<_> = resources.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "Telemetry istio-system/mesh-default",
                "Telemetry myapp/namespace-override",
                "Telemetry default/disable-sleep-logging",
                "Telemetry istio-system/default-exception-logging",
                "Telemetry istio-system/remove-client-metrics",
            ]
        );
        let Resource::Telemetry(ns) = &resources[1] else {
            panic!("{:?}", resources[1])
        };
        assert_eq!(ns.spec.tracing[0].random_sampling_percentage, Some(10.0));
        let Resource::Telemetry(filtered) = &resources[3] else {
            panic!()
        };
        assert_eq!(
            filtered.spec.access_logging[0]
                .filter
                .as_ref()
                .map(|f| f.expression.as_str()),
            Some("response.code >= 400")
        );
        let fields: Vec<_> = w.iter().filter_map(|d| d.field.as_deref()).collect();
        assert_eq!(
            fields,
            [
                "spec.tracing[0].customTags",
                "spec.metrics[0].overrides[1].tagOverrides"
            ],
            "{w:#?}"
        );
        assert_eq!(
            w[0].line,
            Some(text.lines().position(|l| l.contains("customTags")).unwrap() + 1)
        );

        let e = errors(&text.replace("randomSamplingPercentage", "randomSamplingPercentge"));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field.as_deref(), Some("spec.tracing[0].randomSamplingPercentge"));
        assert!(
            e[0].message.contains("did you mean `randomSamplingPercentage`"),
            "{}",
            e[0].message
        );
        let e = errors(&text.replacen("telemetry.istio.io/v1\n", "telemetry.istio.io/v2\n", 1));
        assert_eq!(
            e[0].message,
            "apiVersion `telemetry.istio.io/v2` is not supported for kind Telemetry; use telemetry.istio.io/v1"
        );
    }

    #[test]
    fn api_version_and_name_checked() {
        let e = errors(&SE.replace("networking.istio.io/v1", "networking.istio.io/v2"));
        assert_eq!(e[0].field.as_deref(), Some("apiVersion"));
        assert_eq!(e[0].line, Some(1));
        let e = errors(&SE.replace("  name: reviews\n", "  labels: {a: b}\n"));
        assert_eq!(e[0].message, "metadata.name is required");
        assert_eq!(e[0].line, Some(3));
    }

    #[test]
    fn proxy_config_denies_unknown_fields_once() {
        let text = "\
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
spec:
  workers: 2
  limits:
    maxHeader: 10
";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field.as_deref(), Some("spec.limits.maxHeader"));
        assert!(e[0].message.contains("did you mean `maxHeaders`"));
        assert_eq!(e[0].line, Some(6));
    }

    #[test]
    fn non_mapping_and_missing_kind() {
        let e = errors("- a\n- b\n");
        assert!(e[0].message.contains("must be a mapping"));
        let e = errors("apiVersion: x\nspec: {}\n");
        assert!(e[0].message.starts_with("missing `kind`"));
    }

    #[test]
    fn files_and_directories() {
        // Removed when `tmp` drops, even if an assertion below fails.
        let tmp = tempfile::Builder::new()
            .prefix("ringmesh-api-load-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("b.yaml"), SE.replace("name: reviews", "name: b")).expect("write");
        std::fs::write(dir.join("a.yml"), SE.replace("name: reviews", "name: a")).expect("write");
        std::fs::write(dir.join("notes.txt"), "not yaml").expect("write");
        let (r, _) = load_files(std::slice::from_ref(&dir)).expect("loads");
        let names: Vec<_> = r.iter().map(|r| r.metadata().name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
        let e = load_files(&[dir.join("missing.yaml")]).expect_err("missing file");
        assert!(e[0].to_string().contains("missing.yaml: cannot read file"), "{}", e[0]);
    }

    #[test]
    fn yaml_files_under_recurses_and_skips_hidden_entries() {
        let tmp = tempfile::Builder::new()
            .prefix("ringmesh-api-tree-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path();
        for sub in ["mesh/applied", ".git", "..data"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        for f in [
            "b.yaml",
            "mesh/a.yml",
            "mesh/applied/c.yaml",
            ".git/d.yaml",
            "..data/e.yaml",
            ".f.yaml",
            "g.txt",
        ] {
            std::fs::write(dir.join(f), "").expect("write");
        }
        std::os::unix::fs::symlink(dir, dir.join("mesh/loop")).expect("symlink");
        let found: Vec<String> = yaml_files_under(dir)
            .expect("reads")
            .iter()
            .map(|p| p.strip_prefix(dir).expect("under dir").display().to_string())
            .collect();
        assert_eq!(found, ["b.yaml", "mesh/a.yml", "mesh/applied/c.yaml"]);
        assert!(yaml_files_under(&dir.join("nothing")).is_err());
    }
}
