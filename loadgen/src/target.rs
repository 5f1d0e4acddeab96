//! Parsing the load generator's target URL.
//!
//! `http://` (HTTP/1.1 or h2c), `https://` (TLS with ALPN, for HTTP/2 and gRPC) and `tcp://`
//! (raw TCP echo) are accepted; the scheme picks the transport and `--protocol` what runs on
//! it. The host is resolved once, up
//! front, so name resolution never lands inside a measured request; by default only loopback
//! targets are accepted, because a load generator pointed at the wrong host by a typo is a
//! denial-of-service tool.

use std::net::{SocketAddr, ToSocketAddrs};

use thiserror::Error;

/// Why a target URL was refused.
#[derive(Debug, Error)]
pub enum TargetError {
    /// Not of the form `http://host[:port][/path]`.
    #[error("invalid URL {url:?}: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host did not resolve.
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        /// The host part of the URL.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The host resolved to a non-loopback address and remote targets were not allowed.
    #[error("refusing non-loopback target {addr} (pass --allow-remote to load a remote host)")]
    NotLoopback {
        /// The resolved address.
        addr: SocketAddr,
    },
}

/// The URL scheme: which transport the generator opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// Plain TCP carrying HTTP/1.1, h2c or gRPC.
    #[default]
    Http,
    /// TLS carrying HTTP/2 or gRPC (ALPN `h2`).
    Https,
    /// Plain TCP, raw bytes echoed back.
    Tcp,
}

/// A parsed, resolved URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http`, `https` or `tcp`.
    pub scheme: Scheme,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The authority as written (`host[:port]`), the default `Host` header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses and resolves `url`; with `allow_remote == false` only loopback addresses pass.
    pub fn parse(url: &str, allow_remote: bool) -> Result<Self, TargetError> {
        let invalid = |reason| TargetError::Invalid {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r, 80)
        } else if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r, 443)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (Scheme::Tcp, r, 0)
        } else {
            return Err(invalid("only http://, https:// and tcp:// URLs are supported"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains('@') {
            return Err(invalid("user info is not supported"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid("path contains spaces or control characters"));
        }
        let (host, port) = split_host_port(authority, default_port).ok_or_else(|| invalid("bad port"))?;
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        if port == 0 {
            return Err(invalid("tcp:// URLs need a port"));
        }
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|source| TargetError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| TargetError::Resolve {
                host: host.to_owned(),
                source: std::io::Error::other("no addresses"),
            })?;
        if !allow_remote && !addr.ip().is_loopback() {
            return Err(TargetError::NotLoopback { addr });
        }
        Ok(Self {
            scheme,
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl Target {
    /// The host part of the authority (without port or IPv6 brackets), e.g. for TLS SNI.
    pub fn host(&self) -> &str {
        split_host_port(&self.authority, 1).map_or(self.authority.as_str(), |(h, _)| h)
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=1", false).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/a?b=1");
        let t = Target::parse("http://[::1]:9", false).unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.path, "/");
        assert_eq!(Target::parse("http://127.0.0.1", false).unwrap().addr.port(), 80);
        let t = Target::parse("https://localhost:8443/x", false).unwrap();
        assert_eq!((t.scheme, t.addr.port(), t.host()), (Scheme::Https, 8443, "localhost"));
        assert_eq!(Target::parse("https://[::1]", false).unwrap().host(), "::1");
        assert_eq!(Target::parse("tcp://127.0.0.1:7", false).unwrap().scheme, Scheme::Tcp);
    }

    #[test]
    fn rejects_bad_and_remote_urls() {
        assert!(Target::parse("ftp://127.0.0.1/", false).is_err());
        assert!(Target::parse("tcp://127.0.0.1/", false).is_err());
        assert!(Target::parse("http://127.0.0.1:99999/", false).is_err());
        assert!(Target::parse("http:///x", false).is_err());
        assert!(Target::parse("http://127.0.0.1/a b", false).is_err());
        assert!(matches!(
            Target::parse("http://192.0.2.1:80/", false),
            Err(TargetError::NotLoopback { .. })
        ));
    }
}
