//! The app's probes, moved to the proxy as Istio moves them.
//!
//! Under inbound capture with STRICT mTLS, kubelet's plaintext probe of an app port would be
//! redirected to the proxy and refused. So each app container's `httpGet` and `tcpSocket`
//! liveness, readiness and startup probe becomes `httpGet :15020/app-health/<container>/<livez|readyz|startupz>`
//! (the proxy's health port, never captured), and the original goes to the sidecar in
//! `RINGMESH_KUBE_APP_PROBERS` (Istio's `ISTIO_KUBE_APP_PROBERS` shape), which the proxy runs
//! against the app on loopback (`dataplane/src/admin/app_probe.rs`). The timing fields
//! (`periodSeconds`, thresholds, `timeoutSeconds`) stay on the rewritten probe.
//!
//! gRPC and exec probes are left as they are: exec runs inside the container (no network), and
//! a gRPC probe of a port under STRICT mTLS fails (exclude that port from capture with
//! `traffic.sidecar.istio.io/excludeInboundPorts`). A probe whose named port the container does
//! not declare is left for kubelet to report.

use serde_json::{json, Map, Value};

use ringmesh_api::resources::{HttpGetProbe, ProbeSpec, TcpSocketProbe};

/// The proxy's health port, where kubelet's rewritten probes go.
pub const HEALTH_PORT: i64 = 15020;

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `livenessProbe` → `/livez`.
    Liveness,
    /// `readinessProbe` → `/readyz`.
    Readiness,
    /// `startupProbe` → `/startupz`.
    Startup,
}

impl ProbeKind {
    /// All three, in the order Istio registers them.
    pub const ALL: [ProbeKind; 3] = [ProbeKind::Readiness, ProbeKind::Liveness, ProbeKind::Startup];

    /// The container field.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }

    /// The last segment of the rewritten path.
    pub fn suffix(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livez",
            ProbeKind::Readiness => "readyz",
            ProbeKind::Startup => "startupz",
        }
    }
}

/// The path kubelet asks the proxy for.
pub fn app_health_path(container: &str, kind: ProbeKind) -> String {
    format!("/app-health/{container}/{}", kind.suffix())
}

/// A probe's port as a number: a number, a numeric string, or the name of one of the
/// container's ports.
fn resolve_port(port: &Value, container: &Map<String, Value>) -> Option<i64> {
    match port {
        Value::Number(n) => n.as_i64().filter(|p| (1..=65535).contains(p)),
        Value::String(s) => match s.parse::<i64>() {
            Ok(p) => Some(p).filter(|p| (1..=65535).contains(p)),
            Err(_) => container
                .get("ports")?
                .as_array()?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s))?
                .get("containerPort")?
                .as_i64(),
        },
        _ => None,
    }
}

/// The prober the sidecar runs for one original probe, or `None` when it is not one we move.
fn prober(probe: &Map<String, Value>, container: &Map<String, Value>) -> Option<Value> {
    let timeout = probe.get("timeoutSeconds").and_then(Value::as_i64).unwrap_or(1);
    if let Some(get) = probe.get("httpGet").and_then(Value::as_object) {
        let port = resolve_port(get.get("port")?, container)?;
        let mut action = Map::new();
        action.insert("path".into(), get.get("path").cloned().unwrap_or_else(|| json!("/")));
        action.insert("port".into(), json!(port));
        action.insert(
            "scheme".into(),
            get.get("scheme").cloned().unwrap_or_else(|| json!("HTTP")),
        );
        for field in ["host", "httpHeaders"] {
            if let Some(v) = get.get(field) {
                action.insert(field.into(), v.clone());
            }
        }
        return Some(json!({"httpGet": action, "timeoutSeconds": timeout}));
    }
    if let Some(tcp) = probe.get("tcpSocket").and_then(Value::as_object) {
        let port = resolve_port(tcp.get("port")?, container)?;
        let mut action = Map::new();
        action.insert("port".into(), json!(port));
        if let Some(h) = tcp.get("host") {
            action.insert("host".into(), h.clone());
        }
        return Some(json!({"tcpSocket": action, "timeoutSeconds": timeout}));
    }
    None
}

