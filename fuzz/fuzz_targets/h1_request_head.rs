//! Fuzz the HTTP/1.1 request head parser with arbitrary bytes.
//!
//! Checks, beyond "never panics": the incremental parser fed in two reads agrees with the
//! stateless one; every span of an accepted head lies inside it; and a head we accept, once
//! re-encoded for upstream, is accepted again with the same method, target and framing (the
//! proxy never emits what it would itself refuse).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmesh_proxy::http::h1::{encode_request_head, parse_request_head, HeadLimits, RequestEncode, RequestParser};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_head_bytes: 8 * 1024,
        max_headers: 32,
    };
    let whole = parse_request_head(data, &limits);

    // Same bytes in two reads, split where the first byte says.
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut parser = RequestParser::new(limits);
    let mut incremental = parser.parse(&data[..split]);
    if incremental == Ok(None) {
        incremental = parser.parse(data);
    }
    assert_eq!(incremental, whole);

    if let Ok(Some(head)) = whole {
        assert!(head.len() <= data.len());
        for h in head.headers() {
            assert!(h.name_span().range().end <= head.len());
            assert!(h.value_span().range().end <= head.len());
        }
        let mut out = BytesMut::new();
        encode_request_head(&head, data, &RequestEncode::passthrough(&head), &mut out);
        let big = HeadLimits {
            max_head_bytes: 1 << 20,
            max_headers: 256,
        };
        let again = parse_request_head(&out, &big)
            .expect("re-encoded head refused")
            .expect("re-encoded head incomplete");
        assert_eq!(again.len(), out.len());
        assert_eq!(again.method().as_bytes(&out), head.method().as_bytes(data));
        assert_eq!(again.framing(), head.framing());
    }
});
