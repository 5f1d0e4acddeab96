//! The `ringmesh` command line. `analyze` works offline; `apply`, `get`, `delete`,
//! `proxy-status` and `proxy-config` talk to a running `ringmesh-control` over its management
//! API (`admin.proto`), at `--control-plane` (default [`DEFAULT_CONTROL_PLANE`]). `iptables`
//! sets up a sidecar's traffic capture on this machine ([`crate::capture`]); `inject` adds the
//! sidecar to Kubernetes manifests offline ([`crate::inject`]). `explain` asks one proxy's
//! admin port (`--admin`) what it would do with a request (`explain.rs`).
//!
//! Output follows kubectl and istioctl where users have habits (`virtualservice/reviews
//! configured`, `get -o yaml`, the proxy-status table). Every failure is one line naming what
//! failed (for an unreachable control plane: its address; for a control plane that cannot
//! reach etcd: etcd's) and exit code 1; usage errors exit 2.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ringmesh_api::proto::admin_client::AdminClient;
use ringmesh_api::proto::{
    ApplyRequest, CreateTokenRequest, DeleteRequest, Document, GetRequest, Outcome, ProxyConfigRequest,
    ProxyStatusEntry, ProxyStatusRequest, ResourceRef, Snapshot, StoredResource, SyncState, TrustBundleRequest,
};
use serde_json::{json, Value as Json};
use tonic::transport::Channel;

use crate::admin::{canonical_kind, from_wire_diagnostic, STORE_UNAVAILABLE};
use crate::store::ResourceKey;

mod explain;

/// Where the control plane listens unless told otherwise (Istio's plaintext port).
pub const DEFAULT_CONTROL_PLANE: &str = "127.0.0.1:15010";

/// ringmesh: manage and check mesh configuration.
#[derive(Debug, Parser)]
#[command(name = "ringmesh", version)]
pub struct Cli {
    /// Control plane gRPC address, `HOST:PORT` or `http://HOST:PORT` (used by every subcommand
    /// except analyze).
    #[arg(long, global = true, env = "RINGMESH_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,
    /// Limit for connecting to the control plane and for each call.
    #[arg(long, global = true, env = "RINGMESH_TIMEOUT", default_value = "10s", value_parser = ringmesh_api::duration::parse_duration)]
    pub timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate config files or directories offline with the proxy's own compiler.
    Analyze {
        /// Files or directories (every *.yaml / *.yml inside, subdirectories included, hidden
        /// entries skipped, sorted). Several ProxyConfig files: each is checked as its own
        /// proxy, with the files without one when it subscribes to a control plane.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Treat warnings (unsupported fields or kinds) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Create or update resources on the control plane. The control plane compiles what it
    /// holds plus these; if that fails nothing changes and every error is printed.
    Apply {
        /// Files or directories (every *.yaml / *.yml inside, sorted, not recursive); `-` reads
        /// standard input. Multi-document YAML is fine.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Check and report what would change without storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Return only when every connected proxy has acknowledged the config this apply made
        /// (exit 1 naming each proxy that refused it, or that has not answered within
        /// `--timeout`), so that the next command sees the change in force.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
    },
    /// Show stored resources (all namespaces unless -n).
    Get {
        /// Kind: VirtualService, DestinationRule, ServiceEntry, ProxyConfig, ... in any case,
        /// plural, or short (vs, dr, se); `all` for every kind.
        kind: String,
        /// Only this name.
        name: Option<String>,
        /// Only this namespace (default: every namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format; yaml and json include a `status` with each proxy that NACKed.
        #[arg(short = 'o', long, value_enum, default_value_t = GetOutput::Table)]
        output: GetOutput,
    },
    /// Delete applied resources (resources from hand-written files in the control plane's
    /// directory are refused, naming the file).
    Delete {
        /// Kind, as for get.
        kind: Option<String>,
        /// Name.
        name: Option<String>,
        /// Namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Delete every resource defined in these files or directories instead.
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
        files: Vec<PathBuf>,
        /// Succeed when a resource does not exist.
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// Every proxy's sync state: SYNCED, STALE, NACKED (with its error) or DISCONNECTED.
    ProxyStatus {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = StatusOutput::Table)]
        output: StatusOutput,
    },
    /// What the control plane last sent one proxy, and what that proxy acknowledged.
    ProxyConfig {
        /// The proxy's node id, as proxy-status lists it.
        proxy: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = DataOutput::Yaml)]
        output: DataOutput,
    },
    /// Bootstrap tokens: how a proxy outside Kubernetes proves its identity to the CA.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The mesh CA.
    Ca {
        /// What to do.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Transparent capture for a sidecar (istio-iptables' flags): outbound TCP to the proxy's
    /// outbound port, inbound TCP to its inbound port, with `iptables-restore --noflush` (one
    /// transaction per family). Needs root (CAP_NET_ADMIN) except with --dry-run.
    Iptables(Box<IptablesArgs>),
    /// Add ringmesh's sidecar to the pod templates of Kubernetes manifests (as `istioctl
    /// kube-inject`): Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs;
    /// other kinds and pods opted out (`sidecar.istio.io/inject: "false"`) pass through.
    Inject(Box<InjectArgs>),
    /// What a proxy would do with one request: the route that matches, the cluster and the
    /// endpoints it would choose from, the authorization decision and the policy that made it,
    /// the mTLS mode and the proxy's certificate. Asked of the proxy's admin port.
    Explain(Box<ExplainArgs>),
}

