//! The control thread: start-up, hot reload, signals, draining, and the admin servers.
//!
//! One OS thread running a single-threaded tokio runtime. It compiles config into snapshots and
//! publishes them to the workers through [`SnapshotSource`]; it never touches a worker's state
//! directly. A reload that fails to compile is logged with every error and the running snapshot
//! keeps serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::admin::{self, AdminState, Role};
use crate::config::{self, Overrides};
use crate::identity::IdentityCell;
use crate::runtime::{self, cores, IoDriver, WorkerSet};
use crate::state::SnapshotSource;

/// How to start a proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Config files or directories (YAML).
    pub config: Vec<PathBuf>,
    /// Command-line and environment overrides.
    pub overrides: Overrides,
    /// Poll the files for changes this often; `None` disables watching (SIGHUP still reloads).
    pub watch_interval: Option<Duration>,
    /// Handle SIGHUP (reload) and SIGTERM/SIGINT (drain and exit). Off when embedded in tests.
    pub handle_signals: bool,
    /// Whether the proxy's listeners may share addresses another process serves (`--takeover`).
    pub bind_mode: runtime::bind::BindMode,
    /// The app's probes the health server runs for kubelet (`RINGMESH_KUBE_APP_PROBERS`).
    pub app_probers: crate::admin::app_probe::AppProbers,
}

impl ProxyOptions {
    /// Options for one config file, polled every 200 ms (tests see edits quickly), no signal
    /// handling.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        ProxyOptions {
            config: vec![path.into()],
            overrides: Overrides::default(),
            watch_interval: Some(Duration::from_millis(200)),
            handle_signals: false,
            bind_mode: runtime::bind::BindMode::Exclusive,
            app_probers: Default::default(),
        }
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Listener names and their bound addresses.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Admin server address.
    pub admin_address: SocketAddr,
    /// Health server address.
    pub health_address: SocketAddr,
    /// Metrics server address.
    pub metrics_address: SocketAddr,
    /// The I/O driver the workers run.
    pub io: IoDriver,
    /// Number of workers.
    pub workers: usize,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    reload: tokio::sync::mpsc::UnboundedSender<()>,
    control: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Asks for a reload now (as SIGHUP does).
    pub fn reload(&self) {
        let _ = self.reload.send(());
    }

    /// Drains the workers and waits for the proxy to stop.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait_inner();
    }

    /// Waits until the proxy stops (by signal or admin drain).
    pub fn wait(mut self) {
        self.wait_inner();
    }

    fn wait_inner(&mut self) {
        if let Some(t) = self.control.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait_inner();
    }
}

