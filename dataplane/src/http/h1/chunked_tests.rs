//! Tests for the chunked decoder: accepted shapes, every refusal by variant, trailers, and
//! properties: any split of the input decodes like the whole, random bytes never panic.

use super::*;
use proptest::prelude::*;

/// Run `scan` over the whole input at once.
fn scan_all(input: &[u8]) -> Result<ScanProgress, H1Error> {
    ChunkedDecoder::default().scan(input)
}

/// Decode with `decode`, collecting payload, over the whole input at once.
fn payload_of(input: &[u8]) -> Result<(Vec<u8>, usize, bool), H1Error> {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let step = d.decode(&input[pos..])?;
        out.extend_from_slice(&input[pos..][step.data.clone()]);
        pos += step.consumed;
        if step.done || step.consumed == 0 {
            return Ok((out, pos, step.done));
        }
    }
}

/// Feed `input` in the given pieces, as a proxy would: keep unconsumed bytes, append the next
/// read, call `scan` again. Returns (payload seen, bytes forwarded, done) or the first error.
fn scan_in_pieces(input: &[u8], cuts: &[usize]) -> Result<(u64, usize, bool), H1Error> {
    let mut d = ChunkedDecoder::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded = 0;
    let mut payload = 0;
    let mut last = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= input.len()).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    for b in bounds {
        if b < last {
            continue;
        }
        pending.extend_from_slice(&input[last..b]);
        last = b;
        let p = d.scan(&pending)?;
        // Everything short of done is consumed: the decoder keeps no bytes back.
        assert!(p.done || p.consumed == pending.len());
        pending.drain(..p.consumed);
        forwarded += p.consumed;
        payload += p.payload;
        if p.done {
            return Ok((payload, forwarded, true));
        }
    }
    Ok((payload, forwarded, false))
}

#[test]
fn simple_body() {
    let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let p = scan_all(body).unwrap();
    assert_eq!(
        p,
        ScanProgress {
            consumed: body.len(),
            payload: 11,
            done: true
        }
    );
    assert_eq!(payload_of(body).unwrap(), (b"hello world".to_vec(), body.len(), true));
}

#[test]
fn stops_at_end_of_body() {
    let body = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    let p = scan_all(body).unwrap();
    assert!(p.done);
    assert_eq!(&body[p.consumed..], b"GET / HTTP/1.1\r\n");
    // Once done, nothing more is consumed.
    let mut d = ChunkedDecoder::default();
    d.scan(body).unwrap();
    assert!(d.is_done());
    assert_eq!(
        d.scan(b"more").unwrap(),
        ScanProgress {
            consumed: 0,
            payload: 0,
            done: true
        }
    );
}

#[test]
fn hex_sizes() {
    let mut body = b"A\r\n0123456789\r\n1f\r\n".to_vec();
    body.extend_from_slice(&[b'x'; 31]);
    body.extend_from_slice(b"\r\n00000\r\n\r\n");
    assert_eq!(scan_all(&body).unwrap().payload, 41);
}

#[test]
fn extensions() {
    for line in [
        "5;a",
        "5;a=b",
        "5 ;a=b",
        "5\t; a = b",
        "5;a=\"quoted value; with \\\"escapes\\\"\"",
        "5;a=b;c;d=\"\"",
        "5;a=\"x\" ;b",
        "5;name=tok-en.1",
    ] {
        let body = format!("{line}\r\nhello\r\n0;last=1\r\n\r\n");
        assert_eq!(payload_of(body.as_bytes()).unwrap().0, b"hello", "{line:?}");
    }
}

#[test]
fn trailers() {
    let body = b"3\r\nabc\r\n0\r\nX-Checksum: 123\r\nX-Empty:\r\nX-Ws: a\tb \r\n\r\n";
    let p = scan_all(body).unwrap();
    assert!(p.done);
    assert_eq!(p.consumed, body.len());
    assert_eq!(p.payload, 3);
}

