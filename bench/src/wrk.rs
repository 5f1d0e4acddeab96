//! Rows measured with tools no one here wrote: `wrk` against an nginx upstream.
//!
//! The main rounds drive every topology with our own load generator in front of our own echo
//! server, so a lead there could be an artefact of either. These rows repeat the closed-loop
//! comparison with `wrk -t1 -c16 --latency` as the client and nginx (`return 200`, one worker)
//! as the upstream, through nothing (`direct`), ringmesh on io_uring, ringmesh on epoll (what a
//! container whose seccomp profile refuses io_uring gets), haproxy and nginx — each proxy with
//! one worker, in interleaved rounds. Per run: wrk's throughput and its p50/p99, and the CPU
//! time per request of the proxy and of the upstream, read from `/proc` as the main rounds do.
//! The rows are skipped, with a note, when `wrk` or `nginx` is not on `PATH`; haproxy's row
//! when `haproxy` is not.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::procs::{free_port, http_get_status, Proc};
use crate::protocol::Protocol;
use crate::report::{spread, Spread, Status, TargetCheck};
use crate::topology::{self, Env, Kind, Topology, HOST};

/// wrk's connections: the closed loop the rows compare.
pub const CONNECTIONS: usize = 16;

/// One row of the wrk table: what stands between wrk and the nginx upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Row {
    /// wrk straight to the upstream.
    Direct,
    /// One ringmesh-proxy on io_uring.
    Ringmesh,
    /// One ringmesh-proxy on epoll (`io: epoll`).
    RingmeshEpoll,
    /// haproxy, one thread.
    Haproxy,
    /// nginx, one worker.
    Nginx,
}

impl Row {
    /// Every row, in round order.
    pub const ALL: [Row; 5] = [Row::Direct, Row::Ringmesh, Row::RingmeshEpoll, Row::Haproxy, Row::Nginx];

    /// The row's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Row::Direct => "direct",
            Row::Ringmesh => "ringmesh",
            Row::RingmeshEpoll => "ringmesh-epoll",
            Row::Haproxy => "haproxy",
            Row::Nginx => "nginx",
        }
    }

    fn start(self, env: &Env) -> anyhow::Result<Topology> {
        match self {
            Row::Direct => topology::start(Kind::Direct, Protocol::Http1, env),
            Row::Ringmesh => topology::start(Kind::Ringmesh, Protocol::Http1, env),
            Row::RingmeshEpoll => topology::start_ringmesh_epoll(env),
            Row::Haproxy => topology::start(Kind::Haproxy, Protocol::Http1, env),
            Row::Nginx => topology::start(Kind::Nginx, Protocol::Http1, env),
        }
    }
}

/// What `wrk --latency` printed, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WrkOutput {
    /// `N requests in …`.
    pub requests: u64,
    /// `Requests/sec:`.
    pub rps: f64,
    /// The latency distribution's 50%, µs.
    pub p50_us: f64,
    /// Its 99%, µs.
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Parses `wrk --latency` output.
pub fn parse_output(text: &str) -> anyhow::Result<WrkOutput> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => p50 = Some(parse_latency(v)?),
            (Some("99%"), Some(v)) => p99 = Some(parse_latency(v)?),
            (Some("Requests/sec:"), Some(v)) => rps = Some(v.parse::<f64>().context("Requests/sec")?),
            (Some(n), Some("requests")) => requests = Some(n.parse::<u64>().context("requests")?),
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().context("Non-2xx or 3xx responses")?;
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    errors += n.parse::<u64>().context("Socket errors")?;
                }
            }
        }
    }
    match (requests, rps, p50, p99) {
        (Some(requests), Some(rps), Some(p50_us), Some(p99_us)) => Ok(WrkOutput {
            requests,
            rps,
            p50_us,
            p99_us,
            errors,
        }),
        _ => bail!("wrk printed no request count, rate or latency distribution:\n{text}"),
    }
}

/// `392.00us`, `3.02ms`, `1.10s` → µs.
fn parse_latency(v: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("latency {v:?} has no unit");
    };
    Ok(num.parse::<f64>().with_context(|| format!("latency {v:?}"))? * scale)
}

/// One wrk run of one row.
#[derive(Debug, Clone, Serialize)]
pub struct WrkRun {
    /// Round (0-based).
    pub round: usize,
    /// What wrk printed.
    pub wrk: WrkOutput,
    /// The proxy's CPU time over the run per request, µs (none for `direct`).
    pub proxy_cpu_us: Option<f64>,
    /// The nginx upstream's CPU time over the run per request, µs.
    pub upstream_cpu_us: f64,
}

