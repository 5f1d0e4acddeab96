//! `VirtualService`: each one bound to `mesh` becomes one virtual host of the route table,
//! its `hosts` the domains (with the short-name aliases Kubernetes DNS would resolve), its
//! `http` routes in order. A host may be claimed by one VirtualService only; every service
//! host that none claims gets a default virtual host routing to its default port. `tcp`
//! routes are checked here and used by [`super::listeners`]. Matches are compiled by
//! [`super::route_match`], redirects, direct responses, header operations and retries by
//! [`super::route_actions`].

use std::collections::{HashMap, HashSet};

use super::route_actions::{default_retry_policy, merge_ops};
use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::registry::{fqdn, host_aliases, Service};
use crate::resources::{Destination, Headers, HttpRoute, VirtualService};
use crate::snapshot::{ForwardAction, HeaderOps, PathRewrite, Route, RouteAction, VirtualHost, WeightedClusters};

/// Whether sidecars apply `vs`: it names no gateways, or `mesh` among them.
pub(super) fn applies_to_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

impl Compiler {
    /// Phase 6: a virtual host per VirtualService, then one for every service host that no
    /// VirtualService claims.
    pub(super) fn virtual_hosts(&mut self, virtual_services: &[&VirtualService]) -> Vec<VirtualHost> {
        let mut virtual_hosts = Vec::new();
        let mut used_domains = HashSet::new();
        let mut claimed: HashMap<String, String> = HashMap::new();
        for vs in virtual_services {
            if let Some(vh) = self.virtual_service(vs, &mut claimed, &mut used_domains) {
                virtual_hosts.push(vh);
            }
        }
        let services: Vec<Service> = self.registry.services().cloned().collect();
        for service in &services {
            if claimed.contains_key(&service.host) {
                continue;
            }
            if let Some(vh) = self.default_virtual_host(service, &mut used_domains) {
                virtual_hosts.push(vh);
            }
        }
        virtual_hosts
    }

    // ---------------------------------------------------------------- VirtualService

