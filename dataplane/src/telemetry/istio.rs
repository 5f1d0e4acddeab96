//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`), with Istio's names, labels
//! and buckets, so its dashboards and alerts work unchanged.
//!
//! Each worker keeps its own series in an [`IstioShard`]: a request adds to one series found
//! by a small key of numbers (the label sets of both workloads are interned once), so the
//! request path hashes a few integers and never formats a label. A series' label text is
//! rendered once, when the series is made, and shared with the scrape as an `Arc<str>`; a
//! scrape copies each series' numbers. The number of series per worker is bounded
//! (`spec.telemetry.metrics.maxSeries`, default 1000): a request that would make one more is
//! counted in `ringmesh_istio_series_overflow_total` instead, so a flood of new label values
//! (status codes, peers) cannot grow memory without bound.
//!
//! Where Istio learns the other workload's name from its peer-metadata exchange, ringmesh
//! reports what it knows without one: on the way out the destination's service (the cluster's
//! host), namespace, and the endpoint's `app` and `version` labels; on the way in the caller's
//! SPIFFE id and the namespace in it. The rest is `unknown`, as Istio reports it for a peer
//! without metadata.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use ringmesh_api::snapshot::{Cluster, Snapshot, WorkloadSettings};
use rustc_hash::FxBuildHasher;

use super::request::{Facts, Protocol};

/// Istio's bucket bounds for `istio_request_duration_milliseconds` (Envoy's defaults).
pub(crate) const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Istio's bucket bounds for `istio_request_bytes` and `istio_response_bytes`.
pub(crate) const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// What one side of a request says of its workload: the label values Istio gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Workload {
    workload: String,
    namespace: String,
    principal: String,
    app: String,
    version: String,
    canonical_service: String,
    canonical_revision: String,
}

impl Workload {
    fn unknown() -> Self {
        let u = || "unknown".to_string();
        Workload {
            workload: u(),
            namespace: u(),
            principal: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: "latest".into(),
        }
    }

    /// This proxy's own workload.
    fn own(w: &WorkloadSettings, trust_domain: &str) -> Self {
        let label = |k: &str| w.labels.get(k).cloned();
        let app = label("app").or_else(|| label("app.kubernetes.io/name"));
        let version = label("version").or_else(|| label("app.kubernetes.io/version"));
        let name = if w.name.is_empty() {
            "unknown".to_string()
        } else {
            w.name.clone()
        };
        Workload {
            canonical_service: label("service.istio.io/canonical-name")
                .or_else(|| app.clone())
                .unwrap_or_else(|| name.clone()),
            canonical_revision: label("service.istio.io/canonical-revision")
                .or_else(|| version.clone())
                .unwrap_or_else(|| "latest".into()),
            workload: name,
            namespace: w.namespace.clone(),
            principal: format!("spiffe://{trust_domain}/ns/{}/sa/{}", w.namespace, w.service_account),
            app: app.unwrap_or_else(|| "unknown".into()),
            version: version.unwrap_or_else(|| "unknown".into()),
        }
    }

    /// A caller known by its SPIFFE id (`spiffe://` stripped by the TLS layer) or not at all.
    fn caller(principal: Option<&str>) -> Self {
        let mut w = Workload::unknown();
        if let Some(p) = principal {
            if let Some(ns) = p.split("/ns/").nth(1).and_then(|r| r.split('/').next()) {
                w.namespace = ns.to_string();
            }
            w.principal = format!("spiffe://{p}");
        }
        w
    }

    /// The workload behind one endpoint of a cluster: its `app` and `version` labels, the
    /// service's namespace.
    fn endpoint(cluster: &Cluster, endpoint: Option<usize>) -> Self {
        let mut w = Workload::unknown();
        w.namespace = service_namespace(&cluster.service).to_string();
        if let Some(e) = endpoint.and_then(|i| cluster.endpoints.get(i)) {
            let label = |k: &str| e.labels.get(k).cloned();
            if let Some(app) = label("app").or_else(|| label("app.kubernetes.io/name")) {
                w.app = app.clone();
                w.canonical_service = label("service.istio.io/canonical-name").unwrap_or(app);
            }
            if let Some(v) = label("version").or_else(|| label("app.kubernetes.io/version")) {
                w.version = v.clone();
                w.canonical_revision = label("service.istio.io/canonical-revision").unwrap_or(v);
            }
        }
        w
    }
}

/// The service a request went to, as Istio's `destination_service*` labels give it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Service {
    host: String,
    name: String,
    namespace: String,
}