/// `ringmesh explain` flags: curl's where curl has one.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The proxy's admin address (`spec.adminAddress`).
    #[arg(long, env = "RINGMESH_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: String,
    /// Request method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
    /// `Host` (`:authority`) of the request.
    #[arg(long)]
    pub host: Option<String>,
    /// Request target: the path, with its `?query`.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header, `name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The client's identity (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`): it connects over
    /// mutual TLS. Without it the client is plaintext.
    #[arg(long)]
    pub source: Option<String>,
    /// The client's IP address (default 127.0.0.1).
    #[arg(long)]
    pub source_ip: Option<String>,
    /// The listener the request arrives on (default: the first outbound HTTP listener).
    #[arg(long)]
    pub listener: Option<String>,
    /// `IP:PORT` the client dialled: a capture listener's original destination, or an inbound
    /// listener's port.
    #[arg(long)]
    pub destination: Option<String>,
    /// Output format: a short report, or the proxy's JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `ringmesh inject` flags.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest to read (multi-document YAML), `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub filename: PathBuf,
    /// Where to write the result (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Namespace of objects that name none (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The sidecar's image.
    #[arg(long, env = "RINGMESH_PROXY_IMAGE", default_value = crate::inject::settings::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The capture init container's image (`ringmesh` CLI and iptables).
    #[arg(long, env = "RINGMESH_INIT_IMAGE", default_value = crate::inject::settings::DEFAULT_INIT_IMAGE)]
    pub init_image: String,
    /// The control plane's TLS port as proxies reach it.
    #[arg(long, env = "RINGMESH_DISCOVERY_ADDRESS", default_value = crate::inject::settings::DEFAULT_DISCOVERY_ADDRESS)]
    pub discovery_address: String,
    /// The mesh's trust domain (ringmesh-control --trust-domain).
    #[arg(long, env = "RINGMESH_TRUST_DOMAIN", default_value = crate::ca::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The ConfigMap in the pod's namespace that holds the mesh root as `root-cert.pem`.
    #[arg(long, default_value = crate::inject::settings::DEFAULT_CA_ROOT_CONFIG_MAP)]
    pub ca_root_configmap: String,
    /// Audience of the service-account token the proxy presents (default: the API server's,
    /// which the control plane's TokenReview accepts).
    #[arg(long)]
    pub token_audience: Option<String>,
    /// The sidecar's worker threads (default: one per core its CPU limit allows); a pod's
    /// `proxy.istio.io/config` `concurrency` wins.
    #[arg(long, env = "RINGMESH_PROXY_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub proxy_workers: Option<u32>,
}

impl InjectArgs {
    /// The injector settings these flags make.
    pub fn settings(&self) -> crate::inject::InjectSettings {
        crate::inject::InjectSettings {
            proxy_image: self.proxy_image.clone(),
            init_image: self.init_image.clone(),
            discovery_address: self.discovery_address.clone(),
            trust_domain: self.trust_domain.clone(),
            ca_root_config_map: self.ca_root_configmap.clone(),
            token_audience: self.token_audience.clone(),
            proxy_workers: self.proxy_workers,
            ..Default::default()
        }
    }
}

