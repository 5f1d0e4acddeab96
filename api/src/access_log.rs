//! Access-log formats: Envoy's `%FIELD%` command operators, parsed once when the config
//! compiles, so a typo is an error naming the operator (not a line of `-` in production) and
//! the proxy renders each line from a list of parts without parsing anything per request.
//!
//! `TEXT` is one line template. `JSON` is an object whose values are templates, as Istio's
//! `accessLogFormat` is with `accessLogEncoding: JSON`; a value that is one numeric operator
//! (`%RESPONSE_CODE%`, `%DURATION%`, …) is written as a number, as Envoy types it.

use serde::Serialize;

/// One `%…%` command operator: what a part of a line shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Field {
    /// `%START_TIME%`: when the request head arrived, RFC 3339 UTC with milliseconds.
    StartTime,
    /// `%REQ(A?B)%`: the first of these request header fields present. `:method`, `:path`,
    /// `:authority` and `:scheme` name the request line's parts in either protocol.
    Req(Vec<String>),
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    Protocol,
    /// `%RESPONSE_CODE%`: the status sent to the client (0 when none was).
    ResponseCode,
    /// `%RESPONSE_FLAGS%`: Envoy's response flags (`UH`, `NR`, `-`).
    ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%`: why the status is what it is (`via_upstream`, or the
    /// local reply's reason).
    ResponseCodeDetails,
    /// `%CONNECTION_TERMINATION_DETAILS%`: why the proxy closed the connection, if it did.
    ConnectionTerminationDetails,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the last upstream connection failed.
    UpstreamTransportFailureReason,
    /// `%BYTES_RECEIVED%`: request body bytes from the client.
    BytesReceived,
    /// `%BYTES_SENT%`: response body bytes to the client.
    BytesSent,
    /// `%DURATION%`: milliseconds from the request head to the end of the response.
    Duration,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: milliseconds from the request sent upstream
    /// to the response head back.
    UpstreamServiceTime,
    /// `%GRPC_STATUS%`, `%RESP(GRPC-STATUS)%`, `%TRAILER(GRPC-STATUS)%`: the gRPC status.
    GrpcStatus,
    /// `%UPSTREAM_HOST%`: the endpoint's address.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`: the cluster's name (`outbound|80||reviews.default`).
    UpstreamCluster,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    UpstreamLocalAddress,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the client dialled (the original destination
    /// of a captured connection).
    DownstreamLocalAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client's address and port.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamRemoteAddressWithoutPort,
    /// `%REQUESTED_SERVER_NAME%`: the SNI of the client's TLS handshake.
    RequestedServerName,
    /// `%ROUTE_NAME%`.
    RouteName,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the client's SPIFFE id, proven by mTLS.
    DownstreamPeerUriSan,
    /// `%UPSTREAM_PEER_URI_SAN%`: the upstream proxy's SPIFFE id, proven by mTLS.
    UpstreamPeerUriSan,
    /// `%TRACE_ID%`: the request's trace id (hex), sampled or not.
    TraceId,
    /// `%RINGMESH_AUTHZ%`: the authorization decision and the policy that made it
    /// (`allow ns/name`, `deny ns/name`, `-` when no policy applies).
    Authz,
    /// `%RINGMESH_OVERHEAD%`: microseconds the proxy itself spent on the request (head in to
    /// head out, both ways).
    Overhead,
}

impl Field {
    /// Whether JSON writes the value as a number when it is the whole value.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Field::ResponseCode
                | Field::BytesReceived
                | Field::BytesSent
                | Field::Duration
                | Field::UpstreamServiceTime
                | Field::GrpcStatus
                | Field::Overhead
        )
    }
}

/// A piece of a template: text as written, or an operator with an optional length cap
/// (`%REQ(USER-AGENT):10%`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Part {
    /// Written as is.
    Literal(String),
    /// Replaced by the field's value.
    Field {
        /// What.
        field: Field,
        /// At most this many bytes of it.
        max_len: Option<usize>,
    },
}

/// How each access-log line is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LogFormat {
    /// One template per line.
    Text(Vec<Part>),
    /// One JSON object per line: each key's value is a template.
    Json(Vec<(String, Vec<Part>)>),
}

/// Istio's default `TEXT` format (`meshConfig.accessLogFormat` unset).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \
\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% \
%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% \
%REQUESTED_SERVER_NAME% %ROUTE_NAME%";

