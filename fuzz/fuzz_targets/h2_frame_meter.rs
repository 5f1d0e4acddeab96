//! Fuzz the HTTP/2 frame meter that spots SETTINGS, PING and empty-DATA floods.
//!
//! Checks, beyond "never panics": the number of flood frames counted does not depend on where
//! the client's bytes were cut into reads (cut points taken from the first two bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_proxy::http::h2::io::{flood_frames_whole_and_in_pieces, PREFACE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&data[2..]);
    let mut cuts = [usize::from(data[0]) * 7, usize::from(data[1]) * 13];
    cuts.sort_unstable();
    let (whole, pieces) = flood_frames_whole_and_in_pieces(&input, &cuts);
    assert_eq!(whole, pieces);
});
