//! `DestinationRule`: what happens after routing picked a host. Its traffic policy (load
//! balancer, connect timeout, pool) and its subsets are kept per registry host in a
//! [`RuleInfo`]; [`super::clusters`] applies them when it builds each cluster, a subset's
//! policy overriding the rule's field by field. A rule for a host no ServiceEntry defines is a
//! warning: it takes effect once a ServiceEntry defines the host.

use std::collections::BTreeMap;
use std::time::Duration;

use super::clusters::host_not_found;
use super::{Compiler, Site};
use crate::hash_table::{is_prime, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MIN_RING_SIZE, MAX_RING_SIZE};
use crate::locate::FieldPath;
use crate::resources::{ClientTlsMode, ClientTlsSettings, DestinationRule, H2UpgradePolicy, SimpleLb, TrafficPolicy};
use crate::snapshot::{HashOn, HealthCheck, OutlierDetection, TcpKeepalive, UpstreamTls};

/// Load balancing chosen by a DestinationRule, before tables are built per cluster.
#[derive(Debug, Clone)]
pub(super) enum LbChoice {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash { hash_on: HashOn, min_ring: usize },
    Maglev { hash_on: HashOn, table_size: usize },
}

/// The parts of a traffic policy ringmesh implements; `None` means "not set here", so a
/// subset's policy can override the rule's field by field.
#[derive(Debug, Clone, Default)]
pub(super) struct PolicyParts {
    pub(super) lb: Option<LbChoice>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) max_requests_per_connection: Option<Option<u32>>,
    pub(super) http2_max_requests: Option<Option<u32>>,
    pub(super) max_concurrent_streams: Option<Option<u32>>,
    pub(super) max_connections: Option<Option<u32>>,
    pub(super) max_pending_requests: Option<Option<u32>>,
    pub(super) max_retries: Option<Option<u32>>,
    pub(super) tcp_keepalive: Option<TcpKeepalive>,
    pub(super) h2_upgrade: Option<H2UpgradePolicy>,
    pub(super) use_client_protocol: Option<bool>,
    /// `loadBalancer.localityLbSetting`, checked.
    pub(super) locality: Option<super::locality::LocalitySetting>,
    /// `tls`; resolved per port by [`PolicyParts::tls_for`], not merged field by field.
    pub(super) tls: Option<UpstreamTls>,
    /// `portLevelSettings[].tls` by port.
    pub(super) port_tls: Vec<(u16, UpstreamTls)>,
    /// `outlierDetection`; resolved per port like `tls` by [`PolicyParts::outlier_for`].
    pub(super) outlier: Option<OutlierDetection>,
    /// `portLevelSettings[].outlierDetection` by port.
    pub(super) port_outlier: Vec<(u16, OutlierDetection)>,
    /// `healthCheck` (ringmesh extension); its HTTP `host` is empty when the service host is
    /// meant. Resolved per port by [`PolicyParts::health_check_for`].
    pub(super) health_check: Option<HealthCheck>,
    /// `portLevelSettings[].healthCheck` by port.
    pub(super) port_health_check: Vec<(u16, HealthCheck)>,
}

impl PolicyParts {
    pub(super) fn overridden_by(&self, other: &PolicyParts) -> PolicyParts {
        PolicyParts {
            lb: other.lb.clone().or_else(|| self.lb.clone()),
            connect_timeout: other.connect_timeout.or(self.connect_timeout),
            idle_timeout: other.idle_timeout.or(self.idle_timeout),
            max_requests_per_connection: other.max_requests_per_connection.or(self.max_requests_per_connection),
            http2_max_requests: other.http2_max_requests.or(self.http2_max_requests),
            max_concurrent_streams: other.max_concurrent_streams.or(self.max_concurrent_streams),
            max_connections: other.max_connections.or(self.max_connections),
            max_pending_requests: other.max_pending_requests.or(self.max_pending_requests),
            max_retries: other.max_retries.or(self.max_retries),
            tcp_keepalive: other.tcp_keepalive.or(self.tcp_keepalive),
            h2_upgrade: other.h2_upgrade.or(self.h2_upgrade),
            use_client_protocol: other.use_client_protocol.or(self.use_client_protocol),
            locality: other.locality.clone().or_else(|| self.locality.clone()),
            // Port-level settings outrank the level above them: see `tls_for`.
            tls: None,
            port_tls: Vec::new(),
            outlier: None,
            port_outlier: Vec::new(),
            health_check: None,
            port_health_check: Vec::new(),
        }
    }

