//! README's topologies as real processes: `ringmesh-control`, `ringmesh-proxy` and
//! `ringmesh-echo` started as the README starts them, killed (and paused, and resumed) with
//! signals as a user or an orchestrator would.
//!
//! The programs are this package's `e2e-*` binaries, built from the real binaries' sources
//! (see `Cargo.toml`): [`programs!`](crate::programs) names them from an integration test, where
//! cargo sets `CARGO_BIN_EXE_*`. `RINGMESH_E2E_BIN_DIR=DIR` runs `DIR/ringmesh-control` etc.
//! instead, e.g. a release build. Every process writes its log to a file in the topology's
//! temporary folder, which a failing test prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::Client;

/// Where the three programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `ringmesh-control`.
    pub control: PathBuf,
    /// `ringmesh-proxy`.
    pub proxy: PathBuf,
    /// `ringmesh-echo`.
    pub echo: PathBuf,
}

impl Programs {
    /// This package's builds (`CARGO_BIN_EXE_*`), unless `RINGMESH_E2E_BIN_DIR` names a folder
    /// holding the real binaries.
    pub fn new(control: &str, proxy: &str, echo: &str) -> Programs {
        match std::env::var_os("RINGMESH_E2E_BIN_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                Programs {
                    control: dir.join("ringmesh-control"),
                    proxy: dir.join("ringmesh-proxy"),
                    echo: dir.join("ringmesh-echo"),
                }
            }
            None => Programs {
                control: control.into(),
                proxy: proxy.into(),
                echo: echo.into(),
            },
        }
    }
}

/// The programs of this package, for an integration test.
#[macro_export]
macro_rules! programs {
    () => {
        $crate::procs::Programs::new(
            env!("CARGO_BIN_EXE_e2e-ringmesh-control"),
            env!("CARGO_BIN_EXE_e2e-ringmesh-proxy"),
            env!("CARGO_BIN_EXE_e2e-ringmesh-echo"),
        )
    };
}

