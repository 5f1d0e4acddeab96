//! `ServiceEntry`: the services of the mesh. Each host becomes a [`Service`] of the registry
//! with its ports and endpoints (inline `endpoints`, or the `WorkloadEntry`s its
//! `workloadSelector` picks); the control plane adds the workloads proxies announce as
//! [`ExtraEndpoint`]s. Every later phase looks hosts up here.

use std::collections::BTreeMap;

use super::{Compiler, Site};
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::locate::FieldPath;
use crate::registry::{fqdn, ExtraEndpoint, RegistryEndpoint, Service, ServicePort};
use crate::resources::{Resolution, ServiceEntry};

impl Compiler {
    pub(super) fn service_entry(&mut self, se: &ServiceEntry) {
        let site: &Site<'_> = se;
        let spec = FieldPath::root().key("spec");
        if se.spec.hosts.is_empty() {
            self.error(site, &spec.key("hosts"), "at least one host is required");
        }
        if se.spec.ports.is_empty() {
            self.error(site, &spec.key("ports"), "at least one port is required");
        }
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, p) in se.spec.ports.iter().enumerate() {
            let pp = spec.key("ports").index(i);
            let number = self.port(site, &pp.key("number"), p.number);
            if p.name.is_empty() {
                self.error(site, &pp.key("name"), "port name is required");
            }
            let target_port = match p.target_port {
                Some(t) => self.port(site, &pp.key("targetPort"), t),
                None => None,
            };
            let Some(number) = number else { continue };
            if ports.iter().any(|q| q.number == number) {
                self.error(site, &pp.key("number"), format!("port {number} is declared twice"));
                continue;
            }
            if !p.name.is_empty() && ports.iter().any(|q| q.name == p.name) {
                self.error(
                    site,
                    &pp.key("name"),
                    format!("port name {:?} is declared twice", p.name),
                );
            }
            ports.push(ServicePort {
                number,
                name: p.name.clone(),
                protocol: p.protocol.clone().unwrap_or_default().to_ascii_uppercase(),
                target_port,
            });
        }