/// Istio's default `JSON` keys, in its order, and ringmesh's after them (the trace id, both
/// peers' identities, the authorization decision and the proxy's own time).
pub const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("trace_id", "%TRACE_ID%"),
    ("grpc_status", "%GRPC_STATUS%"),
    ("downstream_peer_principal", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("upstream_peer_principal", "%UPSTREAM_PEER_URI_SAN%"),
    ("authorization", "%RINGMESH_AUTHZ%"),
    ("proxy_overhead_us", "%RINGMESH_OVERHEAD%"),
];

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `%` opened and never closed.
    #[error("a % at byte {0} is not closed (write %% for a literal %)")]
    Unclosed(usize),
    /// An operator this proxy does not know.
    #[error("%{0}% is not a supported operator")]
    Unknown(String),
    /// `REQ(…)` without a header name.
    #[error("%{0}% names no header")]
    NoHeader(String),
    /// A length cap that is not a number.
    #[error("in %{0}%, the length after ':' must be a number")]
    BadLength(String),
    /// `JSON` format that is not an object of strings.
    #[error("a JSON format must be an object whose values are strings: {0}")]
    NotJsonObject(String),
}

/// Parses one template.
pub fn parse_template(text: &str) -> Result<Vec<Part>, FormatError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            literal.push('%');
            offset += i + 2;
            rest = tail;
            continue;
        }
        let Some(end) = after.find('%') else {
            return Err(FormatError::Unclosed(offset + i));
        };
        let op = &after[..end];
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(parse_operator(op)?);
        offset += i + 2 + end;
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Parses `NAME`, `NAME(ARG)` or either with `:LEN`.
fn parse_operator(op: &str) -> Result<Part, FormatError> {
    // The length cap follows the closing parenthesis (or the name); a `:` inside the
    // parentheses belongs to a pseudo-header.
    let close = op.rfind(')');
    let (body, max_len) = match op[close.unwrap_or(0)..].find(':') {
        Some(j) => {
            let at = close.unwrap_or(0) + j;
            let n = op[at + 1..]
                .parse::<usize>()
                .map_err(|_| FormatError::BadLength(op.to_string()))?;
            (&op[..at], Some(n))
        }
        None => (op, None),
    };
    let field = match body.split_once('(') {
        Some((name, arg)) => {
            let arg = arg
                .strip_suffix(')')
                .ok_or_else(|| FormatError::Unknown(op.to_string()))?;
            let names: Vec<String> = arg
                .split('?')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            if names.is_empty() {
                return Err(FormatError::NoHeader(op.to_string()));
            }
            match name {
                "REQ" => Field::Req(names),
                "RESP" | "TRAILER" => match names.first().map(String::as_str) {
                    Some("x-envoy-upstream-service-time") if name == "RESP" => Field::UpstreamServiceTime,
                    Some("grpc-status") => Field::GrpcStatus,
                    _ => return Err(FormatError::Unknown(op.to_string())),
                },
                _ => return Err(FormatError::Unknown(op.to_string())),
            }
        }
        None => match body {
            "START_TIME" => Field::StartTime,
            "PROTOCOL" => Field::Protocol,
            "RESPONSE_CODE" => Field::ResponseCode,
            "RESPONSE_FLAGS" => Field::ResponseFlags,
            "RESPONSE_CODE_DETAILS" => Field::ResponseCodeDetails,
            "CONNECTION_TERMINATION_DETAILS" => Field::ConnectionTerminationDetails,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Field::UpstreamTransportFailureReason,
            "BYTES_RECEIVED" => Field::BytesReceived,
            "BYTES_SENT" => Field::BytesSent,
            "DURATION" => Field::Duration,
            "GRPC_STATUS" => Field::GrpcStatus,
            "UPSTREAM_HOST" => Field::UpstreamHost,
            "UPSTREAM_CLUSTER" => Field::UpstreamCluster,
            "UPSTREAM_LOCAL_ADDRESS" => Field::UpstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS" => Field::DownstreamLocalAddress,
            "DOWNSTREAM_REMOTE_ADDRESS" => Field::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Field::DownstreamRemoteAddressWithoutPort,
            "REQUESTED_SERVER_NAME" => Field::RequestedServerName,
            "ROUTE_NAME" => Field::RouteName,
            "DOWNSTREAM_PEER_URI_SAN" => Field::DownstreamPeerUriSan,
            "UPSTREAM_PEER_URI_SAN" => Field::UpstreamPeerUriSan,
            "TRACE_ID" => Field::TraceId,
            "RINGMESH_AUTHZ" => Field::Authz,
            "RINGMESH_OVERHEAD" => Field::Overhead,
            _ => return Err(FormatError::Unknown(op.to_string())),
        },
    };
    Ok(Part::Field { field, max_len })
}

