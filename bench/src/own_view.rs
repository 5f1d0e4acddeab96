//! The proxy's own view of its latency, read beside the load generator's.
//!
//! Every ringmesh-proxy times its own part of each request it forwards — from the last byte of
//! the request head in to the first byte out to the upstream, plus from the response head in
//! to the first byte out to the client — into HdrHistograms on its admin port
//! (`/stats/histograms`, README "Observability"). For every row of ringmesh-proxies (`ringmesh`,
//! `ringmesh-bare`, `ringmesh-telemetry`, `captured`, `mesh`, `mesh-plain`) the suite clears
//! them (`?reset`) right before each open-loop run and reads them right after it: the JSON
//! summary, and HdrHistogram's percentile distribution (`?format=hgrm`), saved as
//! `<role>-own-r<round>.hgrm` beside the load generator's `<row>-r<round>.hgrm`. Both readings
//! are outside the window over which the proxy's CPU is read, so they cost the row nothing.
//!
//! The load generator's added latency is the whole hop: the proxy's own time plus the socket
//! round trips, copies and wake-ups the extra process brings. So the proxy's own p50 must be
//! above zero (it timed the requests it served) and below the load generator's added p50 (its
//! clock does not run while it waits on the network). The report prints both side by side, and
//! a warning when that does not hold: a proxy whose own figure is wrong, or a load generator
//! whose is.
//!
//! A mesh row has two proxies, and each times every request: their figures are summed round by
//! round (the requests cross both), and each side's is shown beside the sum.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::procs::http_get;
use crate::report::{fmt_signed_us, fmt_us, spread, ScenarioSummary, Spread, Status};
use crate::topology::{ProxyAdmin, Topology};

/// One proxy's own view of one open-loop run (warm-up included: the proxy cannot tell it apart).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnRun {
    /// The proxy's role (`ringmesh`, `mesh-client-h2`, …).
    pub role: String,
    /// `proxy`, or `client side` / `server side` of a mesh.
    pub side: &'static str,
    /// Requests it timed.
    pub count: u64,
    /// Its own time per request, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Its percentile distribution (file name in the output directory).
    pub hgrm: String,
}

/// `/stats/histograms`' JSON, the parts the suite reads.
#[derive(Debug, Deserialize)]
struct Histograms {
    unit: String,
    all: Figures,
}

/// The summary of all the proxy's histograms together.
#[derive(Debug, Deserialize)]
struct Figures {
    count: u64,
    mean: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

/// One `GET` on a proxy's admin port, from where the row is reached; the body of a `200`.
fn admin_get(topo: &Topology, admin: &ProxyAdmin, path: &str) -> anyhow::Result<String> {
    let addr = admin.addr;
    let (status, body) = topo
        .reach(|| http_get(addr, "localhost", path))?
        .with_context(|| format!("GET http://{addr}{path} ({})", admin.role))?;
    anyhow::ensure!(
        status == 200,
        "GET http://{addr}{path} ({}) answered {status}: {}",
        admin.role,
        body.trim()
    );
    Ok(body)
}

/// Clears every proxy's own-latency histograms of `topo` (none for a row without
/// ringmesh-proxies), so that the next reading covers the run about to start.
pub fn reset(topo: &Topology) -> anyhow::Result<()> {
    for admin in &topo.admins {
        admin_get(topo, admin, "/stats/histograms?reset")?;
    }
    Ok(())
}

/// Reads every proxy's own view of the run since [`reset`], and saves each one's percentile
/// distribution as `<role><file_tag>-own-r<repeat + 1>.hgrm` in `out_dir`.
pub fn read(topo: &Topology, out_dir: &Path, file_tag: &str, repeat: usize) -> anyhow::Result<Vec<OwnRun>> {
    let mut runs = Vec::with_capacity(topo.admins.len());
    for admin in &topo.admins {
        let body = admin_get(topo, admin, "/stats/histograms")?;
        let h: Histograms = serde_json::from_str(&body)
            .with_context(|| format!("{}'s /stats/histograms is not the JSON expected: {body}", admin.role))?;
        anyhow::ensure!(
            h.unit == "microseconds",
            "{}'s /stats/histograms is in {:?}, not microseconds",
            admin.role,
            h.unit
        );
        let hgrm = format!("{}{file_tag}-own-r{}.hgrm", admin.role, repeat + 1);
        let text = admin_get(topo, admin, "/stats/histograms?format=hgrm")?;
        let path = out_dir.join(&hgrm);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        runs.push(OwnRun {
            role: admin.role.clone(),
            side: admin.side,
            count: h.all.count,
            p50_us: h.all.p50,
            p90_us: h.all.p90,
            p99_us: h.all.p99,
            p999_us: h.all.p999,
            max_us: h.all.max,
            mean_us: h.all.mean,
            hgrm,
        });
    }
    Ok(runs)
}

/// One proxy's own view over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct OwnProxy {
    /// Its role in the first round.
    pub role: String,
    /// `proxy`, or `client side` / `server side`.
    pub side: &'static str,
    /// p50, µs: median and range over rounds.
    pub p50_us: Spread,
    /// p99, µs.
    pub p99_us: Spread,
}

