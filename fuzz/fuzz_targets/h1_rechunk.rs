//! Fuzz the chunked re-framer the proxy forwards bodies through.
//!
//! Checks, beyond "never panics": feeding the input in pieces (cut points taken from the first
//! bytes) writes the same bytes and leaves the same rest as feeding it whole; it ends like the
//! decoder (same error, or same payload and end); a canonical re-framing decodes to the same
//! payload and re-frames to itself; a de-chunked one is exactly the payload.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmesh_proxy::http::h1::{ChunkedDecoder, ChunkedLimits, ChunkedOut, H1Error, Rechunker, Segments};

/// (bytes written, payload, done, bytes left after the body) when fed in pieces ending at `cuts`.
fn rechunk(data: &[u8], cuts: &[usize], out: ChunkedOut) -> Result<(Vec<u8>, u64, bool, Vec<u8>), H1Error> {
    let mut r = Rechunker::new(ChunkedLimits::default(), out);
    let (mut buf, mut segs) = (BytesMut::new(), Segments::new());
    let (mut written, mut payload, mut last) = (Vec::new(), 0, 0);
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(last, data.len());
        buf.extend_from_slice(&data[last..c]);
        last = c;
        let p = r.feed(&mut buf, &mut segs)?;
        let len = segs.len();
        let before = written.len();
        for s in segs.drain() {
            written.extend_from_slice(&s);
        }
        assert_eq!(written.len() - before, len);
        payload += p.payload;
        if p.done {
            buf.extend_from_slice(&data[last..]);
            return Ok((written, payload, true, buf.to_vec()));
        }
    }
    Ok((written, payload, false, buf.to_vec()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&[a, b, c], data)) = input.split_first_chunk::<3>() else {
        return;
    };
    let mode = if a & 1 == 0 {
        ChunkedOut::Canonical
    } else {
        ChunkedOut::Dechunked
    };
    let mut cuts = [b as usize, b as usize + c as usize];
    cuts.sort_unstable();

    let whole = rechunk(data, &[], mode);
    assert_eq!(rechunk(data, &cuts, mode), whole);

    let decoded = ChunkedDecoder::default().scan(data);
    match (&whole, decoded) {
        (Err(e), Err(d)) => assert_eq!(*e, d),
        (Ok((_, payload, done, _)), Ok(p)) => assert_eq!((*payload, *done), (p.payload, p.done)),
        (w, d) => panic!("rechunker {w:?} vs decoder {d:?}"),
    }

    if let Ok((out, payload, true, _)) = whole {
        match mode {
            ChunkedOut::Dechunked => assert_eq!(out.len() as u64, payload),
            ChunkedOut::Canonical => {
                let p = ChunkedDecoder::default().scan(&out).expect("canonical output decodes");
                assert_eq!((p.payload, p.consumed, p.done), (payload, out.len(), true));
                let again = rechunk(&out, &[], ChunkedOut::Canonical).expect("re-frames");
                assert_eq!(again.0, out, "canonical output is a fixed point");
            }
        }
    }
});