/// One row over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct RowSummary {
    /// Which row.
    pub row: Row,
    /// Measured, skipped or failed.
    pub status: Status,
    /// Why skipped or failed.
    pub notes: Vec<String>,
    /// The proxy's I/O driver where it says.
    pub io_driver: Option<String>,
    /// Each round.
    pub runs: Vec<WrkRun>,
    /// wrk's Requests/sec.
    pub rps: Option<Spread>,
    /// wrk's p50, µs.
    pub p50_us: Option<Spread>,
    /// wrk's p99, µs.
    pub p99_us: Option<Spread>,
    /// Proxy CPU per request, µs.
    pub proxy_cpu_us: Option<Spread>,
    /// Upstream CPU per request, µs.
    pub upstream_cpu_us: Option<Spread>,
    /// Failed requests over all runs.
    pub errors: u64,
}

impl RowSummary {
    fn new(row: Row, status: Status) -> Self {
        RowSummary {
            row,
            status,
            notes: Vec::new(),
            io_driver: None,
            runs: Vec::new(),
            rps: None,
            p50_us: None,
            p99_us: None,
            proxy_cpu_us: None,
            upstream_cpu_us: None,
            errors: 0,
        }
    }

    fn summarise(&mut self) {
        let col = |f: &dyn Fn(&WrkRun) -> Option<f64>| spread(&self.runs.iter().filter_map(f).collect::<Vec<_>>());
        self.rps = col(&|r| Some(r.wrk.rps));
        self.p50_us = col(&|r| Some(r.wrk.p50_us));
        self.p99_us = col(&|r| Some(r.wrk.p99_us));
        self.proxy_cpu_us = col(&|r| r.proxy_cpu_us);
        self.upstream_cpu_us = col(&|r| Some(r.upstream_cpu_us));
        self.errors = self.runs.iter().map(|r| r.wrk.errors).sum();
    }
}

/// The whole wrk section of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Why the rows were not measured at all (wrk or nginx missing), if so.
    pub skipped: Option<String>,
    /// `wrk -t1 -c16 -d… --latency`, as run.
    pub command: String,
    /// Rounds.
    pub rounds: usize,
    /// Each row.
    pub rows: Vec<RowSummary>,
    /// Seconds the section took.
    pub wall_seconds: f64,
}

/// How the section runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Each wrk run's duration.
    pub duration: Duration,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Where configs and logs go (a folder of its own: the proxies' file names are the main
    /// rounds').
    pub out_dir: PathBuf,
    /// The ringmesh-proxy to run.
    pub proxy: topology::ProxyBinary,
    /// This binary.
    pub self_exe: PathBuf,
    /// The open-file limit children inherit.
    pub nofile: u64,
    /// CPU for the proxies, if pinning.
    pub proxy_cpu: Option<usize>,
    /// CPU for the upstream, if pinning.
    pub upstream_cpu: Option<usize>,
}

/// wrk's own warm-up before the first round (its shortest run): opens the proxies' upstream
/// pools.
const WARMUP: Duration = Duration::from_secs(1);

/// Runs the rows; `interrupted` is polled between runs; `line` prints a result line.
pub fn run(settings: &Settings, interrupted: &dyn Fn() -> bool, line: &dyn Fn(String)) -> Section {
    let started = std::time::Instant::now();
    let secs = whole_seconds(settings.duration);
    let mut section = Section {
        skipped: None,
        command: format!("wrk -t1 -c{CONNECTIONS} -d{secs}s --latency -H 'Host: {HOST}' http://ENTRY/"),
        rounds: settings.rounds,
        rows: Vec::new(),
        wall_seconds: 0.0,
    };
    let missing: Vec<&str> = ["wrk", "nginx"]
        .into_iter()
        .filter(|b| topology::which(b).is_none())
        .collect();
    if !missing.is_empty() {
        section.skipped = Some(format!(
            "skipped: `{}` not on PATH (apt-get install wrk nginx-light)",
            missing.join("`, `")
        ));
        line(format!(
            "ringmesh-bench: wrk rows {}",
            section.skipped.as_deref().unwrap_or("")
        ));
        return section;
    }
    let result = measure(settings, interrupted, line, &mut section);
    if let Err(e) = result {
        section.skipped = Some(format!("failed: {e:#}"));
        line(format!("ringmesh-bench: wrk rows failed: {e:#}"));
    }
    section.wall_seconds = started.elapsed().as_secs_f64();
    section
}

