//! `latency.svg`: every scenario's latency percentile distribution in one picture.
//!
//! Drawn the way HdrHistogram's own plotter draws `.hgrm` files, so the shape is familiar:
//! the x axis is `1/(1 − percentile)` on a log scale, labelled 0%, 90%, 99%, 99.9%, 99.99%…
//! (each decade one more nine), the y axis is latency in milliseconds, one line per scenario.
//! Each scenario's line is its open-loop histograms merged over all repeats (the repeats run
//! at the same rate for the same time, so merging weighs them equally). The SVG backend of
//! `plotters` writes text as SVG `<text>` elements, so no font files are needed to draw it;
//! the viewer's own sans-serif font renders the labels.

use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One line of the plot.
#[derive(Debug)]
pub struct Series<'a> {
    /// Scenario name (legend).
    pub name: &'a str,
    /// Latency histogram, microseconds.
    pub histogram: &'a Histogram<u64>,
}

/// Points `(1/(1−q), ms)` of a percentile distribution, five ticks per half-distance as in
/// `.hgrm` files; the final 100% point (x = ∞) is left out.
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1000.0))
        .filter(|&(q, _)| q < 1.0)
        .map(|(q, ms)| (1.0 / (1.0 - q), ms))
        .collect()
}

/// The label of `x = 1/(1−q)` at a power of ten: 1 → 0%, 10 → 90%, 100 → 99%, 1000 → 99.9%.
pub fn percentile_label(x: f64) -> String {
    let decades = x.log10().round();
    if decades < 0.5 {
        return "0%".into();
    }
    let nines = decades as usize;
    if nines <= 2 {
        format!("{}%", 100.0 - 100.0 / x.round())
    } else {
        format!("99.{}%", "9".repeat(nines - 2))
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Renders the plot as SVG text.
pub fn render_svg(series: &[Series<'_>], title: &str) -> anyhow::Result<String> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.name, percentile_points(s.histogram)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let max_x = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0f64, f64::max);
    // At least up to 99.99%, then whole decades as far as the data goes.
    let decades = max_x.log10().ceil().max(4.0) as i32;
    let x_end = 10f64.powi(decades);
    let max_ms = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max);
    let y_end = if max_ms > 0.0 { max_ms * 1.08 } else { 1.0 };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key_points: Vec<f64> = (0..=decades).map(|d| 10f64.powi(d)).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d((1f64..x_end).log_scale().with_key_points(key_points), 0f64..y_end)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// Renders and writes the plot to `path`.
pub fn write_svg(series: &[Series<'_>], title: &str, path: &Path) -> anyhow::Result<()> {
    let svg = render_svg(series, title)?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_nines() {
        let l: Vec<String> = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]
            .into_iter()
            .map(percentile_label)
            .collect();
        assert_eq!(l, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn svg_has_a_line_and_a_legend_entry_per_scenario() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut b = a.clone();
        for v in 1..=20_000u64 {
            a.record(50 + v % 200).unwrap();
            b.record(80 + v % 400).unwrap();
        }
        b.record(25_000).unwrap();
        let empty = Histogram::<u64>::new(3).unwrap();
        let svg = render_svg(
            &[
                Series {
                    name: "direct",
                    histogram: &a,
                },
                Series {
                    name: "ringmesh",
                    histogram: &b,
                },
                Series {
                    name: "nothing",
                    histogram: &empty,
                },
            ],
            "test",
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        let data_lines = svg
            .lines()
            .filter(|l| l.contains("<polyline") && l.contains("stroke-width=\"2\""))
            .count();
        assert_eq!(data_lines, 2, "one line per non-empty scenario");
        // Text is written as SVG <text> elements (no font files involved).
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>').and_then(|(_, rest)| rest.split_once("</text>")))
            .map(|(content, _)| content.trim())
            .collect();
        for text in [
            "direct",
            "ringmesh",
            "90%",
            "99.9%",
            "99.99%",
            "0%",
            "latency (ms)",
            "test",
        ] {
            assert!(texts.contains(&text), "{text} missing from {texts:?}");
        }
        assert!(!texts.contains(&"nothing"));
        let pts = percentile_points(&b);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "monotone");
        assert!(pts.last().unwrap().0 >= 10_000.0);
    }
}
