//! `ringmesh inject -f FILE`: multi-document YAML in, the same documents out with a sidecar in
//! every pod template, as `istioctl kube-inject` does. Pods, Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, ReplicationControllers, Jobs, CronJobs (and the items of a `List`)
//! are injected; other kinds, and pods opted out, pass through unchanged. Comments are not kept
//! (the documents are re-serialized).

use serde::Deserialize;
use serde_json::Value;

use super::policy::{self, Decision};
use super::{inject, InjectError, InjectSettings, PodContext};

/// A document that could not be read or injected; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("document {index}: {reason}")]
    Yaml {
        /// 1-based position in the input.
        index: usize,
        /// The parser's message (with its line).
        reason: String,
    },
    /// A pod template the injector refused.
    #[error("document {index} ({kind} {name}): {source}")]
    Inject {
        /// 1-based position in the input.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// Why.
        source: InjectError,
    },
}

/// Where a kind keeps its pod template (a JSON pointer; empty: the object is the pod).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Kind/name`.
    pub object: String,
    /// Injected, or why not.
    pub decision: Decision,
}

/// Injects every pod template in `text` (multi-document YAML) and returns the documents as
/// YAML, and what happened to each pod template. `namespace` is used for objects that name
/// none (default: `default`).
pub fn inject_yaml(
    text: &str,
    settings: &InjectSettings,
    namespace: Option<&str>,
) -> Result<(String, Vec<Outcome>), ManifestError> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| ManifestError::Yaml {
            index: i + 1,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        docs.push(value);
    }
    let mut outcomes = Vec::new();
    let mut out = String::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        inject_object(&mut doc, i + 1, settings, namespace, &mut outcomes)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        let yaml = serde_yaml::to_string(&doc).map_err(|e| ManifestError::Yaml {
            index: i + 1,
            reason: e.to_string(),
        })?;
        out.push_str(&yaml);
    }
    Ok((out, outcomes))
}

fn inject_object(
    doc: &mut Value,
    index: usize,
    settings: &InjectSettings,
    namespace: Option<&str>,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), ManifestError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if kind == "List" {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, index, settings, namespace, outcomes)?;
            }
        }
        return Ok(());
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(());
    };
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ctx = PodContext {
        namespace: doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .or(namespace)
            .unwrap_or("default")
            .to_string(),
        owner_name: (kind != "Pod" && !name.is_empty()).then(|| name.clone()),
    };
    let error = |source| ManifestError::Inject {
        index,
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let template = doc.pointer_mut(pointer).ok_or_else(|| {
        error(InjectError::Field {
            field: pointer.trim_start_matches('/').replace('/', "."),
            reason: "missing".into(),
        })
    })?;
    let decision = policy::offline(template);
    if decision == Decision::Inject {
        *template = inject(template, &ctx, settings).map_err(error)?.pod;
    }
    outcomes.push(Outcome {
        object: format!("{kind}/{name}"),
        decision,
    });
    Ok(())
}
