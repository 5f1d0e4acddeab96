//! Clusters: one per (service host, port), plus one per (host, port, subset) that a route
//! names, each with its endpoints (the registry's, narrowed to the subset's labels) and the
//! DestinationRule's policy with its load-balancing tables built once here. Route and listener
//! destinations are resolved to cluster ids here too.
//!
//! A destination whose host no ServiceEntry defines gets a placeholder cluster without
//! endpoints whose [`Cluster::host_not_found`] holds the answer the proxy gives: 503 naming the
//! host. That keeps a VirtualService applied before its ServiceEntry, or one for a service that
//! is gone, a working config whose other routes still serve.

use std::net::SocketAddr;
use std::time::Duration;

use super::destination_rule::LbChoice;
use super::{Compiler, Site};
use crate::hash_table::{MaglevTable, RingHashTable};
use crate::locate::FieldPath;
use crate::registry::{fqdn, Service, ServicePort};
use crate::resources::{Destination, H2UpgradePolicy};
use crate::snapshot::{
    Cluster, ClusterId, Endpoint, HealthCheck, HealthProbe, LbPolicy, PoolSettings, UpstreamProtocol, UpstreamTls,
    WeightedClusters, DEFAULT_MAX_IDLE_PER_ENDPOINT, DEFAULT_POOL_IDLE_TIMEOUT, MESHED_LABEL, MESHED_LABEL_VALUE,
};

/// Istio's default connect timeout.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a destination's port is written, for the field path of its diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PortField {
    /// A route destination: `port.number`.
    Route,
    /// A TCP listener's destination: `port`.
    Listener,
}

/// `referenced host not found: "ratings" matches no ServiceEntry (also tried
/// ratings.shop.svc.cluster.local)`: the words of `istioctl analyze`'s IST0101, with the names
/// that were looked up. Callers add what follows from it.
pub(super) fn host_not_found(host: &str, namespace: &str) -> String {
    let also = if host.contains('.') {
        String::new()
    } else {
        format!(" (also tried {})", fqdn(host, namespace))
    };
    format!("referenced host not found: {host:?} matches no ServiceEntry{also}")
}

impl Compiler {
    /// Phase 5: every service port gets its cluster, in host order, so ids are stable across
    /// compiles of the same config.
    pub(super) fn service_clusters(&mut self) {
        let ports: Vec<(String, u16)> = self
            .registry
            .services()
            .flat_map(|s| s.ports.iter().map(move |p| (s.host.clone(), p.number)))
            .collect();
        for (host, port) in ports {
            self.cluster_for(&host, port, None);
        }
    }

    // ---------------------------------------------------------------- clusters

