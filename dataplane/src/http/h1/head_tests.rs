//! Tests for head parsing: every accepted shape, every refused smuggling shape (by exact
//! variant), incremental feeding, pipelining, and property tests on random input.

use super::super::{encode_request_head, encode_response_head, RequestEncode, ResponseEncode};
use super::*;
use proptest::prelude::*;

fn limits() -> HeadLimits {
    HeadLimits::default()
}

fn req(s: &[u8]) -> Result<Option<RequestHead>, H1Error> {
    parse_request_head(s, &limits())
}

#[track_caller]
fn ok(s: &[u8]) -> RequestHead {
    match req(s) {
        Ok(Some(h)) => h,
        other => panic!("expected a head for {:?}, got {other:?}", String::from_utf8_lossy(s)),
    }
}

#[track_caller]
fn err(s: &[u8]) -> H1Error {
    match req(s) {
        Err(e) => e,
        other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(s)),
    }
}

/// A request with Host and the given extra header lines.
fn with_headers(lines: &str) -> Vec<u8> {
    format!("POST /p HTTP/1.1\r\nHost: a.example\r\n{lines}\r\n").into_bytes()
}

fn res(s: &[u8], method: Method) -> Result<Option<ResponseHead>, H1Error> {
    parse_response_head(s, &limits(), method)
}

#[track_caller]
fn res_ok(s: &[u8], method: Method) -> ResponseHead {
    match res(s, method) {
        Ok(Some(h)) => h,
        other => panic!(
            "expected a response head for {:?}, got {other:?}",
            String::from_utf8_lossy(s)
        ),
    }
}

// ---------------------------------------------------------------- accepted requests

#[test]
fn simple_get() {
    let s = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    let h = ok(s);
    assert_eq!(h.len(), s.len());
    assert_eq!(h.method(), Method::Get);
    assert_eq!(h.method().as_bytes(s), b"GET");
    assert_eq!(h.target(s), b"/a/b?c=d");
    assert_eq!(h.path_and_query(s), b"/a/b?c=d");
    assert_eq!(h.target_form(), TargetForm::Origin);
    assert_eq!(h.version_minor(), 1);
    assert_eq!(h.host(s), Some(&b"example.com:8080"[..]));
    assert_eq!(h.authority(s), Some(&b"example.com:8080"[..]));
    assert_eq!(h.framing(), BodyFraming::None);
    assert!(!h.framing().has_body());
    let c = h.connection();
    assert!(c.keep_alive && !c.close && !c.upgrade && !c.expect_continue && !c.extra_tokens);
    assert_eq!(h.headers().len(), 3);
    assert_eq!(h.headers()[1].name(s), b"User-Agent");
    assert_eq!(h.headers()[1].value(s), b"t");
    assert_eq!(h.headers()[0].kind(), HeaderKind::Host);
    assert_eq!(h.header(s, b"accept"), Some(&b"*/*"[..]));
    assert_eq!(h.header(s, b"missing"), None);
}

#[test]
fn spans_index_the_split_off_head() {
    // The proxy splits the head off its buffer; spans must still index the frozen head.
    let mut buf = bytes::BytesMut::from(&b"GET /x HTTP/1.1\r\nHost: h\r\n\r\nBODY"[..]);
    let h = ok(&buf);
    let head = buf.split_to(h.len()).freeze();
    assert_eq!(h.target(&head), b"/x");
    assert_eq!(h.host(&head), Some(&b"h"[..]));
    assert_eq!(&buf[..], b"BODY");
}

#[test]
fn methods() {
    for (m, want) in [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("TRACE", Method::Trace),
        ("PATCH", Method::Patch),
        ("OPTIONS", Method::Options),
    ] {
        let s = format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(ok(s.as_bytes()).method(), want);
    }
    let s = b"PROPFIND /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let h = ok(s);
    assert!(matches!(h.method(), Method::Other(_)));
    assert_eq!(h.method().as_bytes(s), b"PROPFIND");
    // Methods are case-sensitive: "get" is an extension method, not GET.
    let s = b"get / HTTP/1.1\r\nHost: h\r\n\r\n";
    assert!(matches!(ok(s).method(), Method::Other(_)));
}

