//! The control-plane benchmark's figures, their summaries, and `report.md` / `report.json`.

use serde::Serialize;

/// p50 / p99 / max of a set of values (nearest rank), with the count.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Stats {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// The `p`th percentile of sorted `v` by nearest rank (the smallest value with at least `p`% of
/// the values at or below it): a value that was measured, never an interpolation.
fn nearest_rank(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

impl Stats {
    /// Summarises `values` (any order).
    pub fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Stats {
            count: v.len(),
            p50: nearest_rank(&v, 50.0),
            p99: nearest_rank(&v, 99.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// One apply of the repeated-apply phase.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyRun {
    /// Apply number (the number in the `VirtualService`'s comment).
    pub apply: u64,
    /// Apply → the last proxy's receipt, ms.
    pub last_ms: f64,
    /// Apply → receipt over the proxies, ms.
    pub per_proxy_ms: Stats,
    /// Proxies that received and acknowledged this apply.
    pub acked: usize,
    /// Snapshots the proxies received between this apply and the next quiet moment.
    pub snapshots: u64,
}

/// The repeated-apply phase.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyPhase {
    /// Every apply.
    pub runs: Vec<ApplyRun>,
    /// Apply → last receipt, over the applies, ms.
    pub last_ms: Stats,
    /// Apply → receipt over every proxy of every apply, ms.
    pub per_proxy_ms: Stats,
    /// Whether every proxy received and acknowledged every apply.
    pub all_acked: bool,
}

/// The control plane process's memory and CPU.
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    /// VmRSS before any proxy connected, KiB.
    pub rss_idle_kib: u64,
    /// VmRSS with every proxy connected and in sync, KiB.
    pub rss_connected_kib: u64,
    /// (connected − idle) / proxies, KiB.
    pub rss_per_proxy_kib: f64,
    /// VmRSS after the applies, KiB.
    pub rss_after_applies_kib: u64,
    /// Cores used while idle with no proxy (directory polling).
    pub cpu_idle_cores: f64,
    /// Cores used while idle with every proxy connected.
    pub cpu_connected_idle_cores: f64,
    /// CPU seconds spent while the proxies connected and synced.
    pub cpu_connect_s: f64,
    /// CPU per apply (pushing it to every proxy, the wait for quiet included), ms.
    pub cpu_per_apply_ms: f64,
    /// CPU per snapshot sent in the apply phase, µs.
    pub cpu_per_snapshot_us: f64,
}

/// The churn phase.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnPhase {
    /// Reconnects scheduled.
    pub reconnects: usize,
    /// Streams opened again (should equal `reconnects`).
    pub reconnects_done: u64,
    /// Applies during the window.
    pub applies: usize,
    /// Window, seconds.
    pub window_s: f64,
    /// Apply → receipt for every proxy that was connected and in sync at the apply and stayed
    /// on that stream until it received it, ms.
    pub push_ms: Stats,
    /// (apply, proxy) pairs left out because the proxy (re)connected after the apply: it got
    /// the change in its first snapshot.
    pub excluded_reconnected: usize,
    /// (apply, proxy) pairs left out because the proxy dropped its stream before the change
    /// arrived on it.
    pub interrupted: usize,
    /// (apply, proxy) pairs where a proxy in sync never received the change on its stream.
    pub missing: usize,
    /// Cores the control plane used on average over the window.
    pub cpu_cores: f64,
    /// Snapshots the proxies received in the window.
    pub snapshots: u64,
    /// Whether every proxy had the last apply with every endpoint after the window.
    pub final_synced: bool,
    /// Simulated proxies with an open stream after the window (and the settle wait).
    pub open_streams: usize,
    /// Proxies the control plane's registry counted as connected at that moment
    /// (`ringmesh proxy-status`); fewer than `open_streams` means it lost track of some.
    pub connected_in_registry: usize,
    /// Fewest endpoints in any proxy's last snapshot after the window (expected: proxies).
    pub final_endpoints_min: u32,
    /// VmRSS after the window, KiB.
    pub rss_after_kib: u64,
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is judged.
    pub name: String,
    /// The goal.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// PASS or MISS.
    pub verdict: String,
}

/// Everything the run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// Unix time of the start.
    pub started_unix: u64,
    /// Machine facts.
    pub machine: Vec<(String, String)>,
    /// Settings in effect.
    pub settings: Vec<(String, String)>,
    /// Which control plane ran (`binary PATH` or `embedded`).
    pub control_plane: String,
    /// Proxies.
    pub proxies: usize,
    /// Seconds from the first connect until every proxy had every endpoint.
    pub connect_s: f64,
    /// Snapshots received while connecting.
    pub connect_snapshots: u64,
    /// The repeated applies.
    pub apply: ApplyPhase,
    /// Memory and CPU.
    pub resources: Resources,
    /// The churn phase, if it ran.
    pub churn: Option<ChurnPhase>,
    /// Targets.
    pub targets: Vec<Target>,
    /// Notes on reading the figures.
    pub notes: Vec<String>,
}

fn verdict(ok: bool) -> String {
    if ok { "PASS" } else { "MISS" }.into()
}