    /// The cluster for (host, port, subset), building it on first use. `host` must be a
    /// registry host and `port` one of its ports; a subset must exist in the host's rule.
    pub(super) fn cluster_for(&mut self, host: &str, port: u16, subset: Option<&str>) -> Option<ClusterId> {
        let key = (host.to_owned(), port, subset.map(str::to_owned));
        if let Some(id) = self.cluster_ids.get(&key) {
            return Some(*id);
        }
        let service = self.registry.resolve(host, "")?;
        let service_port = service.port(port)?.clone();
        let rule = self.rules.get(&service.host);
        let base = rule.map(|r| r.base.clone()).unwrap_or_default();
        // Istio's precedence for TLS: the subset's port-level setting, the subset's, the
        // rule's port-level setting, the rule's.
        let mut tls = base.tls_for(port).cloned();
        // Outlier detection and health checks follow the same precedence.
        let mut outlier = base.outlier_for(port).cloned();
        let mut health_check = base.health_check_for(port).cloned();
        let (policy, labels) = match subset {
            Some(name) => {
                let s = rule?.subsets.iter().find(|s| s.name == name)?;
                tls = s.policy.tls_for(port).cloned().or(tls);
                outlier = s.policy.outlier_for(port).cloned().or(outlier);
                health_check = s.policy.health_check_for(port).cloned().or(health_check);
                (base.overridden_by(&s.policy), Some(&s.labels))
            }
            None => (base, None),
        };
        let endpoints: Vec<Endpoint> = service
            .endpoints
            .iter()
            .filter(|e| labels.is_none_or(|want| want.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
            .map(|e| Endpoint {
                address: SocketAddr::new(e.address, service.endpoint_port(e, &service_port)),
                weight: e.weight.max(1),
                labels: e.labels.clone(),
                meshed: e.labels.get(MESHED_LABEL).is_some_and(|v| v == MESHED_LABEL_VALUE),
            })
            .collect();
        let lb = match policy.lb.unwrap_or(LbChoice::LeastRequest) {
            LbChoice::RoundRobin => LbPolicy::RoundRobin,
            LbChoice::LeastRequest => LbPolicy::LeastRequest,
            LbChoice::Random => LbPolicy::Random,
            LbChoice::RingHash { hash_on, min_ring } => LbPolicy::RingHash {
                hash_on,
                table: RingHashTable::new(&endpoints, min_ring),
            },
            LbChoice::Maglev { hash_on, table_size } => LbPolicy::Maglev {
                hash_on,
                table: MaglevTable::new(&endpoints, table_size),
            },
        };
        let locality = self.locality_plan(policy.locality.as_ref(), outlier.is_some(), &endpoints);
        let protocol = upstream_protocol(&service_port, policy.h2_upgrade, policy.use_client_protocol);
        if let Some(HealthCheck {
            probe: HealthProbe::Http { host, .. },
            ..
        }) = &mut health_check
        {
            if host.is_empty() {
                host.clone_from(&service.host);
            }
        }
        let id = ClusterId(self.clusters.len() as u32);
        self.clusters.push(Cluster {
            name: format!("outbound|{port}|{}|{}", subset.unwrap_or(""), service.host),
            service: service.host.clone(),
            port,
            subset: subset.map(str::to_owned),
            endpoints,
            lb,
            connect_timeout: policy.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            pool: PoolSettings {
                idle_timeout: policy.idle_timeout.unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
                max_requests_per_connection: policy.max_requests_per_connection.flatten(),
                max_idle_per_endpoint: DEFAULT_MAX_IDLE_PER_ENDPOINT,
                http2_max_requests: policy.http2_max_requests.flatten(),
                max_concurrent_streams: policy.max_concurrent_streams.flatten(),
                max_connections: policy.max_connections.flatten(),
                max_pending_requests: policy.max_pending_requests.flatten(),
                max_retries: policy.max_retries.flatten(),
                tcp_keepalive: policy.tcp_keepalive,
            },
            protocol,
            upgrade_meshed: policy.h2_upgrade != Some(H2UpgradePolicy::DoNotUpgrade),
            host_not_found: None,
            tls: tls.unwrap_or_default(),
            outlier,
            health_check,
            locality,
        });
        self.cluster_ids.insert(key, id);
        Some(id)
    }

    /// The placeholder for (host, port, subset) where no ServiceEntry defines `host`: no
    /// endpoints, and the reply the proxy gives instead of forwarding. `port` 0 stands for a
    /// destination that names no port.
    fn host_not_found_cluster(&mut self, host: &str, port: u16, subset: Option<&str>) -> ClusterId {
        let key = (host.to_owned(), port, subset.map(str::to_owned));
        if let Some(id) = self.cluster_ids.get(&key) {
            return *id;
        }
        let id = ClusterId(self.clusters.len() as u32);
        self.clusters.push(Cluster {
            name: format!("outbound|{port}|{}|{host}", subset.unwrap_or("")),
            service: host.to_owned(),
            port,
            subset: subset.map(str::to_owned),
            endpoints: Vec::new(),
            lb: LbPolicy::RoundRobin,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool: PoolSettings::default(),
            protocol: UpstreamProtocol::Http1,
            upgrade_meshed: true,
            host_not_found: Some(format!("no cluster found: no ServiceEntry defines host {host}\n")),
            tls: UpstreamTls::Auto,
            outlier: None,
            health_check: None,
            locality: None,
        });
        self.cluster_ids.insert(key, id);
        id
    }

    /// Resolves a route destination to its cluster, reporting what is wrong with it.
    /// `port_field` says where the port is written under `p`.
    pub(super) fn destination_cluster(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        d: &Destination,
        port_field: PortField,
    ) -> Option<ClusterId> {
        if d.host.is_empty() {
            self.error(site, &p.key("host"), "destination host is required");
            return None;
        }
        let port_path = match port_field {
            PortField::Listener => p.key("port"),
            PortField::Route => p.key("port").key("number"),
        };
        let Some(service) = self.registry.resolve(&d.host, site.namespace()) else {
            // Istio accepts it (IST0101 is a finding of `istioctl analyze`, not a refusal):
            // requests get 503 until a ServiceEntry defines the host.
            let port = match &d.port {
                Some(sel) => self.port(site, &port_path, sel.number)?,
                None => 0,
            };
            let msg = format!(
                "{}; requests routed to it get 503 until one defines it",
                host_not_found(&d.host, site.namespace())
            );
            self.warn(site, &p.key("host"), msg);
            let host = d.host.trim().to_ascii_lowercase();
            let host = if host.contains('.') {
                host
            } else {
                fqdn(&host, site.namespace())
            };
            return Some(self.host_not_found_cluster(&host, port, d.subset.as_deref()));
        };
        let service = service.clone();
        let port = match &d.port {
            Some(sel) => {
                let n = self.port(site, &port_path, sel.number)?;
                if service.port(n).is_none() {
                    self.error(
                        site,
                        &port_path,
                        format!(
                            "port {n} is not a port of service {} (ports: {})",
                            service.host,
                            port_list(&service)
                        ),
                    );
                    return None;
                }
                n
            }
            None => match service.ports.as_slice() {
                [only] => only.number,
                [] => {
                    self.error(site, &p.key("host"), format!("service {} has no ports", service.host));
                    return None;
                }
                _ => {
                    self.error(
                        site,
                        p,
                        format!(
                            "service {} has several ports ({}); set destination {}",
                            service.host,
                            port_list(&service),
                            match port_field {
                                PortField::Listener => "port",
                                PortField::Route => "port.number",
                            }
                        ),
                    );
                    return None;
                }
            },
        };
        if let Some(subset) = &d.subset {
            let rule = self.rules.get(&service.host);
            let defined = rule.is_some_and(|r| r.subsets.iter().any(|s| &s.name == subset));
            if !defined {
                let msg = match rule {
                    None => format!(
                        "subset {subset:?} is not defined: no DestinationRule for host {}",
                        service.host
                    ),
                    Some(r) => {
                        let names: Vec<&str> = r.subsets.iter().map(|s| s.name.as_str()).collect();
                        format!(
                            "subset {subset:?} is not defined in {} for host {} (subsets: {})",
                            r.label,
                            service.host,
                            if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            }
                        )
                    }
                };
                self.error(site, &p.key("subset"), msg);
                return None;
            }
        }
        self.cluster_for(&service.host, port, d.subset.as_deref())
    }

    /// Weighted clusters for a list of destinations at `p` (`...route`).
    pub(super) fn weighted(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        dests: &[(&Destination, Option<i64>)],
    ) -> Option<WeightedClusters> {
        if dests.is_empty() {
            self.error(site, p, "at least one destination is required");
            return None;
        }
        let mut ids = Vec::new();
        let mut ok = true;
        let mut sum: i64 = 0;
        for (k, (d, w)) in dests.iter().enumerate() {
            let dp = p.index(k);
            let id = self.destination_cluster(site, &dp.key("destination"), d, PortField::Route);
            if let Some(w) = w {
                if !(0..=100).contains(w) {
                    self.error(
                        site,
                        &dp.key("weight"),
                        format!("weight must be between 0 and 100, got {w}"),
                    );
                    ok = false;
                }
            }
            sum += w.unwrap_or(0);
            match id {
                Some(id) => ids.push((id, w.unwrap_or(0))),
                None => ok = false,
            }
        }
        if dests.len() > 1 && sum != 100 {
            let last = dests.len() - 1;
            let field = if dests[last].1.is_some() {
                p.index(last).key("weight")
            } else {
                p.index(last)
            };
            self.error(site, &field, format!("weights must sum to 100, got {sum}"));
            ok = false;
        }
        if !ok {
            return None;
        }
        if let [(id, _)] = ids.as_slice() {
            return Some(WeightedClusters::single(*id));
        }
        let mut cumulative = 0u32;
        let mut entries = Vec::new();
        for (id, w) in ids {
            if w > 0 {
                cumulative += w as u32;
                entries.push((id, cumulative));
            }
        }
        Some(WeightedClusters { entries })
    }
}

/// What a cluster for `port` speaks upstream, as Istio decides it: `useClientProtocol` wins;
/// an `HTTP2`/`GRPC`/`GRPC-WEB` port is HTTP/2 whatever the upgrade policy (gRPC cannot go
/// over HTTP/1.1); an HTTP port is HTTP/2 only with `h2UpgradePolicy: UPGRADE`.
fn upstream_protocol(
    port: &ServicePort,
    upgrade: Option<H2UpgradePolicy>,
    use_client_protocol: Option<bool>,
) -> UpstreamProtocol {
    if use_client_protocol == Some(true) {
        return UpstreamProtocol::UseClient;
    }
    if port.is_http2() {
        return UpstreamProtocol::Http2;
    }
    match upgrade {
        Some(H2UpgradePolicy::Upgrade) if port.is_http() => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Http1,
    }
}

/// `80, 443`: a service's port numbers, for messages.
fn port_list(service: &Service) -> String {
    let ports: Vec<String> = service.ports.iter().map(|p| p.number.to_string()).collect();
    ports.join(", ")
}
