//! `AuthorizationPolicy` and `PeerAuthentication`, in two steps.
//!
//! Each resource on its own ([`Compiler::authorization_policy`],
//! [`Compiler::peer_authentication`]): the values Istio's own validation refuses are errors
//! here too, with the field's path, so that a policy that passes `ringmesh analyze` also passes
//! `istioctl validate`; rules that can never match (a value in both a field and its `not` form,
//! a principal that is not an identity, JWT attributes ringmesh cannot know) are warnings.
//!
//! Then, for this proxy's workload ([`Compiler::security`], after the listeners): the policies
//! that select it become [`Security`]: the [`Authz`] matchers ([`crate::authz`]) and the
//! resolved [`PeerAuthn`], with the path normalization from the `ProxyConfig`. The data plane
//! applies them on inbound listeners.

use super::selection::{selector_matches, Levels, Selecting as _};
use super::{Compiler, Site};
use crate::authz::{
    Action, Authz, Cidr, ConditionMatch, OperationMatch, Policy, Rule, ServiceAccount, SourceMatch, StrMatch, Values,
};
use crate::locate::FieldPath;
use crate::resources::{
    AuthorizationPolicy, Condition, Operation, PeerAuthentication, ProxyConfig, ResourceMeta, Source, ROOT_NAMESPACE,
};
use crate::snapshot::{Listener, MtlsMode, PeerAuthn, Security, WorkloadSettings};

