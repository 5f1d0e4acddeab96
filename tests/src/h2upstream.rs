//! A scriptable HTTP/2 (h2c) upstream for tests: `h2`'s server on a tokio runtime of its own,
//! handing every stream to the test's handler in a task of its own, so a test decides frame by
//! frame what the proxy gets back — a slow answer, a trailers-only gRPC status, a body sent only
//! as fast as flow control allows, a reset in the middle, a connection closed under its streams.
//!
//! Unlike the echo (`ringmesh_loadgen::spawn_echo`), nothing here is fixed: each test writes the
//! few lines of server behaviour it asserts on, and counts what it needs with its own atomics.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;
use tokio::sync::watch;

/// What a handler is given with each stream: the request and the way to answer it.
pub type Stream = (Request<RecvStream>, SendResponse<Bytes>);

/// A running HTTP/2 upstream; stops (and closes its connections) when dropped.
#[derive(Debug)]
pub struct H2Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Streams accepted so far, over all connections.
    pub streams: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Bumped to close every open connection at once (see [`Self::close_connections`]).
    kill: Arc<watch::Sender<u64>>,
    /// Bumped to send every open connection's peer a graceful `GOAWAY`.
    drain: Arc<watch::Sender<u64>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl H2Upstream {
    /// Starts an upstream with `h2`'s default settings (64 KiB windows).
    pub fn start<F, Fut>(handler: F) -> H2Upstream
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_with(h2::server::Builder::new(), handler)
    }

    /// Starts an upstream whose connections use `settings`.
    pub fn start_with<F, Fut>(settings: h2::server::Builder, handler: F) -> H2Upstream
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let streams = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let kill = Arc::new(watch::channel(0u64).0);
        let drain = Arc::new(watch::channel(0u64).0);
        let handler = Arc::new(handler);
        let (s, c, k, d) = (streams.clone(), connections.clone(), kill.clone(), drain.clone());
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, streams, settings) = (handler.clone(), s.clone(), settings.clone());
                let mut killed = k.subscribe();
                let mut drained = d.subscribe();
                tokio::spawn(async move {
                    let Ok(mut conn) = settings.handshake::<_, Bytes>(tcp).await else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            next = conn.accept() => match next {
                                Some(Ok(stream)) => {
                                    streams.fetch_add(1, Ordering::SeqCst);
                                    tokio::spawn(handler(stream));
                                }
                                _ => return,
                            },
                            // Dropping the connection closes the socket under its streams,
                            // without a GOAWAY: what a crashing upstream does.
                            _ = killed.changed() => return,
                            // GOAWAY: streams already open go on, no new ones are taken.
                            _ = drained.changed() => conn.graceful_shutdown(),
                        }
                    }
                });
            }
        });
        H2Upstream {
            addr,
            streams,
            connections,
            kill,
            drain,
            rt: Some(rt),
        }
    }

    /// A handle that closes every open connection of this upstream (for a handler to call).
    pub fn closer(&self) -> Closer {
        Closer(self.kill.clone())
    }

    /// Closes every open connection abruptly (no GOAWAY).
    pub fn close_connections(&self) {
        self.closer().close();
    }
}

impl H2Upstream {
    /// Sends every open connection's peer a graceful `GOAWAY`: the streams it has open are
    /// served to their end, new ones must go to a new connection.
    pub fn go_away(&self) {
        self.drain.send_modify(|g| *g += 1);
    }
}

/// Closes every open connection of an [`H2Upstream`].
#[derive(Debug, Clone)]
pub struct Closer(Arc<watch::Sender<u64>>);

impl Closer {
    /// Closes every open connection abruptly (no GOAWAY).
    pub fn close(&self) {
        self.0.send_modify(|g| *g += 1);
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