/// One running program; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Its name in messages.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args`, its output appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; it cannot be reused before we wait on it.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "{}: kill({sig}) failed", self.name);
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop (SIGTERM), as an orchestrator does; returns at once.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Pauses it (SIGSTOP): its sockets stay open, it answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Resumes it (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Whether it exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago: each call holds its socket until all asked for
/// are chosen, so one call never returns a port twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    held.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// The addresses of one proxy of the example.
#[derive(Debug, Clone, Copy)]
pub struct ProxyAddrs {
    /// Admin server (`/control_plane`, `/config_dump`, `/ready`).
    pub admin: SocketAddr,
    /// Health server (`/healthz/ready`).
    pub health: SocketAddr,
    /// The outbound listener.
    pub outbound: SocketAddr,
}

impl ProxyAddrs {
    /// `/control_plane` as JSON (`Null` when it does not answer).
    pub fn control_plane(&self) -> serde_json::Value {
        get_json(self.admin, "/control_plane")
    }

    /// The version of the config it runs (its own counter: it moves on every config applied).
    pub fn config_version(&self) -> u64 {
        get_json(self.admin, "/config_dump")["version"].as_u64().unwrap_or(0)
    }

    /// `/certs` as JSON (`Null` when it does not answer).
    pub fn certs(&self) -> serde_json::Value {
        get_json(self.admin, "/certs")
    }

    /// The status code of `/healthz/ready` (0 when it does not answer).
    pub fn ready_status(&self) -> u16 {
        try_get(self.health, "/healthz/ready").map_or(0, |r| r.0)
    }
}

fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut c = Client::on(stream);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nconnection: close\r\n\r\n").as_bytes());
    c.response().map(|r| (r.status, r.text()))
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    try_get(addr, path)
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

/// Which store the control plane serves from.
#[derive(Debug, Clone)]
pub enum Store {
    /// `--config-dir` (the example's `mesh/` folder).
    Directory,
    /// `--etcd URL --etcd-prefix PREFIX`; the example's resources are applied once at start.
    Etcd {
        /// etcd's client URL.
        url: String,
        /// A prefix of this test's own.
        prefix: String,
    },
}

/// README's "Under a control plane" topology (`deploy/examples/control-plane`), copied to a
/// temporary folder with every port replaced by a free one: a control plane, two echo apps,
/// the sidecars `reviews-v1` and `reviews-v2` announcing them, and the `client` sidecar.
#[derive(Debug)]
pub struct ExampleMesh {
    /// The control plane's gRPC address.
    pub control_addr: SocketAddr,
    programs: Programs,
    control_args: Vec<String>,
    control: Option<Proc>,
    /// The sidecars by name, with their addresses, in the README's start order.
    pub proxies: Vec<(String, Proc, ProxyAddrs)>,
    _apps: Vec<Proc>,
    /// The copy of the example (and every process's log); removed last, once every process
    /// above was killed.
    pub dir: tempfile::TempDir,
}

/// The example's ports: the control plane's, then each proxy's admin, health, metrics and
/// outbound ports, then the two apps'.
const EXAMPLE_PORTS: [u16; 15] = [
    15010, 25000, 25020, 25090, 25001, 26000, 26020, 26090, 26001, 27000, 27020, 27090, 27001, 18081, 18082,
];

/// The example's sidecars, in README's order.
pub const EXAMPLE_PROXIES: [&str; 3] = ["client", "reviews-v1", "reviews-v2"];

impl ExampleMesh {
    /// Copies the example, starts everything as README does, with `control_flags` added to
    /// the control plane's command line (e.g. `--grace 8s`).
    pub fn start(programs: Programs, store: Store, control_flags: &[&str]) -> ExampleMesh {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/control-plane");
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-example-")
            .tempdir()
            .expect("temp dir");
        let ports = free_ports(EXAMPLE_PORTS.len());
        let port = |example_port: u16| ports[EXAMPLE_PORTS.iter().position(|p| *p == example_port).expect("port")];
        let rewrite = |text: &str| {
            EXAMPLE_PORTS.iter().zip(&ports).fold(text.to_owned(), |t, (from, to)| {
                t.replace(&from.to_string(), &to.to_string())
            })
        };
        std::fs::create_dir(dir.path().join("mesh")).expect("mkdir");
        for name in ["mesh/reviews.yaml", "client.yaml", "reviews-v1.yaml", "reviews-v2.yaml"] {
            let text = std::fs::read_to_string(example.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", example.join(name).display()));
            std::fs::write(dir.path().join(name), rewrite(&text)).expect("write example");
        }
        let control_addr: SocketAddr = format!("127.0.0.1:{}", port(15010)).parse().expect("addr");
        // An ephemeral TLS port: tests running side by side cannot all have 15012.
        let mut control_args = vec![
            "--listen".to_owned(),
            control_addr.to_string(),
            "--listen-tls".into(),
            "127.0.0.1:0".into(),
        ];
        match &store {
            Store::Directory => {
                control_args.extend(["--config-dir".into(), dir.path().join("mesh").display().to_string()])
            }
            Store::Etcd { url, prefix } => {
                control_args.extend(["--etcd".into(), url.clone(), "--etcd-prefix".into(), prefix.clone()])
            }
        }
        control_args.extend(control_flags.iter().map(|s| s.to_string()));
        let logs = dir.path().to_owned();
        let log = |name: &str| logs.join(format!("{name}.log"));
        let mut mesh = ExampleMesh {
            control_addr,
            programs: programs.clone(),
            control_args,
            control: None,
            proxies: Vec::new(),
            _apps: Vec::new(),
            dir,
        };
        mesh.start_control();
        if let Store::Etcd { .. } = store {
            mesh.apply(&[mesh.dir.path().join("mesh/reviews.yaml")]);
        }
        for (instance, p) in [("v1", 18081), ("v2", 18082)] {
            let args = vec![
                "--listen".to_owned(),
                format!("127.0.0.1:{}", port(p)),
                "--instance".into(),
                instance.into(),
            ];
            mesh._apps.push(Proc::spawn(
                instance,
                &programs.echo,
                &args,
                &log(&format!("echo-{instance}")),
            ));
        }
        for (i, name) in EXAMPLE_PROXIES.iter().enumerate() {
            let base = [25000u16, 26000, 27000][i];
            let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{}", port(p)).parse().expect("addr") };
            let addrs = ProxyAddrs {
                admin: addr(base),
                health: addr(base + 20),
                outbound: addr(base + 1),
            };
            let args = vec![
                "--config".to_owned(),
                mesh.dir.path().join(format!("{name}.yaml")).display().to_string(),
            ];
            let p = Proc::spawn(name, &programs.proxy, &args, &log(name));
            mesh.proxies.push((name.to_string(), p, addrs));
        }
        mesh
    }

    /// Starts the control plane (again, after [`kill_control`](Self::kill_control)).
    pub fn start_control(&mut self) {
        assert!(self.control.is_none(), "the control plane is running");
        let log = self.dir.path().join("control.log");
        self.control = Some(Proc::spawn(
            "ringmesh-control",
            &self.programs.control,
            &self.control_args,
            &log,
        ));
    }

    /// `kill -9` the control plane.
    pub fn kill_control(&mut self) {
        if let Some(mut c) = self.control.take() {
            c.kill();
        }
    }

    /// Whether the control plane is still running (`Err` with its log when it exited).
    pub fn control_running(&mut self) -> Result<(), String> {
        match self.control.as_mut().map(|c| (c.exited(), c.log())) {
            Some((Some(status), log)) => Err(format!("ringmesh-control exited ({status}):\n{log}")),
            _ => Ok(()),
        }
    }

    /// `ringmesh apply -f FILES` through the management API (as the CLI does), retried until
    /// the control plane answers (bounded).
    pub fn apply(&self, files: &[PathBuf]) {
        use ringmesh_api::proto::admin_client::AdminClient;
        use ringmesh_api::proto::{ApplyRequest, Document};
        let docs: Vec<Document> = files
            .iter()
            .map(|f| Document {
                source: f.display().to_string(),
                yaml: std::fs::read_to_string(f).expect("read resources"),
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = format!("http://{}", self.control_addr);
        let mut last = String::new();
        for _ in 0..300 {
            let result = rt.block_on(async {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut c = AdminClient::new(channel);
                c.apply(ApplyRequest {
                    files: docs.clone(),
                    dry_run: false,
                })
                .await
                .map_err(|e| e.to_string())
            });
            match result {
                Ok(r) if r.get_ref().applied => return,
                Ok(r) => panic!("apply refused: {:?}", r.get_ref()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the control plane did not take the resources: {last}");
    }

    /// The addresses of the proxy called `name`.
    pub fn proxy(&self, name: &str) -> ProxyAddrs {
        self.proxies
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.2)
            .expect("a proxy of the example")
    }

    /// The process of the proxy called `name`.
    pub fn proxy_proc(&self, name: &str) -> &Proc {
        self.proxies
            .iter()
            .find(|p| p.0 == name)
            .map(|p| &p.1)
            .expect("a proxy of the example")
    }

    /// Every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("==> {} (last {} lines)\n", p.display(), tail.len()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A throwaway etcd (`/usr/bin/etcd`, Debian's `etcd-server`, which CI installs) on free
/// loopback ports; killed, and its data removed, when dropped. A test that needs it fails when
/// it is missing rather than passing without having run.
#[derive(Debug)]
pub struct Etcd {
    /// Its client URL.
    pub url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits (up to 60 s: its first fsyncs are slow on a busy disk) until it
    /// answers `/health`.
    pub fn start() -> Etcd {
        let bin = Path::new("/usr/bin/etcd");
        assert!(
            bin.exists(),
            "this test needs etcd: /usr/bin/etcd is not installed (apt-get install etcd-server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-etcd-")
            .tempdir()
            .expect("temp dir");
        let ports = free_ports(2);
        let client: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().expect("addr");
        let url = format!("http://{client}");
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let args: Vec<String> = [
            "--name",
            "t",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("t={peer}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Proc::spawn("etcd", bin, &args, &dir.path().join("etcd.log"));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while try_get(client, "/health").is_none_or(|(status, _)| status != 200) {
            if let Some(status) = proc.exited() {
                panic!("etcd exited ({status}):\n{}", proc.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not answer within 60 s:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Etcd {
            url,
            _proc: proc,
            _dir: dir,
        }
    }
}
