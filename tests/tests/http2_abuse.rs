//! Hostile HTTP/2 clients: malformed requests are refused as RFC 9113 asks, and floods and
//! rapid resets end the offending connection while a well-behaved client beside it is served.
//! On io_uring and epoll.

use std::time::Duration;

use ringmesh_loadgen::{spawn_echo, EchoConfig, EchoHandle};
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::h2raw::{self, flag, frame, kind, RawH2, Seen};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::{both_io, IoMode};

const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const WITHIN: Duration = Duration::from_secs(10);

fn setup(io: IoMode, limits: &str) -> (EchoHandle, TestProxy) {
    let e = spawn_echo(EchoConfig {
        body_size: 5,
        ..EchoConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .expect("echo starts");
    let p = TestProxy::start(&[
        proxy_config(io, "", limits),
        service_entry("svc", "svc.test", 80, &[(e.local_addr(), &[])]),
    ]);
    (e, p)
}

/// Requests that RFC 9113 §8.2 calls malformed are refused with `PROTOCOL_ERROR` — a reset of
/// the stream, or (for a field the header decoder itself rejects) of the connection, which
/// RFC 9113 §5.4 allows — and never reach the upstream; well-formed requests still do.
fn malformed_requests_are_refused(io: IoMode) {
    let (e, p) = setup(io, "");
    let with = |extra: (&'static str, &'static str)| {
        let mut f = h2raw::get("svc.test", "/");
        f.push(extra);
        f
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("upper-case name", with(("X-Upper", "1"))),
        ("connection-specific field", with(("connection", "keep-alive"))),
        ("transfer-encoding", with(("transfer-encoding", "chunked"))),
        ("te other than trailers", with(("te", "gzip"))),
        (
            ":path missing",
            vec![(":method", "GET"), (":scheme", "http"), (":authority", "svc.test")],
        ),
        (
            ":path empty",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "svc.test"),
                (":path", ""),
            ],
        ),
        (
            "pseudo-field after a regular one",
            vec![
                (":method", "GET"),
                ("x-a", "1"),
                (":scheme", "http"),
                (":authority", "svc.test"),
                (":path", "/"),
            ],
        ),
    ];
    let refused = |s: &Option<Seen>| matches!(s, Some(Seen::Reset(1, PROTOCOL_ERROR) | Seen::GoAway(PROTOCOL_ERROR)));
    let answer = |s: &Seen| matches!(s, Seen::Reset(1, _) | Seen::Headers(1) | Seen::GoAway(_) | Seen::Closed);
    for (what, fields) in &cases {
        let mut c = RawH2::connect(p.http());
        c.headers(1, fields, true);
        let seen = c.until(WITHIN, answer);
        assert!(refused(&seen), "{what}: {seen:?}");
    }
    // content-length that the DATA does not add up to.
    let mut c = RawH2::connect(p.http());
    let mut post = h2raw::get("svc.test", "/echo");
    post[0] = (":method", "POST");
    post.push(("content-length", "10"));
    c.headers(1, &post, false);
    c.send(&frame(kind::DATA, flag::END_STREAM, 1, b"abc"));
    let seen = c.until(WITHIN, |s| {
        matches!(s, Seen::Reset(1, _) | Seen::GoAway(_) | Seen::Closed)
    });
    assert!(refused(&seen), "content-length mismatch: {seen:?}");
    assert_eq!(e.requests_served(), 0, "a malformed request reached the upstream");
    // A well-formed request is served.
    let mut c = RawH2::connect(p.http());
    c.headers(1, &h2raw::get("svc.test", "/"), true);
    assert_eq!(c.until(WITHIN, answer), Some(Seen::Headers(1)));
}

/// Streams opened and reset at once, over and over (CVE-2023-44487): the attacker's
/// connection ends with `GOAWAY(ENHANCE_YOUR_CALM)`, and a client beside it sees every
/// request succeed.
fn rapid_reset_ends_the_attackers_connection_only(io: IoMode) {
    let (_e, p) = setup(io, "");
    let mut good = H2Client::connect(p.http());
    assert_eq!(good.get("svc.test", "/").status, 200);
    let mut bad = RawH2::connect(p.http());
    let block = h2raw::header_block(&h2raw::get("svc.test", "/"));
    let mut ended = None;
    let mut id = 1u32;
    for round in 0..200 {
        let mut burst = Vec::new();
        for _ in 0..50 {
            burst.extend(frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, id, &block));
            burst.extend(frame(kind::RST_STREAM, 0, id, &8u32.to_be_bytes()));
            id += 2;
        }
        bad.send(&burst);
        // The good client is served between the attacker's bursts.
        if round % 20 == 0 {
            assert_eq!(good.get("svc.test", &format!("/good/{round}")).status, 200);
        }
        ended = bad.until(Duration::from_millis(1), |s| {
            matches!(s, Seen::GoAway(_) | Seen::Closed)
        });
        if ended.is_some() {
            break;
        }
    }
    let ended = ended.or_else(|| bad.until(WITHIN, |s| matches!(s, Seen::GoAway(_) | Seen::Closed)));
    assert_eq!(
        ended,
        Some(Seen::GoAway(ENHANCE_YOUR_CALM)),
        "the attacker was not stopped"
    );
    for i in 0..50 {
        assert_eq!(good.get("svc.test", &format!("/after/{i}")).status, 200);
    }
    let stats = ringmesh_tests::client::admin_get(p.admin(), "/stats/prometheus").1;
    assert!(!stats.contains("ringmesh_h2_goaway_abuse_total 0\n"), "{stats}");
}

