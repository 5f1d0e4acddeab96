//! Workload certificates end to end, as real processes on loopback: `ringmesh-control` with its
//! CA and TLS port, proxies that prove their identity with a bootstrap token made by
//! `ringmesh token create`, certificates rotated at half their life, refused for a token of
//! another identity, a proxy that does not trust the control plane's certificate, a control
//! plane that dies (proxies keep their certificates) and comes back on the same directory with
//! the same root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::procs::{free_ports, Proc, ProxyAddrs};

/// The CLI (`ringmesh ARGS`) against the control plane at `addr`: exit code, stdout, stderr.
fn cli(addr: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cp = addr.to_string();
    let mut all = vec!["ringmesh", "--control-plane", cp.as_str(), "--timeout", "2s"];
    all.extend_from_slice(args);
    let code = ringmesh_control::cli::run_with(all, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

struct Control {
    plain: SocketAddr,
    tls: SocketAddr,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Control {
    fn start(dir: &Path, plain: SocketAddr, tls: SocketAddr) -> Control {
        let programs = ringmesh_tests::programs!();
        let args: Vec<String> = [
            "--config-dir",
            &dir.join("mesh").display().to_string(),
            "--listen",
            &plain.to_string(),
            "--listen-tls",
            &tls.to_string(),
            "--cert-lifetime",
            "60s",
            "--max-cert-lifetime",
            "120s",
            "--grace",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn("ringmesh-control", &programs.control, &args, &dir.join("control.log"));
        let c = Control {
            plain,
            tls,
            dir: dir.to_owned(),
            proc: Some(proc),
        };
        eventually(Duration::from_secs(20), "the control plane's TLS port", || {
            std::net::TcpStream::connect(c.tls).is_ok() && std::net::TcpStream::connect(c.plain).is_ok()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
        c
    }

    fn root_file(&self) -> PathBuf {
        self.dir.join("mesh/ca/root-cert.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// Starts a proxy for workload `namespace/service_account` with `credential` (written to a
/// file), talking TLS to `control` and trusting `ca_file`.
fn proxy(
    dir: &Path,
    name: &str,
    control: &Control,
    workload: (&str, &str),
    credential: &str,
    ca_file: &Path,
) -> (Proc, ProxyAddrs) {
    let ports = free_ports(4);
    let token = dir.join(format!("{name}.token"));
    std::fs::write(&token, credential).unwrap();
    let config = format!(
        "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata:\n  name: {name}\nspec:\n  workers: 1\n  \
         adminAddress: 127.0.0.1:{}\n  healthAddress: 127.0.0.1:{}\n  metricsAddress: 127.0.0.1:{}\n  listeners:\n  \
         - {{name: outbound, address: \"127.0.0.1:{}\", protocol: HTTP}}\n  controlPlane:\n    address: \"{}\"\n    \
         nodeId: {name}\n    credentialFile: {}\n    tls:\n      caCertFile: {}\n  workload:\n    name: {name}\n    \
         namespace: {}\n    serviceAccount: {}\n  identity:\n    certLifetime: 60s\n",
        ports[0],
        ports[1],
        ports[2],
        ports[3],
        control.tls,
        token.display(),
        ca_file.display(),
        workload.0,
        workload.1,
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let programs = ringmesh_tests::programs!();
    let args = vec!["--config".to_owned(), path.display().to_string()];
    let p = Proc::spawn(name, &programs.proxy, &args, &dir.join(format!("{name}.log")));
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    (
        p,
        ProxyAddrs {
            admin: addr(ports[0]),
            health: addr(ports[1]),
            outbound: addr(ports[3]),
        },
    )
}

fn token(control: &Control, namespace: &str, service_account: &str) -> String {
    let mut last = String::new();
    let mut token = String::new();
    let made = eventually(Duration::from_secs(20), "ringmesh token create", || {
        let (code, out, err) = cli(
            control.plain,
            &[
                "token",
                "create",
                "-n",
                namespace,
                "--service-account",
                service_account,
                "--ttl",
                "1h",
            ],
        );
        last = err;
        token = out.trim().to_owned();
        code == 0
    });
    made.unwrap_or_else(|e| panic!("{e}: {last}"));
    assert!(token.starts_with("rmt1."), "{token}");
    assert!(last.contains("spiffe://cluster.local/ns/"), "{last}");
    token
}

#[test]
fn certificates_are_issued_rotated_refused_and_kept() {
    let tmp = tempfile::Builder::new().prefix("ringmesh-identity-").tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("mesh")).unwrap();
    let ports = free_ports(2);
    let plain: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let tls: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let mut control = Control::start(dir, plain, tls);
    let root = std::fs::read_to_string(control.root_file()).expect("the root is written in DIR/ca/");
    let (code, bundle, err) = cli(plain, &["ca", "root"]);
    assert_eq!((code, bundle.as_str()), (0, root.as_str()), "{err}");

    let good = token(&control, "shop", "reviews");
    let (_a, a) = proxy(
        dir,
        "reviews",
        &control,
        ("shop", "reviews"),
        &good,
        &control.root_file(),
    );
    // A token for shop/reviews, used by a proxy announcing shop/ratings.
    let (_b, b) = proxy(
        dir,
        "ratings",
        &control,
        ("shop", "ratings"),
        &good,
        &control.root_file(),
    );
    // A proxy that trusts another root than the control plane's.
    let other_root = dir.join("other-root.pem");
    std::fs::write(
        &other_root,
        ringmesh_control::ca::generate_root("elsewhere").unwrap().cert_pem,
    )
    .unwrap();
    let (_c, c) = proxy(dir, "stranger", &control, ("shop", "reviews"), &good, &other_root);

    let logs = || {
        let mut s = String::new();
        for n in ["control", "reviews", "ratings", "stranger"] {
            let text = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
            s.push_str(&format!("\n==> {n}\n{text}"));
        }
        s
    };
    let mut first = serde_json::Value::Null;
    eventually(Duration::from_secs(30), "a certificate for shop/reviews", || {
        first = a.certs();
        first["identity"] == "spiffe://cluster.local/ns/shop/sa/reviews"
    })
    .unwrap_or_else(|e| panic!("{e}: {first}\n{}", logs()));
    let serial = first["serial"].as_str().unwrap().to_owned();
    assert!(first["seconds_left"].as_u64().unwrap() <= 60, "{first}");
    assert_eq!(first["chain"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(
        first["roots"][0]["subject"], "CN=ringmesh root CA cluster.local, O=ringmesh",
        "{first}"
    );

    let mut refused = serde_json::Value::Null;
    eventually(
        Duration::from_secs(20),
        "the other workload's proxy told why it has no certificate",
        || {
            refused = b.certs();
            refused["reason"].as_str().is_some_and(|r| {
                r.contains("proves spiffe://cluster.local/ns/shop/sa/reviews") && r.contains("shop/ratings")
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {refused}\n{}", logs()));
    assert!(refused["identity"].is_null(), "{refused}");
    assert!(
        control.log().contains("no certificates"),
        "the control plane logs the mismatch:\n{}",
        control.log()
    );

    let mut cp = serde_json::Value::Null;
    eventually(
        Duration::from_secs(20),
        "the stranger's TLS failure in /control_plane",
        || {
            cp = c.control_plane();
            cp["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("certificate") && e.contains("UnknownIssuer"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {cp}\n{}", logs()));
    assert!(c.certs()["identity"].is_null());

    // Renewed at half of its 60 s (less up to a tenth): a new serial within a bounded wait.
    let mut now = serde_json::Value::Null;
    eventually(Duration::from_secs(60), "the certificate rotated", || {
        now = a.certs();
        now["serial"].as_str().is_some_and(|s| s != serial)
    })
    .unwrap_or_else(|e| panic!("{e}: {now}\n{}", logs()));
    assert_eq!(now["identity"], "spiffe://cluster.local/ns/shop/sa/reviews");
    let rotated = now["serial"].as_str().unwrap().to_owned();

    // The control plane dies: the proxy keeps its certificate.
    control.kill();
    eventually(
        Duration::from_secs(20),
        "the proxy noticed the control plane is gone",
        || a.control_plane()["state"] != "connected",
    )
    .unwrap();
    let kept = a.certs();
    assert_eq!(kept["serial"], rotated.as_str(), "{kept}");
    assert_eq!(kept["identity"], "spiffe://cluster.local/ns/shop/sa/reviews");

    // Back on the same directory: the same root, so certificates already out stay trusted.
    let control = Control::start(dir, plain, tls);
    let (code, again, err) = cli(plain, &["ca", "root"]);
    assert_eq!(
        (code, again.as_str()),
        (0, root.as_str()),
        "the root changed across a restart: {err}"
    );
    eventually(Duration::from_secs(30), "the proxy reconnected over TLS", || {
        a.control_plane()["state"] == "connected"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    drop(control);
}
