//! Counters of the security steps (mTLS handshakes, plaintext refused, authorization), per
//! worker like every other counter; each is declared once, with its Prometheus name and help,
//! and the shard, its copy, the merge and the exposition follow from that list.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

macro_rules! security_counters {
    ($($field:ident => $metric:literal, $help:literal;)*) => {
        /// One worker's security counters.
        #[derive(Debug, Default)]
        pub struct SecurityStats {
            $(#[doc = $help] pub(crate) $field: Cell<u64>,)*
            /// Inbound mTLS connections by the peer's principal (a mesh has few identities;
            /// a peer without one counts as `unknown`).
            by_principal: RefCell<BTreeMap<Box<str>, u64>>,
        }

        /// Security counters summed over workers.
        #[derive(Debug, Clone, Default, Serialize)]
        pub struct SecurityTotals {
            $(#[doc = $help] pub $field: u64,)*
            /// Inbound mTLS connections by the peer's principal.
            pub by_principal: BTreeMap<String, u64>,
        }

        impl SecurityStats {
            /// A copy of this shard.
            pub fn totals(&self) -> SecurityTotals {
                SecurityTotals {
                    $($field: self.$field.get(),)*
                    by_principal: self.by_principal.borrow().iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                }
            }

            /// Counts an inbound mTLS connection from `principal` (no allocation once the
            /// principal has been seen on this worker).
            pub(crate) fn inbound_from(&self, principal: Option<&str>) {
                let principal = principal.unwrap_or("unknown");
                let mut map = self.by_principal.borrow_mut();
                match map.get_mut(principal) {
                    Some(n) => *n += 1,
                    None => {
                        map.insert(principal.into(), 1);
                    }
                }
            }
        }

        impl SecurityTotals {
            /// Adds another shard's copy.
            pub fn merge(&mut self, o: &SecurityTotals) {
                $(self.$field += o.$field;)*
                for (k, v) in &o.by_principal {
                    *self.by_principal.entry(k.clone()).or_insert(0) += v;
                }
            }

            /// Writes every counter in Prometheus' text format.
            pub fn write_prometheus(&self, out: &mut String) {
                $(
                    let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter\n{} {}", $metric, $help, $metric, $metric, self.$field);
                )*
                let name = "ringmesh_inbound_tls_connections_total";
                let _ = writeln!(out, "# HELP {name} Inbound mTLS connections by the peer's SPIFFE principal (Istio's source_principal).\n# TYPE {name} counter");
                for (principal, n) in &self.by_principal {
                    let _ = writeln!(out, "{name}{{source_principal=\"{}\"}} {n}", principal.replace(['\\', '"', '\n'], "_"));
                }
            }
        }
    };
}

security_counters! {
    tls_handshakes => "ringmesh_inbound_tls_handshakes_total", "mTLS handshakes completed on inbound listeners.";
    tls_resumed => "ringmesh_inbound_tls_resumed_total", "Inbound mTLS handshakes that resumed an earlier session (no certificate exchange).";
    tls_handshake_failed => "ringmesh_inbound_tls_handshake_failed_total", "Inbound mTLS handshakes that failed (no or untrusted client certificate, timeout, no workload certificate).";
    plaintext_refused => "ringmesh_inbound_plaintext_refused_total", "Plaintext connections refused by PeerAuthentication STRICT.";
    awaiting_config_refused => "ringmesh_inbound_awaiting_config_refused_total", "Inbound connections refused because the first config from the control plane (with the workload's policies) had not been applied yet.";
    tls_client_handshakes => "ringmesh_outbound_tls_handshakes_total", "mTLS handshakes completed to upstream proxies.";
    tls_client_handshake_failed => "ringmesh_outbound_tls_handshake_failed_total", "Outbound mTLS handshakes that failed or could not start.";
    authz_allowed => "ringmesh_rbac_allowed_total", "Inbound requests and connections allowed by the AuthorizationPolicies (counted only where a policy applies).";
    authz_denied => "ringmesh_rbac_denied_total", "Inbound requests (403) and connections (closed) denied by the AuthorizationPolicies.";
    authz_audited => "ringmesh_rbac_audited_total", "Inbound requests and connections that matched an AUDIT policy.";
    path_refused => "ringmesh_downstream_rq_path_refused_total", "Requests refused with 400 because their path holds forbidden bytes or escapes (path normalization).";
}
