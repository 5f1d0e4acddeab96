//! The mutating admission webhook: `ringmesh-control --injector-listen 0.0.0.0:15017`
//! (Istio's injector port), HTTPS, `POST /inject` with an `admission.k8s.io/v1`
//! `AdmissionReview` of a Pod; the answer echoes its `uid` and carries the JSON patch that
//! [`super::inject`] makes (base64, `patchType: JSONPatch`).
//!
//! **Failures.** A body that is not an `AdmissionReview` is answered 400 with the reason. Once
//! a review is read, the pod is never refused for a failure of the injector itself (the
//! namespace's labels cannot be read, a pod shaped so the injector cannot patch it): the answer
//! is `allowed: true` without a patch, and a log line says why, so the pod starts un-meshed
//! (still reachable under PERMISSIVE) rather than not at all. The
//! `MutatingWebhookConfiguration` says `failurePolicy: Ignore` for the same reason: a control
//! plane that is down must not stop every pod in the cluster from being created. What *is*
//! refused (`allowed: false`, with the reason) is a pod whose annotations ask for something the
//! injector cannot honour (a capture exclusion that does not parse), as Istio's injector does:
//! starting it with other capture rules than asked would be worse.
//!
//! **Certificate.** `--injector-cert`/`--injector-key` (PEM), read again when either file
//! changes (a Secret's rotation reaches the mounted files), checked at most every 10 seconds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::policy::{self, Decision};
use super::{inject, InjectError, InjectSettings, PodContext};

/// Istio's injector port.
pub const DEFAULT_PORT: u16 = 15017;
/// The path the `MutatingWebhookConfiguration` names.
pub const PATH: &str = "/inject";
/// The largest review read (the API server's request limit is 3 MiB; a review holds the object
/// once, or twice for an update).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long the namespace's labels may take to arrive before the pod is let through unpatched.
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the namespace's labels come from.
#[derive(Clone)]
pub enum Namespaces {
    /// The API server (`--kubernetes`): one GET per review.
    Kubernetes(kube::Client),
    /// Fixed labels per namespace (tests, or a control plane without `--kubernetes`); a
    /// namespace not listed has none.
    Fixed(BTreeMap<String, BTreeMap<String, String>>),
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespaces::Kubernetes(_) => f.write_str("Namespaces::Kubernetes"),
            Namespaces::Fixed(m) => f.debug_tuple("Namespaces::Fixed").field(m).finish(),
        }
    }
}

impl Namespaces {
    async fn labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        match self {
            Namespaces::Fixed(m) => Ok(m.get(namespace).cloned().unwrap_or_default()),
            Namespaces::Kubernetes(client) => {
                use k8s_openapi::api::core::v1::Namespace;
                let api: kube::Api<Namespace> = kube::Api::all(client.clone());
                match tokio::time::timeout(NAMESPACE_TIMEOUT, api.get(namespace)).await {
                    Ok(Ok(ns)) => Ok(ns.metadata.labels.unwrap_or_default()),
                    Ok(Err(e)) => Err(format!(
                        "reading namespace {namespace}: {}",
                        crate::kubernetes::api_error(&e)
                    )),
                    Err(_) => Err(format!(
                        "reading namespace {namespace}: no answer within {NAMESPACE_TIMEOUT:?}"
                    )),
                }
            }
        }
    }
}

/// The webhook's state: the settings every pod gets and where namespaces' labels come from.
#[derive(Debug, Clone)]
pub struct Injector {
    /// What is injected.
    pub settings: InjectSettings,
    /// The namespaces' labels, for the policy.
    pub namespaces: Namespaces,
}

/// A request body that is not an `AdmissionReview` we can answer (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
pub struct ReviewError(pub String);

/// What the webhook answers and why (the why is logged).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The `AdmissionReview` to send back.
    pub review: Value,
    /// Injected, skipped (and why), or let through after a failure.
    pub note: String,
}

