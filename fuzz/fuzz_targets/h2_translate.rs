//! Fuzz the HTTP/1.1 → HTTP/2 → HTTP/1.1 translation of request heads.
//!
//! Checks, beyond "never panics": a head the HTTP/1.1 parser accepts becomes an HTTP/2 request
//! with lower-case names and no connection-specific field, and the HTTP/1.1 head made back from
//! it is accepted by the parser with the same method (asserted inside `h1_head_through_h2`);
//! translating that head again gives the same bytes (the translation is stable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_proxy::http::h1::{HeadLimits, HARD_MAX_HEADERS};
use ringmesh_proxy::http::h2::h1_head_through_h2;

fuzz_target!(|data: &[u8]| {
    if let Some(once) = h1_head_through_h2(data, HeadLimits::default()) {
        // The first pass added the proxy's own fields and a space after every colon: a head at
        // the default limits comes back above them, which the next hop answers with 431. The
        // second pass checks stability, not limits.
        let roomy = HeadLimits {
            max_head_bytes: usize::MAX,
            max_headers: HARD_MAX_HEADERS,
        };
        let twice = h1_head_through_h2(&once, roomy).expect("a translated head is accepted");
        // The proxy's own x-forwarded-for entry is appended on every pass; everything else
        // must be the same.
        let strip = |h: &[u8]| -> Vec<u8> {
            String::from_utf8_lossy(h)
                .lines()
                .filter(|l| !l.starts_with("x-forwarded-for"))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        };
        assert_eq!(strip(&once), strip(&twice));
    }
});