impl Service {
    fn of(host: &str) -> Self {
        if host.is_empty() {
            return Service {
                host: "unknown".into(),
                name: "unknown".into(),
                namespace: "unknown".into(),
            };
        }
        let name = match host.split_once('.') {
            Some((n, _)) if host.contains(".svc.") => n,
            _ => host,
        };
        Service {
            host: host.to_string(),
            name: name.to_string(),
            namespace: service_namespace(host).to_string(),
        }
    }
}

/// `<name>.<namespace>.svc.<domain>` → namespace; any other host: `unknown`.
fn service_namespace(host: &str) -> &str {
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(ns), Some("svc")) => ns,
        _ => "unknown",
    }
}

/// Both sides of a request and its service: one interned label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Sides {
    inbound: bool,
    source: Workload,
    destination: Workload,
    service: Service,
}

/// What a request adds to: the interned sides and the per-request labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    sides: u32,
    protocol: Protocol,
    code: u16,
    /// `u16::MAX`: none.
    grpc: u16,
    flag: Option<&'static str>,
    mtls: bool,
}

/// One series of the HTTP metrics.
#[derive(Debug, Clone)]
pub(crate) struct HttpSeries {
    /// The label text, rendered once.
    pub(crate) labels: Arc<str>,
    pub(crate) requests: u64,
    pub(crate) duration: Buckets<{ DURATION_BUCKETS_MS.len() }>,
    pub(crate) request_bytes: Buckets<{ BYTES_BUCKETS.len() }>,
    pub(crate) response_bytes: Buckets<{ BYTES_BUCKETS.len() }>,
}

/// A Prometheus histogram's counts: per bucket (not cumulative), the sum and the count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buckets<const N: usize> {
    pub(crate) counts: [u64; N],
    pub(crate) sum: f64,
    pub(crate) count: u64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Buckets {
            counts: [0; N],
            sum: 0.0,
            count: 0,
        }
    }
}

impl<const N: usize> Buckets<N> {
    #[inline]
    fn record(&mut self, bounds: &[f64; N], v: f64) {
        // A dozen or two bounds: a linear scan beats a binary search's branches here.
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn merge(&mut self, o: &Self) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// One series of the TCP metrics.
#[derive(Debug, Clone)]
pub(crate) struct TcpSeries {
    pub(crate) labels: Arc<str>,
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

/// Label sets resolved for one snapshot: this workload, and each cluster endpoint's side.
#[derive(Default)]
struct Resolved {
    version: u64,
    own: Option<Workload>,
    /// Per cluster, per endpoint (+1 for "no endpoint"): the interned sides of an outbound
    /// request to it.
    outbound: Vec<Vec<Option<u32>>>,
    /// The service an inbound request reached (the workload's first service).
    inbound_service: Option<Service>,
}

#[derive(Default)]
struct Inner {
    sides: Vec<Sides>,
    side_ids: HashMap<Sides, u32, FxBuildHasher>,
    /// Inbound sides by caller principal (interned too, bounded with the series).
    callers: HashMap<Option<Box<str>>, u32, FxBuildHasher>,
    resolved: Resolved,
    http: HashMap<Key, HttpSeries, FxBuildHasher>,
    tcp: HashMap<Key, TcpSeries, FxBuildHasher>,
}

/// One worker's Istio series. Only that worker's thread touches it.
#[derive(Default)]
pub(crate) struct IstioShard {
    inner: RefCell<Inner>,
    /// Requests and connections not counted because the series bound was reached.
    pub(crate) overflow: Cell<u64>,
}

impl std::fmt::Debug for IstioShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioShard")
            .field("overflow", &self.overflow.get())
            .finish()
    }
}

impl Inner {
    fn intern(&mut self, s: Sides) -> u32 {
        if let Some(&id) = self.side_ids.get(&s) {
            return id;
        }
        let id = self.sides.len() as u32;
        self.sides.push(s.clone());
        self.side_ids.insert(s, id);
        id
    }

    fn resolve(&mut self, snapshot: &Snapshot) {
        if self.resolved.own.is_some() && self.resolved.version == snapshot.version {
            return;
        }
        let own = Workload::own(&snapshot.proxy.workload, &snapshot.proxy.identity.trust_domain);
        self.resolved = Resolved {
            version: snapshot.version,
            outbound: snapshot
                .clusters
                .iter()
                .map(|c| vec![None; c.endpoints.len() + 1])
                .collect(),
            inbound_service: snapshot.proxy.workload.services.first().map(|h| Service::of(h)),
            own: Some(own),
        };
        self.callers.clear();
    }

