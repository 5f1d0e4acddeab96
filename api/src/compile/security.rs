//! Checks of `AuthorizationPolicy` and `PeerAuthentication`: the values Istio's own validation
//! refuses are errors here too, with the field's path, so that a policy that passes
//! `ringmesh analyze` also passes `istioctl validate`. They do not reach the snapshot yet; each
//! one gets a warning saying it is not enforced, so nobody mistakes a loaded policy for a
//! working one.

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::{AuthorizationPolicy, Condition, Operation, PeerAuthentication, Source};

const ACTIONS: &[&str] = &["ALLOW", "DENY", "AUDIT", "CUSTOM"];
const MTLS_MODES: &[&str] = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

/// Attribute names a `when` condition may use (a `[name]` suffix where Istio takes one).
const CONDITION_KEYS: &[&str] = &[
    "request.headers",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

impl Compiler {
    pub(super) fn authorization_policy(&mut self, ap: &AuthorizationPolicy) {
        let site: &Site<'_> = ap;
        let spec = FieldPath::root().key("spec");
        let action = ap.spec.action.as_deref().unwrap_or("ALLOW");
        if !ACTIONS.contains(&action) {
            self.error(
                site,
                &spec.key("action"),
                format!("action {action:?} is not one of {}", ACTIONS.join(", ")),
            );
        }
        match (action, &ap.spec.provider) {
            ("CUSTOM", None) => self.error(site, &spec.key("provider"), "action CUSTOM needs a provider"),
            ("CUSTOM", Some(p)) if p.name.is_empty() => {
                self.error(site, &spec.key("provider").key("name"), "provider.name is required")
            }
            (a, Some(_)) if a != "CUSTOM" => self.error(
                site,
                &spec.key("provider"),
                format!("provider is only for action CUSTOM, not {a}"),
            ),
            _ => {}
        }
        if let Some(sel) = &ap.spec.selector {
            self.selector_labels(site, &spec.key("selector"), &sel.match_labels);
        }
        for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
            let rp = spec.key("rules").index(i);
            for (j, from) in rule.from.iter().enumerate() {
                self.source(site, &rp.key("from").index(j).key("source"), &from.source);
            }
            for (j, to) in rule.to.iter().enumerate() {
                self.operation(site, &rp.key("to").index(j).key("operation"), &to.operation);
            }
            for (j, cond) in rule.when.iter().enumerate() {
                self.condition(site, &rp.key("when").index(j), cond);
            }
        }
        if action == "DENY" && ap.spec.rules.as_ref().is_none_or(Vec::is_empty) {
            self.warn(
                site,
                &spec.key("rules"),
                "a DENY policy without rules matches no request and denies nothing",
            );
        }
        self.warn(
            site,
            &FieldPath::root(),
            "AuthorizationPolicy is checked but not enforced yet: \
             requests are not authorized against it",
        );
    }

    pub(super) fn peer_authentication(&mut self, pa: &PeerAuthentication) {
        let site: &Site<'_> = pa;
        let spec = FieldPath::root().key("spec");
        if let Some(sel) = &pa.spec.selector {
            self.selector_labels(site, &spec.key("selector"), &sel.match_labels);
        }
        if let Some(mode) = pa.spec.mtls.as_ref().and_then(|m| m.mode.as_deref()) {
            self.mtls_mode(site, &spec.key("mtls").key("mode"), mode);
        }
        for (port, mtls) in &pa.spec.port_level_mtls {
            let pp = spec.key("portLevelMtls").key(&port.to_string());
            if !(1..=65535).contains(port) {
                self.error(site, &pp, format!("port must be between 1 and 65535, got {port}"));
            }
            if let Some(mode) = mtls.mode.as_deref() {
                self.mtls_mode(site, &pp.key("mode"), mode);
            }
        }
        if !pa.spec.port_level_mtls.is_empty() && pa.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty()) {
            self.error(
                site,
                &spec.key("portLevelMtls"),
                "portLevelMtls needs a selector (port numbers are a workload's own)",
            );
        }
        self.warn(
            site,
            &FieldPath::root(),
            "PeerAuthentication is checked but not enforced yet: \
             inbound traffic is not required to use mutual TLS",
        );
    }

    fn mtls_mode(&mut self, site: &Site<'_>, path: &FieldPath, mode: &str) {
        if !MTLS_MODES.contains(&mode) {
            self.error(
                site,
                path,
                format!("mode {mode:?} is not one of {}", MTLS_MODES.join(", ")),
            );
        }
    }

    fn selector_labels(
        &mut self,
        site: &Site<'_>,
        path: &FieldPath,
        labels: &std::collections::BTreeMap<String, String>,
    ) {
        for key in labels.keys() {
            if key.is_empty() || key.contains(char::is_whitespace) {
                self.error(
                    site,
                    &path.key("matchLabels"),
                    format!("label name {key:?} is not valid"),
                );
            }
        }
    }

    fn source(&mut self, site: &Site<'_>, path: &FieldPath, s: &Source) {
        let lists = [
            &s.principals,
            &s.not_principals,
            &s.request_principals,
            &s.not_request_principals,
            &s.namespaces,
            &s.not_namespaces,
            &s.ip_blocks,
            &s.not_ip_blocks,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            &s.service_accounts,
            &s.not_service_accounts,
        ];
        if lists.iter().all(|l| l.is_empty()) {
            self.error(site, path, "source must set at least one field");
        }
        for (name, list) in [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            self.ip_blocks(site, &path.key(name), list);
        }
        for (name, list) in [
            ("serviceAccounts", &s.service_accounts),
            ("notServiceAccounts", &s.not_service_accounts),
        ] {
            for (i, sa) in list.iter().enumerate() {
                if sa.split('/').count() != 2 || sa.split('/').any(str::is_empty) {
                    self.error(
                        site,
                        &path.key(name).index(i),
                        format!("{sa:?} is not NAMESPACE/SERVICE_ACCOUNT"),
                    );
                }
            }
        }
        let names_accounts = !(s.service_accounts.is_empty() && s.not_service_accounts.is_empty());
        let names_principals = !(s.principals.is_empty() && s.not_principals.is_empty());
        if names_accounts && names_principals {
            self.error(
                site,
                path,
                "serviceAccounts and principals cannot be used together (both name the peer)",
            );
        }
        for (name, list) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
        ] {
            self.no_empty_values(site, &path.key(name), list);
        }
    }

    fn operation(&mut self, site: &Site<'_>, path: &FieldPath, o: &Operation) {
        let lists = [
            &o.hosts,
            &o.not_hosts,
            &o.ports,
            &o.not_ports,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ];
        if lists.iter().all(|l| l.is_empty()) {
            self.error(site, path, "operation must set at least one field");
        }
        for (name, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
            self.ports(site, &path.key(name), list);
        }
        for (name, list) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
            for (i, p) in list.iter().enumerate() {
                if !(p.starts_with('/') || p.starts_with('*') || p.ends_with('*')) {
                    self.error(
                        site,
                        &path.key(name).index(i),
                        format!("path {p:?} must start with / (or be a * prefix or suffix match)"),
                    );
                }
            }
        }
        for (name, list) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
        ] {
            self.no_empty_values(site, &path.key(name), list);
        }
    }

    fn condition(&mut self, site: &Site<'_>, path: &FieldPath, c: &Condition) {
        let base = c.key.split('[').next().unwrap_or("");
        if c.key.is_empty() {
            self.error(site, &path.key("key"), "key is required");
        } else if !(CONDITION_KEYS.contains(&base) || base.starts_with("experimental.")) {
            self.error(
                site,
                &path.key("key"),
                format!("key {:?} is not one of {}", c.key, CONDITION_KEYS.join(", ")),
            );
        } else if matches!(base, "request.headers" | "request.auth.claims") && !c.key.ends_with(']') {
            self.error(
                site,
                &path.key("key"),
                format!("key {:?} needs a name in brackets, e.g. {base}[name]", c.key),
            );
        }
        if c.values.is_empty() && c.not_values.is_empty() {
            self.error(site, path, "a condition needs values or notValues");
        }
        for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
            match base {
                "source.ip" | "remote.ip" | "destination.ip" => self.ip_blocks(site, &path.key(name), list),
                "destination.port" => self.ports(site, &path.key(name), list),
                _ => {}
            }
        }
    }

    /// Ports written as strings, as Istio's security kinds write them.
    fn ports(&mut self, site: &Site<'_>, path: &FieldPath, list: &[String]) {
        for (i, port) in list.iter().enumerate() {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                self.error(
                    site,
                    &path.index(i),
                    format!("port {port:?} is not a number between 1 and 65535"),
                );
            }
        }
    }

    fn ip_blocks(&mut self, site: &Site<'_>, path: &FieldPath, list: &[String]) {
        for (i, block) in list.iter().enumerate() {
            if let Err(why) = check_ip_block(block) {
                self.error(site, &path.index(i), why);
            }
        }
    }

    fn no_empty_values(&mut self, site: &Site<'_>, path: &FieldPath, list: &[String]) {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                self.error(site, &path.index(i), "empty value (it would match nothing)");
            }
        }
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
fn check_ip_block(block: &str) -> Result<(), String> {
    let (addr, len) = match block.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (block, None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{block:?} is not an IP address or CIDR block"))?;
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("{block:?}: prefix length must be 0 to {max}")),
        }
    }
    Ok(())
}