/// `ringmesh iptables` flags: istio-iptables' names and defaults. Lists are comma-separated.
#[derive(Debug, clap::Args)]
pub struct IptablesArgs {
    /// Port outbound TCP is redirected to.
    #[arg(short = 'p', long, default_value_t = 15001, value_parser = clap::value_parser!(u16).range(1..))]
    pub envoy_port: u16,
    /// Port inbound TCP is redirected to.
    #[arg(short = 'z', long, default_value_t = 15006, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_capture_port: u16,
    /// The proxy's user: its traffic is never captured.
    #[arg(short = 'u', long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's group: its traffic is never captured (default: the --proxy-uid value).
    #[arg(short = 'g', long)]
    pub proxy_gid: Option<u32>,
    /// Outbound destinations captured: CIDRs (IPv4 and IPv6 mixed), `*` for all, empty for none.
    #[arg(short = 'i', long, default_value = "*")]
    pub outbound_ip_ranges_include: String,
    /// Outbound destinations never captured (CIDRs).
    #[arg(short = 'x', long, default_value = "")]
    pub outbound_ip_ranges_exclude: String,
    /// Inbound ports captured: `*` for all (less the proxy's own and --inbound-ports-exclude),
    /// empty for none.
    #[arg(short = 'b', long, default_value = "*")]
    pub inbound_ports_include: String,
    /// Inbound ports never captured.
    #[arg(short = 'd', long, default_value = "")]
    pub inbound_ports_exclude: String,
    /// Outbound ports captured whatever the destination address.
    #[arg(short = 'q', long, default_value = "")]
    pub outbound_ports_include: String,
    /// Outbound ports never captured.
    #[arg(short = 'o', long, default_value = "")]
    pub outbound_ports_exclude: String,
    /// Interfaces of VMs (KubeVirt) whose traffic is treated as outbound.
    #[arg(short = 'c', long, default_value = "")]
    pub kube_virt_interfaces: String,
    /// Print the `iptables-restore` input for each family instead of applying it (no root
    /// needed). With --cleanup, print what cleaning up a table holding the defaults runs.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove our jumps and chains, and nothing else (nothing of ours: nothing to do).
    #[arg(long)]
    pub cleanup: bool,
    /// IPv6 rules too: `auto` when ip6tables-restore is installed and the kernel has IPv6.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub ipv6: Toggle,
    /// Which iptables: `auto` is the one already holding rules, else nft.
    #[arg(long, value_enum, default_value_t = IptablesBackend::Auto)]
    pub iptables_backend: IptablesBackend,
}

/// On, off, or decided by what is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// Decide from the machine.
    Auto,
    /// Yes.
    On,
    /// No.
    Off,
}

/// `--iptables-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IptablesBackend {
    /// Whichever holds rules already, else nft.
    Auto,
    /// iptables-nft-restore.
    Nft,
    /// iptables-legacy-restore.
    Legacy,
}

/// `ringmesh token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token proving NAMESPACE/SERVICE-ACCOUNT until it expires; give it to the proxy
    /// as `controlPlane.credentialFile` or `RINGMESH_CREDENTIAL`. Only a caller on the control
    /// plane's machine gets one. A token cannot be revoked: only its expiry, or a new CA key,
    /// ends it.
    Create {
        /// The workload's namespace.
        #[arg(short = 'n', long)]
        namespace: String,
        /// The workload's service account.
        #[arg(long)]
        service_account: String,
        /// How long the token is valid.
        #[arg(long, default_value = "8760h", value_parser = ringmesh_api::duration::parse_duration)]
        ttl: Duration,
    },
}

/// `ringmesh ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the trust bundle (PEM): what proxies use as `controlPlane.tls.caCertFile`.
    Root,
}

/// Output formats of analyze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One diagnostic a line, then a summary.
    Text,
    /// A JSON document.
    Json,
}

/// Output formats of get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetOutput {
    /// One line per resource.
    Table,
    /// The documents as stored, with a status block.
    Yaml,
    /// The same as JSON.
    Json,
}

/// Output formats of proxy-status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusOutput {
    /// One line per proxy, then each NACK's error.
    Table,
    /// A JSON document.
    Json,
}

/// Output formats of proxy-config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataOutput {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Why a command failed; each renders as the one line the user sees.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection to the control plane.
    #[error("cannot reach the control plane at {addr}: {reason} (set --control-plane or RINGMESH_CONTROL_PLANE)")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// The control plane answered, but cannot reach its store (etcd); `reason` names it with
    /// its address.
    #[error("the control plane at {addr} cannot reach its store: {reason}")]
    StoreUnreachable {
        /// The control plane's address.
        addr: String,
        /// What the control plane said, e.g. `etcd at http://10.0.0.5:2379 is unreachable: …`.
        reason: String,
    },
    /// No answer from a proxy's admin port.
    #[error("cannot reach the proxy's admin port at {addr}: {reason} (set --admin or RINGMESH_ADMIN)")]
    AdminUnreachable {
        /// The address tried.
        addr: String,
        /// What happened, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// The address does not parse.
    #[error("--control-plane {addr}: not an address: {reason}")]
    BadAddress {
        /// As given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The control plane answered with an error.
    #[error("{0}")]
    Server(String),
    /// An input file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Something else the user must fix (the message says what).
    #[error("{0}")]
    Usage(String),
    /// Several failures already printed (exit code 1 without another line).
    #[error("{0}")]
    Reported(String),
    /// `apply --wait`: stored, but a proxy refused it or did not acknowledge it in time.
    #[error("{0}")]
    NotInForce(String),
}

/// Runs the CLI with `args` (including the program name), printing to stdout and stderr, and
/// returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_with(args, &mut stdout.lock(), &mut stderr.lock())
}

