//! A proxy under test: writes the YAML a test gives into a fresh folder, prepends a
//! `ProxyConfig` with ephemeral ports and the chosen I/O driver, and starts it in-process with
//! the same entry point the binary uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringmesh_api::snapshot::IoMode;
use ringmesh_proxy::{ProxyHandle, ProxyOptions};

/// A fresh temporary folder, removed when the guard drops (a panicking test unwinds through
/// the drop and cleans up too).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ringmesh-test-")
        .tempdir()
        .expect("create temp dir")
}

/// YAML name of an I/O mode in `ProxyConfig`.
pub fn io_name(io: IoMode) -> &'static str {
    match io {
        IoMode::Auto => "auto",
        IoMode::IoUring => "io_uring",
        IoMode::Epoll => "epoll",
    }
}

/// The `ProxyConfig` document: one worker, ephemeral ports, an HTTP listener `http`, plus
/// `extra_listeners` (YAML list items, already indented by two spaces) and `extra_spec`.
pub fn proxy_config(io: IoMode, extra_listeners: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata:\n  name: test\nspec:\n  workers: 1\n  io: {}\n  adminAddress: 127.0.0.1:0\n  healthAddress: 127.0.0.1:0\n  metricsAddress: 127.0.0.1:0\n{extra_spec}  listeners:\n  - name: http\n    address: 127.0.0.1:0\n    protocol: HTTP\n{extra_listeners}",
        io_name(io)
    )
}

/// A `ServiceEntry` for `host:port` served by `endpoints` (each `(addr, labels)`).
pub fn service_entry(name: &str, host: &str, port: u16, endpoints: &[(SocketAddr, &[(&str, &str)])]) -> String {
    service_entry_speaking("HTTP", name, host, port, endpoints)
}

/// A `ServiceEntry` whose port speaks `protocol` (`HTTP`, `HTTP2`, `GRPC`, ...).
pub fn service_entry_speaking(
    protocol: &str,
    name: &str,
    host: &str,
    port: u16,
    endpoints: &[(SocketAddr, &[(&str, &str)])],
) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [\"{host}\"]\n  ports:\n  - number: {port}\n    name: http\n    protocol: {protocol}\n  resolution: STATIC\n  endpoints:\n"
    );
    for (addr, labels) in endpoints {
        s.push_str(&format!(
            "  - address: {}\n    ports:\n      http: {}\n",
            addr.ip(),
            addr.port()
        ));
        if !labels.is_empty() {
            s.push_str("    labels:\n");
            for (k, v) in labels.iter() {
                s.push_str(&format!("      {k}: \"{v}\"\n"));
            }
        }
    }
    s
}

/// A running proxy and the folder its config lives in.
#[derive(Debug)]
pub struct TestProxy {
    /// The running proxy.
    pub handle: Option<ProxyHandle>,
    /// The config file.
    pub config: PathBuf,
    /// Keeps the folder alive.
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts a proxy on `docs` (YAML documents joined with `---`).
    pub fn start(docs: &[String]) -> TestProxy {
        Self::try_start(docs).unwrap_or_else(|e| panic!("proxy failed to start: {e:#}\n{}", docs.join("\n---\n")))
    }

    /// Starts a proxy, returning the start-up error instead of panicking.
    pub fn try_start(docs: &[String]) -> anyhow::Result<TestProxy> {
        Self::try_start_with(docs, |_| {})
    }

    /// Like [`TestProxy::try_start`], with `tweak` applied to the start options first.
    pub fn try_start_with(docs: &[String], tweak: impl FnOnce(&mut ProxyOptions)) -> anyhow::Result<TestProxy> {
        if let Ok(filter) = std::env::var("RINGMESH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = temp_dir();
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, docs.join("\n---\n"))?;
        let mut opts = ProxyOptions::from_file(&config);
        opts.watch_interval = Some(Duration::from_millis(100));
        tweak(&mut opts);
        let handle = ringmesh_proxy::start(opts)?;
        Ok(TestProxy {
            handle: Some(handle),
            config,
            dir,
        })
    }

    fn h(&self) -> &ProxyHandle {
        self.handle.as_ref().expect("proxy running")
    }

    /// The HTTP listener's address.
    pub fn http(&self) -> SocketAddr {
        self.h().listener("http").expect("http listener")
    }

    /// A listener's address by name.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.h().listener(name).expect("listener")
    }

    /// Admin address.
    pub fn admin(&self) -> SocketAddr {
        self.h().admin_address
    }

    /// Health address.
    pub fn health(&self) -> SocketAddr {
        self.h().health_address
    }

    /// Metrics address.
    pub fn metrics(&self) -> SocketAddr {
        self.h().metrics_address
    }

    /// Rewrites the config file (the proxy polls it every 100 ms).
    pub fn rewrite(&self, docs: &[String]) {
        // Write then rename so the proxy never reads a half-written file.
        let tmp = self.dir.path().join("proxy.yaml.tmp");
        std::fs::write(&tmp, docs.join("\n---\n")).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Stops the proxy and waits for it.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