#[test]
fn refusals() {
    let cases: &[(&[u8], H1Error)] = &[
        (b"", H1Error::InvalidChunkSize), // placeholder, skipped below
        (b"g\r\n", H1Error::InvalidChunkSize),
        (b"\r\n", H1Error::InvalidChunkSize),
        (b"-1\r\n", H1Error::InvalidChunkSize),
        (b"+1\r\n", H1Error::InvalidChunkSize),
        (b"0x5\r\n", H1Error::InvalidChunkSize),
        (b" 5\r\n", H1Error::InvalidChunkSize),
        (b"5 \r\nhello\r\n", H1Error::InvalidChunkSize),
        (b"5\rhello", H1Error::InvalidChunkSize),
        (b"5\nhello\r\n", H1Error::BareLf),
        (b"5;a\nhello", H1Error::BareLf),
        (b"10000000000000000\r\n", H1Error::ChunkSizeTooLarge),
        (b"ffffffffffffffffff\r\n", H1Error::ChunkSizeTooLarge),
        (b"5;\r\nhello\r\n", H1Error::InvalidChunkExtension),
        (b"5;=b\r\n", H1Error::InvalidChunkExtension),
        (b"5;a=\r\n", H1Error::InvalidChunkExtension),
        (b"5;a b\r\n", H1Error::InvalidChunkExtension),
        (b"5;a \r\n", H1Error::InvalidChunkExtension),
        (b"5;a=b \r\n", H1Error::InvalidChunkExtension),
        (b"5;a=\"b\r\n", H1Error::InvalidChunkExtension),
        (b"5;a=\"b\"c\r\n", H1Error::InvalidChunkExtension),
        (b"5;a\x00\r\n", H1Error::InvalidChunkExtension),
        (b"5;a=b\x7f\r\n", H1Error::InvalidChunkExtension),
        (b"5;a=\"\x01\"\r\n", H1Error::InvalidChunkExtension),
        (b"5\r\nhelloX\r\n", H1Error::MissingChunkCrlf),
        (b"5\r\nhello\r\r\n", H1Error::MissingChunkCrlf),
        (b"5\r\nhello\n0\r\n\r\n", H1Error::MissingChunkCrlf),
        (b"5\r\nhelloo\r\n", H1Error::MissingChunkCrlf),
        (b"0\r\n\n", H1Error::BareLf),
        (b"0\r\nX: a\n\r\n", H1Error::BareLf),
        (b"0\r\n X: a\r\n\r\n", H1Error::ObsFold),
        (b"0\r\nX: a\r\n b\r\n\r\n", H1Error::ObsFold),
        (b"0\r\nX : a\r\n\r\n", H1Error::InvalidTrailer),
        (b"0\r\nX\r\n\r\n", H1Error::InvalidTrailer),
        (b"0\r\n: a\r\n\r\n", H1Error::InvalidTrailer),
        (b"0\r\nX: a\x00\r\n\r\n", H1Error::InvalidTrailer),
        (b"0\r\nX: a\rb\r\n\r\n", H1Error::InvalidTrailer),
        (b"0\r\n\rX", H1Error::InvalidTrailer),
        (b"0\r\nContent-Length: 5\r\n\r\n", H1Error::ForbiddenTrailer),
        (b"0\r\ntransfer-encoding: chunked\r\n\r\n", H1Error::ForbiddenTrailer),
        (b"0\r\nHOST: x\r\n\r\n", H1Error::ForbiddenTrailer),
        (b"0\r\nTrailer: x\r\n\r\n", H1Error::ForbiddenTrailer),
    ];
    for (input, want) in &cases[1..] {
        assert_eq!(scan_all(input), Err(*want), "{:?}", String::from_utf8_lossy(input));
    }
    // Names that merely start like a forbidden one are fine.
    assert!(
        scan_all(b"0\r\nContent-Length-X: 5\r\nHostname: h\r\n\r\n")
            .unwrap()
            .done
    );
    // A long name does not overflow the name buffer.
    let long = format!("0\r\n{}: v\r\n\r\n", "x".repeat(100));
    assert!(scan_all(long.as_bytes()).unwrap().done);
}

