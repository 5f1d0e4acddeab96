//! The service registry: every known service host with its ports and endpoints.
//!
//! The compiler reads services only from here, never from ServiceEntries directly. Today the
//! registry is filled from ServiceEntries ([`ServiceRegistry::add_service`]) and from
//! [`RegistryEndpoint`]s handed to [`crate::compile::CompileInput`]; the control plane will add
//! workloads announced by connecting proxies the same way, without the compiler changing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Suffix of Kubernetes service names; short hosts expand to `<name>.<namespace>` + this.
pub const CLUSTER_DOMAIN_SUFFIX: &str = "svc.cluster.local";

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port clients connect to.
    pub number: u16,
    /// Port name; endpoints may override the target port per name.
    pub name: String,
    /// Protocol as declared (`HTTP`, `TCP`, ...), upper case; empty when not declared.
    pub protocol: String,
    /// Port on the endpoints when different from `number`.
    pub target_port: Option<u16>,
}

impl ServicePort {
    /// Whether this port carries HTTP (and so gets HTTP routes): its protocol, or its name by
    /// Istio's convention (`http`, `http-web`, `grpc-api`, ...).
    pub fn is_http(&self) -> bool {
        matches!(self.protocol.as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB")
            || crate::port_hint::PortHint::of_name(&self.name).is_some_and(crate::port_hint::PortHint::is_http)
    }

    /// Whether this port carries HTTP/2 by declaration (`HTTP2`, `GRPC`, `GRPC-WEB`, or with
    /// no protocol a name `http2`, `grpc`, `grpc-web` or one of them followed by `-suffix`).
    pub fn is_http2(&self) -> bool {
        match self.protocol.as_str() {
            "HTTP2" | "GRPC" | "GRPC-WEB" => true,
            "" => matches!(
                crate::port_hint::PortHint::of_name(&self.name),
                Some(crate::port_hint::PortHint::Http2)
            ),
            _ => false,
        }
    }
}

/// One endpoint of a service, from a ServiceEntry or announced by a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEndpoint {
    /// IP address.
    pub address: IpAddr,
    /// Per-port-name target port overrides.
    pub ports: BTreeMap<String, u16>,
    /// Labels (DestinationRule subsets select on them).
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight (>= 1).
    pub weight: u32,
}

/// An endpoint for a service host, as the control plane hands announced workloads to the
/// compiler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraEndpoint {
    /// Service host the endpoint serves (FQDN).
    pub host: String,
    /// The endpoint.
    pub endpoint: RegistryEndpoint,
}

/// A service: one host with its ports and endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Host name (lower case, as declared).
    pub host: String,
    /// Namespace of the declaring resource.
    pub namespace: String,
    /// Ports in declaration order.
    pub ports: Vec<ServicePort>,
    /// Virtual IPs (`ServiceEntry.addresses`, a Kubernetes Service's cluster IPs): captured
    /// connections to one of them on one of `ports` are this service's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Endpoints.
    pub endpoints: Vec<RegistryEndpoint>,
    /// The declaring resource (`ServiceEntry ns/name`), for diagnostics.
    pub source: String,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The port a request without an explicit port goes to: the only port, else the only HTTP
    /// port, else the first.
    pub fn default_port(&self) -> Option<&ServicePort> {
        if let [only] = self.ports.as_slice() {
            return Some(only);
        }
        let mut http = self.ports.iter().filter(|p| p.is_http());
        match (http.next(), http.next()) {
            (Some(p), None) => Some(p),
            _ => self.ports.first(),
        }
    }

    /// The port to connect to on `endpoint` for service port `port`: the endpoint's override
    /// for the port's name, else the port's `targetPort`, else the port number.
    pub fn endpoint_port(&self, endpoint: &RegistryEndpoint, port: &ServicePort) -> u16 {
        endpoint
            .ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// Error adding to the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two resources declare the same host.
    #[error("host {host} is already declared by {other}")]
    DuplicateHost {
        /// The host.
        host: String,
        /// Who declared it first.
        other: String,
    },
    /// An endpoint names a host no service declares.
    #[error("no service declares host {0}")]
    UnknownHost(String),
}

/// All services by host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceRegistry {
    services: BTreeMap<String, Service>,
}

impl ServiceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service; a host may be declared only once.
    pub fn add_service(&mut self, service: Service) -> Result<(), RegistryError> {
        let host = service.host.to_ascii_lowercase();
        if let Some(existing) = self.services.get(&host) {
            return Err(RegistryError::DuplicateHost {
                host,
                other: existing.source.clone(),
            });
        }
        self.services.insert(host, service);
        Ok(())
    }

    /// Adds an endpoint to an existing service.
    pub fn add_endpoint(&mut self, extra: ExtraEndpoint) -> Result<(), RegistryError> {
        let host = extra.host.to_ascii_lowercase();
        match self.services.get_mut(&host) {
            Some(s) => {
                s.endpoints.push(extra.endpoint);
                Ok(())
            }
            None => Err(RegistryError::UnknownHost(host)),
        }
    }

    /// The service for `host` as written in a resource of `namespace`: the host itself, else a
    /// short name expanded to `<host>.<namespace>.svc.cluster.local`.
    pub fn resolve(&self, host: &str, namespace: &str) -> Option<&Service> {
        let host = host.to_ascii_lowercase();
        if let Some(s) = self.services.get(&host) {
            return Some(s);
        }
        if !host.contains('.') {
            return self.services.get(&fqdn(&host, namespace));
        }
        None
    }

    /// All services in host order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }
}