/// `ringmesh iptables`: see [`crate::capture`].
fn run_iptables(args: &IptablesArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    use crate::capture::{self, Backend, CaptureConfig, Family, ListFlags};
    let lists = ListFlags {
        outbound_ip_ranges_include: args.outbound_ip_ranges_include.clone(),
        outbound_ip_ranges_exclude: args.outbound_ip_ranges_exclude.clone(),
        inbound_ports_include: args.inbound_ports_include.clone(),
        inbound_ports_exclude: args.inbound_ports_exclude.clone(),
        outbound_ports_include: args.outbound_ports_include.clone(),
        outbound_ports_exclude: args.outbound_ports_exclude.clone(),
        kube_virt_interfaces: args.kube_virt_interfaces.clone(),
    };
    let config = match CaptureConfig::from_flags(
        args.envoy_port,
        args.inbound_capture_port,
        args.proxy_uid,
        args.proxy_gid,
        &lists,
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "ringmesh iptables: {e}");
            return 2;
        }
    };
    let backend = match args.iptables_backend {
        IptablesBackend::Nft => Backend::Nft,
        IptablesBackend::Legacy => Backend::Legacy,
        // A dry run runs nothing: it names nft's tools unless only legacy is installed.
        IptablesBackend::Auto if args.dry_run => {
            if capture::find_program(&Backend::Legacy.tools(Family::V4).0).is_some()
                && capture::find_program(&Backend::Nft.tools(Family::V4).0).is_none()
            {
                Backend::Legacy
            } else {
                Backend::Nft
            }
        }
        IptablesBackend::Auto => capture::detect_backend(),
    };
    let ipv6 = match args.ipv6 {
        Toggle::On => true,
        Toggle::Off => false,
        // A kernel booted with ipv6.disable=1 has no IPv6 nat table to write to.
        Toggle::Auto => {
            Path::new("/proc/net/if_inet6").exists()
                && (capture::find_program(&backend.tools(Family::V6).0).is_some()
                    || capture::find_program("ip6tables-restore").is_some())
        }
    };
    let families: &[Family] = if ipv6 { &[Family::V4, Family::V6] } else { &[Family::V4] };
    for &family in families {
        let restore = backend.tools(family).0;
        if args.dry_run {
            // Apply: what a table without our rules gets. Cleanup: what a table holding the
            // default rules needs.
            let script = if args.cleanup {
                let current = CaptureConfig::default().apply_script(family, "");
                capture::cleanup_script(&current).unwrap_or_default()
            } else {
                config.apply_script(family, "")
            };
            let _ = write!(out, "# {} ({restore} --noflush)\n{script}", family.name());
            continue;
        }
        let result = capture::save_nat(backend, family).and_then(|current| {
            let script = if args.cleanup {
                capture::cleanup_script(&current)
            } else {
                Some(config.apply_script(family, &current))
            };
            match script {
                Some(s) => capture::restore(backend, family, &s).map(|()| true),
                None => Ok(false),
            }
        });
        match result {
            Ok(changed) => {
                let what = match (args.cleanup, changed) {
                    (false, _) => "rules applied",
                    (true, true) => "rules removed",
                    (true, false) => "no rules of ours, nothing to remove",
                };
                let _ = writeln!(err, "ringmesh iptables: {}: {what} ({restore})", family.name());
            }
            Err(e) => {
                let _ = writeln!(err, "ringmesh iptables: {}: {e}", family.name());
                return 1;
            }
        }
    }
    0
}

/// `ringmesh inject`: see [`crate::inject::manifest`]. Each pod template left alone is named
/// on stderr with the reason.
fn run_inject(args: &InjectArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let (source, text) = if args.filename == Path::new("-") {
        let mut text = String::new();
        match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => ("<stdin>".to_string(), text),
            Err(e) => {
                let _ = writeln!(err, "ringmesh inject: <stdin>: {e}");
                return 1;
            }
        }
    } else {
        match std::fs::read_to_string(&args.filename) {
            Ok(t) => (args.filename.display().to_string(), t),
            Err(e) => {
                let _ = writeln!(err, "ringmesh inject: {}: {e}", args.filename.display());
                return 1;
            }
        }
    };
    let (yaml, outcomes) =
        match crate::inject::manifest::inject_yaml(&text, &args.settings(), args.namespace.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                let _ = writeln!(err, "ringmesh inject: {source}: {e}");
                return 1;
            }
        };
    for o in &outcomes {
        if let crate::inject::policy::Decision::Skip(reason) = &o.decision {
            let _ = writeln!(err, "ringmesh inject: {}: not injected: {reason}", o.object);
        }
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, yaml).map_err(|e| format!("{}: {e}", path.display())),
        None => out.write_all(yaml.as_bytes()).map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "ringmesh inject: {e}");
            1
        }
    }
}