/// Loads the config, starts the workers and the control thread, and returns once every
/// listener is bound and serving.
pub fn start(opts: ProxyOptions) -> anyhow::Result<ProxyHandle> {
    // Taken before the files are read: a change made after this (even before the control
    // thread runs) differs from it and is reloaded on the watcher's first tick.
    let seen = config::fingerprint(&opts.config);
    let loaded = config::load(&opts.config, 1, &opts.overrides)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let settings = loaded.snapshot.proxy.clone();
    let listeners = loaded.snapshot.listeners.clone();
    let workers = settings.workers.unwrap_or_else(cores::default_workers).max(1);
    let io = runtime::resolve_io(settings.io)?;
    let mut snapshot = loaded.snapshot;
    // Under a control plane the workload's policies come from it: until its first config is
    // applied, inbound listeners refuse connections.
    snapshot.security.awaiting_control_plane = snapshot.proxy.control_plane.is_some();
    let source = SnapshotSource::new(snapshot);
    let identity = Arc::new(IdentityCell::new());
    let cert_status: crate::identity::CertStatusCell = Default::default();
    match (
        &settings.identity.files,
        crate::identity::manager::disabled_reason(&settings),
    ) {
        (Some(files), _) => crate::identity::load_files(files, &identity, &cert_status),
        (None, reason) => crate::identity::update_status(&cert_status, |s| {
            s.source = "none";
            s.reason = reason.or_else(|| {
                settings
                    .control_plane
                    .is_none()
                    .then(|| "no certificate source: neither spec.controlPlane nor spec.identity's files".to_owned())
            });
        }),
    }

    let admin_l = admin::bind(settings.admin_address, "adminAddress")?;
    let health_l = admin::bind(settings.health_address, "healthAddress")?;
    let metrics_l = admin::bind(settings.metrics_address, "metricsAddress")?;
    let admin_address = admin_l.local_addr()?;
    let health_address = health_l.local_addr()?;
    let metrics_address = metrics_l.local_addr()?;

    let (spans_tx, spans_rx) = crate::telemetry::trace::span::channel(workers);
    let set = runtime::start(
        workers,
        &settings.cpus,
        io,
        &listeners,
        opts.bind_mode,
        source.clone(),
        identity.clone(),
        spans_tx,
    )?;
    let bound = set.bound.clone();
    tracing::info!(
        workers,
        io = io.name(),
        listeners = ?bound,
        admin = %admin_address,
        health = %health_address,
        metrics = %metrics_address,
        "ringmesh-proxy started io={}",
        io.name()
    );

    let state = Arc::new(AdminState {
        source: source.clone(),
        workers: set.commands().to_vec(),
        draining: AtomicBool::new(false),
        warnings: arc_swap::ArcSwap::from_pointee(loaded.warnings),
        last_reload_error: arc_swap::ArcSwapOption::empty(),
        io: io.name(),
        drain_requested: tokio::sync::Notify::new(),
        control_plane: Default::default(),
        identity,
        cert_status,
        app_probers: opts.app_probers.clone(),
        listeners: bound.clone(),
        tracing: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let control = std::thread::Builder::new()
        .name("ringmesh-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("control runtime: {e}");
                    set.drain_and_join();
                    return;
                }
            };
            rt.block_on(control_main(
                opts,
                state,
                set,
                [admin_l, health_l, metrics_l],
                spans_rx,
                stop_rx,
                Reloads {
                    seen,
                    requests: reload_rx,
                },
            ));
        })
        .context("spawn control thread")?;

    Ok(ProxyHandle {
        listeners: bound,
        admin_address,
        health_address,
        metrics_address,
        io,
        workers,
        stop: Some(stop_tx),
        reload: reload_tx,
        control: Some(control),
    })
}

/// What makes the control thread reload the files.
struct Reloads {
    /// The files' fingerprint when `start` read them.
    seen: Vec<(std::path::PathBuf, Option<u64>)>,
    /// `ProxyHandle::reload`'s requests.
    requests: tokio::sync::mpsc::UnboundedReceiver<()>,
}

