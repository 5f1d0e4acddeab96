//! Reading what a proxy says about itself: a series from its Prometheus text, and its JSON
//! access-log lines once written.

use std::path::Path;
use std::time::Duration;

use ringmesh_testkit::eventually;
use serde_json::Value;

/// The value of the first series of `name` whose labels include all of `labels`
/// (`key="value"` each).
pub fn series_value(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|want| set.contains(want))
            .then(|| value.parse().ok())?
    })
}

/// The JSON access log's lines once there are at least `want` of them (see [`log_lines`]).
pub fn json_log_lines(path: &Path, want: usize) -> Vec<Value> {
    log_lines(path, want)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// An access log's lines once there are at least `want` of them (waiting up to 10 s: the
/// writer thread appends them after the responses went out).
pub fn log_lines(path: &Path, want: usize) -> Vec<String> {
    let mut lines = Vec::new();
    eventually(Duration::from_secs(10), "access-log lines written", || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= want
    })
    .unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    lines
}