#[test]
fn limits() {
    let l = ChunkedLimits {
        max_chunk_size: 16,
        max_line_bytes: 8,
        max_trailer_bytes: 12,
    };
    let scan = |s: &[u8]| ChunkedDecoder::new(l).scan(s);
    assert!(scan(b"10\r\n0123456789abcdef\r\n0\r\n\r\n").unwrap().done);
    assert_eq!(scan(b"11\r\n"), Err(H1Error::ChunkSizeTooLarge));
    assert!(scan(b"1;abcdef\r\nx\r\n0\r\n\r\n").unwrap().done);
    assert_eq!(scan(b"1;abcdefg\r\n"), Err(H1Error::ChunkLineTooLong));
    // Leading zeros count against the line, so they cannot spin forever either.
    assert_eq!(scan(b"000000001\r\n"), Err(H1Error::ChunkLineTooLong));
    assert!(scan(b"0\r\nA: 12345\r\n\r\n").unwrap().done); // 12 bytes of trailer section
    let e = scan(b"0\r\nA: 123456\r\n\r\n").unwrap_err();
    assert_eq!(e, H1Error::TrailersTooLarge);
    assert_eq!(e.status(), 431);
}

#[test]
fn failed_decoder_stays_failed() {
    let mut d = ChunkedDecoder::default();
    assert_eq!(d.scan(b"zz"), Err(H1Error::InvalidChunkSize));
    assert_eq!(d.scan(b"5\r\nhello\r\n"), Err(H1Error::InvalidChunkSize));
    assert_eq!(d.scan(b""), Err(H1Error::InvalidChunkSize));
    assert!(!d.is_done());
}

#[test]
fn decode_reports_one_data_run_at_a_time() {
    let body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let mut d = ChunkedDecoder::default();
    let s1 = d.decode(body).unwrap();
    assert_eq!((s1.consumed, s1.data.clone(), s1.done), (6, 3..6, false));
    let rest = &body[s1.consumed..];
    let s2 = d.decode(rest).unwrap();
    assert_eq!(&rest[s2.data.clone()], b"de");
    let rest = &rest[s2.consumed..];
    let s3 = d.decode(rest).unwrap();
    assert!(s3.done && s3.data.is_empty());
    assert_eq!(s3.consumed, rest.len());
}

#[test]
fn every_split_point_equals_whole() {
    let body: &[u8] = b"5;ext=\"v\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: v\r\n\r\nNEXT";
    let whole = scan_all(body).unwrap();
    for i in 0..=body.len() {
        for j in i..=body.len() {
            let got = scan_in_pieces(body, &[i, j]).unwrap();
            assert_eq!(got, (whole.payload, whole.consumed, true), "split at {i},{j}");
        }
    }
}

#[test]
fn byte_at_a_time_error_matches_whole() {
    let body = b"5\r\nhello\r\n3\r\nabcX\r\n";
    let whole = scan_all(body).unwrap_err();
    let cuts: Vec<usize> = (0..body.len()).collect();
    assert_eq!(scan_in_pieces(body, &cuts).unwrap_err(), whole);
}

#[test]
fn encode_helpers() {
    let mut dst = BytesMut::new();
    write_chunk_header(1, &mut dst);
    write_chunk_header(255, &mut dst);
    write_chunk_header(u64::MAX, &mut dst);
    assert_eq!(&dst[..], b"1\r\nff\r\nffffffffffffffff\r\n");
    let mut dst = BytesMut::new();
    write_chunk(b"hello", &mut dst);
    write_chunk(b"", &mut dst);
    write_chunk(&[b'x'; 26], &mut dst);
    dst.extend_from_slice(LAST_CHUNK);
    let p = scan_all(&dst).unwrap();
    assert_eq!((p.payload, p.consumed, p.done), (31, dst.len(), true));
}