/// A header block that never ends (HEADERS without END_HEADERS, then CONTINUATION frames)
/// past the header-list limit ends the connection, not the proxy's memory.
fn continuation_flood_ends_the_connection(io: IoMode) {
    let (_e, p) = setup(io, "  limits:\n    maxRequestHeadBytes: 16384\n");
    let mut good = H2Client::connect(p.http());
    let mut bad = RawH2::connect(p.http());
    let mut first = h2raw::get("svc.test", "/");
    first.push(("x-a", "b"));
    bad.send(&frame(kind::HEADERS, flag::END_STREAM, 1, &h2raw::header_block(&first)));
    let filler = h2raw::header_block(&[("x-filler", &"y".repeat(4000))]);
    let mut ended = None;
    for _ in 0..2_000 {
        bad.send(&frame(kind::CONTINUATION, 0, 1, &filler));
        ended = bad.until(Duration::from_millis(1), |s| {
            matches!(s, Seen::GoAway(_) | Seen::Closed | Seen::Reset(1, _) | Seen::Headers(1))
        });
        if ended.is_some() {
            break;
        }
    }
    let ended = ended.or_else(|| bad.until(WITHIN, |s| matches!(s, Seen::GoAway(_) | Seen::Closed)));
    assert!(
        matches!(ended, Some(Seen::GoAway(_) | Seen::Closed)),
        "8 MB of CONTINUATION was taken: {ended:?}"
    );
    assert_eq!(good.get("svc.test", "/").status, 200);
}

both_io!(
    malformed_requests_are_refused,
    rapid_reset_ends_the_attackers_connection_only,
    continuation_flood_ends_the_connection,
);

/// Floods of control frames that each demand an answer (SETTINGS, PING) from a client that
/// does not read the answers: the offending connection ends, the proxy's memory does not
/// grow with the flood, and a client beside it is served.
fn control_frame_floods_end_the_connection(io: IoMode) {
    let (_e, p) = setup(io, "");
    let mut good = H2Client::connect(p.http());
    for (what, one) in [
        ("SETTINGS", frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])),
        ("PING", frame(kind::PING, 0, 0, &[7; 8])),
    ] {
        let mut bad = RawH2::connect(p.http());
        bad.stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        let burst: Vec<u8> = std::iter::repeat_n(one, 1000).flatten().collect();
        let mut sent = 0usize;
        // Bounded: 100 MB at most; a proxy that keeps answering without end fails the test.
        for _ in 0..5_000 {
            use std::io::Write;
            match bad.stream.write_all(&burst) {
                Ok(()) => sent += burst.len(),
                Err(_) => break,
            }
        }
        let ended = bad.until(WITHIN, |s| matches!(s, Seen::GoAway(_) | Seen::Closed));
        assert!(
            matches!(ended, Some(Seen::GoAway(ENHANCE_YOUR_CALM) | Seen::Closed)),
            "{what} flood of {sent} bytes: {ended:?}"
        );
        assert_eq!(good.get("svc.test", "/").status, 200, "after the {what} flood");
    }
}

both_io!(control_frame_floods_end_the_connection);

/// A client that grants no window (SETTINGS_INITIAL_WINDOW_SIZE 0, never a WINDOW_UPDATE):
/// after the idle timeout its stream is reset and its connection ends with
/// `GOAWAY(ENHANCE_YOUR_CALM)`; a client beside it is served meanwhile.
fn zero_window_stall_ends_the_connection(io: IoMode) {
    let (_e, p) = setup(io, "  limits:\n    idleTimeout: 1s\n");
    let mut good = H2Client::connect(p.http());
    let mut bad = RawH2::connect(p.http());
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
    bad.send(&frame(kind::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    bad.headers(1, &h2raw::get("svc.test", "/"), true);
    assert_eq!(
        bad.until(WITHIN, |s| matches!(
            s,
            Seen::Headers(1) | Seen::GoAway(_) | Seen::Closed
        )),
        Some(Seen::Headers(1)),
        "the response head needs no window"
    );
    assert_eq!(good.get("svc.test", "/").status, 200);
    let ended = bad.until(Duration::from_secs(20), |s| matches!(s, Seen::GoAway(_) | Seen::Closed));
    assert_eq!(ended, Some(Seen::GoAway(ENHANCE_YOUR_CALM)));
    assert_eq!(good.get("svc.test", "/").status, 200);
}

both_io!(zero_window_stall_ends_the_connection);