/// A row's own view over the rounds, beside the load generator's added latency.
#[derive(Debug, Clone, Serialize)]
pub struct OwnSummary {
    /// Each proxy's (client side first).
    pub proxies: Vec<OwnProxy>,
    /// The proxies' p50 summed round by round, µs.
    pub p50_us: Spread,
    /// The proxies' p99 summed round by round, µs (for two proxies an upper bound of the p99
    /// of their sum).
    pub p99_us: Spread,
    /// Requests the proxy timed per round (the fewest of a mesh's two).
    pub timed: Spread,
    /// Requests the load generator sent per round (warm-up included).
    pub sent: Spread,
    /// Own p50 ÷ the load generator's added p50 (medians).
    pub own_to_added_p50: Option<f64>,
    /// Why the own view does not agree with the load generator's, when it does not: the
    /// report's warning.
    pub warning: Option<String>,
}

/// The own view of `runs` (none when no run has one), checked against the row's added p50.
pub fn summarise(runs: &[crate::measure::RunResult], added_p50: Option<Spread>) -> Option<OwnSummary> {
    let runs: Vec<_> = runs.iter().filter(|r| !r.own_view.is_empty()).collect();
    let first = runs.first()?;
    let proxies = (0..first.own_view.len())
        .filter_map(|i| {
            let at = |f: fn(&OwnRun) -> u64| -> Option<Spread> {
                spread(
                    &runs
                        .iter()
                        .filter_map(|r| r.own_view.get(i).map(|o| f(o) as f64))
                        .collect::<Vec<_>>(),
                )
            };
            Some(OwnProxy {
                role: first.own_view[i].role.clone(),
                side: first.own_view[i].side,
                p50_us: at(|o| o.p50_us)?,
                p99_us: at(|o| o.p99_us)?,
            })
        })
        .collect();
    let per_round = |f: fn(&OwnRun) -> u64| {
        spread(
            &runs
                .iter()
                .map(|r| r.own_view.iter().map(|o| f(o) as f64).sum())
                .collect::<Vec<_>>(),
        )
    };
    let p50_us = per_round(|o| o.p50_us)?;
    let p99_us = per_round(|o| o.p99_us)?;
    let timed = spread(
        &runs
            .iter()
            .map(|r| r.own_view.iter().map(|o| o.count).min().unwrap_or(0) as f64)
            .collect::<Vec<_>>(),
    )?;
    let sent = spread(&runs.iter().map(|r| r.latency_sent as f64).collect::<Vec<_>>())?;
    let own_to_added_p50 = added_p50.filter(|a| a.median > 0.0).map(|a| p50_us.median / a.median);
    let warning = check(p50_us, timed, added_p50);
    Some(OwnSummary {
        proxies,
        p50_us,
        p99_us,
        timed,
        sent,
        own_to_added_p50,
        warning,
    })
}