/// The `TEXT` format from the user's template, or Istio's.
pub fn text_format(template: Option<&str>) -> Result<LogFormat, FormatError> {
    parse_template(template.unwrap_or(ISTIO_TEXT_FORMAT)).map(LogFormat::Text)
}

/// The `JSON` format from the user's object (JSON or YAML flow text), or Istio's keys.
pub fn json_format(object: Option<&str>) -> Result<LogFormat, FormatError> {
    let Some(text) = object else {
        return ISTIO_JSON_FORMAT
            .iter()
            .map(|(k, v)| Ok(((*k).to_string(), parse_template(v)?)))
            .collect::<Result<_, _>>()
            .map(LogFormat::Json);
    };
    // YAML's mapping keeps the user's key order (JSON is YAML flow text).
    let map: serde_yaml::Mapping =
        serde_yaml::from_str(text.trim()).map_err(|e| FormatError::NotJsonObject(e.to_string()))?;
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        let (serde_yaml::Value::String(k), serde_yaml::Value::String(t)) = (k, v) else {
            return Err(FormatError::NotJsonObject(
                "every key and value must be a string".into(),
            ));
        };
        fields.push((k, parse_template(&t)?));
    }
    Ok(LogFormat::Json(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(f: Field) -> Part {
        Part::Field {
            field: f,
            max_len: None,
        }
    }

    #[test]
    fn istio_defaults_parse() {
        let LogFormat::Text(parts) = text_format(None).unwrap() else {
            panic!()
        };
        assert_eq!(parts[0], Part::Literal("[".into()));
        assert_eq!(parts[1], field(Field::StartTime));
        assert!(parts.contains(&field(Field::Req(vec!["x-envoy-original-path".into(), ":path".into()]))));
        assert!(parts.contains(&field(Field::UpstreamServiceTime)));
        let LogFormat::Json(fields) = json_format(None).unwrap() else {
            panic!()
        };
        assert_eq!(fields.len(), ISTIO_JSON_FORMAT.len());
        assert_eq!(fields[5], ("response_code".into(), vec![field(Field::ResponseCode)]));
    }

    #[test]
    fn literals_percent_and_lengths() {
        assert_eq!(
            parse_template("100%% %REQ(USER-AGENT):3% x").unwrap(),
            vec![
                Part::Literal("100% ".into()),
                Part::Field {
                    field: Field::Req(vec!["user-agent".into()]),
                    max_len: Some(3)
                },
                Part::Literal(" x".into()),
            ]
        );
        assert_eq!(
            parse_template("%REQ(:AUTHORITY)%").unwrap(),
            vec![field(Field::Req(vec![":authority".into()]))]
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(
            parse_template("%STRAT_TIME%"),
            Err(FormatError::Unknown("STRAT_TIME".into()))
        );
        assert_eq!(parse_template("a %DURATION"), Err(FormatError::Unclosed(2)));
        assert_eq!(parse_template("%REQ()%"), Err(FormatError::NoHeader("REQ()".into())));
        assert_eq!(
            parse_template("%DURATION:x%"),
            Err(FormatError::BadLength("DURATION:x".into()))
        );
        assert_eq!(
            parse_template("%RESP(SERVER)%"),
            Err(FormatError::Unknown("RESP(SERVER)".into()))
        );
        assert!(matches!(json_format(Some("[1]")), Err(FormatError::NotJsonObject(_))));
        assert!(matches!(
            json_format(Some("{\"a\": 1}")),
            Err(FormatError::NotJsonObject(_))
        ));
    }

    #[test]
    fn json_keeps_the_users_keys() {
        let LogFormat::Json(f) =
            json_format(Some(r#"{"code": "%RESPONSE_CODE%", "who": "id=%REQ(X-USER)%"}"#)).unwrap()
        else {
            panic!()
        };
        assert_eq!(f[0], ("code".into(), vec![field(Field::ResponseCode)]));
        assert_eq!(f[1].1[0], Part::Literal("id=".into()));
    }
}