/// [`run`] with the output going to `out` and errors to `err` (for tests and embedding). Must
/// not be called from inside a tokio runtime: it starts its own for the network commands.
pub fn run_with<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            // Plain text: the writers may be pipes or buffers, where escape codes are noise.
            let text = e.render();
            let _ = if e.use_stderr() {
                write!(err, "{text}")
            } else {
                write!(out, "{text}")
            };
            return code;
        }
    };
    if let Command::Iptables(args) = &cli.command {
        return run_iptables(args, out, err);
    }
    if let Command::Inject(args) = &cli.command {
        return run_inject(args, out, err);
    }
    if let Command::Analyze { paths, output, strict } = &cli.command {
        let report = crate::analyze::analyze(paths);
        let _ = match output {
            Output::Text => write!(err, "{}", report.files_line()).and_then(|()| write!(out, "{}", report.text())),
            Output::Json => writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&report.json()).unwrap_or_default()
            ),
        };
        return report.exit_code(*strict);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(remote(&cli, out, err)) {
        Ok(()) => 0,
        Err(CliError::Reported(_)) => 1,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}

/// The address as a URL tonic accepts (`http://` added when there is no scheme).
fn endpoint_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// The innermost cause of an error, which is the one that says what happened
/// (`Connection refused`), where the outer ones say only `transport error`.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn connect(cli: &Cli) -> Result<AdminClient<Channel>, CliError> {
    let addr = cli.control_plane.clone();
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint_url(&addr)).map_err(|e| CliError::BadAddress {
        addr: addr.clone(),
        reason: root_cause(&e),
    })?;
    let channel = endpoint
        .connect_timeout(cli.timeout)
        .timeout(cli.timeout)
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            addr: addr.clone(),
            reason: root_cause(&e),
        })?;
    Ok(AdminClient::new(channel))
}

/// A call's failure, as the user should read it.
fn call_error(cli: &Cli, status: tonic::Status) -> CliError {
    match status.code() {
        tonic::Code::Unavailable if status.metadata().contains_key(STORE_UNAVAILABLE) => CliError::StoreUnreachable {
            addr: cli.control_plane.clone(),
            reason: status.message().to_owned(),
        },
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => CliError::Unreachable {
            addr: cli.control_plane.clone(),
            reason: status.message().to_owned(),
        },
        tonic::Code::Unimplemented => CliError::Server(format!(
            "{} does not serve the management API (is it an older ringmesh-control?)",
            cli.control_plane
        )),
        _ => CliError::Server(status.message().to_owned()),
    }
}

