//! Fuzz the chunked body decoder with arbitrary bytes.
//!
//! Checks, beyond "never panics": feeding the input in pieces (cut points taken from the first
//! bytes) gives the same outcome as feeding it whole; `scan` and `decode` agree; the decoder
//! never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_proxy::http::h1::{ChunkedDecoder, ChunkedLimits, H1Error};

fn limits(b: u8) -> ChunkedLimits {
    ChunkedLimits {
        max_chunk_size: if b & 1 == 0 { u64::MAX } else { 4096 },
        max_line_bytes: 64 + (b as usize),
        max_trailer_bytes: 256,
    }
}

/// (payload bytes, consumed bytes, done) when fed in pieces ending at `cuts`.
fn in_pieces(l: ChunkedLimits, data: &[u8], cuts: &[usize]) -> Result<(u64, usize, bool), H1Error> {
    let mut d = ChunkedDecoder::new(l);
    let mut pending = Vec::new();
    let (mut consumed, mut payload, mut last) = (0, 0, 0);
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(last, data.len());
        pending.extend_from_slice(&data[last..c]);
        last = c;
        let p = d.scan(&pending)?;
        assert!(p.consumed <= pending.len());
        assert!(p.done || p.consumed == pending.len());
        pending.drain(..p.consumed);
        consumed += p.consumed;
        payload += p.payload;
        if p.done {
            return Ok((payload, consumed, true));
        }
    }
    Ok((payload, consumed, false))
}

fuzz_target!(|input: &[u8]| {
    let Some((&[a, b, c], data)) = input.split_first_chunk::<3>() else {
        return;
    };
    let l = limits(a);

    let whole = ChunkedDecoder::new(l)
        .scan(data)
        .map(|p| (p.payload, p.consumed, p.done));
    let mut cuts = [b as usize, b as usize + c as usize];
    cuts.sort_unstable();
    assert_eq!(in_pieces(l, data, &cuts), whole);

    // decode (one data run at a time) reaches the same place as scan.
    let mut d = ChunkedDecoder::new(l);
    let mut pos = 0;
    let mut payload = 0u64;
    let stepped = loop {
        match d.decode(&data[pos..]) {
            Ok(step) => {
                assert!(step.data.end <= step.consumed);
                payload += step.data.len() as u64;
                pos += step.consumed;
                if step.done || step.consumed == 0 {
                    break Ok((payload, pos, step.done));
                }
            }
            Err(e) => break Err(e),
        }
    };
    assert_eq!(stepped, whole);
});