fn measure(
    settings: &Settings,
    interrupted: &dyn Fn() -> bool,
    line: &dyn Fn(String),
    section: &mut Section,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.out_dir).with_context(|| format!("creating {}", settings.out_dir.display()))?;
    let upstream_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let upstream = start_upstream(settings, upstream_addr)?;
    let env = Env {
        out_dir: settings.out_dir.clone(),
        self_exe: settings.self_exe.clone(),
        proxy: settings.proxy.clone(),
        echo_addr: upstream_addr,
        // The upstream here is nginx; no row of this section starts an echo of its own.
        echo: crate::topology::Echo {
            body_size: 0,
            cpu: settings.upstream_cpu,
        },
        proxy_workers: 1,
        proxy_cpu: settings.proxy_cpu,
        nofile: settings.nofile,
        pki: None,
    };
    let mut running: Vec<(usize, Topology)> = Vec::new();
    for row in Row::ALL {
        if let Some(bin) = (row == Row::Haproxy).then_some("haproxy") {
            if topology::which(bin).is_none() {
                let mut s = RowSummary::new(row, Status::Skipped);
                s.notes.push(format!("skipped: `{bin}` is not on PATH"));
                section.rows.push(s);
                continue;
            }
        }
        match row.start(&env) {
            Ok(t) => {
                let mut s = RowSummary::new(row, Status::Ok);
                s.io_driver = t.io_driver.clone();
                section.rows.push(s);
                running.push((section.rows.len() - 1, t));
            }
            Err(e) => {
                let mut s = RowSummary::new(row, Status::Failed);
                s.notes.push(format!("failed to start: {e:#}"));
                section.rows.push(s);
            }
        }
    }
    for (_, topo) in &running {
        if interrupted() {
            return Ok(());
        }
        wrk(topo.entry, WARMUP)?;
    }
    'rounds: for round in 0..settings.rounds {
        for (i, topo) in &mut running {
            if interrupted() {
                break 'rounds;
            }
            let row = &mut section.rows[*i];
            if row.status != Status::Ok {
                continue;
            }
            match one_run(topo, &upstream, settings.duration, round) {
                Ok(r) => {
                    line(format!(
                        "ringmesh-bench: [wrk {}/{}] {:<14} {:>7.0} rps | p50 {:.0} µs p99 {:.0} µs | CPU µs/req: proxy {} upstream {:.1}",
                        round + 1,
                        settings.rounds,
                        row.row.name(),
                        r.wrk.rps,
                        r.wrk.p50_us,
                        r.wrk.p99_us,
                        r.proxy_cpu_us.map_or("—".into(), |c| format!("{c:.1}")),
                        r.upstream_cpu_us,
                    ));
                    row.runs.push(r);
                }
                Err(e) => {
                    row.status = Status::Failed;
                    row.notes.push(format!("round {}: {e:#}", round + 1));
                }
            }
        }
    }
    // Only whole rounds, as in the main table.
    let complete = section
        .rows
        .iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.runs.len())
        .min()
        .unwrap_or(0);
    for row in &mut section.rows {
        row.runs.retain(|r| r.round < complete);
        row.summarise();
    }
    section.rounds = complete;
    Ok(())
}

fn one_run(topo: &mut Topology, upstream: &Proc, duration: Duration, round: usize) -> anyhow::Result<WrkRun> {
    topo.check_alive()?;
    let proxy_before = topo.proxy_cpu_time()?;
    let upstream_before = upstream.cpu_time()?;
    let out = wrk(topo.entry, duration)?;
    let proxy_after = topo.proxy_cpu_time()?;
    let upstream_after = upstream.cpu_time()?;
    anyhow::ensure!(out.requests > 0, "wrk completed no request");
    let per_request = |d: Duration| d.as_secs_f64() * 1e6 / out.requests as f64;
    Ok(WrkRun {
        round,
        wrk: out,
        proxy_cpu_us: proxy_before
            .zip(proxy_after)
            .map(|(b, a)| per_request(a.saturating_sub(b))),
        upstream_cpu_us: per_request(upstream_after.saturating_sub(upstream_before)),
    })
}

/// Runs wrk against `entry` for `duration` and parses its output.
fn wrk(entry: SocketAddr, duration: Duration) -> anyhow::Result<WrkOutput> {
    use std::os::unix::process::CommandExt as _;
    let out = Command::new("wrk")
        .args([
            "-t1".to_owned(),
            format!("-c{CONNECTIONS}"),
            format!("-d{}s", whole_seconds(duration)),
            "--latency".to_owned(),
            "-H".to_owned(),
            format!("Host: {HOST}"),
            format!("http://{entry}/"),
        ])
        // Its own process group: Ctrl-C reaches the bench, which lets the bounded run end.
        .process_group(0)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk exited with {}: {}{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_output(&text)
}

/// wrk takes whole seconds (`2s`); `--wrk-duration` is checked to be whole, this rounds up.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// nginx as the upstream every row shares: one worker, `return 200`, no access log, its
/// defaults otherwise (notably `keepalive_requests 1000`).
pub fn upstream_config(listen: SocketAddr, prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        r#"# Written by ringmesh-bench: the wrk rows' upstream, nginx answering `return 200`.
daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {p}/tmp/client;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;

    server {{
        listen {listen};
        location / {{
            return 200;
        }}
    }}
}}
"#
    )
}

