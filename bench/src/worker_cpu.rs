//! Per-worker CPU: does one HTTP/2 connection keep every core of the proxy busy, or one?
//!
//! Thread-per-core hands each accepted connection to one worker, so a gRPC client's one
//! long-lived HTTP/2 connection would load one core while the others idle, unless the proxy
//! spreads the connection's streams over its workers. This measurement drives exactly that
//! case — ONE h2c connection carrying [`STREAMS`] concurrent streams, closed loop, through a
//! ringmesh-proxy with [`WORKERS`] workers in front of the echo — and reads each thread's
//! `utime + stime` from `/proc/<pid>/task/<tid>/stat` before and after. Each worker's share is
//! its CPU over the whole process's (workers, control thread and any other thread), so the
//! shares of the workers and of "other threads" add up to 100 %.
//!
//! Workers are the threads the proxy names `ringmesh-worker-<id>`. The kernel keeps 15 bytes
//! of a thread's name, so `/proc` shows every worker as `ringmesh-worker`; they are told apart
//! by thread id and numbered in thread-id order, which is the order the proxy starts them in
//! (worker 0 first).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use ringmesh_loadgen::{run_load_with, RunControl};
use serde::Serialize;

use crate::protocol::Protocol;
use crate::report::{Status, TargetCheck};
use crate::topology::{self, Env, HOST};

/// Workers of the measured proxy (the case: two).
pub const WORKERS: usize = 2;
/// Concurrent streams on the one connection.
pub const STREAMS: usize = 100;
/// What `/proc` shows of a worker thread's name (`ringmesh-worker-<id>` cut to 15 bytes).
pub const WORKER_COMM: &str = "ringmesh-worker";
/// Each worker's share of the proxy's CPU must lie in this range.
pub const TARGET_SHARE: (f64, f64) = (0.30, 0.70);
/// Closed-loop warm-up before the measured run (opens the upstream connections).
const WARMUP: Duration = Duration::from_millis(500);

/// One thread's CPU time so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    /// Thread id.
    pub tid: u32,
    /// Its name (`comm`), as `/proc` keeps it.
    pub name: String,
    /// `utime + stime`, clock ticks.
    pub ticks: u64,
}

/// Parses one `/proc/<pid>/task/<tid>/stat` line into (name, utime + stime). The name sits
/// between the first `(` and the last `)` and may itself contain spaces and parentheses.
pub fn parse_thread_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the name: state (0), ppid (1), … utime (11), stime (12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Every thread of `pid` with its CPU time. A thread that exits while it is read is left out.
pub fn threads_of(pid: u32) -> anyhow::Result<Vec<ThreadCpu>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (name, ticks) = parse_thread_stat(&text).ok_or_else(|| anyhow!("unexpected {dir}/{tid}/stat: {text:?}"))?;
        out.push(ThreadCpu { tid, name, ticks });
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// One worker's part of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerShare {
    /// Worker number, in thread-id order.
    pub worker: usize,
    /// Thread id.
    pub tid: u32,
    /// CPU seconds over the run.
    pub cpu_seconds: f64,
    /// Of the process's CPU over the run, 0–1.
    pub share: f64,
}

/// How one process's CPU between two samples divides over its threads.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    /// Each worker, in thread-id order.
    pub per_worker: Vec<WorkerShare>,
    /// The other threads' share, 0–1.
    pub other: f64,
    /// The process's CPU between the samples, clock ticks.
    pub total_ticks: u64,
}