    fn outbound_sides(&mut self, snapshot: &Snapshot, cluster: usize, endpoint: Option<usize>) -> u32 {
        let slot = endpoint.map_or(0, |e| e + 1);
        if let Some(Some(id)) = self.resolved.outbound.get(cluster).and_then(|v| v.get(slot)) {
            return *id;
        }
        let c = &snapshot.clusters[cluster];
        let sides = Sides {
            inbound: false,
            source: self.resolved.own.clone().unwrap_or_else(Workload::unknown),
            destination: Workload::endpoint(c, endpoint),
            service: Service::of(&c.service),
        };
        let id = self.intern(sides);
        if let Some(s) = self.resolved.outbound.get_mut(cluster).and_then(|v| v.get_mut(slot)) {
            *s = Some(id);
        }
        id
    }

    fn inbound_sides(&mut self, principal: Option<&str>) -> u32 {
        if let Some(&id) = self.callers.get(&principal.map(Box::from)) {
            return id;
        }
        let sides = Sides {
            inbound: true,
            source: Workload::caller(principal),
            destination: self.resolved.own.clone().unwrap_or_else(Workload::unknown),
            service: self.resolved.inbound_service.clone().unwrap_or_else(|| Service::of("")),
        };
        let id = self.intern(sides);
        self.callers.insert(principal.map(Box::from), id);
        id
    }
}

impl IstioShard {
    /// Counts a finished HTTP request.
    pub(crate) fn record_http(
        &self,
        snapshot: &Snapshot,
        facts: &Facts,
        endpoint: Option<usize>,
        inbound: Option<&crate::tls::InboundConn>,
    ) {
        let telemetry = &snapshot.telemetry;
        if !telemetry.istio_metrics.get(inbound.is_some()) {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        inner.resolve(snapshot);
        let principal = inbound.and_then(|c| c.identity.as_ref().map(|id| id.principal()));
        let sides = match (inbound, facts.cluster.get()) {
            (Some(_), _) => inner.inbound_sides(principal),
            (None, Some(c)) => inner.outbound_sides(snapshot, c.0 as usize, endpoint),
            (None, None) => inner.outbound_sides_unrouted(),
        };
        let key = Key {
            sides,
            protocol: facts.protocol.get(),
            code: facts.status.get(),
            grpc: facts.grpc_status.get().unwrap_or(u16::MAX),
            flag: facts.flag(),
            mtls: principal.is_some(),
        };
        let max = telemetry.max_series;
        let inner = &mut *inner;
        if !inner.http.contains_key(&key) {
            if inner.http.len() + inner.tcp.len() >= max {
                self.overflow.set(self.overflow.get() + 1);
                return;
            }
            let labels = render_labels(&inner.sides[key.sides as usize], &key);
            inner.http.insert(
                key,
                HttpSeries {
                    labels,
                    requests: 0,
                    duration: Buckets::default(),
                    request_bytes: Buckets::default(),
                    response_bytes: Buckets::default(),
                },
            );
        }
        let Some(series) = inner.http.get_mut(&key) else { return };
        series.requests += 1;
        let ms = facts.started.elapsed().as_secs_f64() * 1e3;
        series.duration.record(&DURATION_BUCKETS_MS, ms);
        series
            .request_bytes
            .record(&BYTES_BUCKETS, facts.bytes_received.get() as f64);
        series
            .response_bytes
            .record(&BYTES_BUCKETS, facts.bytes_sent.get() as f64);
    }

    /// Counts a TCP connection opened (`opened`) or its bytes and close.
    pub(crate) fn record_tcp(&self, snapshot: &Snapshot, conn: &TcpConn<'_>, event: TcpEvent) {
        if !snapshot.telemetry.istio_metrics.get(conn.inbound.is_some()) {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        inner.resolve(snapshot);
        let principal = conn.inbound.and_then(|c| c.identity.as_ref().map(|id| id.principal()));
        let sides = match (conn.inbound, conn.cluster) {
            (Some(_), _) => inner.inbound_sides(principal),
            (None, Some(c)) => inner.outbound_sides(snapshot, c, conn.endpoint),
            (None, None) => inner.outbound_sides_unrouted(),
        };
        let key = Key {
            sides,
            protocol: Protocol::Http1,
            code: 0,
            grpc: u16::MAX,
            flag: conn.flag,
            mtls: principal.is_some(),
        };
        let max = snapshot.telemetry.max_series;
        let inner = &mut *inner;
        if !inner.tcp.contains_key(&key) {
            if inner.http.len() + inner.tcp.len() >= max {
                self.overflow.set(self.overflow.get() + 1);
                return;
            }
            let labels = render_tcp_labels(&inner.sides[key.sides as usize], &key);
            inner.tcp.insert(
                key,
                TcpSeries {
                    labels,
                    opened: 0,
                    closed: 0,
                    sent: 0,
                    received: 0,
                },
            );
        }
        let Some(series) = inner.tcp.get_mut(&key) else { return };
        match event {
            TcpEvent::Opened => series.opened += 1,
            TcpEvent::Closed { sent, received } => {
                series.closed += 1;
                series.sent += sent;
                series.received += received;
            }
        }
    }

    /// A copy of the series for the scrape.
    pub(crate) fn copy(&self) -> IstioTotals {
        let inner = self.inner.borrow();
        IstioTotals {
            http: inner.http.values().cloned().collect(),
            tcp: inner.tcp.values().cloned().collect(),
            overflow: self.overflow.get(),
        }
    }
}

impl Inner {
    /// A request that was answered before any cluster was chosen (no route, refused).
    fn outbound_sides_unrouted(&mut self) -> u32 {
        let sides = Sides {
            inbound: false,
            source: self.resolved.own.clone().unwrap_or_else(Workload::unknown),
            destination: Workload::unknown(),
            service: Service::of(""),
        };
        self.intern(sides)
    }
}

/// A TCP connection as the TCP metrics see it.
pub(crate) struct TcpConn<'a> {
    /// The cluster's index in the snapshot, if one was chosen.
    pub(crate) cluster: Option<usize>,
    pub(crate) endpoint: Option<usize>,
    pub(crate) inbound: Option<&'a crate::tls::InboundConn>,
    pub(crate) flag: Option<&'static str>,
}

/// What happened to a TCP connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TcpEvent {
    /// It was proxied.
    Opened,
    /// It closed after moving these bytes (client → upstream, upstream → client).
    Closed { sent: u64, received: u64 },
}

fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The labels both kinds of series share, in Istio's order.
fn render_common(s: &Sides, out: &mut String) {
    push_label(out, "reporter", if s.inbound { "destination" } else { "source" });
    let (src, dst) = (&s.source, &s.destination);
    push_label(out, "source_workload", &src.workload);
    push_label(out, "source_workload_namespace", &src.namespace);
    push_label(out, "source_principal", &src.principal);
    push_label(out, "source_app", &src.app);
    push_label(out, "source_version", &src.version);
    push_label(out, "destination_workload", &dst.workload);
    push_label(out, "destination_workload_namespace", &dst.namespace);
    push_label(out, "destination_principal", &dst.principal);
    push_label(out, "destination_app", &dst.app);
    push_label(out, "destination_version", &dst.version);
    push_label(out, "destination_service", &s.service.host);
    push_label(out, "destination_service_name", &s.service.name);
    push_label(out, "destination_service_namespace", &s.service.namespace);
    push_label(out, "source_canonical_service", &src.canonical_service);
    push_label(out, "destination_canonical_service", &dst.canonical_service);
    push_label(out, "source_canonical_revision", &src.canonical_revision);
    push_label(out, "destination_canonical_revision", &dst.canonical_revision);
    push_label(out, "source_cluster", "unknown");
    push_label(out, "destination_cluster", "unknown");
}

/// Istio's `connection_security_policy`: what the server side saw; the client side says
/// `unknown`.
fn security_policy(s: &Sides, key: &Key) -> &'static str {
    match (s.inbound, key.mtls) {
        (false, _) => "unknown",
        (true, true) => "mutual_tls",
        (true, false) => "none",
    }
}

