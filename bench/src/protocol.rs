//! The protocol a row of the suite speaks: HTTP/1.1, HTTP/2 or gRPC unary.
//!
//! Every topology is measured once per protocol in `--protocols`, and each protocol is spoken
//! end to end: the load generator speaks it to the entry (h2c with prior knowledge for HTTP/2
//! and gRPC, as a gRPC client inside a mesh does), and each proxy speaks it to the echo
//! upstream (ringmesh through the ServiceEntry port's protocol, haproxy through `proto h2`,
//! nginx through `grpc_pass`). The protocol is a row's second name beside its scenario, so
//! files of HTTP/1.1 rows keep the names they had before rows had a protocol.

use std::fmt;

use serde::Serialize;

/// What a row's requests are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request in flight per connection.
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2 over cleartext (h2c, prior knowledge): `GET /`, several streams per connection.
    #[serde(rename = "h2")]
    H2,
    /// gRPC unary calls (`ringmesh.echo.Echo/Unary`) over h2c, several streams per connection.
    #[serde(rename = "grpc")]
    Grpc,
}

impl Protocol {
    /// Every protocol, in round order.
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2, Protocol::Grpc];

    /// The name in flags, file names and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Grpc => "grpc",
        }
    }

    /// The name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2 => "HTTP/2",
            Protocol::Grpc => "gRPC unary",
        }
    }

    /// Parses a flag value (`http1`, `h2`, `grpc`, and the load generator's other spellings).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.trim() {
            "http1" | "h1" | "http/1.1" => Some(Protocol::Http1),
            "h2" | "http2" => Some(Protocol::H2),
            "grpc" | "grpc-unary" => Some(Protocol::Grpc),
            _ => None,
        }
    }

    /// What the load generator runs on each connection.
    pub fn loadgen(self) -> ringmesh_loadgen::Protocol {
        match self {
            Protocol::Http1 => ringmesh_loadgen::Protocol::Http1,
            Protocol::H2 => ringmesh_loadgen::Protocol::H2,
            Protocol::Grpc => ringmesh_loadgen::Protocol::Grpc,
        }
    }

    /// True when the row runs on HTTP/2 (several streams per connection).
    pub fn is_h2(self) -> bool {
        self != Protocol::Http1
    }

    /// Appended to a scenario's name in file names and process roles: empty for HTTP/1.1, so
    /// its files keep their names (`ringmesh-r1.hgrm`, `ringmesh.yaml`).
    pub fn suffix(self) -> &'static str {
        match self {
            Protocol::Http1 => "",
            Protocol::H2 => "-h2",
            Protocol::Grpc => "-grpc",
        }
    }

    /// The ServiceEntry port (name, Istio protocol) that makes ringmesh speak this protocol
    /// to the upstream: `HTTP2` and `GRPC` ports get HTTP/2 upstream connections.
    pub fn service_port(self) -> (&'static str, &'static str) {
        match self {
            Protocol::Http1 => ("http", "HTTP"),
            Protocol::H2 => ("http2", "HTTP2"),
            Protocol::Grpc => ("grpc", "GRPC"),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many connections carry `lanes` requests in flight on HTTP/2 with `streams` streams
/// each: the HTTP/2 rows keep the HTTP/1.1 rows' concurrency (one request per connection
/// there) on `1/streams` as many connections, rounded up.
pub fn h2_connections(lanes: usize, streams: usize) -> usize {
    lanes.div_ceil(streams.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_http1_files_keep_their_names() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::parse(p.name()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        assert_eq!(Protocol::parse("grpc-stream"), None, "streaming gRPC is not a row");
        assert_eq!(Protocol::Http1.suffix(), "");
        assert!(!Protocol::Http1.is_h2() && Protocol::Grpc.is_h2());
        assert_eq!(Protocol::Grpc.service_port(), ("grpc", "GRPC"));
    }

    #[test]
    fn h2_rows_keep_the_concurrency_on_fewer_connections() {
        assert_eq!(h2_connections(16, 4), 4);
        assert_eq!(h2_connections(32, 4), 8);
        assert_eq!(
            h2_connections(10, 4),
            3,
            "rounded up: at least the HTTP/1.1 concurrency"
        );
        assert_eq!(h2_connections(1, 100), 1);
        assert_eq!(h2_connections(16, 0), 16);
    }
}
