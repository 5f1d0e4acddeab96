//! A control plane under test: `ringmesh-control`'s library on its own thread and tokio
//! runtime, serving a temporary directory on an ephemeral (or given) loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringmesh_control::server::{ControlPlane, ProxyStatus, ServerConfig};
use ringmesh_control::store::DirStore;

/// A running control plane.
#[derive(Debug)]
pub struct TestControlPlane {
    /// gRPC address.
    pub addr: SocketAddr,
    /// The shared state (status, pushes).
    pub cp: ControlPlane,
    /// The resource directory.
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestControlPlane {
    /// Serves `docs` (written as one file) on an ephemeral port.
    pub fn start(dir: &Path, docs: &[String]) -> TestControlPlane {
        std::fs::write(dir.join("mesh.yaml"), docs.join("\n---\n")).expect("write resources");
        Self::serve(dir.to_path_buf(), "127.0.0.1:0".parse().expect("addr"))
    }

    /// Serves whatever `dir` holds on `addr` (to restart on the same port).
    pub fn serve(dir: PathBuf, addr: SocketAddr) -> TestControlPlane {
        let store = DirStore::open(&dir).unwrap_or_else(|e| panic!("control plane resources: {e}"));
        let cp = ControlPlane::new(
            store.current.clone(),
            ServerConfig {
                grace: Duration::from_secs(30),
                debounce: Duration::from_millis(20),
            },
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = tonic::transport::Server::builder().add_service(cp.service());
        let (addr, thread) = serve_on_thread(addr, router, async {
            let _ = stop_rx.await;
        });
        TestControlPlane {
            addr,
            cp,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Replaces the resources (as `ringmesh apply` of a whole directory would) and pushes.
    pub fn apply(&self, docs: &[String]) {
        let mut store = DirStore::open(&self.dir).expect("store");
        std::fs::write(self.dir.join("mesh.yaml"), docs.join("\n---\n")).expect("write resources");
        store.refresh().unwrap_or_else(|e| panic!("resources refused: {e}"));
        self.cp.set_resources(store.current.clone());
    }

    /// Every proxy's status.
    pub fn status(&self) -> Vec<ProxyStatus> {
        self.cp.proxy_status()
    }

    /// Stops serving (the process-kill case: streams break, proxies keep their config).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `router` on `addr` (port 0: an ephemeral one, returned) from its own thread and
/// tokio runtime until `stop` completes. Then the runtime is dropped, and with it every
/// connection task: streams break the way they do when a process is killed (a graceful stop
/// would wait on them forever).
pub fn serve_on_thread(
    addr: SocketAddr,
    router: tonic::transport::server::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let std_listener = std::net::TcpListener::bind(addr).expect("bind gRPC server");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(router.serve_with_incoming(incoming));
            stop.await;
        });
        drop(rt);
    });
    (addr, thread)
}

/// The `ProxyConfig` lines (indented for `spec`) that subscribe to a control plane and announce
/// a workload serving `services` at `app` with `labels`.
pub fn subscribe(
    cp: SocketAddr,
    node: &str,
    services: &[&str],
    app: Option<SocketAddr>,
    labels: &[(&str, &str)],
) -> String {
    let mut s = format!("  controlPlane: {{address: \"{cp}\", nodeId: {node}}}\n  workload:\n    name: {node}\n");
    if let Some(app) = app {
        s.push_str(&format!(
            "    addresses: [\"{}\"]\n    ports: {{http: {}}}\n",
            app.ip(),
            app.port()
        ));
        s.push_str(&format!("    services: [{}]\n", services.join(", ")));
    }
    if !labels.is_empty() {
        s.push_str("    labels:\n");
        for (k, v) in labels {
            s.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    s
}