/// A well-formed chunked body from chunk sizes, extensions and trailers.
fn valid_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..40),
        prop_oneof![Just(""), Just(";a=b"), Just(" ;x"), Just(";q=\"a b\"")],
        any::<bool>(),
    );
    let trailer = prop_oneof![Just(""), Just("X-A: 1\r\n"), Just("X-A: 1\r\nX-B: two words\r\n")];
    (proptest::collection::vec(chunk, 0..6), trailer).prop_map(|(chunks, trailer)| {
        let mut body = Vec::new();
        let mut payload = Vec::new();
        for (data, ext, upper) in chunks {
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            body.extend_from_slice(size.as_bytes());
            body.extend_from_slice(ext.as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(&data);
            body.extend_from_slice(b"\r\n");
            payload.extend_from_slice(&data);
        }
        body.extend_from_slice(b"0\r\n");
        body.extend_from_slice(trailer.as_bytes());
        body.extend_from_slice(b"\r\n");
        (body, payload)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256), cut in 0usize..256) {
        let _ = scan_all(&buf);
        let _ = payload_of(&buf);
        let _ = scan_in_pieces(&buf, &[cut]);
    }

    #[test]
    fn framing_ish_bytes_never_panic(buf in proptest::collection::vec(
        prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'1'), Just(b'f'), Just(b';'),
                    Just(b'='), Just(b'"'), Just(b'\\'), Just(b' '), Just(b':'), Just(b'x')], 0..128)) {
        let whole = scan_all(&buf);
        // Byte at a time gives the same outcome as all at once.
        let cuts: Vec<usize> = (0..buf.len()).collect();
        let pieces = scan_in_pieces(&buf, &cuts);
        match (whole, pieces) {
            (Ok(w), Ok(p)) => prop_assert_eq!((w.payload, w.consumed, w.done), p),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (w, p) => prop_assert!(false, "whole {:?} vs pieces {:?}", w, p),
        }
    }

    /// Decoding any split of a valid body equals decoding it whole, and the payload is exact.
    #[test]
    fn any_split_equals_whole((body, payload) in valid_body(), cuts in proptest::collection::vec(0usize..600, 0..8)) {
        let (data, consumed, done) = payload_of(&body).unwrap();
        prop_assert_eq!(&data, &payload);
        prop_assert_eq!(consumed, body.len());
        prop_assert!(done);
        let got = scan_in_pieces(&body, &cuts).unwrap();
        prop_assert_eq!(got, (payload.len() as u64, body.len(), true));
    }
}

// ---- Rechunker ----

/// (bytes written, payload counted, done, what is left in the buffer, most segments produced
/// by one feed).
type Rechunked = (Vec<u8>, u64, bool, Vec<u8>, usize);

/// What a proxy does with a rechunker: append each piece to its read buffer, feed, write the
/// segments.
fn rechunk_in_pieces(input: &[u8], cuts: &[usize], out: ChunkedOut) -> Result<Rechunked, H1Error> {
    let mut r = Rechunker::new(ChunkedLimits::default(), out);
    let mut buf = BytesMut::new();
    let mut segs = Segments::new();
    let (mut written, mut payload, mut most) = (Vec::new(), 0, 0);
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= input.len()).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut last = 0;
    for b in bounds {
        if b < last {
            continue;
        }
        buf.extend_from_slice(&input[last..b]);
        last = b;
        let p = r.feed(&mut buf, &mut segs)?;
        most = most.max(segs.count());
        let len = segs.len();
        let before = written.len();
        for s in segs.drain() {
            written.extend_from_slice(&s);
        }
        assert_eq!(written.len() - before, len, "len() counts what drain() yields");
        assert!(segs.is_empty() && segs.count() == 0);
        payload += p.payload;
        if p.done {
            assert!(r.is_done());
            buf.extend_from_slice(&input[last..]);
            return Ok((written, payload, true, buf.to_vec(), most));
        }
    }
    Ok((written, payload, false, buf.to_vec(), most))
}

fn rechunk(input: &[u8]) -> Result<Vec<u8>, H1Error> {
    rechunk_in_pieces(input, &[], ChunkedOut::Canonical).map(|r| r.0)
}

#[test]
fn canonical_body_passes_as_one_slice() {
    let body = b"5\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: v\r\n\r\nGET / HTTP/1.1\r\n";
    let mut buf = BytesMut::from(&body[..]);
    let start = buf.as_ptr() as usize;
    let mut segs = Segments::new();
    let p = Rechunker::new(ChunkedLimits::default(), ChunkedOut::Canonical)
        .feed(&mut buf, &mut segs)
        .unwrap();
    assert_eq!(
        p,
        FeedProgress {
            payload: 15,
            done: true
        }
    );
    assert_eq!(segs.count(), 1);
    let out: Vec<Bytes> = segs.drain().collect();
    assert_eq!(&out[0][..], &body[..body.len() - 16]);
    assert_eq!(
        out[0].as_ptr() as usize,
        start,
        "a slice of the read buffer, not a copy"
    );
    assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
}