/// Rewrites one app container's probes in place and adds their originals to `probers` (path →
/// prober). Returns the original readiness probe in the `ProxyConfig`'s shape when it is one
/// the proxy can check for the control plane (plain HTTP or TCP on a numeric port).
pub fn rewrite_container(container: &mut Map<String, Value>, probers: &mut Map<String, Value>) -> Option<ProbeSpec> {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut readiness = None;
    for kind in ProbeKind::ALL {
        let Some(probe) = container.get(kind.field()).and_then(Value::as_object) else {
            continue;
        };
        let Some(original) = prober(probe, container) else {
            continue;
        };
        if kind == ProbeKind::Readiness {
            readiness = workload_probe(probe, &original);
        }
        let path = app_health_path(&name, kind);
        let mut rewritten = probe.clone();
        rewritten.remove("tcpSocket");
        rewritten.insert(
            "httpGet".into(),
            json!({"path": path, "port": HEALTH_PORT, "scheme": "HTTP"}),
        );
        probers.insert(path, original);
        container.insert(kind.field().into(), Value::Object(rewritten));
    }
    readiness
}

/// The original readiness probe as `spec.workload.readinessProbe`, which the proxy runs itself
/// to withdraw the workload's endpoints while the app is not ready.
fn workload_probe(probe: &Map<String, Value>, prober: &Value) -> Option<ProbeSpec> {
    let int = |f: &str| probe.get(f).and_then(Value::as_i64);
    let mut spec = ProbeSpec {
        period_seconds: int("periodSeconds"),
        timeout_seconds: int("timeoutSeconds"),
        failure_threshold: int("failureThreshold"),
        success_threshold: int("successThreshold"),
        ..Default::default()
    };
    if let Some(get) = prober.get("httpGet") {
        let plain = get.get("scheme").and_then(Value::as_str) == Some("HTTP");
        if !plain || get.get("host").is_some() || get.get("httpHeaders").is_some() {
            return None;
        }
        spec.http_get = Some(HttpGetProbe {
            path: get.get("path").and_then(Value::as_str).map(str::to_string),
            port: get.get("port")?.as_i64()?,
        });
    } else {
        let tcp = prober.get("tcpSocket")?;
        if tcp.get("host").is_some() {
            return None;
        }
        spec.tcp_socket = Some(TcpSocketProbe {
            port: tcp.get("port")?.as_i64()?,
        });
    }
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn http_and_tcp_probes_move_to_the_proxy() {
        let mut c = container(json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 4},
            "startupProbe": {"exec": {"command": ["true"]}},
        }));
        let mut probers = Map::new();
        let readiness = rewrite_container(&mut c, &mut probers);
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 2})
        );
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"}, "failureThreshold": 4})
        );
        assert_eq!(c["startupProbe"], json!({"exec": {"command": ["true"]}}), "exec stays");
        assert_eq!(
            Value::Object(probers),
            json!({
                "/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 2},
                "/app-health/web/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1},
            })
        );
        let r = readiness.unwrap();
        assert_eq!(r.http_get.unwrap().port, 8080);
        assert_eq!((r.period_seconds, r.timeout_seconds), (Some(5), Some(2)));
    }

    #[test]
    fn grpc_probes_and_unknown_port_names_stay() {
        let before = json!({
            "name": "api",
            "readinessProbe": {"grpc": {"port": 9090}},
            "livenessProbe": {"httpGet": {"path": "/", "port": "undeclared"}},
        });
        let mut c = container(before.clone());
        let mut probers = Map::new();
        assert!(rewrite_container(&mut c, &mut probers).is_none());
        assert_eq!(Value::Object(c), before);
        assert!(probers.is_empty());
    }
}
