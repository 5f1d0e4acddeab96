//! Helpers shared by the control plane's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use ringmesh_control::server::ControlPlane;
use tokio_stream::wrappers::TcpListenerStream;

/// An empty directory for one test (named by the test binary's `prefix` and `name`, plus a
/// random suffix). The directory is removed when the returned guard drops, so the caller keeps
/// it for the whole test (a panicking test unwinds through the drop and cleans up too).
pub fn temp_dir(prefix: &str, name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ringmesh-{prefix}-{name}-"))
        .tempdir()
        .unwrap()
}

/// Whether `f` holds within 5 s (checked every 20 ms).
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Serves `cp`'s Discovery service on an ephemeral loopback port.
pub async fn serve_discovery(cp: &ControlPlane) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = cp.service();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    addr
}
