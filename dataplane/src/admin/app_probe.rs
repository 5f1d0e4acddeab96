//! The application's own health checks, run by the proxy for kubelet: `:15020/app-health/…`.
//!
//! Under inbound capture with STRICT mutual TLS, kubelet's plaintext probe of an app port is
//! redirected to the proxy and refused (kubelet has no mesh certificate). So the injector
//! rewrites each app container's `httpGet`/`tcpSocket` probe to `GET :15020/app-health/<container>/<livez|readyz|startupz>`
//! and hands the original probes to the sidecar as JSON in `RINGMESH_KUBE_APP_PROBERS`, Istio's
//! `ISTIO_KUBE_APP_PROBERS` shape:
//!
//! ```json
//! {"/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1}}
//! ```
//!
//! The health server (control thread) answers such a path by doing the original probe against
//! the app on loopback, from the proxy's user, whose traffic the capture rules never redirect:
//! `httpGet` answering 200–399 is 200, any other status is passed on, no answer (refused,
//! reset, timed out) is 503; a `tcpSocket` probe is 200 when the connect succeeds within the
//! timeout, else 503. `https` probes are made over TLS without checking the app's certificate,
//! as kubelet does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the injector puts the original probes.
pub const APP_PROBERS_ENV: &str = "RINGMESH_KUBE_APP_PROBERS";
/// Kubernetes' default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of an app's answer read: its status line and headers (the body is not needed).
const MAX_HEAD: usize = 16 * 1024;

/// The probes the proxy runs for kubelet, by request path (`/app-health/<container>/<kind>`).
#[derive(Debug, Clone, Default)]
pub struct AppProbers(BTreeMap<String, AppProbe>);

/// One original probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    /// What to do.
    pub action: ProbeAction,
    /// How long it may take (`timeoutSeconds`, default 1).
    pub timeout: Duration,
}

/// A probe's action: the two kinds the injector rewrites (gRPC and exec probes stay with kubelet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET path` on the app's port.
    Http {
        /// The port on loopback (or on `host`).
        port: u16,
        /// Request target, `/` by default.
        path: String,
        /// Over TLS (`scheme: HTTPS`), the certificate unchecked as kubelet does.
        https: bool,
        /// Where to connect instead of 127.0.0.1 (the probe's `host`).
        host: Option<String>,
        /// Header fields to send (`httpHeaders`); a `Host` among them replaces ours.
        headers: Vec<(String, String)>,
    },
    /// A TCP connect to the app's port.
    Tcp {
        /// The port on loopback (or on `host`).
        port: u16,
        /// Where to connect instead of 127.0.0.1.
        host: Option<String>,
    },
}

/// A malformed `RINGMESH_KUBE_APP_PROBERS`; the message names the path and field.
#[derive(Debug, thiserror::Error)]
pub enum ProbersError {
    /// Not JSON of the expected shape.
    #[error("{APP_PROBERS_ENV}: {0}")]
    Json(#[from] serde_json::Error),
    /// A probe that cannot be run.
    #[error("{APP_PROBERS_ENV}: {path:?}: {reason}")]
    Probe {
        /// The request path it is registered under.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcp>,
    timeout_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: serde_json::Value,
    host: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct RawTcp {
    port: serde_json::Value,
    host: Option<String>,
}

/// A port as the injector writes it: a number (a numeric string is taken too; a name is not,
/// since the injector resolves names to numbers).
fn port_of(v: &serde_json::Value) -> Result<u16, String> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("port {v} is not a number in 1..=65535")),
    }
}

impl AppProbers {
    /// Parses Istio's `ISTIO_KUBE_APP_PROBERS` JSON; empty text means none.
    pub fn parse(json: &str) -> Result<AppProbers, ProbersError> {
        if json.trim().is_empty() {
            return Ok(AppProbers::default());
        }
        let raw: BTreeMap<String, RawProbe> = serde_json::from_str(json)?;
        let mut out = BTreeMap::new();
        for (path, probe) in raw {
            let bad = |reason: String| ProbersError::Probe {
                path: path.clone(),
                reason,
            };
            if !path.starts_with("/app-health/") {
                return Err(bad("the path must start with /app-health/".into()));
            }
            let action = match (probe.http_get, probe.tcp_socket) {
                (Some(h), None) => {
                    let https = match h.scheme.as_deref().map(str::to_ascii_uppercase).as_deref() {
                        None | Some("HTTP") => false,
                        Some("HTTPS") => true,
                        Some(other) => return Err(bad(format!("httpGet.scheme {other:?}: HTTP or HTTPS"))),
                    };
                    ProbeAction::Http {
                        port: port_of(&h.port).map_err(|e| bad(format!("httpGet.{e}")))?,
                        path: match h.path {
                            Some(p) if p.starts_with('/') => p,
                            Some(p) if p.is_empty() => "/".into(),
                            Some(p) => format!("/{p}"),
                            None => "/".into(),
                        },
                        https,
                        host: h.host.filter(|h| !h.is_empty()),
                        headers: h.http_headers.into_iter().map(|h| (h.name, h.value)).collect(),
                    }
                }
                (None, Some(t)) => ProbeAction::Tcp {
                    port: port_of(&t.port).map_err(|e| bad(format!("tcpSocket.{e}")))?,
                    host: t.host.filter(|h| !h.is_empty()),
                },
                (Some(_), Some(_)) => return Err(bad("both httpGet and tcpSocket".into())),
                (None, None) => return Err(bad("neither httpGet nor tcpSocket".into())),
            };
            let timeout = match probe.timeout_seconds {
                None | Some(0) => DEFAULT_TIMEOUT,
                Some(s) => Duration::from_secs(u64::from(s)),
            };
            out.insert(path, AppProbe { action, timeout });
        }
        Ok(AppProbers(out))
    }