/// Each worker's CPU between two samples of the same process, and the other threads' share.
/// Threads are matched by id; a thread that appeared between the samples counts from zero,
/// one that exited is left out (its last ticks are unknown).
pub fn shares(before: &[ThreadCpu], after: &[ThreadCpu], ticks_per_second: u64) -> anyhow::Result<Shares> {
    let delta = |t: &ThreadCpu| {
        let was = before.iter().find(|b| b.tid == t.tid).map_or(0, |b| b.ticks);
        t.ticks.saturating_sub(was)
    };
    let total: u64 = after.iter().map(delta).sum();
    anyhow::ensure!(total > 0, "the proxy used no measurable CPU time during the run");
    let mut workers: Vec<&ThreadCpu> = after.iter().filter(|t| t.name.starts_with(WORKER_COMM)).collect();
    anyhow::ensure!(
        !workers.is_empty(),
        "no thread named {WORKER_COMM}* among the proxy's threads ({})",
        after.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    workers.sort_by_key(|t| t.tid);
    let per_worker: Vec<WorkerShare> = workers
        .iter()
        .enumerate()
        .map(|(worker, t)| WorkerShare {
            worker,
            tid: t.tid,
            cpu_seconds: delta(t) as f64 / ticks_per_second as f64,
            share: delta(t) as f64 / total as f64,
        })
        .collect();
    let worker_ticks: u64 = workers.iter().map(|t| delta(t)).sum();
    Ok(Shares {
        per_worker,
        other: (total - worker_ticks) as f64 / total as f64,
        total_ticks: total,
    })
}

/// The measurement, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSpread {
    /// Measured, or failed (the note says why).
    pub status: Status,
    /// What the one connection carried.
    pub protocol: Protocol,
    /// Streams on it.
    pub streams: usize,
    /// Workers of the proxy.
    pub workers: usize,
    /// Measured window, seconds (after a warm-up run).
    pub duration_s: f64,
    /// Successful requests per second in the window.
    pub throughput_rps: Option<f64>,
    /// Failed requests in the window.
    pub errors: u64,
    /// The proxy's CPU over the window, cores.
    pub proxy_cores: Option<f64>,
    /// Each worker's share of the proxy's CPU.
    pub per_worker: Vec<WorkerShare>,
    /// The share of the proxy's other threads (control thread, …).
    pub other_threads_share: Option<f64>,
    /// Why it failed, or remarks.
    pub notes: Vec<String>,
    /// The proxy's config file (in the output directory).
    pub config_file: Option<String>,
}

impl WorkerSpread {
    fn failed(protocol: Protocol, duration: Duration, why: String) -> Self {
        Self {
            status: Status::Failed,
            protocol,
            streams: STREAMS,
            workers: WORKERS,
            duration_s: duration.as_secs_f64(),
            throughput_rps: None,
            errors: 0,
            proxy_cores: None,
            per_worker: Vec::new(),
            other_threads_share: None,
            notes: vec![why],
            config_file: None,
        }
    }
}

/// Starts a ringmesh-proxy with [`WORKERS`] workers in front of the echo, drives one
/// connection with [`STREAMS`] streams through it for `duration` (closed loop, after a
/// warm-up run), and reports each worker's share of the proxy's CPU. Never fails: a failure
/// is a `Failed` result with the reason.
pub fn measure(env: &Env, protocol: Protocol, duration: Duration, load_cpus: Vec<usize>) -> WorkerSpread {
    match try_measure(env, protocol, duration, load_cpus) {
        Ok(s) => s,
        Err(e) => WorkerSpread::failed(protocol, duration, format!("{e:#}")),
    }
}