/// `name` → `name.<namespace>.svc.cluster.local`.
pub fn fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.{CLUSTER_DOMAIN_SUFFIX}")
}

/// The `Host` header values that should reach `host`: the host itself and, for Kubernetes-style
/// names, the short forms a client in the namespace would use (`reviews`, `reviews.default`,
/// `reviews.default.svc`). A short host also gets its full name.
pub fn host_aliases(host: &str, namespace: &str) -> Vec<String> {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.starts_with("*.") {
        return vec![host];
    }
    let full = if host.contains('.') {
        host.clone()
    } else {
        fqdn(&host, namespace)
    };
    let mut out = vec![host.clone()];
    if full != host {
        out.push(full.clone());
    }
    if let Some(stem) = full.strip_suffix(&format!(".{CLUSTER_DOMAIN_SUFFIX}")) {
        if let Some((name, ns)) = stem.split_once('.') {
            for alias in [name.to_owned(), format!("{name}.{ns}"), format!("{stem}.svc")] {
                if !out.contains(&alias) {
                    out.push(alias);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(host: &str, ports: &[(u16, &str, &str)]) -> Service {
        Service {
            host: host.into(),
            namespace: "default".into(),
            ports: ports
                .iter()
                .map(|(n, name, proto)| ServicePort {
                    number: *n,
                    name: (*name).into(),
                    protocol: (*proto).into(),
                    target_port: None,
                })
                .collect(),
            addresses: Vec::new(),
            endpoints: vec![],
            source: format!("ServiceEntry default/{host}"),
        }
    }

    #[test]
    fn resolve_short_names_and_duplicates() {
        let mut r = ServiceRegistry::new();
        r.add_service(service("reviews.default.svc.cluster.local", &[(9080, "http", "HTTP")]))
            .expect("added");
        assert!(r.resolve("reviews", "default").is_some());
        assert!(r.resolve("Reviews.default.svc.cluster.local", "x").is_some());
        assert!(r.resolve("reviews", "other").is_none());
        let err = r
            .add_service(service("reviews.default.svc.cluster.local", &[]))
            .expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "host reviews.default.svc.cluster.local is already declared by ServiceEntry default/reviews.default.svc.cluster.local"
        );
    }

    #[test]
    fn extra_endpoints_join_services() {
        let mut r = ServiceRegistry::new();
        r.add_service(service("a.example", &[(80, "http", "HTTP")]))
            .expect("added");
        let ep = RegistryEndpoint {
            address: "10.0.0.9".parse().expect("ip"),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            weight: 1,
        };
        r.add_endpoint(ExtraEndpoint {
            host: "a.example".into(),
            endpoint: ep.clone(),
        })
        .expect("added");
        assert_eq!(r.resolve("a.example", "default").map(|s| s.endpoints.len()), Some(1));
        assert_eq!(
            r.add_endpoint(ExtraEndpoint {
                host: "b.example".into(),
                endpoint: ep
            }),
            Err(RegistryError::UnknownHost("b.example".into()))
        );
    }

    #[test]
    fn default_port_prefers_the_only_http_port() {
        let s = service(
            "a",
            &[(443, "https", "HTTPS"), (80, "http-web", ""), (9000, "tcp", "TCP")],
        );
        assert_eq!(s.default_port().map(|p| p.number), Some(80));
        let s = service("a", &[(81, "http", "HTTP"), (80, "http2", "HTTP2")]);
        assert_eq!(s.default_port().map(|p| p.number), Some(81));
        // Without a protocol, Istio's port-name convention says gRPC is HTTP.
        let s = service("a", &[(443, "https", "HTTPS"), (9000, "grpc-api", "")]);
        assert_eq!(s.default_port().map(|p| p.number), Some(9000));
        assert!(s.ports[1].is_http2() && !s.ports[0].is_http2());
    }

    #[test]
    fn endpoint_port_precedence() {
        let mut s = service("a", &[(80, "http", "HTTP")]);
        let mut ep = RegistryEndpoint {
            address: "10.0.0.1".parse().expect("ip"),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            weight: 1,
        };
        assert_eq!(s.endpoint_port(&ep, &s.ports[0]), 80);
        s.ports[0].target_port = Some(8080);
        assert_eq!(s.endpoint_port(&ep, &s.ports[0]), 8080);
        ep.ports.insert("http".into(), 9090);
        assert_eq!(s.endpoint_port(&ep, &s.ports[0]), 9090);
    }

    #[test]
    fn aliases() {
        assert_eq!(
            host_aliases("reviews", "default"),
            [
                "reviews",
                "reviews.default.svc.cluster.local",
                "reviews.default",
                "reviews.default.svc"
            ]
        );
        assert_eq!(host_aliases("api.example.com", "x"), ["api.example.com"]);
        assert_eq!(host_aliases("*.example.com", "x"), ["*.example.com"]);
    }
}