    /// This policy's outlier detection for `port` (port level, else its own), as `tls_for`.
    pub(super) fn outlier_for(&self, port: u16) -> Option<&OutlierDetection> {
        self.port_outlier
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, o)| o)
            .or(self.outlier.as_ref())
    }

    /// This policy's active health check for `port` (port level, else its own), as `tls_for`.
    pub(super) fn health_check_for(&self, port: u16) -> Option<&HealthCheck> {
        self.port_health_check
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, h)| h)
            .or(self.health_check.as_ref())
    }

    /// This policy's TLS for `port`: its port-level setting, else its own; `None` when neither
    /// is set (the level above decides).
    pub(super) fn tls_for(&self, port: u16) -> Option<&UpstreamTls> {
        self.port_tls
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, t)| t)
            .or(self.tls.as_ref())
    }
}

/// A subset: the labels its endpoints carry and its own policy.
#[derive(Debug, Clone)]
pub(super) struct SubsetInfo {
    pub(super) name: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) policy: PolicyParts,
}

/// A DestinationRule as clusters apply it; `label` names it (and where it is) in messages.
#[derive(Debug, Clone)]
pub(super) struct RuleInfo {
    pub(super) label: String,
    pub(super) base: PolicyParts,
    pub(super) subsets: Vec<SubsetInfo>,
}