fn try_measure(
    env: &Env,
    protocol: Protocol,
    duration: Duration,
    load_cpus: Vec<usize>,
) -> anyhow::Result<WorkerSpread> {
    anyhow::ensure!(
        protocol.is_h2(),
        "the per-worker measurement runs on HTTP/2 (h2 or grpc)"
    );
    let env = Env {
        proxy_workers: WORKERS,
        ..env.clone()
    };
    let role = format!("ringmesh-workers{}", protocol.suffix());
    let topology::Spawned { proc, entry, path, .. } = topology::spawn_ringmesh(
        &env,
        &role,
        env.echo_addr,
        None,
        protocol,
        topology::Place::Sidecar,
        topology::Telemetry::Default,
    )?;
    let load = |d: Duration| -> anyhow::Result<ringmesh_loadgen::LoadReport> {
        let target = ringmesh_loadgen::Target::parse(&format!("http://{entry}/"), false)?;
        let mut c = ringmesh_loadgen::LoadConfig::for_target(target);
        c.headers.push(("Host".into(), HOST.into()));
        c.protocol = protocol.loadgen();
        c.connections = 1;
        c.streams = STREAMS;
        c.rate = 0.0;
        c.warmup = Duration::ZERO;
        c.duration = d;
        c.timeout = Duration::from_secs(5);
        c.cpus = load_cpus.clone();
        run_load_with(c, Arc::new(RunControl::new()))
    };
    load(WARMUP).context("warm-up run")?;
    let before = threads_of(proc.pid())?;
    let started = Instant::now();
    let report = load(duration).context("measured run")?;
    let wall = started.elapsed();
    let after = threads_of(proc.pid())?;
    anyhow::ensure!(!report.interrupted, "interrupted");
    anyhow::ensure!(
        report.ok > 0,
        "no request succeeded ({} failed: {:?})",
        report.errors,
        report.errors_by_kind
    );
    let ticks = crate::procs::clock_ticks();
    let Shares {
        per_worker,
        other,
        total_ticks,
    } = shares(&before, &after, ticks)?;
    let mut notes = Vec::new();
    if per_worker.len() != WORKERS {
        notes.push(format!(
            "{} worker threads found, {WORKERS} configured",
            per_worker.len()
        ));
    }
    if let Some(cpu) = env.proxy_cpu {
        notes.push(format!(
            "the proxy process is pinned to CPU {cpu} (--cpus): its workers share one core"
        ));
    }
    Ok(WorkerSpread {
        status: Status::Ok,
        protocol,
        streams: STREAMS,
        workers: WORKERS,
        duration_s: report.duration_s,
        throughput_rps: Some(report.ok_rate_rps),
        errors: report.errors,
        proxy_cores: Some(total_ticks as f64 / ticks as f64 / wall.as_secs_f64()),
        per_worker,
        other_threads_share: Some(other),
        notes,
        config_file: path.file_name().map(|f| f.to_string_lossy().into_owned()),
    })
}