/// The targets of the control plane: apply → last ACK p99 < 250 ms; RSS per proxy < 100 KiB.
pub fn judge(apply: &ApplyPhase, res: &Resources) -> Vec<Target> {
    vec![
        Target {
            name: "apply → last ACK, p99 over applies".into(),
            goal: "< 250 ms".into(),
            measured: format!("{:.1} ms", apply.last_ms.p99),
            verdict: verdict(apply.all_acked && apply.last_ms.p99 < 250.0),
        },
        Target {
            name: "control plane RSS per connected proxy".into(),
            goal: "< 100 KiB".into(),
            measured: format!("{:.1} KiB", res.rss_per_proxy_kib),
            verdict: verdict(res.rss_per_proxy_kib < 100.0),
        },
    ]
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The report as markdown (also printed at the end of the run).
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line("# ringmesh control plane benchmark");
    line("");
    line(&format!("Command: `{}`", r.command));
    line("");
    line(&format!("Control plane: {}", r.control_plane));
    line("");
    line("| setting | value |");
    line("|---|---|");
    for (k, v) in r.machine.iter().chain(&r.settings) {
        line(&format!("| {k} | {v} |"));
    }
    line("");
    line(&format!(
        "## {} proxies: apply → last ACK ({} applies)",
        r.proxies,
        r.apply.runs.len()
    ));
    line("");
    line("| figure | p50 | p99 | max |");
    line("|---|---:|---:|---:|");
    let row = |name: &str, st: &Stats| format!("| {name} | {} | {} | {} |", ms(st.p50), ms(st.p99), ms(st.max));
    line(&row("apply → last proxy's ACK (over applies)", &r.apply.last_ms));
    line(&row(
        &format!(
            "apply → ACK, every proxy of every apply (n = {})",
            r.apply.per_proxy_ms.count
        ),
        &r.apply.per_proxy_ms,
    ));
    line("");
    line(&format!(
        "Every proxy acknowledged every apply: **{}**. Connecting all {} proxies until each had every \
         endpoint took {:.2} s ({} snapshots).",
        if r.apply.all_acked { "yes" } else { "NO" },
        r.proxies,
        r.connect_s,
        r.connect_snapshots
    ));
    line("");
    line("| apply | last ACK | p50 | p99 | acked | snapshots |");
    line("|---:|---:|---:|---:|---:|---:|");
    for a in &r.apply.runs {
        line(&format!(
            "| {} | {} | {} | {} | {} | {} |",
            a.apply,
            ms(a.last_ms),
            ms(a.per_proxy_ms.p50),
            ms(a.per_proxy_ms.p99),
            a.acked,
            a.snapshots
        ));
    }
    line("");
    line("## Control plane process");
    line("");
    let res = &r.resources;
    line("| figure | value |");
    line("|---|---:|");
    line(&format!("| RSS, no proxy | {} |", mib(res.rss_idle_kib)));
    line(&format!(
        "| RSS, {} proxies in sync | {} |",
        r.proxies,
        mib(res.rss_connected_kib)
    ));
    line(&format!(
        "| **RSS per connected proxy** | {:.1} KiB |",
        res.rss_per_proxy_kib
    ));
    line(&format!(
        "| RSS after the applies | {} |",
        mib(res.rss_after_applies_kib)
    ));
    line(&format!("| CPU idle, no proxy | {:.4} cores |", res.cpu_idle_cores));
    line(&format!(
        "| CPU idle, {} proxies | {:.4} cores |",
        r.proxies, res.cpu_connected_idle_cores
    ));
    line(&format!(
        "| CPU to connect and sync all proxies | {:.2} s |",
        res.cpu_connect_s
    ));
    line(&format!(
        "| **CPU per apply** (pushed to {} proxies) | {:.1} ms |",
        r.proxies, res.cpu_per_apply_ms
    ));
    line(&format!(
        "| CPU per snapshot sent | {:.1} µs |",
        res.cpu_per_snapshot_us
    ));
    line("");
    if let Some(c) = &r.churn {
        line(&format!(
            "## Churn: {} reconnects over {:.0} s, {} applies",
            c.reconnects, c.window_s, c.applies
        ));
        line("");
        line("| figure | value |");
        line("|---|---:|");
        line(&format!(
            "| **push latency p99** (apply → receipt, proxies in sync, n = {}) | {} |",
            c.push_ms.count,
            ms(c.push_ms.p99)
        ));
        line(&format!("| push latency p50 | {} |", ms(c.push_ms.p50)));
        line(&format!("| push latency max | {} |", ms(c.push_ms.max)));
        line(&format!(
            "| **control plane CPU, average** | {:.3} cores |",
            c.cpu_cores
        ));
        line(&format!(
            "| streams re-opened | {} of {} |",
            c.reconnects_done, c.reconnects
        ));
        line(&format!("| snapshots received in the window | {} |", c.snapshots));
        line(&format!(
            "| left out: (re)connected after the apply / dropped before receipt | {} / {} |",
            c.excluded_reconnected, c.interrupted
        ));
        line(&format!("| in sync but never received | {} |", c.missing));
        line(&format!(
            "| after the window: all in sync / fewest endpoints | {} / {} of {} |",
            if c.final_synced { "yes" } else { "NO" },
            c.final_endpoints_min,
            r.proxies
        ));
        line(&format!(
            "| after the window: streams open / connected in the registry (proxy-status) | {} / {} |",
            c.open_streams, c.connected_in_registry
        ));
        line(&format!("| RSS after the window | {} |", mib(c.rss_after_kib)));
        line("");
    }
    line("## Targets");
    line("");
    line("| target | goal | measured | verdict |");
    line("|---|---|---|---|");
    for t in &r.targets {
        line(&format!(
            "| {} | {} | {} | **{}** |",
            t.name, t.goal, t.measured, t.verdict
        ));
    }
    line("");
    line("## Notes");
    line("");
    for n in &r.notes {
        line(&format!("- {n}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v);
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50, s.p99, s.max), (2.0, 3.0, 3.0));
        assert_eq!(Stats::of(&[]), Stats::default());
    }
}
