//! What a port says about its protocol, read as Istio reads it: an explicit protocol
//! (`appProtocol`, a ServiceEntry port's `protocol`), else the port's name by Istio's
//! `<protocol>[-<suffix>]` convention (`http-web`, `grpc-api`, `tcp-db`, `mysql`). A port with a
//! hint needs no protocol detection; a port without one is sniffed.

/// The protocol family a hint names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortHint {
    /// HTTP/1.1 (`http`, `kubernetes.io/ws`).
    Http,
    /// HTTP/2 (`http2`, `grpc`, `grpc-web`, `kubernetes.io/h2c`).
    Http2,
    /// Anything proxied as opaque TCP (`tcp`, `tls`, `https`, `mysql`, `mongo`, `redis`,
    /// `kubernetes.io/wss`): TLS stays encrypted end to end, database protocols are not parsed.
    Tcp,
}

/// The protocol names Istio knows, lower case, with their family (`udp` is left out: ringmesh
/// proxies no UDP).
const KNOWN: &[(&str, PortHint)] = &[
    ("http", PortHint::Http),
    ("http2", PortHint::Http2),
    ("grpc", PortHint::Http2),
    ("grpc-web", PortHint::Http2),
    ("tcp", PortHint::Tcp),
    ("tls", PortHint::Tcp),
    ("https", PortHint::Tcp),
    ("mysql", PortHint::Tcp),
    ("mongo", PortHint::Tcp),
    ("redis", PortHint::Tcp),
    ("kubernetes.io/h2c", PortHint::Http2),
    ("kubernetes.io/ws", PortHint::Http),
    ("kubernetes.io/wss", PortHint::Tcp),
];

impl PortHint {
    /// The family of an explicit protocol name (case-insensitive); `None` for a name Istio
    /// does not know.
    pub(crate) fn of_protocol(protocol: &str) -> Option<PortHint> {
        KNOWN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(protocol.trim()))
            .map(|(_, hint)| *hint)
    }

    /// The family a port name implies: the whole name, else the part before the first `-`
    /// (Istio's convention: `http-web`, `grpc-web-api`, `tcp-db`).
    pub(crate) fn of_name(name: &str) -> Option<PortHint> {
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        // Only the plain protocol names, never `kubernetes.io/...`, are port-name prefixes.
        let plain = |n: &str| Self::of_protocol(n).filter(|_| !n.contains('/'));
        plain(name).or_else(|| name.split_once('-').and_then(|(prefix, _)| plain(prefix)))
    }

    /// Whether the family is HTTP (either version).
    pub(crate) fn is_http(self) -> bool {
        matches!(self, PortHint::Http | PortHint::Http2)
    }

    /// The protocol names accepted, for messages.
    pub(crate) fn known_names() -> impl Iterator<Item = &'static str> {
        KNOWN.iter().map(|(name, _)| *name)
    }
}

#[cfg(test)]
mod tests {
    use super::PortHint::{self, *};

    #[test]
    fn protocols_and_names_as_istio_reads_them() {
        assert_eq!(PortHint::of_protocol("GRPC"), Some(Http2));
        assert_eq!(PortHint::of_protocol("grpc-web"), Some(Http2));
        assert_eq!(PortHint::of_protocol("HTTPS"), Some(Tcp));
        assert_eq!(PortHint::of_protocol("kubernetes.io/h2c"), Some(Http2));
        assert_eq!(PortHint::of_protocol("UDP"), None);
        assert_eq!(PortHint::of_protocol("gprc"), None);
        for (name, want) in [
            ("http", Some(Http)),
            ("http-web", Some(Http)),
            ("http2-api", Some(Http2)),
            ("grpc-web-ui", Some(Http2)),
            ("tcp-db", Some(Tcp)),
            ("tls-ingress", Some(Tcp)),
            ("mysql", Some(Tcp)),
            ("mysql-primary", Some(Tcp)),
            ("mongo", Some(Tcp)),
            ("db", None),
            ("web-http", None),
            ("httpx", None),
            ("", None),
            ("kubernetes.io/h2c", None),
        ] {
            assert_eq!(PortHint::of_name(name), want, "{name:?}");
        }
    }
}