// The control thread is the one place tokio tasks are allowed (see dataplane/clippy.toml).
#[allow(clippy::disallowed_methods)]
async fn control_main(
    opts: ProxyOptions,
    state: Arc<AdminState>,
    set: WorkerSet,
    [admin_l, health_l, metrics_l]: [std::net::TcpListener; 3],
    spans_rx: flume::Receiver<Vec<crate::telemetry::trace::span::SpanRecord>>,
    stop_rx: tokio::sync::oneshot::Receiver<()>,
    Reloads {
        mut seen,
        requests: mut reload_rx,
    }: Reloads,
) {
    tokio::spawn(admin::serve(Role::Admin, admin_l, state.clone()));
    tokio::spawn(admin::serve(Role::Health, health_l, state.clone()));
    tokio::spawn(admin::serve(Role::Metrics, metrics_l, state.clone()));
    tokio::spawn(crate::telemetry::trace::export::run(
        spans_rx,
        state.source.clone(),
        state.tracing.clone(),
    ));
    // Outlier returns and active health checks: once per proxy, here rather than per worker.
    tokio::spawn(crate::lb::probe::run(state.source.clone()));

    let mut version = state.source.version();
    // What the control plane sent last; compiled together with the files on every reload.
    let mut control_input: Option<config::ControlInput> = None;
    let (updates_tx, mut updates_rx) = tokio::sync::mpsc::channel::<crate::xds::Update>(1);
    let running = state.source.load();
    if let Some(cp) = running.proxy.control_plane.clone() {
        let certs = crate::identity::manager::CertManager::new(
            state.identity.clone(),
            state.cert_status.clone(),
            &running.proxy,
        );
        tokio::spawn(crate::xds::run(
            cp,
            running.proxy.workload.clone(),
            updates_tx,
            state.control_plane.clone(),
            certs,
        ));
    } else {
        drop(updates_tx);
    }
    drop(running);
    let poll = opts.watch_interval.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    use tokio::signal::unix::SignalKind;
    let mut hup = signal_if(opts.handle_signals, SignalKind::hangup());
    let mut term = signal_if(opts.handle_signals, SignalKind::terminate());
    let mut int = signal_if(opts.handle_signals, SignalKind::interrupt());
    // SIGUSR1 reopens the access-log files (after logrotate moved them), as Envoy's does.
    let mut usr1 = signal_if(opts.handle_signals, SignalKind::user_defined1());
    let mut stop_rx = stop_rx;
    loop {
        let reload = tokio::select! {
            _ = &mut stop_rx => break,
            _ = state.drain_requested.notified() => break,
            _ = recv_signal(&mut term) => break,
            _ = recv_signal(&mut int) => break,
            _ = recv_signal(&mut hup) => true,
            _ = recv_signal(&mut usr1) => {
                crate::telemetry::access_log::reopen();
                tracing::info!("SIGUSR1: access-log files reopen before the next write");
                false
            }
            r = reload_rx.recv() => r.is_some(),
            Some(update) = updates_rx.recv() => {
                version += 1;
                let result = match config::load_with(&opts.config, Some(&update.input), version, &opts.overrides) {
                    Ok(loaded) => {
                        apply(&state, loaded, version, true);
                        tracing::info!(version, control_plane_version = update.version, "config from the control plane applied");
                        control_input = Some(update.input);
                        Ok(())
                    }
                    Err(e) => Err(e.0.join("\n")),
                };
                let _ = update.reply.send(result);
                false
            }
            _ = ticker.tick(), if opts.watch_interval.is_some() => {
                let now = config::fingerprint(&opts.config);
                let changed = now != seen;
                seen = now;
                changed
            }
        };
        if reload {
            version += 1;
            reload_config(&opts, &state, version, control_input.as_ref());
        }
    }
    tracing::info!("draining");
    state.draining.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || set.drain_and_join()).await;
    tracing::info!("ringmesh-proxy stopped");
}

/// Publishes `loaded`; `from_control_plane`: it holds the control plane's documents (a snapshot
/// from the local files alone, under a control plane, keeps inbound listeners closed).
fn apply(state: &AdminState, mut loaded: config::Loaded, version: u64, from_control_plane: bool) {
    loaded.snapshot.security.awaiting_control_plane =
        loaded.snapshot.proxy.control_plane.is_some() && !from_control_plane;
    let running = state.source.load();
    if loaded
        .snapshot
        .listeners
        .iter()
        .map(|l| (&l.name, l.address))
        .ne(running.listeners.iter().map(|l| (&l.name, l.address)))
        || loaded.snapshot.proxy.workers != running.proxy.workers
    {
        tracing::warn!(
            "listener addresses and worker count take effect on restart; the rest of the new config applies now"
        );
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // Files of the user's own PKI are read again on every reload (a renewed certificate is
    // picked up as config is).
    if let Some(files) = &loaded.snapshot.proxy.identity.files {
        crate::identity::load_files(files, &state.identity, &state.cert_status);
    }
    state.source.store(loaded.snapshot);
    state.warnings.store(Arc::new(loaded.warnings));
    state.last_reload_error.store(None);
    tracing::debug!(version, "snapshot published");
}

fn reload_config(opts: &ProxyOptions, state: &AdminState, version: u64, control: Option<&config::ControlInput>) {
    let running = state.source.load();
    match config::load_with(&opts.config, control, version, &opts.overrides) {
        Ok(loaded) => {
            apply(state, loaded, version, control.is_some());
            tracing::info!(version, "config reloaded");
        }
        Err(e) => {
            tracing::error!(
                running_version = running.version,
                "config reload refused; keeping the running config. {e}"
            );
            state.last_reload_error.store(Some(Arc::new(e.to_string())));
        }
    }
}

/// Waits for a signal, or forever when signal handling is off.
async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn signal_if(enabled: bool, kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    if enabled {
        tokio::signal::unix::signal(kind).ok()
    } else {
        None
    }
}
