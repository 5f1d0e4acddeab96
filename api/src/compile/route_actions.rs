//! What an http route does besides forwarding: redirects, direct responses, header
//! operations, fault injection, mirrors and the retry policy (Istio's defaults where a field is
//! absent).

use std::time::Duration;

use super::clusters::PortField;
use super::{Compiler, Site};
use crate::diagnostic::did_you_mean;
use crate::locate::FieldPath;
use crate::resources::{
    HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection, HttpRedirect, HttpRetry, HttpRoute, Percent,
};
use crate::snapshot::{
    DirectResponse, Fault, FaultShare, FaultStatus, GrpcCodes, HeaderOps, Mirror, Redirect, RetryPolicy,
};

impl Compiler {
    pub(super) fn header_ops(&mut self, site: &Site<'_>, p: &FieldPath, h: &Headers) -> (HeaderOps, HeaderOps) {
        let mut convert = |field: &str, ops: &Option<HeaderOperations>| {
            let mut out = HeaderOps::default();
            let Some(ops) = ops else { return out };
            let op = p.key(field);
            for (kind, map, list) in [("set", &ops.set, &mut out.set), ("add", &ops.add, &mut out.add)] {
                for (name, value) in map {
                    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                        self.error(
                            site,
                            &op.key(kind).key(name),
                            format!("{name:?} is not a valid header name"),
                        );
                        continue;
                    }
                    list.push((name.to_ascii_lowercase(), value.clone()));
                }
            }
            out.remove = ops.remove.iter().map(|n| n.to_ascii_lowercase()).collect();
            out
        };
        let req = convert("request", &h.request);
        let resp = convert("response", &h.response);
        (req, resp)
    }

    pub(super) fn redirect(&mut self, site: &Site<'_>, p: &FieldPath, r: &HttpRedirect) -> Option<Redirect> {
        let status = match r.redirect_code {
            None => 301,
            Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
            Some(c) => {
                self.error(
                    site,
                    &p.key("redirectCode"),
                    format!("redirectCode must be one of 301, 302, 303, 307, 308, got {c}"),
                );
                return None;
            }
        };
        let port = match r.port {
            Some(n) => Some(self.port(site, &p.key("port"), n)?),
            None => None,
        };
        let scheme = match &r.scheme {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
                Some(s.to_ascii_lowercase())
            }
            Some(s) => {
                self.error(
                    site,
                    &p.key("scheme"),
                    format!("scheme must be http or https, got {s:?}"),
                );
                return None;
            }
            None => None,
        };
        Some(Redirect {
            status,
            scheme,
            authority: r.authority.clone(),
            port,
            path: r.uri.clone(),
        })
    }

    pub(super) fn direct_response(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        d: &HttpDirectResponse,
    ) -> Option<DirectResponse> {
        let status = match d.status {
            None => {
                self.error(site, p, "directResponse.status is required");
                return None;
            }
            Some(s @ 200..=599) => s as u16,
            Some(s) => {
                self.error(
                    site,
                    &p.key("status"),
                    format!("status must be between 200 and 599, got {s}"),
                );
                return None;
            }
        };
        let body = match &d.body {
            None => String::new(),
            Some(b) => match (&b.string, &b.bytes) {
                (Some(_), Some(_)) => {
                    self.error(site, &p.key("body"), "set either string or bytes, not both");
                    return None;
                }
                (Some(s), None) => s.clone(),
                (None, Some(encoded)) => match decode_base64(encoded).and_then(|v| String::from_utf8(v).ok()) {
                    Some(s) => s,
                    None => {
                        self.error(
                            site,
                            &p.key("body").key("bytes"),
                            "bytes must be base64 of UTF-8 text (binary bodies are not \
                                 supported yet)",
                        );
                        return None;
                    }
                },
                (None, None) => String::new(),
            },
        };
        Some(DirectResponse { status, body })
    }

    pub(super) fn retry_policy(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        r: Option<&HttpRetry>,
    ) -> Option<RetryPolicy> {
        let mut policy = default_retry_policy();
        let Some(r) = r else { return Some(policy) };
        let mut ok = true;
        match r.attempts {
            None => {}
            Some(n) => match u32::try_from(n) {
                Ok(n) => policy.attempts = n,
                Err(_) => {
                    self.error(
                        site,
                        &p.key("attempts"),
                        format!("attempts must not be negative, got {n}"),
                    );
                    ok = false;
                }
            },
        }
        if let Some(t) = &r.per_try_timeout {
            match self.duration(site, &p.key("perTryTimeout"), t) {
                Some(d) => policy.per_try_timeout = (!d.is_zero()).then_some(d),
                None => ok = false,
            }
        }
        if let Some(on) = &r.retry_on {
            let rp = p.key("retryOn");
            policy.on_connect_failure = false;
            policy.on_reset = false;
            policy.on_5xx = false;
            policy.on_gateway_error = false;
            policy.retriable_status_codes.clear();
            policy.retriable_grpc = GrpcCodes::empty();
            for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                match token {
                    "5xx" => policy.on_5xx = true,
                    "gateway-error" => policy.on_gateway_error = true,
                    "reset" | "refused-stream" | "reset-before-request" => policy.on_reset = true,
                    "connect-failure" => policy.on_connect_failure = true,
                    // Envoy's retriable-4xx is exactly 409 Conflict.
                    "retriable-4xx" => policy.retriable_status_codes.push(409),
                    // The listed status numbers are the retriable status codes.
                    "retriable-status-codes" => {}
                    // gRPC statuses, as Envoy's `retry_on` spells them.
                    "cancelled" => policy.retriable_grpc = policy.retriable_grpc.with(GrpcCodes::CANCELLED),
                    "deadline-exceeded" => {
                        policy.retriable_grpc = policy.retriable_grpc.with(GrpcCodes::DEADLINE_EXCEEDED)
                    }
                    "resource-exhausted" => {
                        policy.retriable_grpc = policy.retriable_grpc.with(GrpcCodes::RESOURCE_EXHAUSTED)
                    }
                    "internal" => policy.retriable_grpc = policy.retriable_grpc.with(GrpcCodes::INTERNAL),
                    "unavailable" => policy.retriable_grpc = policy.retriable_grpc.with(GrpcCodes::UNAVAILABLE),
                    "envoy-ratelimited" | "retriable-headers" | "http3-post-connect-failure" => {
                        self.warn(site, &rp, format!("retryOn {token:?} is not supported yet; ignored"));
                    }
                    t if t.bytes().all(|b| b.is_ascii_digit()) => match t.parse::<u16>() {
                        Ok(code @ 100..=599) => policy.retriable_status_codes.push(code),
                        _ => {
                            self.error(site, &rp, format!("retryOn status {t} is not an HTTP status (100-599)"));
                            ok = false;
                        }
                    },
                    t => {
                        let hint = did_you_mean(t, RETRY_ON.iter().copied())
                            .map(|s| format!("; did you mean {s:?}?"))
                            .unwrap_or_else(|| format!("; expected {}", RETRY_ON.join(", ")));
                        self.error(site, &rp, format!("unknown retryOn value {t:?}{hint}"));
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(policy)
    }
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Istio's default when a route has no `retries`: 2 attempts on connect failure, refused
/// stream, 503 and the gRPC statuses `unavailable` and `cancelled` (Istio's
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`), with Envoy's
/// 25 ms base / 250 ms max back-off.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on_connect_failure: true,
        on_reset: true,
        on_5xx: false,
        on_gateway_error: false,
        retriable_status_codes: vec![503],
        retriable_grpc: GrpcCodes::empty()
            .with(GrpcCodes::CANCELLED)
            .with(GrpcCodes::UNAVAILABLE),
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
    }
}

/// Appends `more` to `ops`; a `set` of the same name in `more` replaces the earlier one.
pub(super) fn merge_ops(ops: &mut HeaderOps, more: HeaderOps) {
    for (name, value) in more.set {
        ops.set.retain(|(n, _)| *n != name);
        ops.set.push((name, value));
    }
    ops.add.extend(more.add);
    for name in more.remove {
        if !ops.remove.contains(&name) {
            ops.remove.push(name);
        }
    }
}

/// Decodes an Istio `bytes` field. Istio's YAML follows protobuf's JSON mapping, which accepts
/// standard and URL-safe base64, padded or not; whitespace (from YAML block scalars) is ignored.
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine as _;
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(&text).or_else(|_| URL_SAFE.decode(&text)).ok()
}

/// gRPC status names as Istio's `grpcStatus` spells them, by code.
const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Compiler {
    /// Istio's `fault`: a delay (`fixedDelay`) and/or an abort (`httpStatus` or `grpcStatus`),
    /// each for `percentage.value` percent of requests (all when absent).
    pub(super) fn fault(&mut self, site: &Site<'_>, p: &FieldPath, f: &HttpFaultInjection) -> Option<Fault> {
        if f.delay.is_none() && f.abort.is_none() {
            self.error(site, p, "fault needs delay or abort");
            return None;
        }
        let mut ok = true;
        let mut delay = None;
        if let Some(d) = &f.delay {
            let dp = p.key("delay");
            let share = self.fault_share(site, &dp, d.percentage.as_ref(), d.percent);
            let fixed = match &d.fixed_delay {
                None => {
                    self.error(site, &dp, "delay.fixedDelay is required");
                    None
                }
                Some(t) => match self.duration(site, &dp.key("fixedDelay"), t) {
                    Some(t) if t.is_zero() => {
                        self.error(site, &dp.key("fixedDelay"), "fixedDelay must be greater than zero");
                        None
                    }
                    t => t,
                },
            };
            match (fixed, share) {
                (Some(t), Some(s)) => delay = Some((t, s)),
                _ => ok = false,
            }
        }
        let mut abort = None;
        if let Some(a) = &f.abort {
            let ap = p.key("abort");
            let share = self.fault_share(site, &ap, a.percentage.as_ref(), None);
            let status = match (a.http_status, &a.grpc_status) {
                (Some(_), Some(_)) => {
                    self.error(
                        site,
                        &ap.key("grpcStatus"),
                        "set either httpStatus or grpcStatus, not both",
                    );
                    None
                }
                (None, None) => {
                    self.error(site, &ap, "abort needs httpStatus or grpcStatus");
                    None
                }
                (Some(s @ 200..=599), None) => Some(FaultStatus::Http(s as u16)),
                (Some(s), None) => {
                    self.error(
                        site,
                        &ap.key("httpStatus"),
                        format!("httpStatus must be between 200 and 599, got {s}"),
                    );
                    None
                }
                (None, Some(name)) => match GRPC_STATUS_NAMES.iter().position(|n| *n == name.as_str()) {
                    Some(code) => Some(FaultStatus::Grpc(code as u8)),
                    None => {
                        let hint = did_you_mean(name, GRPC_STATUS_NAMES.iter().copied())
                            .map(|s| format!("; did you mean {s:?}?"))
                            .unwrap_or_else(|| format!("; expected one of {}", GRPC_STATUS_NAMES.join(", ")));
                        self.error(
                            site,
                            &ap.key("grpcStatus"),
                            format!("unknown grpcStatus {name:?}{hint}"),
                        );
                        None
                    }
                },
            };
            match (status, share) {
                (Some(st), Some(s)) => abort = Some((st, s)),
                _ => ok = false,
            }
        }
        ok.then_some(Fault { delay, abort })
    }

    /// Istio's `mirror` (with `mirrorPercentage` or the legacy `mirrorPercent`) or `mirrors`,
    /// one of the two: each destination becomes a cluster, each share millionths.
    pub(super) fn mirrors(&mut self, site: &Site<'_>, p: &FieldPath, route: &HttpRoute) -> Option<Vec<Mirror>> {
        let mut out = Vec::new();
        let mut ok = true;
        if route.mirror.is_some() && !route.mirrors.is_empty() {
            self.error(
                site,
                &p.key("mirrors"),
                "mirror and mirrors cannot both be set in one http route",
            );
            return None;
        }
        if route.mirror.is_none() && (route.mirror_percentage.is_some() || route.mirror_percent.is_some()) {
            let field = if route.mirror_percentage.is_some() {
                "mirrorPercentage"
            } else {
                "mirrorPercent"
            };
            self.warn(site, &p.key(field), format!("{field} has no effect without mirror"));
        }
        if let Some(d) = &route.mirror {
            let share = self.share(
                site,
                p,
                "mirrorPercentage",
                route.mirror_percentage.as_ref(),
                "mirrorPercent",
                route.mirror_percent,
            );
            let cluster = self.destination_cluster(site, &p.key("mirror"), d, PortField::Route);
            match (cluster, share) {
                (Some(cluster), Some(share)) => out.push(Mirror { cluster, share }),
                _ => ok = false,
            }
        }
        for (i, m) in route.mirrors.iter().enumerate() {
            let mp = p.key("mirrors").index(i);
            let Some(d) = &m.destination else {
                self.error(site, &mp.key("destination"), "destination is required");
                ok = false;
                continue;
            };
            let share = self.share(site, &mp, "percentage", m.percentage.as_ref(), "", None);
            let cluster = self.destination_cluster(site, &mp.key("destination"), d, PortField::Route);
            match (cluster, share) {
                (Some(cluster), Some(share)) => out.push(Mirror { cluster, share }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `percentage.value` (or the legacy integer `percent`) as millionths; absent means all.
    fn fault_share(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        percentage: Option<&Percent>,
        percent: Option<i64>,
    ) -> Option<FaultShare> {
        self.share(site, p, "percentage", percentage, "percent", percent)
    }

    /// A `Percent` field named `pct_field` (or the legacy integer field `int_field`) of the
    /// object at `p`, as millionths; absent means all.
    fn share(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        pct_field: &str,
        percentage: Option<&Percent>,
        int_field: &str,
        percent: Option<i64>,
    ) -> Option<FaultShare> {
        if let Some(pc) = percentage {
            let v = pc.value;
            if !(0.0..=100.0).contains(&v) {
                self.error(
                    site,
                    &p.key(pct_field).key("value"),
                    format!("{pct_field}.value must be between 0 and 100, got {v}"),
                );
                return None;
            }
            return Some(FaultShare((v * 10_000.0).round() as u32));
        }
        match percent {
            None => Some(FaultShare::ALL),
            Some(n @ 0..=100) => Some(FaultShare(n as u32 * 10_000)),
            Some(n) => {
                self.error(
                    site,
                    &p.key(int_field),
                    format!("{int_field} must be between 0 and 100, got {n}"),
                );
                None
            }
        }
    }
}