fn render_labels(s: &Sides, key: &Key) -> Arc<str> {
    let mut out = String::with_capacity(768);
    render_common(s, &mut out);
    push_label(&mut out, "request_protocol", key.protocol.istio_name());
    let _ = write!(out, ",response_code=\"{}\"", key.code);
    push_label(&mut out, "response_flags", key.flag.unwrap_or("-"));
    if key.grpc == u16::MAX {
        push_label(&mut out, "grpc_response_status", "");
    } else {
        let _ = write!(out, ",grpc_response_status=\"{}\"", key.grpc);
    }
    push_label(&mut out, "connection_security_policy", security_policy(s, key));
    out.into()
}

fn render_tcp_labels(s: &Sides, key: &Key) -> Arc<str> {
    let mut out = String::with_capacity(640);
    render_common(s, &mut out);
    push_label(&mut out, "request_protocol", "tcp");
    push_label(&mut out, "response_flags", key.flag.unwrap_or("-"));
    push_label(&mut out, "connection_security_policy", security_policy(s, key));
    out.into()
}

/// Every worker's series, merged by label text at scrape time.
#[derive(Debug, Clone, Default)]
pub struct IstioTotals {
    pub(crate) http: Vec<HttpSeries>,
    pub(crate) tcp: Vec<TcpSeries>,
    pub(crate) overflow: u64,
}

