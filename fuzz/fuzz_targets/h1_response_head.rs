//! Fuzz the HTTP/1.1 response head parser with arbitrary bytes (first byte picks the method
//! of the request being answered, since HEAD and CONNECT change the framing).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmesh_proxy::http::h1::{
    encode_response_head, parse_response_head, HeadLimits, Method, ResponseEncode, ResponseParser,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::Head,
        1 => Method::Connect,
        2 => Method::Post,
        _ => Method::Get,
    };
    let limits = HeadLimits {
        max_head_bytes: 8 * 1024,
        max_headers: 32,
    };
    let whole = parse_response_head(data, &limits, method);

    let split = (selector as usize).min(data.len());
    let mut parser = ResponseParser::new(limits);
    let mut incremental = parser.parse(&data[..split], method);
    if incremental == Ok(None) {
        incremental = parser.parse(data, method);
    }
    assert_eq!(incremental, whole);

    if let Ok(Some(head)) = whole {
        assert!(head.len() <= data.len());
        assert!((100..=599).contains(&head.status()));
        let mut out = BytesMut::new();
        encode_response_head(&head, data, &ResponseEncode::passthrough(&head), &mut out);
        let big = HeadLimits {
            max_head_bytes: 1 << 20,
            max_headers: 256,
        };
        let again = parse_response_head(&out, &big, method)
            .expect("re-encoded head refused")
            .expect("re-encoded head incomplete");
        assert_eq!(again.status(), head.status());
        assert_eq!(again.framing(), head.framing());
    }
});
