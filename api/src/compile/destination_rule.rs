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
use crate::snapshot::{HashOn, UpstreamTls};

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
    pub(super) h2_upgrade: Option<H2UpgradePolicy>,
    pub(super) use_client_protocol: Option<bool>,
    /// `tls`; resolved per port by [`PolicyParts::tls_for`], not merged field by field.
    pub(super) tls: Option<UpstreamTls>,
    /// `portLevelSettings[].tls` by port.
    pub(super) port_tls: Vec<(u16, UpstreamTls)>,
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
            h2_upgrade: other.h2_upgrade.or(self.h2_upgrade),
            use_client_protocol: other.use_client_protocol.or(self.use_client_protocol),
            // Port-level settings outrank the level above them: see `tls_for`.
            tls: None,
            port_tls: Vec::new(),
        }
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
        }
        if let Some(pool) = &tp.connection_pool {
            let pp = p.key("connectionPool");
            if let Some(tcp) = &pool.tcp {
                let tp = pp.key("tcp");
                if let Some(t) = &tcp.connect_timeout {
                    parts.connect_timeout = self.duration(site, &tp.key("connectTimeout"), t);
                }
                if tcp.max_connections.is_some() {
                    self.warn(
                        site,
                        &tp.key("maxConnections"),
                        "maxConnections is accepted but not enforced yet",
                    );
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
                for (field, set) in [
                    ("http1MaxPendingRequests", http.http1_max_pending_requests.is_some()),
                    ("maxRetries", http.max_retries.is_some()),
                ] {
                    if set {
                        self.warn(
                            site,
                            &hp.key(field),
                            format!("{field} is accepted but not enforced yet"),
                        );
                    }
                }
            }
        }
        if let Some(tls) = &tp.tls {
            parts.tls = self.client_tls(site, &p.key("tls"), tls);
        }
        for (i, pl) in tp.port_level_settings.iter().enumerate() {
            let pp = p.key("portLevelSettings").index(i);
            let Some(sel) = &pl.port else {
                self.error(site, &pp.key("port"), "port is required");
                continue;
            };
            let Some(port) = self.port(site, &pp.key("port").key("number"), sel.number) else {
                continue;
            };
            if parts.port_tls.iter().any(|(p, _)| *p == port) {
                self.error(
                    site,
                    &pp.key("port").key("number"),
                    format!("port {port} has settings earlier in portLevelSettings"),
                );
                continue;
            }
            if let Some(tls) = pl.tls.as_ref().and_then(|t| self.client_tls(site, &pp.key("tls"), t)) {
                parts.port_tls.push((port, tls));
            }
        }
        parts
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