#[test]
fn size_lines_are_rewritten_canonically() {
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"00000000000000000000005\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        (b"5;a=b\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        (b"5 ;a\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        (b"5\t; a = \"q; v\"\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        (
            b"05\r\nhello\r\n01;x\r\n!\r\n000;e=1\r\nX-T: v\r\n\r\n",
            b"5\r\nhello\r\n1\r\n!\r\n0\r\nX-T: v\r\n\r\n",
        ),
        (b"0000\r\n\r\n", b"0\r\n\r\n"),
        (b"0;x\r\nA: 1\r\nB: 2\r\n\r\n", b"0\r\nA: 1\r\nB: 2\r\n\r\n"),
        // Already canonical, upper-case digits included: as received.
        (
            b"A\r\n0123456789\r\n1f\r\n0123456789012345678901234567890\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n1f\r\n0123456789012345678901234567890\r\n0\r\n\r\n",
        ),
        (
            b"0010\r\n0123456789abcdef\r\n0\r\n\r\n",
            b"10\r\n0123456789abcdef\r\n0\r\n\r\n",
        ),
    ];
    for (input, want) in cases {
        let got = rechunk(input).unwrap();
        assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(input));
        // At every split point too.
        for i in 0..=input.len() {
            let (got, _, done, rest, _) = rechunk_in_pieces(input, &[i], ChunkedOut::Canonical).unwrap();
            assert!(done && rest.is_empty());
            assert_eq!(got, *want, "split at {i} of {:?}", String::from_utf8_lossy(input));
        }
    }
}

#[test]
fn dechunked_is_payload_only() {
    let input = b"05;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: v\r\n\r\nNEXT";
    for i in 0..=input.len() {
        for j in i..=input.len() {
            let (got, payload, done, rest, _) = rechunk_in_pieces(input, &[i, j], ChunkedOut::Dechunked).unwrap();
            assert_eq!(
                (got.as_slice(), payload, done),
                (&b"hello world"[..], 11, true),
                "split {i},{j}"
            );
            assert_eq!(rest, b"NEXT");
        }
    }
}