#[test]
fn content_length_body() {
    let h = ok(&with_headers("Content-Length: 42\r\n"));
    assert_eq!(h.framing(), BodyFraming::Length(42));
    assert!(h.framing().has_body());
    let h = ok(&with_headers("Content-Length: 0\r\n"));
    assert_eq!(h.framing(), BodyFraming::Length(0));
    assert!(!h.framing().has_body());
    // Leading zeros are still 1*DIGIT.
    assert_eq!(
        ok(&with_headers("Content-Length: 007\r\n")).framing(),
        BodyFraming::Length(7)
    );
    assert_eq!(
        ok(&with_headers("Content-Length: 18446744073709551615\r\n")).framing(),
        BodyFraming::Length(u64::MAX)
    );
}

#[test]
fn identical_content_lengths_are_collapsed() {
    let h = ok(&with_headers("Content-Length: 5\r\nContent-Length: 5\r\n"));
    assert_eq!(h.framing(), BodyFraming::Length(5));
    let h = ok(&with_headers("Content-Length: 5, 5\r\n"));
    assert_eq!(h.framing(), BodyFraming::Length(5));
}

#[test]
fn chunked_body() {
    for te in ["chunked", "Chunked", "CHUNKED", "chunked ", "  chunked"] {
        let h = ok(&with_headers(&format!("Transfer-Encoding: {te}\r\n")));
        assert_eq!(h.framing(), BodyFraming::Chunked, "{te:?}");
    }
}

#[test]
fn http10() {
    let s = b"GET / HTTP/1.0\r\n\r\n";
    let h = ok(s);
    assert_eq!(h.version_minor(), 0);
    assert_eq!(h.host(s), None);
    assert_eq!(h.authority(s), None);
    assert!(!h.connection().keep_alive);
    let h = ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(h.connection().keep_alive);
}