    /// The probe registered under this request path.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    /// How many probes there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a probe found: the status kubelet gets and a line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// 200 when the app passed; its own status when it answered otherwise; 503 when it did not
    /// answer.
    pub status: StatusCode,
    /// For people reading `kubectl describe pod`.
    pub reason: String,
}

impl ProbeOutcome {
    fn failed(reason: String) -> ProbeOutcome {
        ProbeOutcome {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason,
        }
    }
}

impl AppProbe {
    /// Runs the probe against the app once, bounded by its timeout.
    pub async fn run(&self) -> ProbeOutcome {
        match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::failed(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn attempt(&self) -> ProbeOutcome {
        match &self.action {
            ProbeAction::Tcp { port, host } => {
                let target = authority(host.as_deref(), *port);
                match tokio::net::TcpStream::connect(&target).await {
                    Ok(_) => ProbeOutcome {
                        status: StatusCode::OK,
                        reason: format!("connected to {target}"),
                    },
                    Err(e) => ProbeOutcome::failed(format!("connect {target}: {e}")),
                }
            }
            ProbeAction::Http {
                port,
                path,
                https,
                host,
                headers,
            } => {
                let target = authority(host.as_deref(), *port);
                let tcp = match tokio::net::TcpStream::connect(&target).await {
                    Ok(s) => s,
                    Err(e) => return ProbeOutcome::failed(format!("connect {target}: {e}")),
                };
                let _ = tcp.set_nodelay(true);
                let request = request_head(&target, path, headers);
                let answer = if *https {
                    let name =
                        rustls_pki_types::ServerName::try_from(host.clone().unwrap_or_else(|| "127.0.0.1".into()))
                            .unwrap_or_else(|_| rustls_pki_types::ServerName::from(std::net::Ipv4Addr::LOCALHOST));
                    match tls_connector().connect(name, tcp).await {
                        Ok(tls) => exchange(tls, &request).await,
                        Err(e) => Err(format!("TLS handshake with {target}: {e}")),
                    }
                } else {
                    exchange(tcp, &request).await
                };
                match answer {
                    Ok(code) if (200..400).contains(&code) => ProbeOutcome {
                        status: StatusCode::OK,
                        reason: format!("GET {path} on {target}: {code}"),
                    },
                    Ok(code) => ProbeOutcome {
                        status: StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        reason: format!("GET {path} on {target}: {code}"),
                    },
                    Err(e) => ProbeOutcome::failed(format!("GET {path} on {target}: {e}")),
                }
            }
        }
    }
}

fn authority(host: Option<&str>, port: u16) -> String {
    match host {
        Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{port}"),
        Some(h) => format!("{h}:{port}"),
        None => format!("127.0.0.1:{port}"),
    }
}

/// kubelet's request: its user agent, `Connection: close`, the probe's headers.
fn request_head(target: &str, path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {target}\r\n"));
    }
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("user-agent")) {
        head.push_str("User-Agent: kube-probe/ringmesh\r\n");
    }
    for (n, v) in headers {
        // A field that would split the head is dropped rather than sent.
        if n.bytes().any(|b| b == b'\r' || b == b'\n' || b == b':') || v.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    head.into_bytes()
}

/// Sends the request and reads the answer's status code.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Result<u16, String> {
    stream.write_all(request).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the app closed the connection without an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return response.code.ok_or_else(|| "no status code".to_string()),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(format!("answer head larger than {MAX_HEAD} bytes")),
            // More header fields than we hold: the status line was already read.
            Err(httparse::Error::TooManyHeaders) => {
                return response.code.ok_or_else(|| "no status code".to_string());
            }
            Err(e) => return Err(format!("not an HTTP answer: {e}")),
        }
    }
}

