//! Step 5 of the request path, "authorize": the workload's compiled `AuthorizationPolicy`
//! tables (`ringmesh_api::authz`) asked about one inbound request or connection.
//!
//! Only inbound listeners are checked (the policies protect this proxy's workload, as Istio's
//! are enforced by the server-side sidecar). The request's attributes are borrowed views —
//! the normalized host and path, the method, the head's fields, the peer's SPIFFE id from the
//! mTLS handshake — so a check allocates nothing. A denial is counted and logged (rate-limited,
//! naming the policy that decided); a match of an `AUDIT` policy is counted and logged the same
//! way and changes nothing.

use std::net::SocketAddr;

use ringmesh_api::authz::{Authz, Decision, HeaderLookup, HttpAttrs, PeerId, RequestAttrs};

use crate::telemetry::request::AuthzVerdict;
use crate::telemetry::stats::inc;
use crate::tls::InboundConn;
use crate::worker::Worker;

/// What a request says of itself, for [`check`]: `None` for a TCP connection.
#[derive(Clone, Copy)]
pub(crate) struct HttpRequest<'a> {
    pub(crate) host: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a dyn HeaderLookup,
}

/// What the workload's policies say of this request (or connection), with the policy that
/// decided; `None` when no policy applies to the workload (nothing is counted then).
pub(crate) fn check(
    worker: &Worker,
    authz: &Authz,
    conn: &InboundConn,
    peer: SocketAddr,
    http: Option<HttpRequest<'_>>,
) -> Option<AuthzVerdict> {
    if authz.is_empty() {
        return None;
    }
    let attrs = attrs(conn, peer, http);
    let stats = &worker.stats.security;
    match authz.evaluate(&attrs) {
        Decision::Allowed { audit } => {
            inc(&stats.authz_allowed);
            if let Some(policy) = audit {
                inc(&stats.authz_audited);
                worker.stats.log_limit.log("rbac-audit", || {
                    tracing::info!(
                        %peer,
                        principal = conn.identity.as_ref().map(|i| i.principal()).unwrap_or("-"),
                        method = http.map(|h| h.method).unwrap_or("-"),
                        path = http.map(|h| h.path).unwrap_or("-"),
                        policy = authz.policy_name(policy),
                        "RBAC audit: request matched an AUDIT policy"
                    )
                });
                return Some(AuthzVerdict::Audited(policy));
            }
            Some(AuthzVerdict::Allowed)
        }
        Decision::Denied { policy } => {
            inc(&stats.authz_denied);
            worker.stats.log_limit.log("rbac-denied", || {
                tracing::info!(
                    %peer,
                    principal = conn.identity.as_ref().map(|i| i.principal()).unwrap_or("-"),
                    method = http.map(|h| h.method).unwrap_or("-"),
                    path = http.map(|h| h.path).unwrap_or("-"),
                    port = conn.local.port(),
                    policy = authz.policy_name(policy),
                    "RBAC: access denied"
                )
            });
            Some(AuthzVerdict::Denied(policy))
        }
    }
}

/// What the policies are asked about a request (or connection) from `peer` on `conn`: the
/// one translation from the connection's facts to the attributes, shared by [`check`] and
/// the admin server's `/explain`, so the two cannot disagree.
pub(crate) fn attrs<'a>(conn: &'a InboundConn, peer: SocketAddr, http: Option<HttpRequest<'a>>) -> RequestAttrs<'a> {
    RequestAttrs {
        peer: conn.identity.as_ref().map(|id| PeerId {
            principal: id.principal(),
            namespace: id.namespace(),
            service_account: id.service_account(),
        }),
        source_ip: peer.ip(),
        remote_ip: peer.ip(),
        destination_ip: conn.local.ip(),
        destination_port: conn.local.port(),
        sni: conn.sni.as_deref(),
        http: http.map(|h| HttpAttrs {
            host: h.host,
            method: h.method,
            path: h.path,
            headers: h.headers,
        }),
    }
}

/// An HTTP/1.1 head's fields, for `when: request.headers[...]` conditions.
pub(crate) struct H1Headers<'a> {
    pub(crate) src: &'a [u8],
    pub(crate) head: &'a crate::http::h1::RequestHead,
}

impl HeaderLookup for H1Headers<'_> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.head
            .headers()
            .iter()
            .filter(|h| h.is_named(self.src, name.as_bytes()))
            .any(|h| f(h.value(self.src)))
    }
}

/// An HTTP/2 request's fields.
pub(crate) struct H2Headers<'a>(pub(crate) &'a http::HeaderMap);

impl HeaderLookup for H2Headers<'_> {
    fn any_value(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0.get_all(name).iter().any(|v| f(v.as_bytes()))
    }
}