impl Compiler {
    pub(super) fn destination_rule(&mut self, dr: &DestinationRule) {
        let site: &Site<'_> = dr;
        let spec = FieldPath::root().key("spec");
        let base = match &dr.spec.traffic_policy {
            Some(tp) => self.traffic_policy(site, &spec.key("trafficPolicy"), tp),
            None => PolicyParts::default(),
        };
        let mut subsets: Vec<SubsetInfo> = Vec::new();
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            let sp = spec.key("subsets").index(i);
            if s.name.is_empty() {
                self.error(site, &sp.key("name"), "subset name is required");
                continue;
            }
            if subsets.iter().any(|o| o.name == s.name) {
                self.error(site, &sp.key("name"), format!("subset {:?} is defined twice", s.name));
                continue;
            }
            let policy = match &s.traffic_policy {
                Some(tp) => self.traffic_policy(site, &sp.key("trafficPolicy"), tp),
                None => PolicyParts::default(),
            };
            subsets.push(SubsetInfo {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy,
            });
        }
        if dr.spec.host.is_empty() {
            self.error(site, &spec.key("host"), "host is required");
            return;
        }
        let Some(service) = self.registry.resolve(&dr.spec.host, site.namespace()) else {
            let msg = format!(
                "{}; the rule takes effect once a ServiceEntry defines it",
                host_not_found(&dr.spec.host, site.namespace())
            );
            self.warn(site, &spec.key("host"), msg);
            return;
        };
        let host = service.host.clone();
        if let Some(other) = self.rules.get(&host) {
            let msg = format!(
                "host {host} already has a DestinationRule ({}); merge them into one",
                other.label
            );
            self.error(site, &spec.key("host"), msg);
            return;
        }
        self.rules.insert(
            host,
            RuleInfo {
                label: site.source(),
                base,
                subsets,
            },
        );
    }

    fn traffic_policy(&mut self, site: &Site<'_>, p: &FieldPath, tp: &TrafficPolicy) -> PolicyParts {
        let mut parts = PolicyParts::default();
        if let Some(lb) = &tp.load_balancer {
            let lp = p.key("loadBalancer");
            match (&lb.simple, &lb.consistent_hash) {
                (Some(_), Some(_)) => self.error(site, &lp, "set either simple or consistentHash, not both"),
                (Some(simple), None) => {
                    parts.lb = match simple {
                        SimpleLb::RoundRobin => Some(LbChoice::RoundRobin),
                        SimpleLb::Random => Some(LbChoice::Random),
                        SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified => {
                            Some(LbChoice::LeastRequest)
                        }
                        SimpleLb::Passthrough => {
                            self.error(
                                site,
                                &lp.key("simple"),
                                "PASSTHROUGH load balancing (original destination) is not \
                                 supported",
                            );
                            None
                        }
                    }
                }
                (None, Some(ch)) => parts.lb = self.consistent_hash(site, &lp.key("consistentHash"), ch),
                (None, None) => {}
            }
            if let Some(ls) = &lb.locality_lb_setting {
                let lsp = lp.key("localityLbSetting");
                parts.locality = self.locality_setting(site, &lsp, ls);
                if !ls.failover.is_empty() && tp.outlier_detection.is_none() {
                    self.warn(
                        site,
                        &lsp.key("failover"),
                        "locality failover applies only where outlierDetection is set (as in Istio); \
                         set it in this trafficPolicy or the one this applies under",
                    );
                }
            }
        }
        if let Some(pool) = &tp.connection_pool {
            let pp = p.key("connectionPool");
            if let Some(tcp) = &pool.tcp {
                let tp = pp.key("tcp");
                if let Some(t) = &tcp.connect_timeout {
                    parts.connect_timeout = self.duration(site, &tp.key("connectTimeout"), t);
                }
                if let Some(n) = tcp.max_connections {
                    parts.max_connections = self.pool_limit(site, &tp, "maxConnections", n);
                }
                if let Some(k) = &tcp.tcp_keepalive {
                    parts.tcp_keepalive = self.tcp_keepalive(site, &tp.key("tcpKeepalive"), k);
                }
            }
            if let Some(http) = &pool.http {
                let hp = pp.key("http");
                if let Some(t) = &http.idle_timeout {
                    parts.idle_timeout = self.duration(site, &hp.key("idleTimeout"), t);
                }
                for (field, value, slot) in [
                    (
                        "maxRequestsPerConnection",
                        http.max_requests_per_connection,
                        &mut parts.max_requests_per_connection,
                    ),
                    (
                        "http2MaxRequests",
                        http.http2_max_requests,
                        &mut parts.http2_max_requests,
                    ),
                    (
                        "maxConcurrentStreams",
                        http.max_concurrent_streams,
                        &mut parts.max_concurrent_streams,
                    ),
                ] {
                    if let Some(n) = value {
                        // 0 is protobuf's "not set": Istio reads it as unlimited.
                        match u32::try_from(n) {
                            Ok(0) => *slot = Some(None),
                            Ok(n) => *slot = Some(Some(n)),
                            Err(_) => self.error(
                                site,
                                &hp.key(field),
                                format!("{field} must be a positive number (0 for unlimited), got {n}"),
                            ),
                        }
                    }
                }
                parts.h2_upgrade = http.h2_upgrade_policy;
                parts.use_client_protocol = http.use_client_protocol;
                if let Some(n) = http.http1_max_pending_requests {
                    parts.max_pending_requests = self.pool_limit(site, &hp, "http1MaxPendingRequests", n);
                }
                if let Some(n) = http.max_retries {
                    parts.max_retries = self.pool_limit(site, &hp, "maxRetries", n);
                }
            }
        }
        if let Some(tls) = &tp.tls {
            parts.tls = self.client_tls(site, &p.key("tls"), tls);
        }
        if let Some(od) = &tp.outlier_detection {
            parts.outlier = self.outlier_detection(site, &p.key("outlierDetection"), od);
        }
        if let Some(hc) = &tp.health_check {
            parts.health_check = self.health_check(site, &p.key("healthCheck"), hc);
        }
        let mut seen_ports: Vec<u16> = Vec::new();
        for (i, pl) in tp.port_level_settings.iter().enumerate() {
            let pp = p.key("portLevelSettings").index(i);
            let Some(sel) = &pl.port else {
                self.error(site, &pp.key("port"), "port is required");
                continue;
            };
            let Some(port) = self.port(site, &pp.key("port").key("number"), sel.number) else {
                continue;
            };
            if seen_ports.contains(&port) {
                self.error(
                    site,
                    &pp.key("port").key("number"),
                    format!("port {port} has settings earlier in portLevelSettings"),
                );
                continue;
            }
            seen_ports.push(port);
            if let Some(tls) = pl.tls.as_ref().and_then(|t| self.client_tls(site, &pp.key("tls"), t)) {
                parts.port_tls.push((port, tls));
            }
            if let Some(od) = pl
                .outlier_detection
                .as_ref()
                .and_then(|o| self.outlier_detection(site, &pp.key("outlierDetection"), o))
            {
                parts.port_outlier.push((port, od));
            }
            if let Some(hc) = pl
                .health_check
                .as_ref()
                .and_then(|h| self.health_check(site, &pp.key("healthCheck"), h))
            {
                parts.port_health_check.push((port, hc));
            }
        }
        parts
    }

    /// A circuit-breaker limit (`maxConnections`, `http1MaxPendingRequests`, `maxRetries`):
    /// 0 is protobuf's "not set" and Istio's default is 2^32-1, both read as unlimited; a
    /// negative number or one above 2^32-1 is an error naming the field. `Some(None)`:
    /// explicitly unlimited (overrides the level above).
    fn pool_limit(&mut self, site: &Site<'_>, p: &FieldPath, field: &str, n: i64) -> Option<Option<u32>> {
        match u32::try_from(n) {
            Ok(0 | u32::MAX) => Some(None),
            Ok(n) => Some(Some(n)),
            Err(_) => {
                self.error(
                    site,
                    &p.key(field),
                    format!("{field} must be a number from 1 to 4294967295 (0 for unlimited), got {n}"),
                );
                None
            }
        }
    }

    /// Istio `TcpKeepalive`: probes a positive count, time and interval whole seconds of at
    /// least 1 s (the kernel's unit; a fraction is an error rather than silently rounded).
    fn tcp_keepalive(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        k: &crate::resources::TcpKeepalive,
    ) -> Option<TcpKeepalive> {
        let mut ok = true;
        let probes = match k.probes {
            None | Some(0) => None,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n <= 127 => Some(n),
                _ => {
                    self.error(
                        site,
                        &p.key("probes"),
                        format!("probes must be a number from 1 to 127 (0 for the kernel's default), got {n}"),
                    );
                    ok = false;
                    None
                }
            },
        };
        let mut seconds = |field: &str, text: &Option<String>| -> Option<Duration> {
            let d = self.duration(site, &p.key(field), text.as_deref()?);
            match d {
                None => {
                    ok = false;
                    None
                }
                Some(d) if d.is_zero() => None,
                Some(d) if d.subsec_nanos() != 0 || d.as_secs() > 32_767 => {
                    self.error(
                        site,
                        &p.key(field),
                        format!("{field} must be whole seconds from 1s to 32767s, got {d:?}"),
                    );
                    ok = false;
                    None
                }
                Some(d) => Some(d),
            }
        };
        let time = seconds("time", &k.time);
        let interval = seconds("interval", &k.interval);
        ok.then_some(TcpKeepalive { probes, time, interval })
    }

    /// Istio `ClientTLSSettings`: `DISABLE` and `ISTIO_MUTUAL` (the mesh's certificates) are
    /// implemented; origination with the user's own certificates is not, and says so rather
    /// than sending plain text where the user asked for TLS.
    fn client_tls(&mut self, site: &Site<'_>, p: &FieldPath, tls: &ClientTlsSettings) -> Option<UpstreamTls> {
        let own_certificates = [
            ("clientCertificate", tls.client_certificate.is_some()),
            ("privateKey", tls.private_key.is_some()),
            ("caCertificates", tls.ca_certificates.is_some()),
            ("credentialName", tls.credential_name.is_some()),
            ("insecureSkipVerify", tls.insecure_skip_verify.is_some()),
        ];
        match tls.mode {
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                let mode = if tls.mode == ClientTlsMode::Simple {
                    "SIMPLE"
                } else {
                    "MUTUAL"
                };
                self.error(
                    site,
                    &p.key("mode"),
                    format!(
                        "tls mode {mode} (TLS origination with your own certificates) is not \
                         supported yet; ISTIO_MUTUAL and DISABLE are"
                    ),
                );
                None
            }
            ClientTlsMode::IstioMutual => {
                let mut ok = true;
                for (field, set) in own_certificates {
                    if set {
                        self.error(
                            site,
                            &p.key(field),
                            format!(
                                "{field} does not apply to ISTIO_MUTUAL, which uses the mesh's \
                                 certificates (only subjectAltNames and sni may be set)"
                            ),
                        );
                        ok = false;
                    }
                }
                if tls.sni.is_some() {
                    self.warn(
                        site,
                        &p.key("sni"),
                        "sni is accepted but not sent yet: mesh connections use their default",
                    );
                }
                ok.then(|| UpstreamTls::IstioMutual {
                    subject_alt_names: tls.subject_alt_names.clone(),
                })
            }
            ClientTlsMode::Disable => {
                let sans = ("subjectAltNames", !tls.subject_alt_names.is_empty());
                let sni = ("sni", tls.sni.is_some());
                for (field, set) in own_certificates.into_iter().chain([sans, sni]) {
                    if set {
                        self.warn(site, &p.key(field), format!("{field} is ignored with mode DISABLE"));
                    }
                }
                Some(UpstreamTls::Disable)
            }
        }
    }

    fn consistent_hash(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        ch: &crate::resources::ConsistentHashLb,
    ) -> Option<LbChoice> {
        let mut keys = Vec::new();
        if let Some(h) = &ch.http_header_name {
            if h.is_empty() {
                self.error(site, &p.key("httpHeaderName"), "header name must not be empty");
                return None;
            }
            keys.push(HashOn::Header(h.to_ascii_lowercase()));
        }
        if let Some(c) = &ch.http_cookie {
            let cp = p.key("httpCookie");
            if c.name.is_empty() {
                self.error(site, &cp.key("name"), "cookie name is required");
                return None;
            }
            if let Some(ttl) = &c.ttl {
                if let Some(d) = self.duration(site, &cp.key("ttl"), ttl) {
                    if !d.is_zero() {
                        self.warn(
                            site,
                            &cp.key("ttl"),
                            "generating the cookie (ttl) is not supported yet; requests \
                             without the cookie are balanced without affinity",
                        );
                    }
                }
            }
            keys.push(HashOn::Cookie { name: c.name.clone() });
        }
        if ch.use_source_ip == Some(true) {
            keys.push(HashOn::SourceIp);
        }
        let hash_on = match keys.len() {
            1 => keys.pop()?,
            0 => {
                self.error(
                    site,
                    p,
                    "consistentHash needs one of httpHeaderName, httpCookie or useSourceIp \
                     (httpQueryParameterName is not supported yet)",
                );
                return None;
            }
            _ => {
                self.error(
                    site,
                    p,
                    "consistentHash takes only one of httpHeaderName, httpCookie, useSourceIp",
                );
                return None;
            }
        };
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.error(site, p, "set either ringHash or maglev, not both");
            return None;
        }
        if let Some(m) = &ch.maglev {
            let size = match m.table_size {
                None | Some(0) => DEFAULT_MAGLEV_TABLE_SIZE,
                Some(n) => {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if n > 5_000_011 || !is_prime(n) {
                        self.error(
                            site,
                            &p.key("maglev").key("tableSize"),
                            format!("maglev tableSize must be a prime number up to 5000011, got {n}"),
                        );
                        return None;
                    }
                    n
                }
            };
            return Some(LbChoice::Maglev {
                hash_on,
                table_size: size,
            });
        }
        let (field, size) = match &ch.ring_hash {
            Some(r) => (p.key("ringHash").key("minimumRingSize"), r.minimum_ring_size),
            None => (p.key("minimumRingSize"), ch.minimum_ring_size),
        };
        let min_ring = match size {
            None | Some(0) => DEFAULT_MIN_RING_SIZE,
            Some(n) if n <= MAX_RING_SIZE as u64 => n as usize,
            Some(n) => {
                self.error(
                    site,
                    &field,
                    format!("minimumRingSize must be at most {MAX_RING_SIZE}, got {n}"),
                );
                return None;
            }
        };
        Some(LbChoice::RingHash { hash_on, min_ring })
    }
}