/// The target: each worker does 30–70 % of the proxy's work.
pub fn judge(spread: &WorkerSpread) -> TargetCheck {
    let name = format!(
        "per-worker CPU, one {} connection × {} streams, {} workers",
        spread.protocol.label(),
        spread.streams,
        spread.workers
    );
    let target = format!(
        "each worker {:.0}–{:.0} % of the proxy's CPU",
        TARGET_SHARE.0 * 100.0,
        TARGET_SHARE.1 * 100.0
    );
    if spread.status != Status::Ok || spread.per_worker.is_empty() {
        return TargetCheck {
            name,
            target,
            value: "not measured (see its section)".into(),
            verdict: "N/A",
        };
    }
    let value = spread
        .per_worker
        .iter()
        .map(|w| format!("worker {} {:.0} %", w.worker, w.share * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    let ok = spread.per_worker.len() == spread.workers
        && spread
            .per_worker
            .iter()
            .all(|w| (TARGET_SHARE.0..=TARGET_SHARE.1).contains(&w.share));
    TargetCheck {
        name,
        target,
        value,
        verdict: if ok { "PASS" } else { "MISS" },
    }
}

/// The report's section.
pub fn markdown(spread: &WorkerSpread) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Per-worker CPU: one {} connection, {} streams, {} workers\n",
        spread.protocol.label(),
        spread.streams,
        spread.workers
    );
    if spread.status != Status::Ok {
        let _ = writeln!(s, "FAILED: {}", spread.notes.join("; "));
        return s;
    }
    let _ = writeln!(
        s,
        "Closed loop for {:.1} s after a {:.1} s warm-up: {} rps, {} errors; the proxy kept {} cores busy.\n",
        spread.duration_s,
        WARMUP.as_secs_f64(),
        spread.throughput_rps.map_or("—".into(), |r| format!("{r:.0}")),
        spread.errors,
        spread.proxy_cores.map_or("—".into(), |c| format!("{c:.2}")),
    );
    let _ = writeln!(s, "| thread | tid | CPU s | share of the proxy's CPU |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for w in &spread.per_worker {
        let _ = writeln!(
            s,
            "| worker {} | {} | {:.2} | {:.1} % |",
            w.worker,
            w.tid,
            w.cpu_seconds,
            w.share * 100.0
        );
    }
    if let Some(o) = spread.other_threads_share {
        let _ = writeln!(s, "| other threads | | | {:.1} % |", o * 100.0);
    }
    let _ = writeln!(
        s,
        "\nThreads from `/proc/<pid>/task/*/stat` (utime + stime, clock ticks) before and after the \
         window; workers are the threads named `{WORKER_COMM}…`, numbered in thread-id order. \
         Config: `{}`.",
        spread.config_file.as_deref().unwrap_or("—")
    );
    for n in &spread.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: u32, name: &str, ticks: u64) -> ThreadCpu {
        ThreadCpu {
            tid,
            name: name.into(),
            ticks,
        }
    }

    #[test]
    fn a_thread_stat_line_gives_its_name_and_cpu() {
        let line = "4242 (ringmesh-worker) S 4240 4240 4240 0 -1 4194368 100 0 0 0 250 40 0 0 20 0 3 0 1 0 0";
        assert_eq!(parse_thread_stat(line), Some(("ringmesh-worker".into(), 290)));
        // A name with spaces and parentheses: split after the last `)`.
        let odd = "7 (a) b (c)) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 0 0";
        assert_eq!(parse_thread_stat(odd), Some(("a) b (c)".into(), 11)));
        assert_eq!(parse_thread_stat("7 (short) R 1"), None);
        assert_eq!(parse_thread_stat(""), None);
    }

    #[test]
    fn this_process_threads_are_listed_by_id() {
        let me = threads_of(std::process::id()).unwrap();
        assert!(me.iter().any(|t| t.tid == std::process::id()), "{me:?}");
        assert!(me.windows(2).all(|w| w[0].tid < w[1].tid));
    }

    #[test]
    fn shares_are_of_the_whole_process_with_workers_in_tid_order() {
        let before = [
            t(10, "ringmesh-proxy", 5),
            t(12, "ringmesh-worker", 100),
            t(11, "ringmesh-worker", 7),
        ];
        // Worker tid 11 did 90 ticks, tid 12 did 0 (one hot worker), main 5, a new thread 5.
        let after = [
            t(10, "ringmesh-proxy", 10),
            t(11, "ringmesh-worker", 97),
            t(12, "ringmesh-worker", 100),
            t(13, "tokio-runtime-w", 5),
        ];
        let Shares {
            per_worker: w,
            other,
            total_ticks,
        } = shares(&before, &after, 100).unwrap();
        assert_eq!(total_ticks, 100);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].worker, w[0].tid, w[0].share), (0, 11, 0.9));
        assert_eq!((w[1].worker, w[1].tid, w[1].share), (1, 12, 0.0));
        assert!((w[0].cpu_seconds - 0.9).abs() < 1e-9);
        assert!((other - 0.1).abs() < 1e-9);
        let mut spread = WorkerSpread::failed(Protocol::H2, Duration::from_secs(1), String::new());
        spread.status = Status::Ok;
        spread.per_worker = w;
        let check = judge(&spread);
        assert_eq!(check.verdict, "MISS", "{check:?}");
        assert_eq!(check.value, "worker 0 90 %, worker 1 0 %");

        // Even: 45 % and 45 %, 10 % elsewhere.
        let after = [
            t(10, "ringmesh-proxy", 15),
            t(11, "ringmesh-worker", 52),
            t(12, "ringmesh-worker", 145),
        ];
        spread.per_worker = shares(&before, &after, 100).unwrap().per_worker;
        assert_eq!(judge(&spread).verdict, "PASS");
        assert!(markdown(&spread).contains("| worker 1 | 12 | 0.45 | 45.0 % |"));

        assert!(shares(&before, &before, 100).is_err(), "no CPU at all is not a share");
        let no_workers = [t(10, "ringmesh-proxy", 50)];
        let e = shares(&before, &no_workers, 100).unwrap_err().to_string();
        assert!(e.contains("no thread named ringmesh-worker"), "{e}");
    }
}