async fn remote(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Analyze { .. } | Command::Iptables(_) | Command::Inject(_) => Ok(()),
        Command::Explain(args) => explain::run(args, cli.timeout, out).await,
        Command::Apply { files, dry_run, wait } => {
            let inputs = read_inputs(files)?;
            let mut client = connect(cli).await?;
            let generation = apply(cli, &mut client, inputs, *dry_run, out, err).await?;
            if *wait {
                wait_for_acks(cli, &mut client, generation, out).await?;
            }
            Ok(())
        }
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            canonical_kind(kind).map_err(|e| CliError::Usage(e.to_string()))?;
            let mut client = connect(cli).await?;
            let req = GetRequest {
                kind: kind.clone(),
                name: name.clone().unwrap_or_default(),
                namespace: namespace.clone().unwrap_or_default(),
            };
            let resp = client.get(req).await.map_err(|s| call_error(cli, s))?.into_inner();
            print_get(kind, name.as_deref(), &resp.resources, *output, out, err)
        }
        Command::Delete {
            kind,
            name,
            namespace,
            files,
            ignore_not_found,
        } => {
            let keys = delete_targets(kind.as_deref(), name.as_deref(), namespace, files)?;
            let mut client = connect(cli).await?;
            let mut failed = 0;
            for key in keys {
                let req = DeleteRequest {
                    kind: key.kind.clone(),
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                };
                match client.delete(req).await {
                    Ok(r) if r.get_ref().deleted => {
                        let _ = writeln!(out, "{} deleted", short_label(&key.kind, &key.name));
                    }
                    Ok(_) if *ignore_not_found => {}
                    Ok(_) => {
                        failed += 1;
                        let _ = writeln!(err, "error: {key} not found");
                    }
                    Err(s) => {
                        let e = call_error(cli, s);
                        if matches!(e, CliError::Unreachable { .. }) {
                            return Err(e);
                        }
                        failed += 1;
                        let _ = writeln!(err, "error: {e}");
                    }
                }
            }
            if failed > 0 {
                return Err(CliError::Reported(format!("{failed} failed")));
            }
            Ok(())
        }
        Command::ProxyStatus { output } => {
            let mut client = connect(cli).await?;
            let resp = client
                .proxy_status(ProxyStatusRequest {})
                .await
                .map_err(|s| call_error(cli, s))?
                .into_inner();
            match output {
                StatusOutput::Table => {
                    if resp.registry_warming_ms > 0 {
                        let _ = writeln!(
                            out,
                            "The control plane started recently: its registry is warming for {} s more, and \
                             proxies keep endpoints not announced again until then.\n",
                            resp.registry_warming_ms.div_ceil(1000)
                        );
                    }
                    print_proxy_status(&resp.proxies, out, err)
                }
                StatusOutput::Json => {
                    let v = json!({
                        "generation": resp.generation,
                        "registryWarmingMs": resp.registry_warming_ms,
                        "proxies": resp.proxies.iter().map(status_json).collect::<Vec<_>>(),
                    });
                    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
            }
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    namespace,
                    service_account,
                    ttl,
                },
        } => {
            let mut client = connect(cli).await?;
            let resp = client
                .create_token(CreateTokenRequest {
                    namespace: namespace.clone(),
                    service_account: service_account.clone(),
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await
                .map_err(|s| call_error(cli, s))?
                .into_inner();
            let _ = writeln!(out, "{}", resp.token);
            let expires = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(resp.expires_unix);
            let _ = writeln!(
                err,
                "token for {} (expires {})",
                resp.spiffe_id,
                ringmesh_api::duration::rfc3339(expires)
            );
            Ok(())
        }
        Command::Ca {
            command: CaCommand::Root,
        } => {
            let mut client = connect(cli).await?;
            let resp = client
                .trust_bundle(TrustBundleRequest {})
                .await
                .map_err(|s| call_error(cli, s))?
                .into_inner();
            let _ = write!(out, "{}", resp.pem);
            Ok(())
        }
        Command::ProxyConfig { proxy, output } => {
            let mut client = connect(cli).await?;
            let resp = client
                .proxy_config(ProxyConfigRequest { node_id: proxy.clone() })
                .await
                .map_err(|s| call_error(cli, s))?
                .into_inner();
            let sent_version = resp.sent.as_ref().map(|s| s.version);
            let v = json!({
                "node": proxy,
                "status": resp.status.as_ref().map(status_json),
                "sent": resp.sent.as_ref().map(snapshot_json),
                "acked": match &resp.acked {
                    Some(a) if Some(a.version) == sent_version => json!({"version": a.version, "sameAsSent": true}),
                    Some(a) => snapshot_json(a),
                    None => Json::Null,
                },
            });
            print_data(&v, *output, out);
            Ok(())
        }
    }
}

/// Reads `-f` arguments into `(source name, YAML text)`, directories expanded to their YAML
/// files in name order.
fn read_inputs(paths: &[PathBuf]) -> Result<Vec<(String, String)>, CliError> {
    let mut out = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| CliError::Read {
                    path: "<stdin>".into(),
                    source,
                })?;
            out.push(("<stdin>".to_owned(), text));
            continue;
        }
        let files = if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| CliError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(CliError::Usage(format!(
                    "{}: no *.yaml or *.yml files in this directory",
                    path.display()
                )));
            }
            found
        } else {
            vec![path.clone()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| CliError::Read {
                path: f.display().to_string(),
                source,
            })?;
            out.push((f.display().to_string(), text));
        }
    }
    Ok(out)
}

/// `virtualservice/reviews`, as kubectl names resources in its output.
fn short_label(kind: &str, name: &str) -> String {
    format!("{}/{name}", kind.to_ascii_lowercase())
}