impl Injector {
    /// Answers one `AdmissionReview` (the request body).
    pub async fn review(&self, body: &[u8]) -> Result<Answer, ReviewError> {
        let review: Value = serde_json::from_slice(body).map_err(|e| ReviewError(e.to_string()))?;
        if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
            return Err(ReviewError("kind is not AdmissionReview".into()));
        }
        let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        if api_version != "admission.k8s.io/v1" {
            return Err(ReviewError(format!(
                "apiVersion {api_version:?}: only admission.k8s.io/v1 is served"
            )));
        }
        let request = review.get("request").ok_or_else(|| ReviewError("no request".into()))?;
        let uid = request
            .get("uid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ReviewError("request.uid is missing".into()))?
            .to_string();
        let allow = |note: String| Answer {
            review: answer(&uid, json!({"allowed": true})),
            note,
        };
        let kind = request
            .pointer("/kind/kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let operation = request.get("operation").and_then(Value::as_str).unwrap_or_default();
        if kind != "Pod" || operation != "CREATE" {
            return Ok(allow(format!("{operation} of a {kind:?}: nothing to inject")));
        }
        let pod = request
            .get("object")
            .filter(|o| o.is_object())
            .ok_or_else(|| ReviewError("request.object is not a Pod".into()))?;
        let namespace = request
            .get("namespace")
            .and_then(Value::as_str)
            .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
            .unwrap_or("default")
            .to_string();
        let who = pod_label(pod, &namespace);
        let labels = match self.namespaces.labels(&namespace).await {
            Ok(l) => l,
            Err(e) => return Ok(allow(format!("{who}: let through without a sidecar: {e}"))),
        };
        match policy::admission(&labels, pod) {
            Decision::Skip(reason) => return Ok(allow(format!("{who}: not injected: {reason}"))),
            Decision::Inject => {}
        }
        let ctx = PodContext {
            namespace,
            owner_name: None,
        };
        match inject(pod, &ctx, &self.settings) {
            Ok(injected) => {
                let patch = serde_json::to_vec(&injected.patch).unwrap_or_default();
                let response = json!({
                    "allowed": true,
                    "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(patch),
                });
                Ok(Answer {
                    review: answer(&uid, response),
                    note: format!("{who}: injected"),
                })
            }
            Err(e @ InjectError::Annotation { .. }) => Ok(Answer {
                review: answer(
                    &uid,
                    json!({"allowed": false, "status": {"code": 400, "message": format!("ringmesh injection: {e}")}}),
                ),
                note: format!("{who}: refused: {e}"),
            }),
            Err(e) => Ok(allow(format!("{who}: let through without a sidecar: {e}"))),
        }
    }
}

fn answer(uid: &str, mut response: Value) -> Value {
    response["uid"] = json!(uid);
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn pod_label(pod: &Value, namespace: &str) -> String {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| {
            pod.pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(|g| format!("{g}*"))
        })
        .unwrap_or_else(|| "(unnamed)".into());
    format!("pod {namespace}/{name}")
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(injector: Arc<Injector>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path != PATH {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n", "text/plain"));
    }
    if req.method() != Method::POST {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview\n",
            "text/plain",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return Ok(if too_large {
                text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an AdmissionReview of at most {MAX_BODY} bytes\n"),
                    "text/plain",
                )
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}\n"),
                    "text/plain",
                )
            });
        }
    };
    Ok(match injector.review(&body).await {
        Ok(a) => {
            tracing::info!(target: "ringmesh_control::injector", "{}", a.note);
            match serde_json::to_vec(&a.review) {
                Ok(b) => text(StatusCode::OK, b, "application/json"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), "text/plain"),
            }
        }
        Err(e) => {
            tracing::warn!(target: "ringmesh_control::injector", "bad request: {e}");
            text(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain")
        }
    })
}

/// Serves the webhook on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, injector: Arc<Injector>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("injector accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, injector) = (acceptor.clone(), injector.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(crate::ca::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return tracing::debug!(%peer, "injector TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "injector TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| handle(injector.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// The webhook's certificate from two PEM files, reloaded when they change.
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// How often the files' modification times are looked at.
const RECHECK: Duration = Duration::from_secs(10);

fn stamp(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--injector-cert {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("--injector-cert {}: no certificate in it", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key).with_context(|| format!("--injector-key {}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).with_context(|| {
        format!(
            "--injector-cert {} with --injector-key {}",
            cert.display(),
            key.display()
        )
    })
}

impl FileCert {
    /// Reads both files now (an error names the file).
    pub fn open(cert: &Path, key: &Path) -> anyhow::Result<Arc<FileCert>> {
        let loaded = load_pair(cert, key)?;
        Ok(Arc::new(FileCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(Loaded {
                key: Arc::new(loaded),
                stamps: (stamp(cert), stamp(key)),
                checked: Instant::now(),
            }),
        }))
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps != st.stamps {
                match load_pair(&self.cert, &self.key) {
                    Ok(k) => {
                        st.key = Arc::new(k);
                        st.stamps = stamps;
                        tracing::info!("injector certificate reloaded from {}", self.cert.display());
                    }
                    // Half-written files during a rotation: keep the old pair, try again later.
                    Err(e) => tracing::warn!("injector certificate not reloaded; keeping the current one: {e:#}"),
                }
            }
        }
        Some(st.key.clone())
    }
}

/// rustls' settings for the webhook: HTTP/1.1 (the API server speaks it to webhooks), no
/// client certificate.
pub fn server_config(cert: Arc<FileCert>) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
