//! The app's readiness probe (on the control thread): Kubernetes' `httpGet` / `tcpSocket`
//! semantics on 127.0.0.1, so a workload whose app fails readiness is withdrawn from every
//! other proxy's endpoints at once instead of after its requests start failing.

use std::time::Duration;

use ringmesh_api::snapshot::ReadinessProbe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Largest response head read from the app (only the status line matters).
const MAX_PROBE_RESPONSE: usize = 4096;

/// Why one probe failed (logged when readiness changes).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connect, write or read failed.
    #[error("127.0.0.1:{0}: {1}")]
    Io(u16, std::io::Error),
    /// No answer within the timeout.
    #[error("127.0.0.1:{0}: no answer within {1:?}")]
    Timeout(u16, Duration),
    /// The app answered with a status outside 200–399, or not HTTP.
    #[error("127.0.0.1:{0}{1}: {2}")]
    Status(u16, String, String),
}

/// One probe.
pub async fn check(p: &ReadinessProbe) -> Result<(), ProbeError> {
    match tokio::time::timeout(p.timeout, attempt(p)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(p.port, p.timeout)),
    }
}

async fn attempt(p: &ReadinessProbe) -> Result<(), ProbeError> {
    let io = |e| ProbeError::Io(p.port, e);
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.map_err(io)?;
    let Some(path) = &p.http_path else { return Ok(()) };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: ringmesh-probe\r\nConnection: close\r\n\r\n",
        p.port
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(256);
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < MAX_PROBE_RESPONSE {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(200..=399) => Ok(()),
        Some(code) => Err(ProbeError::Status(p.port, path.clone(), format!("status {code}"))),
        None => Err(ProbeError::Status(
            p.port,
            path.clone(),
            format!("not an HTTP answer: {line:?}"),
        )),
    }
}

/// Probes every `period` and publishes readiness after `failure_threshold` failures or
/// `success_threshold` successes in a row. Ends when nobody listens any more.
pub async fn run(p: ReadinessProbe, ready: watch::Sender<bool>) {
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut tick = tokio::time::interval(p.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ready.is_closed() {
            return;
        }
        match check(&p).await {
            Ok(()) => {
                (successes, failures) = (successes.saturating_add(1), 0);
                if successes >= p.success_threshold && !*ready.borrow() {
                    tracing::info!(port = p.port, "app readiness probe passes; workload ready");
                    let _ = ready.send(true);
                }
            }
            Err(e) => {
                (successes, failures) = (0, failures.saturating_add(1));
                if failures >= p.failure_threshold && *ready.borrow() {
                    tracing::warn!("app readiness probe failed {failures} times in a row ({e}); workload unready");
                    let _ = ready.send(false);
                } else {
                    tracing::debug!("app readiness probe failed: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn probe(port: u16, path: Option<&str>) -> ReadinessProbe {
        ReadinessProbe {
            port,
            http_path: path.map(str::to_string),
            period: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            failure_threshold: 2,
            success_threshold: 1,
        }
    }

    /// An app answering `status` to every connection, for `n` connections.
    fn app(status: &'static str, n: usize) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().take(n) {
                let Ok(mut s) = s else { continue };
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b);
                let _ = s.write_all(status.as_bytes());
            }
        });
        port
    }

    #[tokio::test]
    async fn http_status_decides_and_closed_ports_fail() {
        assert!(check(&probe(app("HTTP/1.1 204 No Content\r\n\r\n", 1), Some("/ready")))
            .await
            .is_ok());
        let e = check(&probe(
            app("HTTP/1.1 503 Service Unavailable\r\n\r\n", 1),
            Some("/ready"),
        ))
        .await;
        assert!(e.unwrap_err().to_string().contains("/ready: status 503"));
        let e = check(&probe(app("garbage\r\n", 1), Some("/"))).await;
        assert!(e.unwrap_err().to_string().contains("not an HTTP answer"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(check(&probe(closed, None)).await, Err(ProbeError::Io(..))));
        assert!(
            check(&probe(app("", 1), None)).await.is_ok(),
            "tcpSocket only needs the connect"
        );
    }

    #[tokio::test]
    async fn thresholds_turn_readiness_on_and_off() {
        // Three good answers, then the port closes: ready, then unready after 2 failures.
        let port = app("HTTP/1.1 200 OK\r\n\r\n", 3);
        let (tx, mut rx) = watch::channel(false);
        #[allow(clippy::disallowed_methods)] // a tokio test runtime
        let task = tokio::spawn(run(probe(port, Some("/")), tx));
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| !*r))
            .await
            .unwrap()
            .unwrap();
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