async fn apply(
    cli: &Cli,
    client: &mut AdminClient<Channel>,
    inputs: Vec<(String, String)>,
    dry_run: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u64, CliError> {
    let req = ApplyRequest {
        files: inputs
            .into_iter()
            .map(|(source, yaml)| Document { source, yaml })
            .collect(),
        dry_run,
    };
    let resp = client.apply(req).await.map_err(|s| call_error(cli, s))?.into_inner();
    let refused = !resp.applied && !dry_run
        || resp
            .results
            .iter()
            .any(|r| r.outcome == Outcome::Refused as i32 || r.outcome == Outcome::NotApplied as i32);
    let mut errors = 0;
    for r in &resp.results {
        let label = r
            .resource
            .as_ref()
            .map(|k| short_label(&k.kind, &k.name))
            .unwrap_or_else(|| format!("document at {}", r.source));
        let outcome = Outcome::try_from(r.outcome).unwrap_or(Outcome::Unspecified);
        let word = match outcome {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
            Outcome::Refused => "refused",
            Outcome::NotApplied => "not applied",
            Outcome::Unspecified => "?",
        };
        let _ = writeln!(out, "{label} {word}{}", if dry_run { " (dry run)" } else { "" });
        for d in &r.diagnostics {
            errors += usize::from(!d.warning);
            let _ = writeln!(err, "{}", from_wire_diagnostic(d));
        }
    }
    for d in &resp.diagnostics {
        errors += usize::from(!d.warning);
        let _ = writeln!(err, "{}", from_wire_diagnostic(d));
    }
    if refused {
        let _ = writeln!(
            err,
            "error: apply refused with {errors} error(s); nothing was changed on the control plane"
        );
        return Err(CliError::Reported("refused".into()));
    }
    Ok(resp.generation)
}

/// `apply --wait`: polls the proxies' sync state until each connected one acknowledged
/// `generation` (or a later one). A NACK of it, or a config that does not compile for a proxy,
/// ends the wait at once with the proxy's error; `--timeout` bounds the whole wait.
async fn wait_for_acks(
    cli: &Cli,
    client: &mut AdminClient<Channel>,
    generation: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + cli.timeout;
    loop {
        let resp = client
            .proxy_status(ProxyStatusRequest {})
            .await
            .map_err(|s| call_error(cli, s))?
            .into_inner();
        let connected: Vec<&ProxyStatusEntry> = resp
            .proxies
            .iter()
            .filter(|p| SyncState::try_from(p.state) != Ok(SyncState::Disconnected))
            .collect();
        let refused: Vec<String> = connected
            .iter()
            .filter_map(|p| {
                if p.nacked_version >= generation && !p.nack_error.is_empty() {
                    Some(format!(
                        "{} refused version {}: {}",
                        p.node_id, p.nacked_version, p.nack_error
                    ))
                } else if !p.stale_reason.is_empty() {
                    Some(format!("{} was not sent the config: {}", p.node_id, p.stale_reason))
                } else {
                    None
                }
            })
            .collect();
        if !refused.is_empty() {
            return Err(CliError::NotInForce(format!(
                "applied (version {generation}), but not in force everywhere: {}",
                refused.join("; ")
            )));
        }
        let pending: Vec<String> = connected
            .iter()
            .filter(|p| p.acked_version < generation)
            .map(|p| format!("{} (acknowledged version {})", p.node_id, p.acked_version))
            .collect();
        if pending.is_empty() {
            let _ = writeln!(
                out,
                "version {generation} acknowledged by {} connected prox{}",
                connected.len(),
                if connected.len() == 1 { "y" } else { "ies" }
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::NotInForce(format!(
                "applied (version {generation}), but after {:?} still waiting for {}",
                cli.timeout,
                pending.join(", ")
            )));
        }
        // Polling, not a watch: the admin API has no stream of sync states, and a person or a
        // script waits on this for a second or two at most.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delete_targets(
    kind: Option<&str>,
    name: Option<&str>,
    namespace: &str,
    files: &[PathBuf],
) -> Result<Vec<ResourceKey>, CliError> {
    if !files.is_empty() {
        let mut keys = Vec::new();
        for (source, text) in read_inputs(files)? {
            for (line, yaml) in ringmesh_api::documents(&text) {
                let key = ResourceKey::of_yaml(&yaml).map_err(|e| CliError::Usage(format!("{source}:{line}: {e}")))?;
                keys.push(key);
            }
        }
        return Ok(keys);
    }
    let (Some(kind), Some(name)) = (kind, name) else {
        return Err(CliError::Usage(
            "delete needs KIND NAME (e.g. `ringmesh delete vs reviews`) or -f FILE".into(),
        ));
    };
    let kind = canonical_kind(kind)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .ok_or_else(|| CliError::Usage("delete needs one kind, not `all`".into()))?;
    Ok(vec![ResourceKey {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }])
}

fn status_block(r: &StoredResource) -> Json {
    let s = r.status.clone().unwrap_or_default();
    json!({
        "source": r.source,
        "applied": r.applied,
        "proxies": {"synced": s.synced, "pending": s.pending, "stale": s.stale, "nacked": s.nacked.len()},
        "nacked": s.nacked.iter().map(|n| json!({"node": n.node_id, "version": n.version, "error": n.error})).collect::<Vec<_>>(),
    })
}

/// The stored document with the live `status` in place of any written one.
fn with_status(r: &StoredResource) -> Json {
    let mut v: Json = serde_yaml::from_str(&r.yaml).unwrap_or_else(|_| json!({ "yaml": r.yaml }));
    if let Json::Object(m) = &mut v {
        m.insert("status".into(), status_block(r));
    }
    v
}

fn proxies_summary(r: &StoredResource) -> String {
    let s = r.status.clone().unwrap_or_default();
    let mut parts = Vec::new();
    if !s.nacked.is_empty() {
        parts.push(format!("{} NACKED", s.nacked.len()));
    }
    for (n, word) in [(s.synced, "synced"), (s.pending, "pending"), (s.stale, "stale")] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn print_get(
    kind: &str,
    name: Option<&str>,
    resources: &[StoredResource],
    output: GetOutput,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    if resources.is_empty() {
        if let Some(name) = name {
            return Err(CliError::Server(format!("{kind} `{name}` not found")));
        }
        if output == GetOutput::Table {
            let _ = writeln!(err, "No resources found.");
            return Ok(());
        }
    }
    let refs: Vec<ResourceRef> = resources
        .iter()
        .map(|r| r.resource.clone().unwrap_or_default())
        .collect();
    match output {
        GetOutput::Table => {
            let all = canonical_kind(kind).ok().flatten().is_none();
            let mut rows = vec![vec![
                "NAMESPACE".to_owned(),
                "NAME".into(),
                "FROM".into(),
                "PROXIES".into(),
            ]];
            for (r, k) in resources.iter().zip(&refs) {
                rows.push(vec![
                    k.namespace.clone(),
                    if all {
                        short_label(&k.kind, &k.name)
                    } else {
                        k.name.clone()
                    },
                    if r.applied { "applied".into() } else { r.source.clone() },
                    proxies_summary(r),
                ]);
            }
            write_table(&rows, out);
        }
        GetOutput::Yaml => {
            for (i, r) in resources.iter().enumerate() {
                if i > 0 {
                    let _ = writeln!(out, "---");
                }
                let _ = write!(out, "{}", serde_yaml::to_string(&with_status(r)).unwrap_or_default());
            }
        }
        GetOutput::Json => {
            let v = if name.is_some() && resources.len() == 1 {
                with_status(&resources[0])
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": resources.iter().map(with_status).collect::<Vec<_>>()})
            };
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    }
    Ok(())
}

fn write_table(rows: &[Vec<String>], out: &mut dyn Write) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn state_name(state: i32) -> &'static str {
    match SyncState::try_from(state).unwrap_or(SyncState::Unspecified) {
        SyncState::Synced => "SYNCED",
        SyncState::Stale => "STALE",
        SyncState::Nacked => "NACKED",
        SyncState::Disconnected => "DISCONNECTED",
        SyncState::Unspecified => "UNKNOWN",
    }
}

fn workload_name(p: &ProxyStatusEntry) -> String {
    p.workload
        .as_ref()
        .filter(|w| !w.name.is_empty())
        .map(|w| {
            if w.namespace.is_empty() {
                w.name.clone()
            } else {
                format!("{}.{}", w.name, w.namespace)
            }
        })
        .unwrap_or_else(|| "-".into())
}

fn print_proxy_status(proxies: &[ProxyStatusEntry], out: &mut dyn Write, err: &mut dyn Write) {
    if proxies.is_empty() {
        let _ = writeln!(err, "No proxies are connected.");
        return;
    }
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "WORKLOAD".into(),
        "STATUS".into(),
        "SENT".into(),
        "ACKED".into(),
        "VERSION".into(),
    ]];
    for p in proxies {
        rows.push(vec![
            p.node_id.clone(),
            workload_name(p),
            state_name(p.state).into(),
            p.sent_version.to_string(),
            p.acked_version.to_string(),
            p.proxy_version.clone(),
        ]);
    }
    write_table(&rows, out);
    for p in proxies {
        if !p.nack_error.is_empty() {
            let _ = writeln!(out, "\n{} NACKed version {}:", p.node_id, p.nacked_version);
            for line in p.nack_error.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if !p.stale_reason.is_empty() {
            let _ = writeln!(
                out,
                "\n{}: the newest config was not sent, it does not compile for this proxy:",
                p.node_id
            );
            for line in p.stale_reason.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
}

fn status_json(p: &ProxyStatusEntry) -> Json {
    json!({
        "node": p.node_id,
        "workload": workload_name(p),
        "proxyVersion": p.proxy_version,
        "state": state_name(p.state),
        "ready": p.ready,
        "sentVersion": p.sent_version,
        "ackedVersion": p.acked_version,
        "nack": (!p.nack_error.is_empty()).then(|| json!({"version": p.nacked_version, "error": p.nack_error})),
        "staleReason": (!p.stale_reason.is_empty()).then_some(&p.stale_reason),
    })
}

fn snapshot_json(s: &Snapshot) -> Json {
    json!({
        "version": s.version,
        "documents": s.documents.iter().map(|d| json!({
            "source": d.source,
            "resource": serde_yaml::from_str::<Json>(&d.yaml).unwrap_or_else(|_| Json::String(d.yaml.clone())),
        })).collect::<Vec<_>>(),
        "endpoints": s.endpoints.iter().map(|e| json!({
            "host": e.host,
            "address": e.address,
            "ports": e.ports,
            "labels": e.labels,
            "weight": e.weight,
        })).collect::<Vec<_>>(),
    })
}

fn print_data(v: &Json, output: DataOutput, out: &mut dyn Write) {
    let _ = match output {
        DataOutput::Yaml => write!(out, "{}", serde_yaml::to_string(v).unwrap_or_default()),
        DataOutput::Json => writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    };
}