fn start_upstream(settings: &Settings, addr: SocketAddr) -> anyhow::Result<Proc> {
    let prefix = settings.out_dir.join("upstream-nginx");
    let mut proc = topology::spawn_nginx(
        "upstream-nginx",
        &settings.out_dir,
        &prefix,
        &prefix.join("error.log"),
        |prefix| upstream_config(addr, prefix),
        settings.upstream_cpu,
    )?;
    proc.wait_ready(&format!("GET http://{addr}/"), Duration::from_secs(10), || {
        matches!(http_get_status(addr, HOST, "/"), Ok(200))
    })?;
    Ok(proc)
}

/// The section's targets: ringmesh, on io_uring and on epoll, against haproxy and nginx.
pub fn judge(section: &Section) -> Vec<TargetCheck> {
    let get = |r: Row| section.rows.iter().find(|s| s.row == r && s.status == Status::Ok);
    let mut out = Vec::new();
    for ours in [Row::Ringmesh, Row::RingmeshEpoll] {
        type Pick = fn(&RowSummary) -> Option<Spread>;
        let checks: [(&str, Pick, bool); 3] = [
            ("throughput", |s| s.rps, true),
            ("proxy CPU/request", |s| s.proxy_cpu_us, false),
            ("upstream CPU/request", |s| s.upstream_cpu_us, false),
        ];
        for (what, pick, higher_is_better) in checks {
            let name = format!("wrk: {} {what}", ours.name());
            let target = if higher_is_better {
                "≥ haproxy's and nginx's"
            } else {
                "≤ haproxy's and nginx's"
            };
            let mine = get(ours).and_then(pick);
            let theirs: Vec<(Row, Spread)> = [Row::Haproxy, Row::Nginx]
                .into_iter()
                .filter_map(|r| get(r).and_then(pick).map(|s| (r, s)))
                .collect();
            let (Some(mine), false) = (mine, theirs.is_empty()) else {
                out.push(TargetCheck {
                    name,
                    target: target.into(),
                    value: "needs the row and haproxy's or nginx's".into(),
                    verdict: "N/A",
                });
                continue;
            };
            let ok = theirs.iter().all(|(_, t)| {
                if higher_is_better {
                    mine.median >= t.median
                } else {
                    mine.median <= t.median
                }
            });
            let unit = if higher_is_better { " rps" } else { " µs" };
            let fmt = |v: f64| {
                if higher_is_better {
                    format!("{v:.0}{unit}")
                } else {
                    format!("{v:.1}{unit}")
                }
            };
            let value = std::iter::once(fmt(mine.median))
                .chain(theirs.iter().map(|(r, t)| format!("{} {}", r.name(), fmt(t.median))))
                .collect::<Vec<_>>()
                .join(" vs ");
            out.push(TargetCheck {
                name,
                target: target.into(),
                value,
                verdict: if ok { "PASS" } else { "MISS" },
            });
        }
    }
    out
}

