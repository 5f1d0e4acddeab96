//! Parsing the load generator's target URL.
//!
//! Only `http://` is supported: the generator measures the cost of a proxy hop in plain
//! HTTP/1.1, and TLS would measure the TLS library instead. The host is resolved once, up
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

/// A parsed, resolved `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
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
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("only http:// URLs are supported"))?;
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
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad port"))?;
        if host.is_empty() {
            return Err(invalid("missing host"));
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
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((authority, 80)),
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
    }

    #[test]
    fn rejects_bad_and_remote_urls() {
        assert!(Target::parse("https://127.0.0.1/", false).is_err());
        assert!(Target::parse("http://127.0.0.1:99999/", false).is_err());
        assert!(Target::parse("http:///x", false).is_err());
        assert!(Target::parse("http://127.0.0.1/a b", false).is_err());
        assert!(matches!(
            Target::parse("http://192.0.2.1:80/", false),
            Err(TargetError::NotLoopback { .. })
        ));
    }
}
