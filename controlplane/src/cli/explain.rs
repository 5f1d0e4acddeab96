//! `ringmesh explain`: asks one proxy's admin port (`GET /explain`) what it would do with a
//! request, and prints the answer as a short report (route → cluster → endpoints,
//! authorization and the policy behind it, the mTLS mode, the proxy's certificate, the
//! result) or as the proxy's JSON.
//!
//! The proxy computes the answer from its running snapshot with its request path's own
//! functions; this side only builds the question and renders the answer. HTTP/1.1 with hyper's
//! client connection over one TCP connection: the admin port is plain HTTP on loopback.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;

use super::{CliError, ExplainArgs, Output};

/// The query string `/explain` takes (see the proxy's `admin/explain.rs`).
pub(crate) fn query(args: &ExplainArgs) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("method", &args.method);
    if let Some(h) = &args.host {
        q.append_pair("host", h);
    }
    q.append_pair("path", &args.path);
    for h in &args.headers {
        q.append_pair("header", h);
    }
    let optional = [
        ("source", &args.source),
        ("source_ip", &args.source_ip),
        ("listener", &args.listener),
        ("destination", &args.destination),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    q.finish()
}

/// One `GET` on a fresh connection: the status and the body.
async fn get(addr: &str, target: &str) -> Result<(hyper::StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection while the request is answered; ends with it.
    tokio::spawn(conn);
    let req = hyper::Request::get(target)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// Runs `ringmesh explain`.
pub(crate) async fn run(args: &ExplainArgs, timeout: Duration, out: &mut dyn Write) -> Result<(), CliError> {
    let addr = args.admin.strip_prefix("http://").unwrap_or(&args.admin);
    let addr = addr.trim_end_matches('/');
    let target = format!("/explain?{}", query(args));
    let unreachable = |reason: String| CliError::AdminUnreachable {
        addr: addr.to_owned(),
        reason,
    };
    let (status, body) = tokio::time::timeout(timeout, get(addr, &target))
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
        .map_err(unreachable)?;
    let answer: Option<Json> = serde_json::from_slice(&body).ok();
    match (status.as_u16(), answer) {
        (200, Some(v)) => {
            let _ = match args.output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                Output::Text => write!(out, "{}", text(&v)),
            };
            Ok(())
        }
        (400, Some(v)) => Err(CliError::Server(format!(
            "the proxy at {addr} refused the question: {}",
            v["error"].as_str().unwrap_or("bad request")
        ))),
        (404, _) => Err(CliError::Server(format!(
            "the proxy at {addr} does not serve /explain (is it an older ringmesh-proxy, or not a proxy's admin port?)"
        ))),
        (code, _) => Err(CliError::Server(format!(
            "the proxy at {addr} answered {code}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
    }
}

fn s(v: &Json) -> &str {
    v.as_str().unwrap_or("?")
}

/// `23h 59m`, `12m 5s`, `40s`.
fn duration(seconds: u64) -> String {
    let (d, h, m, sec) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The report: one line a step, in the order the request meets them.
pub(crate) fn text(v: &Json) -> String {
    let mut t = String::new();
    let l = &v["listener"];
    let _ = writeln!(
        t,
        "listener   {} {} ({}, {}; {})",
        s(&l["name"]),
        s(&l["address"]),
        s(&l["protocol"]),
        s(&l["direction"]),
        s(&l["chosen"])
    );
    let r = &v["request"];
    let mut request = format!("{} {}", s(&r["method"]), s(&r["path"]));
    if let Some(q) = r["query"].as_str() {
        let _ = write!(request, "?{q}");
    }
    let _ = write!(request, " host {}", s(&r["host"]));
    if r["path_changed"].as_bool() == Some(true) {
        let _ = write!(request, " (path normalized to {})", s(&r["normalized_path"]));
    }
    if let Some(src) = r["source"].as_str() {
        let _ = write!(request, " from {src}");
    }
    let _ = writeln!(t, "request    {request}");
    if let Some(m) = v.get("mtls") {
        let peer = m["peer"].as_str().map(|p| format!(", peer {p}")).unwrap_or_default();
        let _ = writeln!(
            t,
            "mtls       {} on port {}: {}{peer} ({})",
            s(&m["mode"]),
            m["port"],
            s(&m["connection"]),
            s(&m["reason"])
        );
    }
    if let Some(a) = v.get("authorization") {
        let by = match (a["policy"].as_str(), a["action"].as_str()) {
            // Not one policy's doing: name the ALLOW policies that did not match.
            (Some("allow-nomatch"), _) => {
                let allow: Vec<&str> = a["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p[1] == "ALLOW")
                    .filter_map(|p| p[0].as_str())
                    .collect();
                format!(" (allow-nomatch; ALLOW policies: {})", allow.join(", "))
            }
            (Some(p), Some(action)) => format!(" by {p} ({action})"),
            _ => String::new(),
        };
        let audit = a["audit"]
            .as_str()
            .map(|p| format!("; audited by {p}"))
            .unwrap_or_default();
        let _ = writeln!(t, "authz      {}{by}: {}{audit}", s(&a["decision"]), s(&a["reason"]));
    }
    if let Some(vh) = v.get("virtual_host") {
        let domains: Vec<&str> = vh["domains"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        let _ = writeln!(t, "vhost      {} [{}]", s(&vh["name"]), domains.join(", "));
    }
    if let Some(route) = v.get("route") {
        let which = match route["match_index"].as_u64() {
            Some(m) => format!("route {}, match {m}", route["index"]),
            None => format!("route {}, no conditions", route["index"]),
        };
        let _ = writeln!(t, "route      {} ({which})", s(&route["name"]));
        if let Some(f) = route.get("fault") {
            let mut parts = Vec::new();
            if let (Some(ms), Some(p)) = (f["delay_ms"].as_u64(), f["delay_percent"].as_f64()) {
                parts.push(format!("delay {ms} ms for {p}%"));
            }
            if let Some(p) = f["abort_percent"].as_f64() {
                let status = match (f["abort_http_status"].as_u64(), f["abort_grpc_status"].as_u64()) {
                    (_, Some(g)) => format!("grpc-status {g}"),
                    (Some(h), _) => h.to_string(),
                    (None, None) => "?".to_owned(),
                };
                parts.push(format!("abort {status} for {p}%"));
            }
            let _ = writeln!(t, "fault      {}", parts.join(", then "));
        }
    }
    let a = &v["action"];
    let split = |a: &Json| -> String {
        let parts: Vec<String> = a["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} {}%", s(&c["cluster"]), c["percent"]))
            .collect();
        parts.join(", ")
    };
    match s(&a["type"]) {
        "forward" => {
            let mut line = format!("forward to {}", split(a));
            if let Some(p) = a["upstream_path"].as_str() {
                let _ = write!(line, ", path {p}");
            }
            if let Some(h) = a["host_rewrite"].as_str() {
                let _ = write!(line, ", host {h}");
            }
            for m in a["mirrors"].as_array().into_iter().flatten() {
                let _ = write!(line, ", mirror {}% to {}", m["percent"], s(&m["cluster"]));
            }
            let _ = writeln!(t, "action     {line}");
        }
        "tcp" => {
            let _ = writeln!(t, "action     TCP to {}", split(a));
        }
        "redirect" => {
            let _ = writeln!(t, "action     redirect {} to {}", a["status"], s(&a["location"]));
        }
        "direct_response" => {
            let _ = writeln!(t, "action     direct response {}", a["status"]);
        }
        "endpoint" => {
            let _ = writeln!(
                t,
                "action     TCP to the endpoint {} of {}",
                s(&a["address"]),
                s(&a["cluster"])
            );
        }
        "passthrough" => {
            let _ = writeln!(t, "action     TCP passthrough to {}", s(&a["address"]));
        }
        _ => {}
    }
    for c in v["clusters"].as_array().into_iter().flatten() {
        let mut line = format!(
            "{}  {}  {}  tls {}",
            s(&c["name"]),
            s(&c["lb"]),
            s(&c["protocol"]),
            s(&c["upstream_tls"])
        );
        if let Some(on) = c["hash_on"].as_str() {
            let pick = c["hash_pick"].as_str().unwrap_or("random (no key)");
            let _ = write!(line, "  hash on {on} -> {pick}");
        }
        if let Some(h) = c["host_not_found"].as_str() {
            let _ = write!(line, "  ({})", h.trim());
        }
        let _ = writeln!(t, "cluster    {line}");
        let endpoints = c["endpoints"].as_array().map_or(&[][..], Vec::as_slice);
        if endpoints.is_empty() && c["host_not_found"].is_null() {
            let _ = writeln!(t, "  (no endpoints)");
        }
        for e in endpoints {
            let tls = if e["mtls"].as_bool() == Some(true) {
                "mTLS"
            } else {
                "plaintext"
            };
            let proto = if e["http2"].as_bool() == Some(true) {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            };
            let _ = writeln!(
                t,
                "  endpoint {}  weight {}  {tls}  {proto}  {}{}  in flight {}",
                s(&e["address"]),
                e["weight"],
                s(&e["health"]),
                if e["eligible"].as_bool() == Some(true) {
                    ""
                } else {
                    " (not eligible)"
                },
                e["rq_active"]
            );
        }
        let peers: Vec<&str> = c["expected_peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        if !peers.is_empty() {
            let _ = writeln!(t, "  expects  {}", peers.join(", "));
        }
    }
    let cert = &v["certificate"];
    match cert["identity"].as_str() {
        Some(id) => {
            let left = cert["seconds_left"].as_u64().map(duration).unwrap_or_default();
            let _ = writeln!(t, "cert       {id}, expires {} (in {left})", s(&cert["not_after"]));
        }
        None => {
            let _ = writeln!(
                t,
                "cert       none: {}",
                cert["reason"].as_str().unwrap_or("no certificate")
            );
        }
    }
    let verdict = &v["verdict"];
    let result = match (verdict["status"].as_u64(), verdict["flag"].as_str()) {
        (Some(code), Some(flag)) => format!("{code} {flag}: {}", s(&verdict["summary"])),
        (Some(code), None) => format!("{code}: {}", s(&verdict["summary"])),
        _ => s(&verdict["summary"]).to_owned(),
    };
    let _ = writeln!(t, "result     {result}");
    for n in v["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(t, "note       {}", s(n));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(40), "40s");
        assert_eq!(duration(725), "12m 5s");
        assert_eq!(duration(86_399), "23h 59m");
        assert_eq!(duration(3 * 86_400 + 7200), "3d 2h");
    }

    #[test]
    fn the_report_follows_the_request() {
        let v = serde_json::json!({
            "listener": {"name": "inbound", "address": "127.0.0.1:8080", "protocol": "HTTP", "direction": "INBOUND", "chosen": "asked"},
            "request": {"method": "GET", "host": "reviews.shop", "path": "//admin", "query": null, "normalized_path": "/admin",
                        "path_changed": true, "source": "spiffe://cluster.local/ns/a/sa/b"},
            "mtls": {"port": 8080, "mode": "STRICT", "connection": "mutual TLS", "peer": "spiffe://cluster.local/ns/a/sa/b",
                     "reason": "STRICT: the client's certificate is checked"},
            "authorization": {"decision": "DENY", "policy": "shop/no-admin", "action": "DENY", "reason": "a DENY policy matches",
                              "audit": null},
            "virtual_host": {"name": "reviews.shop", "domains": ["reviews.shop"]},
            "route": {"name": "reviews.shop", "index": 0, "match_index": null,
                      "fault": {"delay_ms": 200, "delay_percent": 10.0, "abort_http_status": 503, "abort_percent": 0.5}},
            "action": {"type": "forward", "clusters": [{"cluster": "outbound|80||reviews.shop", "weight": 1, "percent": 100.0}],
                       "upstream_path": "/admin"},
            "clusters": [{"name": "outbound|80||reviews.shop", "lb": "LEAST_REQUEST", "protocol": "HTTP/1.1", "upstream_tls": "AUTO",
                          "expected_peers": [], "endpoints": [{"address": "127.0.0.1:9000", "weight": 1, "mtls": false, "http2": false,
                          "health": "HEALTHY", "eligible": true, "rq_active": 0}]}],
            "certificate": {"identity": "spiffe://cluster.local/ns/shop/sa/reviews", "not_after": "2030-01-01T00:00:00Z", "seconds_left": 3600},
            "verdict": {"status": 403, "flag": "RBAC", "summary": "denied by shop/no-admin"},
            "notes": []
        });
        let t = text(&v);
        let want = "\
listener   inbound 127.0.0.1:8080 (HTTP, INBOUND; asked)
request    GET //admin host reviews.shop (path normalized to /admin) from spiffe://cluster.local/ns/a/sa/b
mtls       STRICT on port 8080: mutual TLS, peer spiffe://cluster.local/ns/a/sa/b (STRICT: the client's certificate is checked)
authz      DENY by shop/no-admin (DENY): a DENY policy matches
vhost      reviews.shop [reviews.shop]
route      reviews.shop (route 0, no conditions)
fault      delay 200 ms for 10%, then abort 503 for 0.5%
action     forward to outbound|80||reviews.shop 100.0%, path /admin
cluster    outbound|80||reviews.shop  LEAST_REQUEST  HTTP/1.1  tls AUTO
  endpoint 127.0.0.1:9000  weight 1  plaintext  HTTP/1.1  HEALTHY  in flight 0
cert       spiffe://cluster.local/ns/shop/sa/reviews, expires 2030-01-01T00:00:00Z (in 1h 0m)
result     403 RBAC: denied by shop/no-admin
";
        assert_eq!(t, want);
    }

    #[test]
    fn the_question_is_one_query_string() {
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from([
            "ringmesh",
            "explain",
            "-X",
            "POST",
            "--host",
            "reviews.shop",
            "--path",
            "/a b?x=1&y=2",
            "-H",
            "x-user: alice",
            "-H",
            "x-b:c",
            "--source",
            "spiffe://cluster.local/ns/a/sa/b",
        ])
        .unwrap();
        let super::super::Command::Explain(args) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(
            query(&args),
            "method=POST&host=reviews.shop&path=%2Fa+b%3Fx%3D1%26y%3D2&header=x-user%3A+alice&header=x-b%3Ac&\
             source=spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%2Fsa%2Fb"
        );
        assert_eq!(args.admin, "127.0.0.1:15000");
    }
}