/// The section as markdown.
pub fn markdown(section: &Section) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## wrk against an nginx upstream (median of rounds)\n");
    let _ = writeln!(
        s,
        "`{}`, closed loop, through each row in turn ({} interleaved round(s), {:.0} s); the upstream is nginx, \
         one worker, `return 200`; each proxy one worker. CPU is the process tree's utime+stime over the run \
         divided by wrk's requests.\n",
        section.command, section.rounds, section.wall_seconds
    );
    if let Some(why) = &section.skipped {
        let _ = writeln!(s, "{why}");
        return s;
    }
    let _ = writeln!(
        s,
        "| row | io | throughput rps | p50 | p99 | proxy CPU µs/req | upstream CPU µs/req | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    let f0 = |x: Option<Spread>| x.map_or("—".to_owned(), |v| format!("{:.0}", v.median));
    let f1 = |x: Option<Spread>| x.map_or("—".to_owned(), |v| format!("{:.1}", v.median));
    let us = |x: Option<Spread>| x.map_or("—".to_owned(), |v| format!("{:.0} µs", v.median));
    for r in &section.rows {
        if r.status != Status::Ok {
            let what = if r.status == Status::Skipped {
                "skipped"
            } else {
                "FAILED"
            };
            let _ = writeln!(s, "| {} | | {what} | | | | | |", r.row.name());
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.row.name(),
            r.io_driver.as_deref().unwrap_or("—"),
            f0(r.rps),
            us(r.p50_us),
            us(r.p99_us),
            f1(r.proxy_cpu_us),
            f1(r.upstream_cpu_us),
            r.errors
        );
    }
    let _ = writeln!(s, "\nSpread over rounds (min – max):\n");
    let _ = writeln!(
        s,
        "| row | throughput rps | p50 µs | proxy CPU µs/req | upstream CPU µs/req |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let range = |x: Option<Spread>, d: usize| x.map_or("—".to_owned(), |v| format!("{:.d$} – {:.d$}", v.min, v.max));
    for r in section.rows.iter().filter(|r| r.status == Status::Ok) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.row.name(),
            range(r.rps, 0),
            range(r.p50_us, 0),
            range(r.proxy_cpu_us, 1),
            range(r.upstream_cpu_us, 1)
        );
    }
    for r in &section.rows {
        for n in &r.notes {
            let _ = writeln!(s, "\n- {}: {n}", r.row.name());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 3s test @ http://127.0.0.1:28082/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.85ms    2.31ms  20.36ms   85.09%
    Req/Sec    13.92k     6.14k   25.08k    53.33%
  Latency Distribution
     50%  392.00us
     75%    3.02ms
     90%    4.81ms
     99%   10.29ms
  41830 requests in 3.03s, 5.86MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  13806.52
Transfer/sec:      1.94MB
";

    #[test]
    fn wrk_output_is_read() {
        let o = parse_output(SAMPLE).unwrap();
        assert_eq!(o.requests, 41830);
        assert_eq!(o.rps, 13806.52);
        assert_eq!(o.p50_us, 392.0);
        assert_eq!(o.p99_us, 10290.0);
        assert_eq!(o.errors, 7);
        assert_eq!(parse_latency("1.50s").unwrap(), 1.5e6);
        assert!(parse_latency("12").is_err());
        let e = parse_output("unable to connect to 127.0.0.1:1 Connection refused\n").unwrap_err();
        assert!(e.to_string().contains("no request count"), "{e}");
    }

    fn row(r: Row, rps: f64, proxy: f64, upstream: f64) -> RowSummary {
        let mut s = RowSummary::new(r, Status::Ok);
        s.runs = vec![WrkRun {
            round: 0,
            wrk: WrkOutput {
                requests: 1000,
                rps,
                p50_us: 200.0,
                p99_us: 900.0,
                errors: 0,
            },
            proxy_cpu_us: Some(proxy),
            upstream_cpu_us: upstream,
        }];
        s.summarise();
        s
    }

    #[test]
    fn ringmesh_rows_are_judged_against_both_peers() {
        let section = Section {
            skipped: None,
            command: "wrk".into(),
            rounds: 1,
            rows: vec![
                row(Row::Ringmesh, 50_000.0, 14.0, 7.0),
                row(Row::RingmeshEpoll, 40_000.0, 16.0, 7.0),
                row(Row::Haproxy, 45_000.0, 15.0, 7.5),
                row(Row::Nginx, 44_000.0, 15.5, 7.2),
            ],
            wall_seconds: 1.0,
        };
        let v: Vec<(String, &str)> = judge(&section).into_iter().map(|t| (t.name, t.verdict)).collect();
        assert_eq!(
            v,
            [
                ("wrk: ringmesh throughput".to_owned(), "PASS"),
                ("wrk: ringmesh proxy CPU/request".to_owned(), "PASS"),
                ("wrk: ringmesh upstream CPU/request".to_owned(), "PASS"),
                ("wrk: ringmesh-epoll throughput".to_owned(), "MISS"),
                ("wrk: ringmesh-epoll proxy CPU/request".to_owned(), "MISS"),
                ("wrk: ringmesh-epoll upstream CPU/request".to_owned(), "PASS"),
            ]
        );
        let md = markdown(&section);
        assert!(
            md.contains("| ringmesh-epoll | — | 40000 | 200 µs | 900 µs | 16.0 | 7.0 | 0 |"),
            "{md}"
        );

        let skipped = Section {
            skipped: Some("skipped: `wrk` not on PATH".into()),
            rows: Vec::new(),
            ..section
        };
        assert!(judge(&skipped).iter().all(|t| t.verdict == "N/A"));
        assert!(markdown(&skipped).contains("`wrk` not on PATH"));
    }
}
