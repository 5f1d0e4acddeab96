//! Listeners: the `ProxyConfig`'s `spec.listeners` (or the default HTTP listener `outbound` on
//! `127.0.0.1:15001`), checked for names and addresses that clash with each other and with the
//! admin, health and metrics servers. A TCP listener is resolved here to its weighted clusters,
//! from a VirtualService tcp route or the listener's own destination. An `AUTO` listener
//! becomes HTTP or TCP when its port says which (Istio's `appProtocol` and port-name
//! conventions, see [`PortHint`]), else a detecting listener with a TCP fallback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::clusters::PortField;
use super::virtual_service::applies_to_mesh;
use super::{Compiler, Site};
use crate::diagnostic::did_you_mean;
use crate::locate::FieldPath;
use crate::port_hint::PortHint;
use crate::resources::{Destination, ListenerProtocol, ListenerSpec, ProxyConfig, TrafficDirection, VirtualService};
use crate::snapshot::{Listener, ListenerKind, ProxySettings, WeightedClusters};

/// TCP listener idle timeout (Istio's TCP proxy default).
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Compiler {
    pub(super) fn listeners(
        &mut self,
        pc: Option<&ProxyConfig>,
        proxy: &ProxySettings,
        virtual_services: &[&VirtualService],
    ) -> Vec<Listener> {
        let default = || {
            vec![Listener {
                name: "outbound".into(),
                address: SocketAddr::from(([127, 0, 0, 1], 15001)),
                kind: ListenerKind::Http,
                inbound: false,
                optional: false,
                local_rate_limit: None,
            }]
        };
        let captured = self.capture_listeners(pc);
        let Some(pc) = pc.filter(|p| !p.spec.listeners.is_empty()) else {
            // Capture takes the outbound port on every address, so the default listener
            // (loopback, the same port) is left out.
            return if captured.is_empty() { default() } else { captured };
        };
        let site: &Site<'_> = pc;
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, String> = HashMap::from([
            (proxy.admin_address, "the admin server (adminAddress)".to_owned()),
            (proxy.health_address, "the health server (healthAddress)".to_owned()),
            (proxy.metrics_address, "the metrics server (metricsAddress)".to_owned()),
        ]);
        for (i, l) in pc.spec.listeners.iter().enumerate() {
            let p = FieldPath::root().key("spec").key("listeners").index(i);
            if l.name.is_empty() {
                self.error(site, &p.key("name"), "listener name is required");
            } else if let Some(first) = names.insert(&l.name, i) {
                self.error(
                    site,
                    &p.key("name"),
                    format!("duplicate listener name {:?} (also spec.listeners[{first}])", l.name),
                );
            }
            let address = match l.address.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = if l.address.is_empty() {
                        "listener address is required (ip:port)".to_owned()
                    } else {
                        format!("{:?} is not an ip:port address", l.address)
                    };
                    self.error(site, &p.key("address"), msg);
                    None
                }
            };
            // Port 0 asks the kernel for a free port: several such addresses never clash.
            if let Some(a) = address.filter(|a| a.port() != 0) {
                let who = format!("listener {:?}", l.name);
                if let Some(other) = addresses.insert(a, who) {
                    self.error(
                        site,
                        &p.key("address"),
                        format!("address {a} is already used by {other}"),
                    );
                }
            }
            let hint = self.listener_hint(site, &p, l);
            let kind = match (l.protocol, hint) {
                (ListenerProtocol::Http, _) | (ListenerProtocol::Auto, Some(PortHint::Http | PortHint::Http2)) => {
                    if let (Some(app), Some(PortHint::Tcp)) = (&l.app_protocol, hint) {
                        self.error(
                            site,
                            &p.key("appProtocol"),
                            format!("appProtocol {app:?} is not HTTP, but the listener's protocol is HTTP"),
                        );
                    }
                    if l.protocol == ListenerProtocol::Http {
                        self.http_only_fields(site, &p, l);
                    } else if l.idle_timeout.is_some() {
                        self.warn(
                            site,
                            &p.key("idleTimeout"),
                            "the port hint makes this AUTO listener HTTP, so idleTimeout (for TCP) \
                             does not apply; HTTP connections use spec.limits.idleTimeout",
                        );
                    }
                    Some(ListenerKind::Http)
                }
                (ListenerProtocol::Tcp, _) | (ListenerProtocol::Auto, Some(PortHint::Tcp)) => {
                    let app = l.app_protocol.as_ref().filter(|_| l.protocol == ListenerProtocol::Tcp);
                    if let Some(app) = app.filter(|_| hint.is_some_and(PortHint::is_http)) {
                        self.error(
                            site,
                            &p.key("appProtocol"),
                            format!("appProtocol {app:?} is HTTP, but the listener's protocol is TCP"),
                        );
                    }
                    self.tcp_fallback(site, &p, l, address, virtual_services)
                        .map(|(clusters, idle_timeout)| ListenerKind::Tcp { clusters, idle_timeout })
                }
                (ListenerProtocol::Auto, None) => {
                    self.tcp_fallback(site, &p, l, address, virtual_services)
                        .map(|(clusters, idle_timeout)| ListenerKind::Detect {
                            clusters,
                            idle_timeout,
                            timeout: proxy.limits.protocol_detection_timeout,
                        })
                }
            };
            let local_rate_limit = match (&l.local_rate_limit, &kind) {
                (None, _) => None,
                (Some(_), Some(ListenerKind::Tcp { .. })) => {
                    self.error(
                        site,
                        &p.key("localRateLimit"),
                        "localRateLimit limits HTTP requests; a TCP listener carries none (its \
                         connections are not limited)",
                    );
                    None
                }
                (Some(spec), _) => {
                    self.local_rate_limit(site, &p.key("localRateLimit"), spec, format!("listener {}", l.name))
                }
            };
            if let (Some(address), Some(kind)) = (address, kind) {
                out.push(Listener {
                    name: l.name.clone(),
                    address,
                    kind,
                    inbound: l.direction == TrafficDirection::Inbound,
                    optional: false,
                    local_rate_limit,
                });
            }
        }
        out.extend(captured);
        out
    }

    /// An HTTP listener routes by VirtualService: TCP settings on it are mistakes.
    fn http_only_fields(&mut self, site: &Site<'_>, p: &FieldPath, l: &ListenerSpec) {
        if l.destination.is_some() {
            self.error(
                site,
                &p.key("destination"),
                "destination applies only to TCP and AUTO listeners; HTTP listeners route by \
                 VirtualService",
            );
        }
        if l.idle_timeout.is_some() {
            self.error(
                site,
                &p.key("idleTimeout"),
                "idleTimeout applies only to TCP and AUTO listeners; HTTP listeners use \
                 spec.limits.idleTimeout",
            );
        }
    }

    /// The clusters and idle timeout of a listener that proxies TCP (always, or when detection
    /// finds no HTTP).
    fn tcp_fallback(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        l: &ListenerSpec,
        address: Option<SocketAddr>,
        virtual_services: &[&VirtualService],
    ) -> Option<(WeightedClusters, Duration)> {
        let idle_timeout = match &l.idle_timeout {
            Some(t) => self.duration(site, &p.key("idleTimeout"), t),
            None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
        };
        let clusters = self.tcp_listener_clusters(site, p, l, address, virtual_services);
        Some((clusters?, idle_timeout?))
    }

    /// What the listener's port says about its protocol, as Istio reads a port: its
    /// `appProtocol`, else its name (`http-*`, `grpc-*`, `tcp-*`, `mysql`, ...), else the
    /// destination service port's `protocol` or name. `None`: nothing said, detect. An
    /// `appProtocol` ringmesh does not know is an error.
    fn listener_hint(&mut self, site: &Site<'_>, p: &FieldPath, l: &ListenerSpec) -> Option<PortHint> {
        if let Some(app) = &l.app_protocol {
            let hint = PortHint::of_protocol(app);
            if hint.is_none() {
                let hint = did_you_mean(&app.to_ascii_lowercase(), PortHint::known_names())
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                let known: Vec<&str> = PortHint::known_names().collect();
                self.error(
                    site,
                    &p.key("appProtocol"),
                    format!("unknown appProtocol {app:?}{hint} (known: {})", known.join(", ")),
                );
            }
            return hint;
        }
        if let Some(hint) = PortHint::of_name(&l.name) {
            return Some(hint);
        }
        // The destination's port; an unknown host or port is reported where the clusters are
        // resolved.
        let d = l.destination.as_ref()?;
        let service = self.registry.resolve(&d.host, site.namespace())?;
        let port = match d.port {
            Some(n) => service.port(u16::try_from(n).ok()?)?,
            None => match service.ports.as_slice() {
                [only] => only,
                _ => return None,
            },
        };
        if port.protocol.is_empty() {
            PortHint::of_name(&port.name)
        } else {
            PortHint::of_protocol(&port.protocol)
        }
    }

    /// A TCP listener's clusters: a VirtualService tcp route matching the listener's port wins;
    /// then a tcp route without a port condition in a VirtualService for the listener's
    /// destination host; then the destination itself.
    fn tcp_listener_clusters(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        l: &ListenerSpec,
        address: Option<SocketAddr>,
        virtual_services: &[&VirtualService],
    ) -> Option<WeightedClusters> {
        let port = address.map(|a| i64::from(a.port()));
        let dest_service = l
            .destination
            .as_ref()
            .and_then(|d| self.registry.resolve(&d.host, site.namespace()).map(|s| s.host.clone()));
        let mut by_port = None;
        let mut by_host = None;
        for vs in virtual_services.iter().filter(|vs| applies_to_mesh(vs)) {
            for (i, route) in vs.spec.tcp.iter().enumerate() {
                if by_port.is_none() && port.is_some() && route.matches.iter().any(|m| m.port == port) {
                    by_port = Some((*vs, i));
                }
                let claims_dest = dest_service.as_ref().is_some_and(|h| {
                    vs.spec.hosts.iter().any(|vh| {
                        self.registry
                            .resolve(vh, vs.metadata.namespace())
                            .is_some_and(|s| &s.host == h)
                    })
                });
                if by_host.is_none() && claims_dest && route.matches.iter().all(|m| m.port.is_none()) {
                    by_host = Some((*vs, i));
                }
            }
        }
        if let Some((vs, i)) = by_port.or(by_host) {
            return self.tcp_route_clusters(vs, i);
        }
        match &l.destination {
            Some(d) => {
                let dp = p.key("destination");
                let dest = Destination {
                    host: d.host.clone(),
                    subset: None,
                    port: d.port.map(|number| crate::resources::PortSelector { number }),
                };
                let id = self.destination_cluster(site, &dp, &dest, PortField::Listener)?;
                Some(WeightedClusters::single(id))
            }
            None => {
                let port_text = port.map_or_else(String::new, |p| format!(" {p}"));
                self.error(
                    site,
                    p,
                    format!(
                        "{} listener needs a destination or a VirtualService tcp route \
                         matching port{port_text}",
                        if l.protocol == ListenerProtocol::Auto {
                            "AUTO"
                        } else {
                            "TCP"
                        }
                    ),
                );
                None
            }
        }
    }

    /// The clusters of `vs`'s `spec.tcp[i]`.
    pub(super) fn tcp_route_clusters(&mut self, vs: &VirtualService, i: usize) -> Option<WeightedClusters> {
        let site: &Site<'_> = vs;
        let route = vs.spec.tcp.get(i)?;
        let p = FieldPath::root().key("spec").key("tcp").index(i).key("route");
        let dests: Vec<(&Destination, Option<i64>)> = route.route.iter().map(|d| (&d.destination, d.weight)).collect();
        self.weighted(site, &p, &dests)
    }
}