#[test]
fn connection_flags() {
    let h = ok(&with_headers("Connection: close\r\n"));
    assert!(h.connection().close && !h.connection().keep_alive);
    let h = ok(&with_headers("Connection: keep-alive, x-secret\r\nX-Secret: 1\r\n"));
    assert!(h.connection().keep_alive && h.connection().extra_tokens);
    let h = ok(&with_headers("Expect: 100-continue\r\nContent-Length: 3\r\n"));
    assert!(h.connection().expect_continue);
    let h = ok(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(h.connection().upgrade);
    // Upgrade needs both fields, and is ignored in HTTP/1.0.
    assert!(
        !ok(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
            .connection()
            .upgrade
    );
    assert!(
        !ok(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n")
            .connection()
            .upgrade
    );
    assert!(
        !ok(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .connection()
            .upgrade
    );
}

#[test]
fn leading_empty_lines_are_skipped() {
    let s = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let h = ok(s);
    assert_eq!(h.len(), s.len());
    assert_eq!(h.target(s), b"/");
}

#[test]
fn absolute_form() {
    let s = b"GET http://Upstream.example:81/p?q=1 HTTP/1.1\r\nHost: ignored.example\r\n\r\n";
    let h = ok(s);
    assert_eq!(h.target_form(), TargetForm::Absolute);
    assert_eq!(h.authority(s), Some(&b"Upstream.example:81"[..]));
    assert_eq!(h.host(s), Some(&b"ignored.example"[..]));
    assert_eq!(h.path_and_query(s), b"/p?q=1");
    let s = b"GET https://h.example?x HTTP/1.1\r\nHost: h.example\r\n\r\n";
    let h = ok(s);
    assert_eq!(h.authority(s), Some(&b"h.example"[..]));
    assert_eq!(h.path_and_query(s), b"?x");
    let s = b"GET http://[::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n";
    let h = ok(s);
    assert_eq!(h.authority(s), Some(&b"[::1]:8080"[..]));
    assert_eq!(h.path_and_query(s), b"");
}

#[test]
fn authority_and_asterisk_forms() {
    // A well-formed CONNECT is refused: nothing here tunnels. A malformed one is refused for
    // what is wrong with it (see `invalid_target`).
    let e = err(b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n");
    assert_eq!(e, H1Error::ConnectNotSupported);
    assert_eq!(e.status(), 400);
    assert_eq!(
        err(b"CONNECT a.local:80 HTTP/1.0\r\n\r\n"),
        H1Error::ConnectNotSupported
    );
    assert_eq!(
        err(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        H1Error::MultipleHost
    );
    let h = ok(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.target_form(), TargetForm::Asterisk);
}

#[test]
fn encoded_control_bytes_in_path() {
    for path in [
        "/a%00b", "/%00", "/a%0a", "/a%0D%0A", "/%1f", "/%1F", "/x%7f", "/x%7F/y", "/%09",
    ] {
        for target in [path.to_string(), format!("http://h.example{path}?q=1")] {
            let s = format!("GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n");
            let e = err(s.as_bytes());
            assert_eq!(e, H1Error::EncodedControlInPath, "{target}");
            assert_eq!(e.status(), 400);
        }
    }
    // Not a control byte once decoded, not an escape at all, or in the query: accepted.
    for target in [
        "/a%20b",
        "/%2500",
        "/%7e",
        "/%80",
        "/%",
        "/a%0",
        "/%zz",
        "/%0g",
        "/p?x=%00",
        "/p?%0a",
        "http://h.example?%00",
    ] {
        let s = format!("GET {target} HTTP/1.1\r\nHost: h.example\r\n\r\n");
        assert!(matches!(req(s.as_bytes()), Ok(Some(_))), "{target}");
    }
}

#[test]
fn accepted_odd_but_harmless() {
    // obs-text in values is opaque data.
    let s = b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xc3\xa9\r\n\r\n";
    assert_eq!(ok(s).header(s, b"x-name"), Some(&b"caf\xc3\xa9"[..]));
    // Empty values and empty Host.
    let s = b"GET / HTTP/1.1\r\nHost:\r\nX-Empty: \r\n\r\n";
    let h = ok(s);
    assert_eq!(h.host(s), Some(&b""[..]));
    assert_eq!(h.header(s, b"x-empty"), Some(&b""[..]));
    // Host with IPv6 literal, HTAB inside a value.
    let s = b"GET /{a}|b HTTP/1.1\r\nHost: [2001:db8::1]\r\nX: a\tb\r\n\r\n";
    assert_eq!(ok(s).header(s, b"x"), Some(&b"a\tb"[..]));
}

// ---------------------------------------------------------------- incremental / pipelined

#[test]
fn incomplete_is_none() {
    let s = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    for i in 0..s.len() {
        assert_eq!(req(&s[..i]), Ok(None), "prefix {i}");
    }
}

#[test]
fn byte_by_byte_equals_whole() {
    let s = b"\r\nPOST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
    let whole = ok(s);
    let mut p = RequestParser::new(limits());
    let mut got = None;
    for i in 1..=s.len() {
        if let Some(h) = p.parse(&s[..i]).unwrap() {
            assert_eq!(i, whole.len());
            got = Some(h);
            break;
        }
    }
    assert_eq!(got, Some(whole));
}

#[test]
fn pipelined_requests() {
    let mut buf = bytes::BytesMut::from(
        &b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: h\r\n\r\nGET /4"[..],
    );
    let mut p = RequestParser::new(limits());
    let mut targets = Vec::new();
    while let Some(h) = p.parse(&buf).unwrap() {
        let head = buf.split_to(h.len()).freeze();
        targets.push(h.target(&head).to_vec());
        if let BodyFraming::Length(n) = h.framing() {
            let _body = buf.split_to(n as usize);
        }
    }
    assert_eq!(targets, vec![b"/1".to_vec(), b"/2".to_vec(), b"/3".to_vec()]);
    assert_eq!(&buf[..], b"GET /4");
}

#[test]
fn parser_restarts_when_given_a_shorter_buffer() {
    let mut p = RequestParser::new(limits());
    assert_eq!(p.parse(b"GET / HTTP/1.1\r\nHost: h\r\n"), Ok(None));
    // A different, shorter buffer: the scanner must not trust its old offset.
    assert!(p.parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().is_some());
}

// ---------------------------------------------------------------- refused: framing / smuggling

#[test]
fn cl_and_te() {
    let a = err(&with_headers("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"));
    let b = err(&with_headers("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"));
    assert_eq!(a, H1Error::ContentLengthAndTransferEncoding);
    assert_eq!(b, H1Error::ContentLengthAndTransferEncoding);
    assert_eq!(a.status(), 400);
}

#[test]
fn conflicting_content_length() {
    for lines in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5\r\nContent-Length: 5, 7\r\n",
    ] {
        assert_eq!(
            err(&with_headers(lines)),
            H1Error::ConflictingContentLength,
            "{lines:?}"
        );
    }
}

#[test]
fn invalid_content_length() {
    for v in [
        "+5",
        "-5",
        "-0",
        "0x5",
        "5 5",
        "5,",
        ",5",
        "5,,5",
        "5a",
        "",
        "1e3",
        "18446744073709551616",
        "99999999999999999999999999",
        "\"5\"",
    ] {
        assert_eq!(
            err(&with_headers(&format!("Content-Length: {v}\r\n"))),
            H1Error::InvalidContentLength,
            "{v:?}"
        );
    }
}

#[test]
fn invalid_transfer_encoding() {
    for v in [
        "chunked, gzip",
        "xchunked",
        "chunkedx",
        "chunked, chunked",
        "chunked;q=1",
        "chunked ;",
        ", chunked",
        "chunked,",
        "gzip",
        "",
        "\"chunked\"",
        "chunked chunked",
    ] {
        assert_eq!(
            err(&with_headers(&format!("Transfer-Encoding: {v}\r\n"))),
            H1Error::InvalidTransferEncoding,
            "{v:?}"
        );
    }
    // Two fields form one list: duplicated chunked.
    assert_eq!(
        err(&with_headers(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        )),
        H1Error::InvalidTransferEncoding
    );
    // ... and chunked not last across fields.
    assert_eq!(
        err(&with_headers(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"
        )),
        H1Error::InvalidTransferEncoding
    );
    // Vertical tab / form feed are control bytes: refused by the value rule.
    for v in ["chunked\x0b", "\x0cchunked"] {
        assert_eq!(
            err(&with_headers(&format!("Transfer-Encoding: {v}\r\n"))),
            H1Error::InvalidHeaderValue,
            "{v:?}"
        );
    }
}

#[test]
fn unsupported_transfer_coding() {
    let e = err(&with_headers("Transfer-Encoding: gzip, chunked\r\n"));
    assert_eq!(e, H1Error::UnsupportedTransferCoding);
    assert_eq!(e.status(), 501);
    assert_eq!(
        err(&with_headers(
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
        )),
        H1Error::UnsupportedTransferCoding
    );
}

#[test]
fn te_in_http10() {
    assert_eq!(
        err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        H1Error::TransferEncodingInHttp10
    );
}

#[test]
fn obs_fold() {
    assert_eq!(err(&with_headers("X-A: a\r\n b\r\n")), H1Error::ObsFold);
    assert_eq!(err(&with_headers("X-A: a\r\n\tb\r\n")), H1Error::ObsFold);
    assert_eq!(
        err(&with_headers("Transfer-Encoding: \r\n chunked\r\n")),
        H1Error::ObsFold
    );
    // Whitespace between the request line and the first header.
    assert_eq!(err(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n"), H1Error::ObsFold);
    // Detected even when the fold arrives in a later read.
    let mut p = RequestParser::new(limits());
    let s = b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n";
    let mut result = Ok(None);
    for i in 1..=s.len() {
        result = p.parse(&s[..i]);
        if result != Ok(None) {
            break;
        }
    }
    assert_eq!(result, Err(H1Error::ObsFold));
}

#[test]
fn bare_lf() {
    for s in [
        &b"GET / HTTP/1.1\nHost: h\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\n",
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(err(s), H1Error::BareLf, "{:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn bare_cr() {
    assert_eq!(err(b"\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"), H1Error::Malformed);
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"),
        H1Error::InvalidHeaderValue
    );
}

#[test]
fn control_bytes() {
    assert_eq!(err(&with_headers("X-A: a\0b\r\n")), H1Error::InvalidHeaderValue);
    assert_eq!(err(&with_headers("X-A: a\x01b\r\n")), H1Error::InvalidHeaderValue);
    assert_eq!(err(&with_headers("X-A: a\x7fb\r\n")), H1Error::InvalidHeaderValue);
    assert_eq!(err(&with_headers("X\0A: ab\r\n")), H1Error::InvalidHeaderName);
    assert_eq!(err(&with_headers("X(A): ab\r\n")), H1Error::InvalidHeaderName);
    assert_eq!(err(&with_headers(": ab\r\n")), H1Error::InvalidHeaderName);
    assert_eq!(err(&with_headers("NoColon\r\n")), H1Error::InvalidHeaderName);
}

#[test]
fn space_before_colon() {
    assert_eq!(err(&with_headers("Content-Length : 5\r\n")), H1Error::InvalidHeaderName);
    assert_eq!(
        err(&with_headers("Transfer-Encoding\t: chunked\r\n")),
        H1Error::InvalidHeaderName
    );
}

#[test]
fn invalid_method() {
    assert_eq!(err(b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n"), H1Error::InvalidMethod);
    assert_eq!(err(b" / HTTP/1.1\r\nHost: h\r\n\r\n"), H1Error::InvalidMethod);
    assert_eq!(err(b"G\x00T / HTTP/1.1\r\nHost: h\r\n\r\n"), H1Error::InvalidMethod);
}

#[test]
fn invalid_target() {
    for s in [
        &b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET h.example:80 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET ftp://h.example/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://user@h.example/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://h ex/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"CONNECT /p HTTP/1.1\r\nHost: h\r\n\r\n",
        b"CONNECT h.example HTTP/1.1\r\nHost: h\r\n\r\n",
        b"CONNECT h.example: HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert_eq!(err(s), H1Error::InvalidTarget, "{:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn versions() {
    let e = err(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n");
    assert_eq!(e, H1Error::UnsupportedVersion);
    assert_eq!(e.status(), 505);
    assert_eq!(err(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"), H1Error::UnsupportedVersion);
    assert_eq!(err(b"GET / HTTP/0.9\r\nHost: h\r\n\r\n"), H1Error::UnsupportedVersion);
    assert_eq!(err(b"GET / http/1.1\r\nHost: h\r\n\r\n"), H1Error::InvalidVersion);
    assert_eq!(err(b"GET / HTTP/1\r\nHost: h\r\n\r\n"), H1Error::InvalidVersion);
    assert_eq!(err(b"GET / HTTP/11.1\r\nHost: h\r\n\r\n"), H1Error::InvalidVersion);
    assert_eq!(err(b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), H1Error::Malformed);
}

#[test]
fn host_rules() {
    assert_eq!(err(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"), H1Error::MissingHost);
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        H1Error::MultipleHost
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        H1Error::MultipleHost
    );
    assert_eq!(
        err(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        H1Error::MultipleHost
    );
    for v in [
        "a b",
        "user@h",
        "h/x",
        "h?x",
        "h:po",
        "h:80:90",
        "[::1",
        "[::1]x",
        "caf\u{e9}",
    ] {
        let s = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
        assert_eq!(err(s.as_bytes()), H1Error::InvalidHost, "{v:?}");
    }
    // Absolute-form still needs a Host in HTTP/1.1.
    assert_eq!(err(b"GET http://h/ HTTP/1.1\r\n\r\n"), H1Error::MissingHost);
}

#[test]
fn size_limits() {
    let small = HeadLimits {
        max_head_bytes: 64,
        max_headers: 3,
    };
    let long = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n", "a".repeat(60));
    assert_eq!(parse_request_head(long.as_bytes(), &small), Err(H1Error::HeadTooLarge));
    let mut complete = long.clone();
    complete.push_str("\r\n");
    assert_eq!(
        parse_request_head(complete.as_bytes(), &small),
        Err(H1Error::HeadTooLarge)
    );
    // Exactly at the limit is fine.
    let exact = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n", "a".repeat(64 - 32));
    assert_eq!(exact.len(), 64);
    assert!(parse_request_head(exact.as_bytes(), &small).unwrap().is_some());
    // Leading empty lines count too.
    let blank = "\r\n".repeat(40);
    assert_eq!(parse_request_head(blank.as_bytes(), &small), Err(H1Error::HeadTooLarge));

    let many = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let e = parse_request_head(many, &small).unwrap_err();
    assert_eq!(e, H1Error::TooManyHeaders);
    assert_eq!(e.status(), 431);
    // max_headers above the hard cap is clamped, not a panic.
    let huge = HeadLimits {
        max_head_bytes: 1 << 20,
        max_headers: usize::MAX,
    };
    let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..HARD_MAX_HEADERS {
        s.push_str(&format!("X-{i}: v\r\n"));
    }
    s.push_str("\r\n");
    assert_eq!(parse_request_head(s.as_bytes(), &huge), Err(H1Error::TooManyHeaders));
}

// ---------------------------------------------------------------- responses

#[test]
fn response_shapes() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let h = res_ok(s, Method::Get);
    assert_eq!(h.status(), 200);
    assert_eq!(h.reason(s), b"OK");
    assert_eq!(h.framing(), BodyFraming::Length(5));
    assert!(h.connection().keep_alive);
    assert_eq!(h.len(), s.len() - 5);

    let s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(res_ok(s, Method::Post).framing(), BodyFraming::Chunked);

    let s = b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n";
    let h = res_ok(s, Method::Get);
    assert_eq!(h.framing(), BodyFraming::CloseDelimited);
    assert!(!h.connection().keep_alive);

    let s = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
    assert!(!res_ok(s, Method::Get).connection().keep_alive);
    let s = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n";
    assert!(res_ok(s, Method::Get).connection().keep_alive);
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n";
    assert!(!res_ok(s, Method::Get).connection().keep_alive);
}

#[test]
fn response_without_body() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
    let h = res_ok(s, Method::Head);
    assert_eq!(h.framing(), BodyFraming::None);
    assert!(h.connection().keep_alive);
    for status in ["204 No Content", "304 Not Modified", "100 Continue", "103 Early Hints"] {
        let s = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(
            res_ok(s.as_bytes(), Method::Get).framing(),
            BodyFraming::None,
            "{status}"
        );
    }
    let s = b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(res_ok(s, Method::Get).framing(), BodyFraming::None);
    let s = b"HTTP/1.1 200 Connection established\r\n\r\n";
    assert_eq!(res_ok(s, Method::Connect).framing(), BodyFraming::None);
    let s = b"HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(res_ok(s, Method::Connect).framing(), BodyFraming::Length(2));

    let s = b"HTTP/1.1 100 Continue\r\n\r\n";
    assert!(res_ok(s, Method::Post).is_interim());
    let s = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut p = ResponseParser::new(limits()).upgrade_requested(true);
    let h = p.parse(s, Method::Get).unwrap().unwrap();
    assert!(!h.is_interim());
    assert!(h.connection().upgrade);
    assert_eq!(h.framing(), BodyFraming::None);
}

#[test]
fn unrequested_upgrade_is_refused() {
    let s = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(res(s, Method::Get), Err(H1Error::UnrequestedUpgrade));
    let mut p = ResponseParser::new(limits());
    assert_eq!(p.parse(s, Method::Get), Err(H1Error::UnrequestedUpgrade));
    let mut p = ResponseParser::new(limits()).upgrade_requested(false);
    assert_eq!(p.parse(s, Method::Post), Err(H1Error::UnrequestedUpgrade));
    // Other 1xx answers are not affected.
    let mut p = ResponseParser::new(limits());
    assert!(p
        .parse(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post)
        .unwrap()
        .unwrap()
        .is_interim());
}

#[test]
fn awaits_continue() {
    let h = ok(&with_headers("Expect: 100-continue\r\nContent-Length: 5\r\n"));
    assert!(h.awaits_continue());
    let h = ok(&with_headers("Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n"));
    assert!(h.awaits_continue());
    // No body to wait for, or no expectation.
    assert!(!ok(&with_headers("Expect: 100-continue\r\nContent-Length: 0\r\n")).awaits_continue());
    assert!(!ok(&with_headers("Expect: 100-continue\r\n")).awaits_continue());
    assert!(!ok(&with_headers("Content-Length: 5\r\n")).awaits_continue());
}

#[test]
fn response_reason() {
    let s = b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(res_ok(s, Method::Get).reason(s), b"");
    let s = b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n";
    assert_eq!(res_ok(s, Method::Get).reason(s), b"");
    let s = b"HTTP/1.1 404 Not \xc3\xa9 Found\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(res_ok(s, Method::Get).reason(s), b"Not \xc3\xa9 Found");
    let s = b"\r\nHTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(res_ok(s, Method::Get).reason(s), b"Nope");
}

#[test]
fn response_refusals() {
    let e = |s: &[u8]| res(s, Method::Get).unwrap_err();
    assert_eq!(e(b"HTTP/1.1 600 X\r\n\r\n"), H1Error::InvalidStatus);
    assert_eq!(e(b"HTTP/1.1 099 X\r\n\r\n"), H1Error::InvalidStatus);
    assert_eq!(e(b"HTTP/1.1 20 X\r\n\r\n"), H1Error::InvalidStatus);
    assert_eq!(e(b"HTTP/1.1 200X\r\n\r\n"), H1Error::InvalidStatus);
    assert_eq!(e(b"HTTP/2.0 200 OK\r\n\r\n"), H1Error::UnsupportedVersion);
    assert_eq!(e(b"HTTX/1.1 200 OK\r\n\r\n"), H1Error::InvalidVersion);
    assert_eq!(
        e(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        H1Error::ContentLengthAndTransferEncoding
    );
    assert_eq!(
        e(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        H1Error::ConflictingContentLength
    );
    assert_eq!(
        e(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        H1Error::InvalidTransferEncoding
    );
    assert_eq!(
        e(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        H1Error::UnsupportedTransferCoding
    );
    assert_eq!(
        e(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        H1Error::TransferEncodingInHttp10
    );
    assert_eq!(e(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), H1Error::ObsFold);
    assert_eq!(e(b"HTTP/1.1 200 OK\nX: a\r\n\r\n"), H1Error::BareLf);
    assert_eq!(e(b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n"), H1Error::InvalidHeaderName);
    assert_eq!(e(b"HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n"), H1Error::InvalidHeaderValue);
    // Host in a response is not looked at.
    assert!(res(
        b"HTTP/1.1 200 OK\r\nHost: a b\r\nContent-Length: 0\r\n\r\n",
        Method::Get
    )
    .is_ok());
}

#[test]
fn response_byte_by_byte() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nhi";
    let whole = res_ok(s, Method::Get);
    let mut p = ResponseParser::new(limits());
    for i in 1..=s.len() {
        match p.parse(&s[..i], Method::Get).unwrap() {
            Some(h) => {
                assert_eq!(h, whole);
                assert_eq!(i, whole.len());
                return;
            }
            None => assert!(i < whole.len()),
        }
    }
    panic!("never completed");
}

// ---------------------------------------------------------------- helpers

#[test]
fn authority_validation() {
    for ok in [
        "h",
        "h.example",
        "h:80",
        "h:",
        "[::1]",
        "[::1]:443",
        "1.2.3.4:5",
        "a-b_c~d%20",
        "",
    ] {
        assert!(valid_authority(ok.as_bytes()), "{ok:?}");
    }
    for bad in ["h:8a", "a:b:c", "[::1", "x[::1]", "[::1]:8a", "a@b", "a/b", "a b"] {
        assert!(!valid_authority(bad.as_bytes()), "{bad:?}");
    }
}

#[test]
fn header_kind_classification() {
    assert_eq!(HeaderKind::classify(b"Content-Length"), HeaderKind::ContentLength);
    assert_eq!(HeaderKind::classify(b"TRANSFER-ENCODING"), HeaderKind::TransferEncoding);
    assert_eq!(HeaderKind::classify(b"x-forwarded-proto"), HeaderKind::XForwardedProto);
    assert_eq!(HeaderKind::classify(b"TE"), HeaderKind::Te);
    assert_eq!(HeaderKind::classify(b"content-lengthx"), HeaderKind::Other);
    assert!(HeaderKind::Upgrade.is_hop_by_hop());
    assert!(!HeaderKind::Host.is_hop_by_hop());
}

// ---------------------------------------------------------------- properties

/// Bytes biased towards the ones that matter to an HTTP parser.
fn http_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b' '),
        Just(b'\t'),
        Just(b':'),
        Just(b','),
        Just(b'0'),
        Just(b'5'),
        Just(b'a'),
        Just(0u8),
        Just(0x80u8),
        any::<u8>(),
    ];
    let chunk = prop_oneof![
        3 => proptest::collection::vec(interesting, 0..8),
        1 => prop_oneof![
            Just(b"GET / HTTP/1.1\r\n".to_vec()),
            Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
            Just(b"Host: h\r\n".to_vec()),
            Just(b"Content-Length: 5\r\n".to_vec()),
            Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
            Just(b"Connection: close, x\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
        ],
    ];
    proptest::collection::vec(chunk, 0..16).prop_map(|v| v.concat())
}

/// Mostly well-formed heads built from fields that matter to framing, then a few byte
/// mutations: random bytes alone almost never get past the start line.
fn head_like() -> impl Strategy<Value = Vec<u8>> {
    let start = prop_oneof![
        Just("GET / HTTP/1.1"),
        Just("POST /x?y HTTP/1.0"),
        Just("CONNECT h:443 HTTP/1.1"),
        Just("OPTIONS * HTTP/1.1"),
        Just("GET http://h.example/p HTTP/1.1"),
        Just("PROPFIND /d HTTP/1.1"),
        Just("HTTP/1.1 200 OK"),
        Just("HTTP/1.0 204 No Content"),
        Just("HTTP/1.1 101 Switching"),
        Just("HTTP/1.1 304"),
    ];
    let name = prop_oneof![
        Just("X-B"),
        Just("Content-Length"),
        Just("Transfer-Encoding"),
        Just("Connection"),
        Just("Upgrade"),
        Just("Keep-Alive"),
        Just("TE"),
        Just("Expect"),
        Just("X-Forwarded-For"),
        Just("X-A"),
    ];
    let value = prop_oneof![
        Just("h.example"),
        Just("5"),
        Just("0"),
        Just("5, 5"),
        Just("chunked"),
        Just("gzip, chunked"),
        Just("close"),
        Just("keep-alive, X-A"),
        Just("upgrade"),
        Just("websocket"),
        Just("100-continue"),
        Just(""),
        Just("a b"),
    ];
    let fields = proptest::collection::vec((name, value), 0..6);
    let mutation = (any::<prop::sample::Index>(), any::<u8>(), 0u8..3);
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        1 => proptest::collection::vec(mutation, 1..3),
    ];
    let flags = (any::<bool>(), any::<bool>());
    (start, fields, flags, mutations).prop_map(|(start, fields, (complete, host), mutations)| {
        let mut v = format!("{start}\r\n").into_bytes();
        if host {
            v.extend_from_slice(b"Host: h.example\r\n");
        }
        for (n, val) in fields {
            v.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
        }
        if complete {
            v.extend_from_slice(b"\r\nbody");
        }
        for (at, byte, op) in mutations {
            let i = at.index(v.len());
            match op {
                0 => v[i] = byte,
                1 => v.insert(i, byte),
                _ => {
                    v.remove(i);
                }
            }
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_request_head(&buf, &limits());
        let _ = parse_response_head(&buf, &limits(), Method::Get);
        let _ = parse_response_head(&buf, &limits(), Method::Head);
    }

    #[test]
    fn http_ish_bytes_never_panic_and_spans_are_in_bounds(buf in prop_oneof![http_ish_bytes(), head_like()]) {
        let small = HeadLimits { max_head_bytes: 256, max_headers: 8 };
        for l in [limits(), small] {
            if let Ok(Some(h)) = parse_request_head(&buf, &l) {
                prop_assert!(h.len() <= buf.len());
                for f in h.headers() {
                    prop_assert!(f.name_span().range().end <= h.len());
                    prop_assert!(f.value_span().range().end <= h.len());
                }
                prop_assert!(h.target_span().range().end <= h.len());
                // What we accept, we re-encode into something we accept again.
                let mut out = bytes::BytesMut::new();
                encode_request_head(&h, &buf, &RequestEncode::passthrough(&h), &mut out);
                let again = parse_request_head(&out, &limits());
                prop_assert!(matches!(again, Ok(Some(_))), "{:?} -> {:?}", String::from_utf8_lossy(&out), again);
            }
            if let Ok(Some(h)) = parse_response_head(&buf, &l, Method::Get) {
                prop_assert!(h.len() <= buf.len());
                let mut out = bytes::BytesMut::new();
                encode_response_head(&h, &buf, &ResponseEncode::passthrough(&h), &mut out);
                let again = parse_response_head(&out, &limits(), Method::Get);
                prop_assert!(matches!(again, Ok(Some(_))), "{:?} -> {:?}", String::from_utf8_lossy(&out), again);
            }
        }
    }

    /// Feeding a growing buffer to one RequestParser gives, at every length, what the stateless
    /// parser gives on that prefix: the incremental scan never skips a check.
    #[test]
    fn incremental_equals_stateless(buf in prop_oneof![http_ish_bytes(), head_like()]) {
        let l = HeadLimits { max_head_bytes: 200, max_headers: 8 };
        let mut p = RequestParser::new(l);
        let mut r = ResponseParser::new(l);
        let (mut req_done, mut res_done) = (false, false);
        for i in 0..=buf.len() {
            if !req_done {
                let a = p.parse(&buf[..i]);
                let b = parse_request_head(&buf[..i], &l);
                prop_assert_eq!(&a, &b, "request prefix {}", i);
                req_done = a != Ok(None);
            }
            if !res_done {
                let a = r.parse(&buf[..i], Method::Get);
                let b = parse_response_head(&buf[..i], &l, Method::Get);
                prop_assert_eq!(&a, &b, "response prefix {}", i);
                res_done = a != Ok(None);
            }
        }
    }

    /// Inserting a bare LF, an obs-fold or a NUL anywhere into a valid head is always refused.
    #[test]
    fn injected_bytes_are_refused(pos in 0usize..1000, which in 0usize..3) {
        let s = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: bc\r\n\r\n";
        // Only positions inside lines (not right after a CRLF, where a NUL starts a name).
        let candidates: Vec<usize> = (1..s.len() - 2).filter(|&i| s[i - 1] != b'\n' && s[i] != b'\n').collect();
        let at = candidates[pos % candidates.len()];
        let mut v = s.to_vec();
        match which {
            0 => v.insert(at, b'\n'),
            1 => { let nl = s[at..].iter().position(|&b| b == b'\n').unwrap() + at + 1;
                   if nl >= s.len() - 2 { return Ok(()); }
                   v.insert(nl, b' '); }
            _ => v.insert(at, 0),
        }
        prop_assert!(parse_request_head(&v, &limits()).is_err(), "{:?}", String::from_utf8_lossy(&v));
    }
}
