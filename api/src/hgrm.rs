//! HdrHistogram's percentile distribution (`.hgrm`), the text the load generator writes for
//! each run and the proxy serves for its own latency (`/stats/histograms?format=hgrm`), so
//! the two can be read by the same tools and plotted side by side.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Writes `hist` in HdrHistogram's percentile-distribution format, dividing values by
/// `scale` (1000 turns microseconds into milliseconds), five ticks per half distance — the
/// same output as Java's `outputPercentileDistribution(out, 5, scale)` and wrk2.
pub fn write_percentile_distribution(hist: &Histogram<u64>, out: &mut impl Write, scale: f64) -> io::Result<()> {
    let p = usize::from(hist.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if !hist.is_empty() {
        let mut total = 0u64;
        for v in hist.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                writeln!(out, "{value:>12.p$} {q:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q))?;
            } else {
                writeln!(out, "{value:>12.p$} {q:>2.12} {total:>10}")?;
            }
        }
    }
    let (mean, stdev, max) = if hist.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (hist.mean() / scale, hist.stdev() / scale, hist.max() as f64 / scale)
    };
    writeln!(out, "#[Mean    = {mean:>12.p$}, StdDeviation   = {stdev:>12.p$}]")?;
    writeln!(out, "#[Max     = {max:>12.p$}, Total count    = {:>12}]", hist.len())?;
    let sub_buckets = (2 * 10u64.pow(u32::from(hist.sigfig()))).next_power_of_two();
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        sub_buckets
    )?;
    Ok(())
}