        let selects = se.spec.workload_selector.is_some();
        let resolution = se
            .spec
            .resolution
            .unwrap_or(if se.spec.endpoints.is_empty() && !selects {
                Resolution::None
            } else {
                Resolution::Static
            });
        match resolution {
            Resolution::None if !se.spec.hosts.is_empty() => {
                self.warn(
                    site,
                    &spec.key("resolution"),
                    "resolution NONE (forward to the original destination) is not \
                     supported yet; the service has no endpoints",
                );
            }
            Resolution::Dns | Resolution::DnsRoundRobin if se.spec.endpoints.is_empty() && !selects => {
                self.error(
                    site,
                    &spec.key("resolution"),
                    "resolution DNS without endpoints (resolving the hosts themselves) is not \
                     supported yet; list the endpoints' IP addresses",
                );
            }
            _ => {}
        }
        let mut addresses = Vec::new();
        for (i, a) in se.spec.addresses.iter().enumerate() {
            let ap = spec.key("addresses").index(i);
            match a.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() => {
                    self.error(site, &ap, format!("{a:?} is the unspecified address, not a service's"));
                }
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => self.warn(site, &ap, format!("address {a} is listed twice")),
                Err(_) if a.contains('/') => self.warn(
                    site,
                    &ap,
                    format!("CIDR address {a:?} is not supported yet; ignored (list the IP addresses)"),
                ),
                Err(_) => self.error(site, &ap, format!("{a:?} is not an IP address")),
            }
        }
        let mut endpoints = Vec::new();
        for (i, e) in se.spec.endpoints.iter().enumerate() {
            let ep = spec.key("endpoints").index(i);
            let address = match e.address.parse::<std::net::IpAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = if e.address.is_empty() {
                        "endpoint address is required".to_owned()
                    } else if e.address.starts_with("unix://") {
                        "unix domain socket endpoints are not supported yet".to_owned()
                    } else if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
                        "resolution DNS with hostname endpoints is not supported yet; use IP \
                         addresses"
                            .to_owned()
                    } else {
                        format!(
                            "endpoint address {:?} is not an IP address (resolution STATIC \
                             needs IP addresses)",
                            e.address
                        )
                    };
                    self.error(site, &ep.key("address"), msg);
                    None
                }
            };
            let weight = match e.weight {
                None | Some(0) => Some(1),
                Some(w) => match u32::try_from(w) {
                    Ok(w) => Some(w),
                    Err(_) => {
                        self.error(
                            site,
                            &ep.key("weight"),
                            format!("weight must be a positive number, got {w}"),
                        );
                        None
                    }
                },
            };
            let mut overrides = BTreeMap::new();
            for (name, number) in &e.ports {
                let path = ep.key("ports").key(name);
                if !ports.iter().any(|p| &p.name == name) {
                    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                    let hint = did_you_mean(name, names.iter().copied())
                        .map(|s| format!("; did you mean {s:?}?"))
                        .unwrap_or_default();
                    self.error(
                        site,
                        &path,
                        format!(
                            "{name:?} is not a port name of this ServiceEntry (ports: {}){hint}",
                            names.join(", ")
                        ),
                    );
                    continue;
                }
                if let Some(n) = self.port(site, &path, *number) {
                    overrides.insert(name.clone(), n);
                }
            }
            if let (Some(address), Some(weight)) = (address, weight) {
                endpoints.push(RegistryEndpoint {
                    address,
                    ports: overrides,
                    labels: with_locality(self, site, &ep, e),
                    weight,
                });
            }
        }

        if let Some(sel) = &se.spec.workload_selector {
            if se.spec.endpoints.is_empty() {
                let ns = se.metadata.namespace();
                for w in self.workload_entries.iter().filter(|w| w.namespace == ns) {
                    if sel.labels.iter().all(|(k, v)| w.endpoint.labels.get(k) == Some(v)) {
                        let mut e = w.endpoint.clone();
                        e.ports.retain(|name, _| ports.iter().any(|p| &p.name == name));
                        endpoints.push(e);
                    }
                }
            } else {
                self.error(
                    site,
                    &spec.key("workloadSelector"),
                    "endpoints and workloadSelector are mutually exclusive; keep one",
                );
            }
        }

        for (i, host) in se.spec.hosts.iter().enumerate() {
            let hp = spec.key("hosts").index(i);
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() {
                self.error(site, &hp, "host must not be empty");
                continue;
            }
            if host.contains('*') {
                self.warn(
                    site,
                    &hp,
                    format!("wildcard host {host:?} is not supported yet; ignored"),
                );
                continue;
            }
            let host = if host.contains('.') {
                host
            } else {
                fqdn(&host, site.namespace())
            };
            let service = Service {
                host,
                namespace: site.namespace().to_owned(),
                ports: ports.clone(),
                addresses: addresses.clone(),
                endpoints: endpoints.clone(),
                source: site.source(),
            };
            if let Err(e) = self.registry.add_service(service) {
                self.error(site, &hp, e.to_string());
            }
        }
    }

    /// Workloads announced by proxies: endpoints of the services they name. One naming a
    /// service that does not exist is ignored with a warning, never a reason to refuse a config.
    pub(super) fn extra_endpoints(&mut self, extra: &[ExtraEndpoint]) {
        for e in extra {
            if let Err(err) = self.registry.add_endpoint(e.clone()) {
                self.diags
                    .push(Diagnostic::warning(format!("announced endpoint ignored: {err}")));
            }
        }
    }
}

/// An endpoint's labels with its `locality` folded in as topology labels (the labels win);
/// a malformed locality is an error naming the field, and the labels stay as written.
pub(super) fn with_locality(
    c: &mut Compiler,
    site: &Site<'_>,
    p: &FieldPath,
    e: &crate::resources::EndpointSpec,
) -> BTreeMap<String, String> {
    let mut labels = e.labels.clone();
    if let Some(l) = &e.locality {
        if let Err(msg) = super::locality::fold_into_labels(l, &mut labels) {
            c.error(site, &p.key("locality"), msg);
        }
    }
    labels
}