#[test]
fn payload_stays_a_slice_when_the_size_line_is_rewritten() {
    let mut body = b"0400;name=value\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 1024));
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut buf = BytesMut::from(&body[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let mut segs = Segments::new();
    let p = Rechunker::new(ChunkedLimits::default(), ChunkedOut::Canonical)
        .feed(&mut buf, &mut segs)
        .unwrap();
    assert!(p.done);
    let out: Vec<Bytes> = segs.drain().collect();
    assert_eq!(
        out.concat(),
        [&b"400\r\n"[..], &[b'x'; 1024], b"\r\n0\r\n\r\n"].concat()
    );
    let data = out.iter().find(|s| s.len() >= 1024).expect("payload segment");
    assert!(range.contains(&(data.as_ptr() as usize)), "payload was copied");
}

#[test]
fn tiny_rewritten_chunks_do_not_explode_into_segments() {
    let mut body = Vec::new();
    for _ in 0..2000 {
        body.extend_from_slice(b"01\r\nx\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (out, payload, done, _, most) = rechunk_in_pieces(&body, &[], ChunkedOut::Canonical).unwrap();
    assert!(done);
    assert_eq!(payload, 2000);
    assert_eq!(out, [b"1\r\nx\r\n".repeat(2000), b"0\r\n\r\n".to_vec()].concat());
    assert!(most <= 2, "{most} segments for one buffer");
    let (out, _, _, _, most) = rechunk_in_pieces(&body, &[], ChunkedOut::Dechunked).unwrap();
    assert_eq!(out, vec![b'x'; 2000]);
    assert!(most <= 2, "{most} segments for one buffer");
}

#[test]
fn unfinished_size_line_is_held_back() {
    let mut r = Rechunker::new(ChunkedLimits::default(), ChunkedOut::Canonical);
    let mut segs = Segments::new();
    let mut buf = BytesMut::from(&b"0000"[..]);
    let p = r.feed(&mut buf, &mut segs).unwrap();
    assert_eq!(
        p,
        FeedProgress {
            payload: 0,
            done: false
        }
    );
    assert!(segs.is_empty(), "nothing may go out before the line ends");
    assert_eq!(&buf[..], b"0000", "held in the buffer");
    // Feeding again without new bytes changes nothing.
    assert!(!r.feed(&mut buf, &mut segs).unwrap().done);
    assert!(segs.is_empty());
    buf.extend_from_slice(b"5\r\nhel");
    let p = r.feed(&mut buf, &mut segs).unwrap();
    assert_eq!(p.payload, 3);
    assert_eq!(segs.drain().collect::<Vec<_>>().concat(), b"5\r\nhel");
    assert!(buf.is_empty());
    // The CRLF ending a chunk goes out with its payload, not with the next size line: an
    // event stream's chunk must not wait for the next event.
    buf.extend_from_slice(b"lo\r");
    assert_eq!(r.feed(&mut buf, &mut segs).unwrap().payload, 2);
    assert_eq!(segs.drain().collect::<Vec<_>>().concat(), b"lo");
    buf.extend_from_slice(b"\n");
    r.feed(&mut buf, &mut segs).unwrap();
    assert_eq!(segs.drain().collect::<Vec<_>>().concat(), b"\r\n");
    assert!(buf.is_empty());
    buf.extend_from_slice(b"0\r\n");
    assert!(!r.feed(&mut buf, &mut segs).unwrap().done);
    assert!(segs.is_empty());
    assert_eq!(&buf[..], b"0\r\n", "the end of the body waits for its last line");
    buf.extend_from_slice(b"\r\n");
    assert!(r.feed(&mut buf, &mut segs).unwrap().done);
    assert_eq!(segs.drain().collect::<Vec<_>>().concat(), b"0\r\n\r\n");
}

#[test]
fn chunk_size_bound() {
    assert_eq!(MAX_CHUNK_SIZE, 0xf_ffff_ffff_ffff);
    let at_bound = b"fffffffffffff\r\nabc";
    assert_eq!(scan_all(at_bound).unwrap().payload, 3);
    assert_eq!(
        rechunk_in_pieces(at_bound, &[], ChunkedOut::Canonical).unwrap().0,
        at_bound
    );
    for size in [
        "10000000000000",
        "ffffffffffffffff",
        "7fffffffffffffff",
        "0010000000000000",
    ] {
        let body = format!("{size}\r\nabc");
        assert_eq!(scan_all(body.as_bytes()), Err(H1Error::ChunkSizeTooLarge), "{size}");
        assert_eq!(rechunk(body.as_bytes()), Err(H1Error::ChunkSizeTooLarge), "{size}");
    }
}

#[test]
fn chunk_line_bound() {
    let ext = |n: usize| format!("5;e={}\r\nhello\r\n0\r\n\r\n", "v".repeat(n));
    // "5;e=" is 4 bytes.
    assert!(rechunk(ext(MAX_CHUNK_LINE - 4).as_bytes()).is_ok());
    assert_eq!(
        rechunk(ext(MAX_CHUNK_LINE - 3).as_bytes()),
        Err(H1Error::ChunkLineTooLong)
    );
    let zeros = format!("{}5\r\nhello\r\n0\r\n\r\n", "0".repeat(MAX_CHUNK_LINE));
    assert_eq!(rechunk(zeros.as_bytes()), Err(H1Error::ChunkLineTooLong));
}

#[test]
fn rechunker_refuses_what_the_decoder_refuses() {
    for input in [
        &b"zz\r\n"[..],
        b"5\r\nhelloX\r\n",
        b"0\r\nContent-Length: 5\r\n\r\n",
        b"5\nhello",
    ] {
        let want = scan_all(input).unwrap_err();
        assert_eq!(rechunk(input), Err(want));
        let cuts: Vec<usize> = (0..input.len()).collect();
        assert_eq!(
            rechunk_in_pieces(input, &cuts, ChunkedOut::Dechunked).map(|r| r.0),
            Err(want)
        );
    }
}

/// A well-formed chunked body with padded sizes and extensions: (body, payload, what the
/// canonical re-framing of it is).
fn paddable_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..300),
        0usize..3,
        prop_oneof![Just(""), Just(";a=b"), Just(" ;x"), Just(";q=\"a;b\"")],
        any::<bool>(),
    );
    let last = (0usize..3, prop_oneof![Just(""), Just(";z")]);
    let trailer = prop_oneof![Just(""), Just("X-A: 1\r\n"), Just("X-A: 1\r\nX-B: two words\r\n")];
    (proptest::collection::vec(chunk, 0..6), last, trailer).prop_map(|(chunks, (zeros, last_ext), trailer)| {
        let (mut body, mut payload, mut canon) = (Vec::new(), Vec::new(), Vec::new());
        for (data, pad, ext, upper) in chunks {
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            body.extend_from_slice("0".repeat(pad).as_bytes());
            body.extend_from_slice(size.as_bytes());
            body.extend_from_slice(ext.as_bytes());
            if pad == 0 && ext.is_empty() {
                canon.extend_from_slice(size.as_bytes());
            } else {
                canon.extend_from_slice(format!("{:x}", data.len()).as_bytes());
            }
            for v in [&mut body, &mut canon] {
                v.extend_from_slice(b"\r\n");
                v.extend_from_slice(&data);
                v.extend_from_slice(b"\r\n");
            }
            payload.extend_from_slice(&data);
        }
        body.extend_from_slice("0".repeat(zeros + 1).as_bytes());
        body.extend_from_slice(last_ext.as_bytes());
        canon.extend_from_slice(b"0");
        for v in [&mut body, &mut canon] {
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(trailer.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        (body, payload, canon)
    })
}

/// Every size line of a chunked body whose lines hold only hex digits (what canonical output
/// has); stops at the first other line, which the caller then sees fail `is_canonical_size`.
fn size_lines(body: &[u8]) -> Vec<Vec<u8>> {
    let (mut pos, mut lines) = (0, Vec::new());
    loop {
        let end = pos + body[pos..].windows(2).position(|w| w == b"\r\n").unwrap();
        let line = body[pos..end].to_vec();
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok());
        lines.push(line);
        match size {
            Some(0) | None => return lines,
            Some(n) => pos = end + 2 + n + 2,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Any split of a valid body re-frames to the same bytes: its canonical form, which carries
    /// the same payload and trailers and whose every size line is canonical. De-chunked, it is
    /// the payload.
    #[test]
    fn rechunk_any_split((body, payload, canon) in paddable_body(),
                         cuts in proptest::collection::vec(0usize..2000, 0..8),
                         next in prop_oneof![Just(&b""[..]), Just(&b"GET / HTTP/1.1\r\n"[..])]) {
        let input = [&body[..], next].concat();
        let (out, n, done, rest, _) = rechunk_in_pieces(&input, &cuts, ChunkedOut::Canonical).unwrap();
        prop_assert!(done);
        prop_assert_eq!(&rest[..], next);
        prop_assert_eq!(n, payload.len() as u64);
        prop_assert_eq!(&out, &canon);
        prop_assert_eq!(payload_of(&out).unwrap(), (payload.clone(), out.len(), true));
        for line in size_lines(&out) {
            prop_assert!(is_canonical_size(&line), "{:?}", String::from_utf8_lossy(&line));
        }
        let (out, _, done, rest, _) = rechunk_in_pieces(&input, &cuts, ChunkedOut::Dechunked).unwrap();
        prop_assert!(done);
        prop_assert_eq!(&rest[..], next);
        prop_assert_eq!(out, payload);
    }

    /// On any bytes the rechunker never panics and, fed byte by byte, ends like the decoder:
    /// the same error, or the same payload and end.
    #[test]
    fn rechunk_agrees_with_decoder(buf in proptest::collection::vec(
        prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'1'), Just(b'f'), Just(b';'),
                    Just(b'='), Just(b'"'), Just(b' '), Just(b':'), Just(b'x')], 0..128)) {
        let cuts: Vec<usize> = (0..buf.len()).collect();
        let whole = scan_in_pieces(&buf, &cuts);
        for mode in [ChunkedOut::Canonical, ChunkedOut::Dechunked] {
            let got = rechunk_in_pieces(&buf, &cuts, mode);
            match (&whole, got) {
                (Ok((payload, consumed, done)), Ok((out, n, d, rest, _))) => {
                    prop_assert_eq!((*payload, *done), (n, d));
                    if d {
                        prop_assert_eq!(rest.len(), buf.len() - consumed);
                    }
                    if mode == ChunkedOut::Dechunked {
                        prop_assert_eq!(out.len() as u64, n);
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(*a, b),
                (w, g) => prop_assert!(false, "decoder {:?} vs rechunker {:?}", w, g),
            }
        }
    }
}
