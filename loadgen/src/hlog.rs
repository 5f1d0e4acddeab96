//! `--hlog FILE`: latency over time, as an HdrHistogram interval log (format v1.3).
//!
//! The percentile distribution (`.hgrm`) says how latency was distributed over the whole run;
//! it cannot show *when* the slow requests happened (a GC pause at second 7, a slow start).
//! The interval log can: one compressed histogram per interval (default 1 s) of the
//! measurement window, readable by HdrHistogram's `HistogramLogProcessor`, HdrHistogram
//! plotters and `hdrhistogram::serialization::interval_log`. Each load thread records into
//! its own per-interval histograms (indexed by completion time, as a live recorder would);
//! they are merged at the end and written here. Values are microseconds; `Interval_Max` is
//! in milliseconds (max value divisor 1000), as in HdrHistogram's own logs of µs data.

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

/// Default interval length.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Most intervals one run may have (bounds the memory the recorders use).
pub const MAX_INTERVALS: u64 = 100_000;

/// The interval histograms of a run, ready to be logged.
#[derive(Debug, Clone)]
pub struct IntervalSeries {
    /// Interval length.
    pub interval: Duration,
    /// Wall-clock time at which the measurement window opened (interval 0 starts here).
    pub window_start: SystemTime,
    /// Histogram `i` holds the successful requests that completed in
    /// `[window_start + i·interval, window_start + (i+1)·interval)`.
    pub histograms: Vec<Histogram<u64>>,
}

impl IntervalSeries {
    /// Total recorded count over all intervals.
    pub fn total_count(&self) -> u64 {
        self.histograms.iter().map(|h| h.len()).sum()
    }
}

/// A fresh auto-resizing interval histogram: it only grows as far as the largest value seen,
/// so a thousand mostly-fast intervals stay small.
pub(crate) fn new_interval_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 2, 3).expect("constant histogram bounds are valid");
    h.auto(true);
    h
}

/// A `Write` that the log writer and this module can both append to, so the column legend
/// can go after the header lines the writer emits and before the first interval.
#[derive(Clone, Default)]
struct SharedBuf(Rc<RefCell<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders `series` as a v1.3 interval log: `#[Histogram log format version 1.3]`,
/// `#[StartTime: …]`, `#[BaseTime: …]` (both the window start, so interval timestamps are
/// seconds since the window opened), the column legend, then one line per interval. Empty
/// intervals are written too, so gaps in time are visible as zero-count lines.
pub fn render(series: &IntervalSeries, comment: &str) -> io::Result<Vec<u8>> {
    let buf = SharedBuf::default();
    let mut sink = buf.clone();
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    for line in comment.lines() {
        builder.add_comment(&format!("[{line}]"));
    }
    builder
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(series.window_start)
        .with_base_time(series.window_start)
        .with_max_value_divisor(1000.0);
    let mut writer = builder.begin_log_with(&mut sink, &mut serializer)?;
    buf.0.borrow_mut().extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    for (i, h) in series.histograms.iter().enumerate() {
        let start = series.interval * i as u32;
        writer
            .write_histogram(h, start, series.interval, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    drop(writer);
    let out = buf.0.borrow().clone();
    Ok(out)
}

/// Writes `series` to `path` (see [`render`]).
pub fn write_file(series: &IntervalSeries, comment: &str, path: &std::path::Path) -> io::Result<()> {
    std::fs::write(path, render(series, comment)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn log_parses_back_with_counts_and_times() {
        let mut histograms = Vec::new();
        for i in 0..3u64 {
            let mut h = new_interval_histogram();
            for v in 0..(10 * (i + 1)) {
                h.record(100 + v * 1000 * (i + 1)).unwrap();
            }
            histograms.push(h);
        }
        histograms.push(new_interval_histogram()); // an empty interval stays in the log
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let series = IntervalSeries {
            interval: Duration::from_millis(500),
            window_start: start,
            histograms,
        };
        let text = render(&series, "ringmesh-loadgen test").unwrap();
        let s = String::from_utf8(text.clone()).unwrap();
        assert!(
            s.starts_with(
                "#[ringmesh-loadgen test]\n#[Histogram log format version 1.3]\n#[StartTime: 1700000000.250 "
            ),
            "{s}"
        );
        assert!(s.contains("#[BaseTime: 1700000000.250 "), "{s}");
        assert!(
            s.contains("\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"),
            "{s}"
        );
        let mut d = Deserializer::new();
        let mut counts = Vec::new();
        let mut starts = Vec::new();
        let mut saw_start = false;
        for e in IntervalLogIterator::new(&text) {
            match e.unwrap() {
                LogEntry::StartTime(t) => {
                    saw_start = true;
                    assert_eq!(t, Duration::from_millis(1_700_000_000_250));
                }
                LogEntry::BaseTime(_) => {}
                LogEntry::Interval(ih) => {
                    let b64 = ih.encoded_histogram();
                    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
                    let h: Histogram<u64> = d.deserialize(&mut raw.as_slice()).unwrap();
                    counts.push(h.len());
                    starts.push(ih.start_timestamp());
                    assert_eq!(ih.duration(), Duration::from_millis(500));
                    assert!((ih.max() - h.max() as f64 / 1000.0).abs() < 0.01 || h.is_empty());
                }
            }
        }
        assert!(saw_start);
        assert_eq!(counts, [10, 20, 30, 0]);
        assert_eq!(starts[2], Duration::from_secs(1));
        assert_eq!(series.total_count(), 60);
    }
}