impl IstioTotals {
    /// Adds another worker's series.
    pub fn merge(&mut self, o: &IstioTotals) {
        self.overflow += o.overflow;
        for s in &o.http {
            match self.http.iter_mut().find(|m| m.labels == s.labels) {
                Some(m) => {
                    m.requests += s.requests;
                    m.duration.merge(&s.duration);
                    m.request_bytes.merge(&s.request_bytes);
                    m.response_bytes.merge(&s.response_bytes);
                }
                None => self.http.push(s.clone()),
            }
        }
        for s in &o.tcp {
            match self.tcp.iter_mut().find(|m| m.labels == s.labels) {
                Some(m) => {
                    m.opened += s.opened;
                    m.closed += s.closed;
                    m.sent += s.sent;
                    m.received += s.received;
                }
                None => self.tcp.push(s.clone()),
            }
        }
    }

    /// Writes Istio's metric families in Prometheus' text format.
    pub fn write_prometheus(&self, out: &mut String) {
        let mut http: Vec<&HttpSeries> = self.http.iter().collect();
        http.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut tcp: Vec<&TcpSeries> = self.tcp.iter().collect();
        tcp.sort_by(|a, b| a.labels.cmp(&b.labels));
        family(out, "istio_requests_total", "counter", "Requests handled by the proxy.");
        for s in &http {
            let _ = writeln!(out, "istio_requests_total{{{}}} {}", s.labels, s.requests);
        }
        histogram(
            out,
            "istio_request_duration_milliseconds",
            "Duration of requests.",
            &DURATION_BUCKETS_MS,
            http.iter().map(|s| (&s.labels, &s.duration)),
        );
        histogram(
            out,
            "istio_request_bytes",
            "HTTP request body sizes.",
            &BYTES_BUCKETS,
            http.iter().map(|s| (&s.labels, &s.request_bytes)),
        );
        histogram(
            out,
            "istio_response_bytes",
            "HTTP response body sizes.",
            &BYTES_BUCKETS,
            http.iter().map(|s| (&s.labels, &s.response_bytes)),
        );
        for (name, help, get) in [
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent during response in TCP connections.",
                (|s: &TcpSeries| s.received) as fn(&TcpSeries) -> u64,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received during request in TCP connections.",
                |s: &TcpSeries| s.sent,
            ),
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                |s: &TcpSeries| s.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |s: &TcpSeries| s.closed,
            ),
        ] {
            family(out, name, "counter", help);
            for s in &tcp {
                let _ = writeln!(out, "{name}{{{}}} {}", s.labels, get(s));
            }
        }
        family(
            out,
            "ringmesh_istio_series_overflow_total",
            "counter",
            "Requests and connections not counted in Istio's metrics because a worker held spec.telemetry.metrics.maxSeries label sets.",
        );
        let _ = writeln!(out, "ringmesh_istio_series_overflow_total {}", self.overflow);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one histogram family: cumulative buckets, `+Inf`, sum and count per series.
fn histogram<'a, const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64; N],
    series: impl Iterator<Item = (&'a Arc<str>, &'a Buckets<N>)>,
) {
    family(out, name, "histogram", help);
    for (labels, b) in series {
        let mut cumulative = 0;
        for (le, c) in bounds.iter().zip(b.counts.iter()) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", b.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", b.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", b.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_and_namespaces() {
        let s = Service::of("reviews.shop.svc.cluster.local");
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("reviews", "shop"));
        let s = Service::of("api.example.com");
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("api.example.com", "unknown"));
        assert_eq!(Service::of("").host, "unknown");
    }

    #[test]
    fn a_caller_is_known_by_its_spiffe_id() {
        let w = Workload::caller(Some("cluster.local/ns/shop/sa/web"));
        assert_eq!(w.principal, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(w.namespace, "shop");
        assert_eq!(w.workload, "unknown");
        assert_eq!(Workload::caller(None).principal, "unknown");
    }

    #[test]
    fn buckets_count_each_value_once_and_render_cumulatively() {
        let mut b = Buckets::<{ BYTES_BUCKETS.len() }>::default();
        b.record(&BYTES_BUCKETS, 0.0);
        b.record(&BYTES_BUCKETS, 50.0);
        b.record(&BYTES_BUCKETS, 5e9); // above every bound: only in +Inf
        let labels: Arc<str> = "a=\"b\"".into();
        let mut out = String::new();
        histogram(&mut out, "x", "h", &BYTES_BUCKETS, std::iter::once((&labels, &b)));
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"100\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1000000000\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }
}
