//! The control thread's health task: returns ejected endpoints when their time is up
//! ([`super::health::sweep`]) and runs the active health checks of ringmesh's `healthCheck`.
//!
//! Once per proxy, not once per core: the task runs on the control thread's tokio runtime, and
//! each probe is a tokio task of its own with the check's timeout, so a slow or silent endpoint
//! never holds anything else up and no worker ever waits for a probe. A probe's result goes
//! into the shared health table ([`super::health::ClusterHealth::record_probe`]), which every
//! worker reads on pick.
//!
//! Probes are plaintext: a TCP connect, or an HTTP/1.1 `GET` with `Connection: close` whose
//! status line must carry one of the expected statuses.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ringmesh_api::snapshot::{HealthCheck, HealthProbe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::health::{now_ms, sweep, sweep_interval, ClusterHealth, EndpointHealth};
use crate::state::SnapshotSource;

/// Longest sleep between two looks at the config (picks up a reload that adds checks).
const MAX_TICK: Duration = Duration::from_secs(1);
/// Shortest: bounds the task's wake-ups whatever the config says.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Bytes of a probe's answer read to find its status line.
const STATUS_LINE_MAX: usize = 1024;

/// Runs until the runtime stops. Spawned once by the control thread.
pub async fn run(source: Arc<SnapshotSource>) {
    let mut last_sweep = 0u64;
    loop {
        let (snapshot, tables) = source.load_with_health();
        let now = now_ms();
        let sweep_every = sweep_interval(&snapshot.clusters);
        if let Some(every) = sweep_every {
            if now.saturating_sub(last_sweep) >= every.as_millis() as u64 {
                sweep(&snapshot.clusters, &tables, now);
                last_sweep = now;
            }
        }
        let mut tick = sweep_every.unwrap_or(MAX_TICK).min(MAX_TICK);
        for (c, (ch, eps)) in snapshot.clusters.iter().zip(&tables.clusters) {
            let Some(hc) = &c.health_check else { continue };
            tick = tick.min(hc.interval);
            for ep in eps {
                if ep.next_probe_ms.load(Relaxed) > now || ep.probing.swap(true, Relaxed) {
                    continue;
                }
                ep.next_probe_ms.store(now + hc.interval.as_millis() as u64, Relaxed);
                // The control thread is the one place tokio tasks run (dataplane/clippy.toml).
                #[allow(clippy::disallowed_methods)]
                tokio::spawn(probe_one(hc.clone(), ch.clone(), ep.clone()));
            }
        }
        tokio::time::sleep(tick.max(MIN_TICK)).await;
    }
}

/// One probe of `ep`, its result recorded in `ch`.
async fn probe_one(hc: HealthCheck, ch: Arc<ClusterHealth>, ep: Arc<EndpointHealth>) {
    let result = match tokio::time::timeout(hc.timeout, probe(&hc.probe, &ep)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    };
    let (passed, why) = match result {
        Ok(()) => (true, String::new()),
        Err(why) => (false, why),
    };
    ch.record_probe(&ep, passed, hc.unhealthy_threshold, hc.healthy_threshold, &why);
    ep.probing.store(false, Relaxed);
}

async fn probe(kind: &HealthProbe, ep: &EndpointHealth) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(ep.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let HealthProbe::Http {
        path,
        host,
        expected_statuses,
    } = kind
    else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringmesh-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() >= STATUS_LINE_MAX {
            return Err("no status line in the first 1024 bytes".into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status_line(&buf[..line_end]).ok_or_else(|| "malformed status line".to_owned())?;
    if expected_statuses.contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status} on {path}"))
    }
}

/// The status of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|b| *b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
    }
}
