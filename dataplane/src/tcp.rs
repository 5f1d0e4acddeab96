//! L4 TCP proxy for opaque traffic: pick an endpoint, connect, then move bytes with `splice`.
//!
//! Bytes go socket → pipe → socket inside the kernel and never enter user space (zero copy).
//! Each direction runs until its reader sees EOF, then shuts down the write side of the other
//! socket, so a client that half-closes still gets the rest of the response. A watchdog closes
//! the pair when no byte moved in either direction for the idle timeout.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncWriteRent, Splitable};
use monoio::net::TcpStream;
use ringmesh_api::snapshot::{Listener, ListenerKind, WeightedClusters};

use crate::cluster::pool::{self, UpstreamConn};
use crate::lb;
use crate::telemetry::stats::inc;
use crate::worker::Worker;

/// Largest amount moved by one splice call.
const SPLICE_CHUNK: u32 = 64 * 1024;

/// Serves one accepted TCP connection.
///
/// The destination comes from the *current* snapshot's listener of this name, so a reload that
/// changes a TCP route applies to new connections at once.
pub async fn serve(worker: Rc<Worker>, client: TcpStream, peer: SocketAddr, listener: &str) {
    inc(&worker.stats.tcp_cx_total);
    let view = worker.snapshot.get();
    let Some((clusters, idle_timeout)) = tcp_destination(&view.snapshot.listeners, listener) else {
        tracing::warn!(%peer, listener, "tcp listener has no destination in the current config; closing");
        return;
    };
    let cluster_id = clusters.pick(worker.rng.next_u64() as u32);
    let cluster = view.snapshot.cluster(cluster_id);
    let state = &view.clusters[cluster_id.0 as usize];
    let hash = Some(ringmesh_api::hash_table::hash_bytes(peer.ip().to_string().as_bytes()));
    // Try each endpoint at most once on connect failure, like Envoy's default of one reattempt
    // per host; opaque TCP has nothing else to retry.
    let mut upstream = None;
    for _ in 0..cluster.endpoints.len().min(3) {
        let Some(i) = lb::pick(cluster, state, &worker.rng, hash) else {
            break;
        };
        let ep = &cluster.endpoints[i];
        inc(&worker.stats.upstream_cx_total);
        match pool::connect(ep.address, cluster.connect_timeout).await {
            Ok(conn) => {
                upstream = Some(conn);
                break;
            }
            Err(e) => {
                inc(&worker.stats.upstream_cx_connect_fail);
                inc(&state.endpoints[i].cx_connect_fail);
                tracing::debug!(%peer, upstream = %ep.address, cluster = %cluster.name, "tcp connect failed: {e}");
            }
        }
    }
    let Some(upstream) = upstream else {
        tracing::info!(%peer, cluster = %cluster.name, "tcp: no upstream reachable; closing client");
        return;
    };
    let _ = client.set_nodelay(true);
    let (sent, received) = pipe_pair(client, upstream, idle_timeout).await;
    worker
        .stats
        .tcp_bytes_sent
        .set(worker.stats.tcp_bytes_sent.get() + sent);
    worker
        .stats
        .tcp_bytes_received
        .set(worker.stats.tcp_bytes_received.get() + received);
}

fn tcp_destination<'a>(listeners: &'a [Listener], name: &str) -> Option<(&'a WeightedClusters, Duration)> {
    listeners.iter().find(|l| l.name == name).and_then(|l| match &l.kind {
        ListenerKind::Tcp { clusters, idle_timeout } if clusters.total() > 0 => Some((clusters, *idle_timeout)),
        _ => None,
    })
}

/// Moves bytes both ways until both directions finished or the pair was idle too long.
/// Returns (client → upstream, upstream → client) byte counts.
pub async fn pipe_pair(client: TcpStream, upstream: UpstreamConn, idle_timeout: Duration) -> (u64, u64) {
    let last = Rc::new(Cell::new(Instant::now()));
    let up_bytes = Rc::new(Cell::new(0u64));
    let down_bytes = Rc::new(Cell::new(0u64));
    let (mut cr, mut cw) = client.into_split();
    let UpstreamConn {
        read: mut ur,
        write: mut uw,
        ..
    } = upstream;
    let up = one_way(&mut cr, &mut uw, last.clone(), up_bytes.clone());
    let down = one_way(&mut ur, &mut cw, last.clone(), down_bytes.clone());
    let both = async {
        let _ = monoio::join!(up, down);
    };
    let watchdog = async {
        loop {
            let deadline = last.get() + idle_timeout;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            monoio::time::sleep(deadline - now).await;
        }
    };
    monoio::select! {
        _ = both => {}
        _ = watchdog => { tracing::debug!("tcp: idle timeout; closing both sides"); }
    }
    (up_bytes.get(), down_bytes.get())
}

async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    last: Rc<Cell<Instant>>,
    bytes: Rc<Cell<u64>>,
) -> std::io::Result<()>
where
    R: SpliceSource,
    W: SpliceDestination + AsyncWriteRent,
{
    let (mut pr, mut pw) = monoio::net::unix::new_pipe()?;
    let result = async {
        loop {
            let mut n = reader.splice_to_pipe(&mut pw, SPLICE_CHUNK).await?;
            if n == 0 {
                return Ok(());
            }
            last.set(Instant::now());
            bytes.set(bytes.get() + n as u64);
            while n > 0 {
                let w = writer.splice_from_pipe(&mut pr, n).await?;
                if w == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                }
                n -= w;
            }
            last.set(Instant::now());
        }
    }
    .await;
    // Half-close: the reader is done, tell the other side no more bytes are coming.
    let _ = writer.shutdown().await;
    result
}