    fn virtual_service(
        &mut self,
        vs: &VirtualService,
        claimed: &mut HashMap<String, String>,
        used_domains: &mut HashSet<String>,
    ) -> Option<VirtualHost> {
        let site: &Site<'_> = vs;
        let spec = FieldPath::root().key("spec");
        if !applies_to_mesh(vs) {
            self.warn(
                site,
                &spec.key("gateways"),
                format!(
                    "applies only to gateways ({}); ringmesh sidecars apply VirtualServices \
                     bound to `mesh`; skipped",
                    vs.spec.gateways.join(", ")
                ),
            );
            return None;
        }
        if vs.spec.hosts.is_empty() {
            self.error(site, &spec.key("hosts"), "at least one host is required");
        }
        if vs.spec.http.is_empty() && vs.spec.tcp.is_empty() {
            self.error(site, &spec, "a VirtualService needs http or tcp routes");
        }
        // TCP routes are validated here; listeners pick them up later.
        for i in 0..vs.spec.tcp.len() {
            let tp = spec.key("tcp").index(i);
            for (j, m) in vs.spec.tcp[i].matches.iter().enumerate() {
                if let Some(port) = m.port {
                    self.port(site, &tp.key("match").index(j).key("port"), port);
                }
            }
            self.tcp_route_clusters(vs, i);
        }
        if vs.spec.http.is_empty() {
            return None;
        }
        let mut domains = Vec::new();
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let hp = spec.key("hosts").index(i);
            let host_l = host.trim().to_ascii_lowercase();
            if host_l.is_empty() {
                self.error(site, &hp, "host must not be empty");
                continue;
            }
            let canonical = match self.registry.resolve(&host_l, site.namespace()) {
                Some(s) => s.host.clone(),
                None if !host_l.contains('.') && host_l != "*" => fqdn(&host_l, site.namespace()),
                None => host_l.clone(),
            };
            if let Some(other) = claimed.get(&canonical) {
                let msg = format!("host {canonical} is already claimed by {other}");
                self.error(site, &hp, msg);
                continue;
            }
            claimed.insert(canonical.clone(), site.source());
            for alias in host_aliases(&host_l, site.namespace())
                .into_iter()
                .chain(std::iter::once(canonical))
            {
                if used_domains.insert(alias.clone()) {
                    domains.push(alias);
                }
            }
        }
        let vh_name = format!("{}/{}", site.namespace(), vs.metadata.name);
        let mut routes = Vec::new();
        for (i, route) in vs.spec.http.iter().enumerate() {
            if let Some(r) = self.http_route(site, &vh_name, i, route) {
                routes.push(r);
            }
        }
        Some(VirtualHost::new(vh_name, domains, routes))
    }

    fn default_virtual_host(&mut self, service: &Service, used_domains: &mut HashSet<String>) -> Option<VirtualHost> {
        let port = service.default_port()?.number;
        let id = self.cluster_for(&service.host, port, None)?;
        let domains: Vec<String> = host_aliases(&service.host, &service.namespace)
            .into_iter()
            .filter(|d| used_domains.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            return None;
        }
        let route = Route {
            name: format!("{}/default", service.host),
            matches: Vec::new(),
            action: RouteAction::Forward(ForwardAction {
                clusters: WeightedClusters::single(id),
                path_rewrite: None,
                host_rewrite: None,
                timeout: None,
                retry: default_retry_policy(),
                mirrors: Vec::new(),
            }),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            fault: None,
            local_rate_limit: None,
        };
        Some(VirtualHost::new(service.host.clone(), domains, vec![route]))
    }

    fn http_route(&mut self, site: &Site<'_>, vh_name: &str, i: usize, route: &HttpRoute) -> Option<Route> {
        let p = FieldPath::root().key("spec").key("http").index(i);
        let mut ok = true;
        let mut matches = Vec::new();
        for (j, m) in route.matches.iter().enumerate() {
            match self.route_match(site, &p.key("match").index(j), m) {
                Some(rm) => matches.push(rm),
                None => ok = false,
            }
        }

        let has_route = !route.route.is_empty();
        let actions: Vec<&str> = [
            (has_route, "route"),
            (route.redirect.is_some(), "redirect"),
            (route.direct_response.is_some(), "directResponse"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect();
        match actions.as_slice() {
            [] => {
                self.error(site, &p, "an http route needs one of route, redirect or directResponse");
                return None;
            }
            [_] => {}
            [a, b, ..] => {
                self.error(
                    site,
                    &p.key(b),
                    format!("{a} and {b} cannot both be set in one http route"),
                );
                return None;
            }
        }
        let mirrored = route.mirror.is_some() || !route.mirrors.is_empty();
        if mirrored && !has_route {
            let field = if route.mirror.is_some() { "mirror" } else { "mirrors" };
            self.error(
                site,
                &p.key(field),
                format!("{field} can only be used with route (not with redirect or directResponse)"),
            );
            ok = false;
        }
        if route.rewrite.is_some() && !has_route {
            self.error(
                site,
                &p.key("rewrite"),
                "rewrite can only be used with route (not with redirect or directResponse)",
            );
            ok = false;
        }

        let (mut request_headers, mut response_headers) = match &route.headers {
            Some(h) => self.header_ops(site, &p.key("headers"), h),
            None => (HeaderOps::default(), HeaderOps::default()),
        };

        let action = if let Some(r) = &route.redirect {
            self.redirect(site, &p.key("redirect"), r).map(RouteAction::Redirect)
        } else if let Some(d) = &route.direct_response {
            self.direct_response(site, &p.key("directResponse"), d)
                .map(RouteAction::Direct)
        } else {
            let dests: Vec<(&Destination, Option<i64>)> =
                route.route.iter().map(|d| (&d.destination, d.weight)).collect();
            let clusters = self.weighted(site, &p.key("route"), &dests);
            // Destination-level header operations: the snapshot applies header operations per
            // route, so they are merged into the route's when there is one destination, or
            // when every destination declares the same ones; otherwise it is an error rather
            // than applying one destination's headers to another's traffic.
            let with_headers: Vec<(usize, &Headers)> = route
                .route
                .iter()
                .enumerate()
                .filter_map(|(k, d)| d.headers.as_ref().map(|h| (k, h)))
                .collect();
            if let Some((k0, h0)) = with_headers.first() {
                let all_same = with_headers.len() == route.route.len() && with_headers.iter().all(|(_, h)| *h == *h0);
                if route.route.len() == 1 || all_same {
                    let (req, resp) = self.header_ops(site, &p.key("route").index(*k0).key("headers"), h0);
                    merge_ops(&mut request_headers, req);
                    merge_ops(&mut response_headers, resp);
                } else {
                    let k = with_headers.iter().find(|(_, h)| *h != *h0).map_or(*k0, |(k, _)| *k);
                    self.error(
                        site,
                        &p.key("route").index(k).key("headers"),
                        "header operations differ between destinations; ringmesh applies \
                         header operations per route, so give every destination the same ones \
                         or move them to the route's headers",
                    );
                    ok = false;
                }
            }
            let path_rewrite = route
                .rewrite
                .as_ref()
                .and_then(|r| r.uri.clone())
                .map(|replacement| PathRewrite { replacement });
            let host_rewrite = route.rewrite.as_ref().and_then(|r| r.authority.clone());
            if let Some(r) = &route.rewrite {
                if r.uri.is_none() && r.authority.is_none() {
                    self.error(site, &p.key("rewrite"), "rewrite needs uri or authority");
                    ok = false;
                }
            }
            let timeout = match &route.timeout {
                Some(t) => match self.duration(site, &p.key("timeout"), t) {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => {
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            let retry = self.retry_policy(site, &p.key("retries"), route.retries.as_ref());
            let mirrors = self.mirrors(site, &p, route);
            match (clusters, retry, mirrors) {
                (Some(clusters), Some(retry), Some(mirrors)) => Some(RouteAction::Forward(ForwardAction {
                    clusters,
                    path_rewrite,
                    host_rewrite,
                    timeout,
                    retry,
                    mirrors,
                })),
                _ => None,
            }
        };
        let fault = match &route.fault {
            Some(f) => match self.fault(site, &p.key("fault"), f) {
                Some(f) => Some(Box::new(f)),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let local_rate_limit = match &route.local_rate_limit {
            Some(spec) => {
                let key = format!("{} http[{i}]", site.label());
                let limit = self.local_rate_limit(site, &p.key("localRateLimit"), spec, key);
                ok &= limit.is_some();
                limit
            }
            None => None,
        };
        let action = action?;
        if !ok {
            return None;
        }
        Some(Route {
            name: route.name.clone().unwrap_or_else(|| format!("{vh_name}/{i}")),
            matches,
            action,
            request_headers: std::mem::take(&mut request_headers),
            response_headers: std::mem::take(&mut response_headers),
            fault,
            local_rate_limit,
        })
    }
}