/// The issue's check of the proxy's own-latency histogram against the load generator: the own
/// p50 above zero and below the added p50 (medians over rounds). `None` when it holds, or when
/// there is no added figure to check against (no `direct` row).
fn check(own_p50: Spread, timed: Spread, added_p50: Option<Spread>) -> Option<String> {
    if timed.median <= 0.0 {
        return Some("the proxy timed no request: its own-latency histograms stayed empty while the load generator's requests went through it".into());
    }
    if own_p50.median <= 0.0 {
        return Some(format!(
            "the proxy's own p50 is {}: it timed {:.0} requests per round and found no time in them",
            fmt_us(own_p50.median),
            timed.median
        ));
    }
    let added = added_p50?;
    (own_p50.median >= added.median).then(|| {
        format!(
            "the proxy's own p50 ({}) is not below the load generator's added p50 ({}): the proxy counts more \
             time than the whole hop costs the load generator",
            fmt_us(own_p50.median),
            fmt_signed_us(added.median)
        )
    })
}

/// The report's section: every row with an own view, the proxy's figures beside the load
/// generator's, and a warning line for each row whose own view does not agree. Empty when no
/// row has one.
pub fn markdown(scenarios: &[ScenarioSummary]) -> String {
    let rows: Vec<(&ScenarioSummary, &OwnSummary)> = scenarios
        .iter()
        .filter(|s| s.status == Status::Ok)
        .filter_map(|s| s.own_view.as_ref().map(|o| (s, o)))
        .collect();
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\n## The proxy's own view beside the load generator's (median of rounds)\n"
    );
    let _ = writeln!(
        s,
        "| scenario | protocol | proxy's own p50 | own p99 | load generator's added p50 | added p99 | own ÷ added p50 | requests timed / sent | check |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    let mut warnings = Vec::new();
    for (sc, own) in &rows {
        let sides = |pick: fn(&OwnProxy) -> Spread| {
            if own.proxies.len() < 2 {
                String::new()
            } else {
                let parts: Vec<String> = own
                    .proxies
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {}",
                            p.side.split(' ').next().unwrap_or(p.side),
                            fmt_us(pick(p).median)
                        )
                    })
                    .collect();
                format!(" ({})", parts.join(" + "))
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {}{} | {} | {} | {} | {:.0} / {:.0} | {} |",
            sc.scenario,
            sc.protocol.label(),
            fmt_us(own.p50_us.median),
            sides(|p| p.p50_us),
            fmt_us(own.p99_us.median),
            sides(|p| p.p99_us),
            sc.added_us.p50.map_or("—".into(), |a| fmt_signed_us(a.median)),
            sc.added_us.p99.map_or("—".into(), |a| fmt_signed_us(a.median)),
            own.own_to_added_p50.map_or("—".into(), |r| format!("{r:.2}×")),
            own.timed.median,
            own.sent.median,
            match (&own.warning, sc.added_us.p50) {
                (Some(_), _) => "**WARNING**",
                (None, Some(_)) => "own p50 > 0, < added p50",
                (None, None) => "no direct row to check against",
            }
        );
        if let Some(w) = &own.warning {
            warnings.push(format!("**WARNING** {}: {w}.", sc.row_name()));
        }
    }
    if !warnings.is_empty() {
        let _ = writeln!(s);
        for w in warnings {
            let _ = writeln!(s, "{w}");
        }
    }
    let _ = writeln!(
        s,
        "\nEach ringmesh-proxy times its own part of every request (request head in → first byte to the upstream, \
         plus response head in → first byte to the client; waiting on the network and the upstream is not in it) \
         into HdrHistograms on its admin port. The suite clears them (`/stats/histograms?reset`) right before each \
         open-loop run and reads them right after it, outside the window of the CPU figures; the proxy cannot tell \
         the load generator's warm-up from its window, so it timed those requests too (\"sent\" counts them as well). \
         The load generator's added latency is the whole hop, the proxy's own time plus the extra socket round trips \
         and wake-ups, so the own p50 must be above zero and below it; the check column says whether it was. \
         `mesh` and `mesh-plain` sum their two proxies round by round (client + server; a p99 sum bounds the p99 of \
         the sum from above) and count the requests the fewer-counting side timed. Each round's distribution: \
         `<role>-own-r<round>.hgrm` (`ringmesh-own-r1.hgrm`, `mesh-client-h2-own-r1.hgrm`), beside the load \
         generator's `<row>-r<round>.hgrm`; milliseconds, at the proxy's two significant digits."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(side: &'static str, p50: u64, p99: u64, count: u64) -> OwnRun {
        OwnRun {
            role: format!("r-{side}"),
            side,
            count,
            p50_us: p50,
            p90_us: p99,
            p99_us: p99,
            p999_us: p99,
            max_us: p99,
            mean_us: p50 as f64,
            hgrm: String::new(),
        }
    }

    fn spread_of(v: f64) -> Spread {
        Spread {
            median: v,
            min: v,
            max: v,
        }
    }

    #[test]
    fn the_own_view_is_checked_against_the_load_generators_added_p50() {
        let ok = check(spread_of(6.0), spread_of(900.0), Some(spread_of(25.0)));
        assert_eq!(ok, None);
        let over = check(spread_of(30.0), spread_of(900.0), Some(spread_of(25.0))).unwrap();
        assert!(
            over.starts_with("the proxy's own p50 (0.030 ms) is not below the load generator's added p50 (+0.025 ms)"),
            "{over}"
        );
        assert!(check(spread_of(0.0), spread_of(900.0), Some(spread_of(25.0)))
            .unwrap()
            .contains("found no time in them"));
        assert!(check(spread_of(0.0), spread_of(0.0), None)
            .unwrap()
            .starts_with("the proxy timed no request"));
        // Nothing to check against without `direct`, but an empty view is still wrong.
        assert_eq!(check(spread_of(6.0), spread_of(900.0), None), None);
    }

    #[test]
    fn the_json_of_stats_histograms_parses() {
        let body = r#"{"unit":"microseconds","what":"…","reset":false,"all":{"route":"*","cluster":"*","count":812,"min":3,"mean":7.4,"p50":6,"p90":9,"p99":31,"p999":120,"max":410},"histograms":[]}"#;
        let h: Histograms = serde_json::from_str(body).unwrap();
        assert_eq!(h.unit, "microseconds");
        assert_eq!((h.all.count, h.all.p50, h.all.p99, h.all.max), (812, 6, 31, 410));
        // Each side's figures survive into the row's summary; a mesh's are summed per round.
        let r = own("proxy", 6, 31, 812);
        assert_eq!((r.p50_us, r.count), (6, 812));
    }

    fn round(repeat: usize, p50: u64, own_view: Vec<OwnRun>) -> crate::measure::RunResult {
        crate::measure::RunResult {
            repeat,
            throughput_rps: None,
            throughput_errors: 0,
            latency_us: ringmesh_loadgen::LatencySummary {
                p50,
                p99: 2 * p50,
                ..Default::default()
            },
            latency_rate_rps: 2000.0,
            latency_rate_met: true,
            latency_errors: 0,
            latency_unsent: 0,
            latency_sent: 900,
            cpu_per_1k: None,
            upstream_cpu_per_1k: None,
            throughput_proxy_cores: None,
            throughput_cpu_us: None,
            hgrm: String::new(),
            own_view,
            histogram: None,
        }
    }

    fn row(
        kind: crate::topology::Kind,
        runs: Vec<crate::measure::RunResult>,
        direct: &[crate::measure::RunResult],
    ) -> ScenarioSummary {
        let mut s = ScenarioSummary::new(kind, crate::protocol::Protocol::Http1, Status::Ok);
        s.runs = runs;
        s.summarise(Some(direct));
        s
    }

    #[test]
    fn the_report_shows_each_proxys_own_view_beside_the_added_latency() {
        use crate::topology::Kind;
        let direct = vec![round(0, 100, Vec::new()), round(1, 110, Vec::new())];
        // ringmesh: added +25 and +27 µs, its own p50 6 and 8 µs.
        let ringmesh = row(
            Kind::Ringmesh,
            vec![
                round(0, 125, vec![own("proxy", 6, 30, 900)]),
                round(1, 137, vec![own("proxy", 8, 34, 900)]),
            ],
            &direct,
        );
        // mesh: two proxies, summed round by round: 14 and 16 µs against +60 and +70.
        let mesh = row(
            Kind::Mesh,
            vec![
                round(
                    0,
                    160,
                    vec![own("client side", 8, 40, 900), own("server side", 6, 30, 899)],
                ),
                round(
                    1,
                    180,
                    vec![own("client side", 9, 44, 900), own("server side", 7, 32, 900)],
                ),
            ],
            &direct,
        );
        // A proxy that counts more than the whole hop: 40 µs of its own against +20.
        let wrong = row(
            Kind::RingmeshTelemetry,
            vec![
                round(0, 120, vec![own("proxy", 40, 90, 900)]),
                round(1, 130, vec![own("proxy", 40, 90, 900)]),
            ],
            &direct,
        );
        let haproxy = row(Kind::Haproxy, vec![round(0, 150, Vec::new())], &direct);
        assert!(haproxy.own_view.is_none());
        let m = ringmesh.own_view.as_ref().unwrap();
        assert_eq!((m.p50_us.median, m.p99_us.median, m.timed.median), (7.0, 32.0, 900.0));
        assert_eq!(m.warning, None);
        let md = markdown(&[ringmesh.clone(), mesh.clone(), wrong.clone(), haproxy]);
        assert!(
            md.contains("## The proxy's own view beside the load generator's (median of rounds)"),
            "{md}"
        );
        assert!(
            md.contains(
                "| ringmesh | HTTP/1.1 | 0.007 ms | 0.032 ms | +0.026 ms | +0.052 ms | 0.27× | 900 / 900 | own p50 > 0, < added p50 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| mesh | HTTP/1.1 | 0.015 ms (client 0.009 ms + server 0.006 ms) | 0.073 ms (client 0.042 ms + server 0.031 ms) | +0.065 ms |"
            ),
            "{md}"
        );
        assert!(md.contains("| 0.23× | 900 / 900 | own p50 > 0, < added p50 |"), "{md}");
        assert!(!md.contains("| haproxy |"), "{md}");
        assert!(
            md.contains("| ringmesh-telemetry | HTTP/1.1 | 0.040 ms | 0.090 ms | +0.020 ms | +0.040 ms | 2.00× | 900 / 900 | **WARNING** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "**WARNING** ringmesh-telemetry: the proxy's own p50 (0.040 ms) is not below the load generator's added p50 (+0.020 ms)"
            ),
            "{md}"
        );
        // In the report, after the CPU section; none without a ringmesh row.
        let info = crate::report::RunInfo {
            command: String::new(),
            started_unix: 0,
            wall_seconds: 0.0,
            machine: vec![],
            settings: vec![],
        };
        let report = crate::report::markdown(&info, &[ringmesh, mesh, wrong], None, &[]);
        let at = |h: &str| report.find(h).unwrap_or_else(|| panic!("{h} missing:\n{report}"));
        assert!(
            at("## Per-request CPU") < at("## The proxy's own view")
                && at("## The proxy's own view") < at("## Targets")
        );
        assert!(markdown(&[]).is_empty());
    }
}
