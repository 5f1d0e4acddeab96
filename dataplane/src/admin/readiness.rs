//! Whether the proxy is ready to take traffic, for `:15020/healthz/ready` and the admin `/ready`.
//!
//! Under `spec.controlPlane`, the routes and endpoints come from the control plane: until its
//! first config is compiled and applied, the proxy's own file may route nothing, and a request
//! would be answered 404 `no route` or 503. So the proxy is not ready until then (as Istio's
//! sidecar waits for its first push). Once it has been, a lost control plane does not make it
//! unready: it keeps serving its last good config. Draining is unready whatever the rest.

use std::fmt;

use super::AdminState;

/// The proxy's readiness, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Serving.
    Ready,
    /// Asked to drain; about to exit.
    Draining,
    /// An inbound listener takes only mTLS (`STRICT`) and the proxy has no workload certificate
    /// yet: it could serve nobody there.
    AwaitingCertificate,
    /// Under a control plane that has not sent a config this proxy applied yet.
    AwaitingControlPlane {
        /// The replica tried (empty before the first attempt).
        address: String,
        /// Why the last session failed, or why the first config was refused.
        last_error: Option<String>,
    },
}

impl Readiness {
    /// Reads the state the admin server shares with the control thread.
    pub(crate) fn of(state: &AdminState) -> Readiness {
        if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Readiness::Draining;
        }
        let snapshot = state.source.load();
        let strict =
            |port: u16| snapshot.security.peer_authn.mode_for(port) == ringmesh_api::snapshot::MtlsMode::Strict;
        // A capture listener serves the app's ports: their modes count, beside the default.
        let strict_inbound = snapshot.listeners.iter().any(|l| {
            l.inbound
                && (strict(l.address.port())
                    || (matches!(l.kind, ringmesh_api::snapshot::ListenerKind::Captured)
                        && snapshot.capture.app_ports.keys().any(|p| strict(*p))))
        });
        if strict_inbound && state.identity.load().is_none() {
            return Readiness::AwaitingCertificate;
        }
        if snapshot.proxy.control_plane.is_none() {
            return Readiness::Ready;
        }
        // The discovery client sets its status when it starts; before that, nothing came yet.
        match state.control_plane.load_full() {
            Some(s) if s.serving_version > 0 => Readiness::Ready,
            Some(s) => Readiness::AwaitingControlPlane {
                address: s.address.clone(),
                last_error: s.last_error.clone(),
            },
            None => Readiness::AwaitingControlPlane {
                address: String::new(),
                last_error: None,
            },
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Ready => f.write_str("ready"),
            Readiness::Draining => f.write_str("draining"),
            Readiness::AwaitingCertificate => {
                f.write_str("waiting for the workload certificate (an inbound listener is STRICT mTLS); see /certs")
            }
            Readiness::AwaitingControlPlane { address, last_error } => {
                f.write_str("waiting for the first config from the control plane")?;
                if !address.is_empty() {
                    write!(f, " at {address}")?;
                }
                if let Some(e) = last_error {
                    write!(f, " (last error: {e})")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_control_plane_and_its_error() {
        let r = Readiness::AwaitingControlPlane {
            address: "127.0.0.1:15010".into(),
            last_error: Some("cannot reach the control plane".into()),
        };
        assert_eq!(
            r.to_string(),
            "waiting for the first config from the control plane at 127.0.0.1:15010 \
             (last error: cannot reach the control plane)"
        );
    }
}