/// What a rule that names JWT attributes does without `RequestAuthentication`.
const NO_JWT: &str = "ringmesh does not support RequestAuthentication (JWT): no request has a \
                      request principal or claims, so values here never match and notValues \
                      always match";

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
        if action == "CUSTOM" {
            self.error(
                site,
                &spec.key("action"),
                "CUSTOM is not supported (ringmesh has no external authorization yet)",
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
        for (name, list) in [("principals", &s.principals), ("notPrincipals", &s.not_principals)] {
            for (i, p) in list.iter().enumerate() {
                self.principal_form(site, &path.key(name).index(i), p);
            }
        }
        for (name, list) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ] {
            if !list.is_empty() {
                self.warn(site, &path.key(name), NO_JWT);
            }
        }
        for (name, any, none) in [
            ("principals", &s.principals, &s.not_principals),
            ("requestPrincipals", &s.request_principals, &s.not_request_principals),
            ("namespaces", &s.namespaces, &s.not_namespaces),
            ("ipBlocks", &s.ip_blocks, &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks, &s.not_remote_ip_blocks),
            ("serviceAccounts", &s.service_accounts, &s.not_service_accounts),
        ] {
            self.contradiction(site, path, name, any, none);
        }
    }

    /// A principal that is neither `<trust domain>/ns/<ns>/sa/<sa>` nor a `*` pattern names no
    /// peer certificate ringmesh (or Istio) issues.
    fn principal_form(&mut self, site: &Site<'_>, path: &FieldPath, p: &str) {
        if p.starts_with('*') || p.ends_with('*') {
            return;
        }
        let parts: Vec<&str> = p.split('/').collect();
        let identity =
            matches!(parts.as_slice(), [td, "ns", ns, "sa", sa] if ![td, ns, sa].iter().any(|s| s.is_empty()));
        if !identity {
            let hint = if p.starts_with("spiffe://") {
                " (write it without spiffe://)"
            } else {
                ""
            };
            self.warn(
                site,
                path,
                format!(
                    "principal {p:?} is not of the form <trust domain>/ns/<namespace>/sa/<service account>{hint}, \
                     so it can never match a peer"
                ),
            );
        }
    }

    /// `paths: [/a]` with `notPaths: [/a]`: the field can never match.
    fn contradiction(&mut self, site: &Site<'_>, path: &FieldPath, name: &str, any: &[String], none: &[String]) {
        if let Some(v) = any.iter().find(|v| none.contains(v)) {
            let not = not_name(name);
            self.warn(
                site,
                &path.key(&not),
                format!("{v:?} is in both {name} and {not}, so {name} can never match {v:?}"),
            );
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
                } else if p.contains("{*}") || p.contains("{**}") {
                    self.error(
                        site,
                        &path.key(name).index(i),
                        format!("path templates ({{*}}, {{**}}) are not supported yet: {p:?}"),
                    );
                }
            }
        }
        for (name, any, none) in [
            ("hosts", &o.hosts, &o.not_hosts),
            ("ports", &o.ports, &o.not_ports),
            ("methods", &o.methods, &o.not_methods),
            ("paths", &o.paths, &o.not_paths),
        ] {
            self.contradiction(site, path, name, any, none);
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
        if base.starts_with("request.auth.") {
            self.warn(site, &path.key("key"), NO_JWT);
        } else if base.starts_with("experimental.") {
            self.warn(
                site,
                &path.key("key"),
                format!(
                    "{:?} is not supported: the condition never matches (the rule never applies, \
                     so in a DENY policy it denies nothing)",
                    c.key
                ),
            );
        } else if base == "source.serviceAccount" {
            for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
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
        } else if base == "source.principal" {
            for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                for (i, p) in list.iter().enumerate() {
                    self.principal_form(site, &path.key(name).index(i), p);
                }
            }
        }
        if let Some(v) = c.values.iter().find(|v| c.not_values.contains(v)) {
            self.warn(
                site,
                &path.key("notValues"),
                format!("{v:?} is in both values and notValues, so the condition can never match {v:?}"),
            );
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

/// `paths` → `notPaths`.
fn not_name(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
    format!("not{first}{}", chars.as_str())
}

/// A valid mode other than `UNSET`; an invalid one was reported already.
fn mtls_mode(mode: Option<&str>) -> Option<MtlsMode> {
    match mode? {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "DISABLE" => Some(MtlsMode::Disable),
        _ => None,
    }
}

fn strs(list: &[String]) -> Vec<StrMatch> {
    list.iter().map(|v| StrMatch::parse(v)).collect()
}

fn lower_strs(list: &[String]) -> Vec<StrMatch> {
    list.iter().map(|v| StrMatch::parse(&v.to_ascii_lowercase())).collect()
}

/// Blocks that failed [`check_ip_block`] were reported already and are left out.
fn cidrs(list: &[String]) -> Vec<Cidr> {
    list.iter().filter_map(|b| Cidr::parse(b)).collect()
}

fn ports(list: &[String]) -> Vec<u16> {
    list.iter().filter_map(|p| p.parse().ok()).collect()
}

fn service_accounts(list: &[String]) -> Vec<ServiceAccount> {
    list.iter()
        .filter_map(|sa| sa.split_once('/'))
        .map(|(ns, name)| ServiceAccount {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
        .collect()
}

impl Compiler {
    /// Phase 8: what guards this proxy's workload, from the policies that select it.
    pub(super) fn security(
        &mut self,
        authorization_policies: &[&AuthorizationPolicy],
        peer_authentications: &[&PeerAuthentication],
        pc: Option<&ProxyConfig>,
        workload: &WorkloadSettings,
        listeners: &[Listener],
    ) -> Security {
        // The ports this workload is known to take traffic on, for rules naming other ports.
        let mut known_ports: Vec<u16> = workload.ports.values().copied().collect();
        known_ports.extend(listeners.iter().filter(|l| l.inbound).map(|l| l.address.port()));
        let selected = authorization_policies.iter().filter(|ap| {
            let ns = ap.namespace();
            (ns == workload.namespace || ns == ROOT_NAMESPACE) && selector_matches(ap.selector(), &workload.labels)
        });
        let mut authz = Authz::default();
        for ap in selected {
            if let Some(policy) = self.compile_policy(ap, &known_ports) {
                authz.policies.push(policy);
            }
        }
        Security {
            path_normalization: pc
                .and_then(|pc| pc.spec.path_normalization.as_ref())
                .map(|p| p.normalization)
                .unwrap_or_default(),
            authz,
            peer_authn: self.peer_authn(peer_authentications, workload),
            min_tls_version: pc
                .and_then(|pc| pc.spec.mesh_mtls.as_ref())
                .map(|m| m.min_protocol_version)
                .unwrap_or_default(),
            awaiting_control_plane: false,
        }
    }

    /// Istio's precedence: the workload's own policy (a selector, in its namespace), then its
    /// namespace's (no selector), then the mesh's (root namespace, no selector); `UNSET` (or no
    /// mode) passes to the next; nothing at all is `PERMISSIVE`. Port modes come from the
    /// workload's own policy only (they need a selector).
    fn peer_authn(&mut self, all: &[&PeerAuthentication], w: &WorkloadSettings) -> PeerAuthn {
        let Levels {
            mesh,
            namespace,
            workload: own,
        } = self.levels(all, w);
        let mode = |pa: Option<&PeerAuthentication>| {
            pa.and_then(|pa| mtls_mode(pa.spec.mtls.as_ref().and_then(|m| m.mode.as_deref())))
        };
        let default = mode(own)
            .or_else(|| mode(namespace))
            .or_else(|| mode(mesh))
            .unwrap_or(MtlsMode::Permissive);
        let ports = own
            .map(|pa| {
                pa.spec
                    .port_level_mtls
                    .iter()
                    .filter_map(|(port, m)| {
                        let port = u16::try_from(*port).ok().filter(|p| *p > 0)?;
                        Some((port, mtls_mode(m.mode.as_deref()).unwrap_or(default)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        PeerAuthn { default, ports }
    }

    fn compile_policy(&mut self, ap: &AuthorizationPolicy, known_ports: &[u16]) -> Option<Policy> {
        let action = match ap.spec.action.as_deref().unwrap_or("ALLOW") {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            // CUSTOM and unknown actions are errors already.
            _ => return None,
        };
        let site: &Site<'_> = ap;
        let mut rules = Vec::new();
        for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
            let rp = FieldPath::root().key("spec").key("rules").index(i);
            let from = rule.from.iter().map(|f| source_match(&f.source)).collect();
            let mut to = Vec::new();
            for (j, t) in rule.to.iter().enumerate() {
                let o = &t.operation;
                self.unknown_ports(
                    site,
                    &rp.key("to").index(j).key("operation").key("ports"),
                    &o.ports,
                    known_ports,
                );
                to.push(OperationMatch {
                    hosts: Values::new(lower_strs(&o.hosts), lower_strs(&o.not_hosts)),
                    ports: Values::new(ports(&o.ports), ports(&o.not_ports)),
                    methods: Values::new(strs(&o.methods), strs(&o.not_methods)),
                    paths: Values::new(strs(&o.paths), strs(&o.not_paths)),
                });
            }
            let mut when = Vec::new();
            for (j, c) in rule.when.iter().enumerate() {
                if c.key.split('[').next() == Some("destination.port") {
                    self.unknown_ports(site, &rp.key("when").index(j).key("values"), &c.values, known_ports);
                }
                when.extend(condition_match(c));
            }
            rules.push(Rule { from, to, when });
        }
        Some(Policy {
            name: format!("{}/{}", ap.namespace(), ap.metadata.name),
            action,
            rules,
        })
    }

    fn unknown_ports(&mut self, site: &Site<'_>, path: &FieldPath, list: &[String], known: &[u16]) {
        if known.is_empty() {
            return;
        }
        for (i, port) in list.iter().enumerate() {
            if let Ok(n) = port.parse::<u16>() {
                if !known.contains(&n) {
                    let mut known = known.to_vec();
                    known.sort_unstable();
                    known.dedup();
                    let known: Vec<String> = known.iter().map(u16::to_string).collect();
                    self.warn(
                        site,
                        &path.index(i),
                        format!(
                            "port {n} is not a port of this workload ({}), so this can never match",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

fn source_match(s: &Source) -> SourceMatch {
    SourceMatch {
        principals: Values::new(strs(&s.principals), strs(&s.not_principals)),
        request_principals: Values::new(strs(&s.request_principals), strs(&s.not_request_principals)),
        namespaces: Values::new(strs(&s.namespaces), strs(&s.not_namespaces)),
        service_accounts: Values::new(
            service_accounts(&s.service_accounts),
            service_accounts(&s.not_service_accounts),
        ),
        ip_blocks: Values::new(cidrs(&s.ip_blocks), cidrs(&s.not_ip_blocks)),
        remote_ip_blocks: Values::new(cidrs(&s.remote_ip_blocks), cidrs(&s.not_remote_ip_blocks)),
    }
}

/// `None` for a condition that was reported as an error.
fn condition_match(c: &Condition) -> Option<ConditionMatch> {
    let (base, name) = match c.key.split_once('[') {
        Some((base, rest)) => (base, rest.strip_suffix(']')),
        None => (c.key.as_str(), None),
    };
    let s = || Values {
        any: strs(&c.values),
        none: strs(&c.not_values),
    };
    let ips = || Values {
        any: cidrs(&c.values),
        none: cidrs(&c.not_values),
    };
    Some(match base {
        "request.headers" => ConditionMatch::Header {
            name: name?.to_ascii_lowercase(),
            values: s(),
        },
        "source.ip" => ConditionMatch::SourceIp(ips()),
        "remote.ip" => ConditionMatch::RemoteIp(ips()),
        "destination.ip" => ConditionMatch::DestinationIp(ips()),
        "destination.port" => ConditionMatch::DestinationPort(Values {
            any: ports(&c.values),
            none: ports(&c.not_values),
        }),
        "source.namespace" => ConditionMatch::SourceNamespace(s()),
        "source.principal" => ConditionMatch::SourcePrincipal(s()),
        "source.serviceAccount" => ConditionMatch::SourceServiceAccount(Values {
            any: service_accounts(&c.values),
            none: service_accounts(&c.not_values),
        }),
        "connection.sni" => ConditionMatch::Sni(s()),
        b if b.starts_with("request.auth.") => ConditionMatch::RequestAuth(s()),
        b if b.starts_with("experimental.") => ConditionMatch::Never,
        _ => return None,
    })
}