/// TLS for `https` probes: any certificate is accepted, as kubelet's probes do (they check that
/// the app answers, not who it is).
fn tls_connector() -> tokio_rustls::TlsConnector {
    use std::sync::OnceLock;
    static CONNECTOR: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
                // The ring provider's defaults always build; an empty config would fail every
                // handshake, which the probe reports.
                Err(_) => tokio_rustls::TlsConnector::from(Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )),
            }
        })
        .clone()
}

/// Accepts every server certificate; signatures are still checked with the provider, so the
/// handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An app on loopback that answers every request with `status`, and the port it serves.
    async fn app(status: u16) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        #[allow(clippy::disallowed_methods)] // a test's own runtime, not a worker
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_string();
                // The path must arrive as the probe said.
                let code = if head.starts_with("GET /healthz HTTP/1.1\r\n") {
                    status
                } else {
                    404
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        (port, task)
    }

    fn probers(json: &str) -> AppProbers {
        AppProbers::parse(json).unwrap()
    }

    #[tokio::test]
    async fn an_http_probe_passes_when_the_app_answers_2xx_or_3xx() {
        for code in [200, 204, 302] {
            let (port, task) = app(code).await;
            let p = probers(&format!(
                r#"{{"/app-health/web/readyz": {{"httpGet": {{"path": "/healthz", "port": {port}, "scheme": "HTTP"}}, "timeoutSeconds": 2}}}}"#
            ));
            let out = p.get("/app-health/web/readyz").unwrap().run().await;
            assert_eq!(out.status, StatusCode::OK, "{code}: {}", out.reason);
            task.abort();
        }
    }

    #[tokio::test]
    async fn an_http_probe_fails_with_the_apps_status() {
        let (port, task) = app(500).await;
        let p = probers(&format!(
            r#"{{"/app-health/web/livez": {{"httpGet": {{"path": "/healthz", "port": "{port}"}}}}}}"#
        ));
        let out = p.get("/app-health/web/livez").unwrap().run().await;
        assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", out.reason);
        // The wrong path reaches the app and its 404 is passed on.
        let p = probers(&format!(
            r#"{{"/app-health/web/livez": {{"httpGet": {{"path": "/other", "port": {port}}}}}}}"#
        ));
        assert_eq!(
            p.get("/app-health/web/livez").unwrap().run().await.status,
            StatusCode::NOT_FOUND
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_probe_of_a_port_nobody_serves_is_503() {
        // Bind and drop: the port is free, so the connect is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = probers(&format!(
            r#"{{"/app-health/a/readyz": {{"httpGet": {{"path": "/healthz", "port": {port}}}}},
                "/app-health/a/livez": {{"tcpSocket": {{"port": {port}}}}}}}"#
        ));
        for path in ["/app-health/a/readyz", "/app-health/a/livez"] {
            let out = p.get(path).unwrap().run().await;
            assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(out.reason.contains("connect 127.0.0.1"), "{}", out.reason);
        }
    }

    #[tokio::test]
    async fn a_tcp_probe_passes_when_the_port_accepts() {
        let (port, task) = app(200).await;
        let p = probers(&format!(
            r#"{{"/app-health/db/startupz": {{"tcpSocket": {{"port": {port}}}}}}}"#
        ));
        let out = p.get("/app-health/db/startupz").unwrap().run().await;
        assert_eq!(out.status, StatusCode::OK, "{}", out.reason);
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_app_fails_the_probe_at_its_timeout() {
        // Accepts (the kernel does) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = probers(&format!(
            r#"{{"/app-health/a/readyz": {{"httpGet": {{"path": "/healthz", "port": {port}}}, "timeoutSeconds": 1}}}}"#
        ));
        let started = std::time::Instant::now();
        let out = p.get("/app-health/a/readyz").unwrap().run().await;
        assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(out.reason.contains("no answer within"), "{}", out.reason);
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[test]
    fn malformed_probers_are_refused_by_path_and_field() {
        let e = AppProbers::parse(r#"{"/app-health/a/readyz": {"httpGet": {"port": "http"}}}"#).unwrap_err();
        assert!(
            e.to_string().contains("/app-health/a/readyz") && e.to_string().contains("httpGet.port"),
            "{e}"
        );
        let e = AppProbers::parse(r#"{"/other": {"tcpSocket": {"port": 80}}}"#).unwrap_err();
        assert!(e.to_string().contains("/app-health/"), "{e}");
        let e = AppProbers::parse(r#"{"/app-health/a/readyz": {"timeoutSeconds": 1}}"#).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
        assert!(AppProbers::parse("not json").is_err());
        assert!(AppProbers::parse("").unwrap().is_empty());
    }

    #[test]
    fn header_fields_that_would_split_the_head_are_dropped() {
        let head = request_head(
            "127.0.0.1:80",
            "/h",
            &[("X-A".into(), "1".into()), ("X-B".into(), "2\r\nEvil: 1".into())],
        );
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("X-A: 1\r\n") && !head.contains("Evil"), "{head}");
    }
}
