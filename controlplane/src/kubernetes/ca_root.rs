//! The mesh root in every namespace, as Istio's control plane publishes `istio-ca-root-cert`.
//!
//! An injected sidecar checks the control plane's TLS port against the root it mounts from a
//! ConfigMap in its own namespace (`inject::settings::DEFAULT_CA_ROOT_CONFIG_MAP`, key
//! `inject::proxy_config::CA_FILE`); without that ConfigMap the pod never starts. So with
//! `--kubernetes` the control plane keeps one in every active namespace, holding the CA's trust
//! bundle (what `ringmesh ca root` prints) and labelled
//! `app.kubernetes.io/managed-by: ringmesh-control`.
//!
//! Two watches drive it: Namespaces, and ConfigMaps of that one name (a field selector, so a
//! user's unlabelled one is seen too). A namespace's ConfigMap is created when missing,
//! recreated when deleted, and its data replaced when it differs (the root was rotated or
//! replaced, and the control plane restarted with the new one). A terminating namespace is
//! left alone: the API server refuses new objects there.
//!
//! **A ConfigMap without our label is never changed**, where Istio overwrites: it is someone's
//! deliberate choice (the one the README used to have operators create by hand, or a bundle of
//! their own), and replacing it could cut the pods there off from a control plane they trust.
//! It is logged once per version, as a warning when it does not hold the bundle; labelling it
//! hands it over.
//!
//! **Replicas race.** Every replica publishes; a 409 on create or update means another writer
//! got there first, and the ConfigMap is read again and compared. Writes to one namespace are
//! paced (`MIN_WAIT`, doubling to `MAX_WAIT` while they keep coming within `CALM`), so two
//! replicas holding different bundles during a rollout, or an API server that keeps refusing,
//! cost one request per namespace a minute rather than a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use tokio::time::Instant;

/// The label that marks a ConfigMap the control plane keeps (Kubernetes' recommended label).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "ringmesh-control";
/// The least time between two writes of one namespace's ConfigMap.
pub const MIN_WAIT: Duration = Duration::from_millis(500);
/// The most: what a namespace whose writes keep failing or being undone is retried at.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Writes further apart than this start the pacing over.
const CALM: Duration = Duration::from_secs(120);

/// What is published: a ConfigMap named `name` holding `pem` under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootConfigMap {
    /// The ConfigMap's name (`ringmesh-control --ca-root-configmap`).
    pub name: String,
    /// The key the injector mounts.
    pub key: String,
    /// The trust bundle, PEM.
    pub pem: String,
}

impl RootConfigMap {
    /// The ConfigMap `name` holding `ca`'s trust bundle, under the key the injector mounts.
    pub fn of(name: &str, ca: &crate::ca::Ca) -> RootConfigMap {
        RootConfigMap {
            name: name.to_owned(),
            key: crate::inject::proxy_config::CA_FILE.to_owned(),
            pem: crate::ca::to_pem(ca.trust_bundle()),
        }
    }

    /// Whether `cm` carries our label.
    fn managed(cm: &ConfigMap) -> bool {
        cm.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == MANAGED_BY)
    }

    /// The data a published ConfigMap holds.
    fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.key.clone(), self.pem.clone())])
    }

    /// Whether `cm` holds exactly the bundle, and nothing else.
    fn current(&self, cm: &ConfigMap) -> bool {
        cm.data.as_ref() == Some(&self.data()) && cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty)
    }

    /// A new ConfigMap for `namespace`.
    fn fresh(&self, namespace: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())])),
                ..Default::default()
            },
            data: Some(self.data()),
            ..Default::default()
        }
    }

    /// Our `cm` holding the bundle, its labels and annotations kept, and its resource version
    /// too: an update of a ConfigMap changed since it was read is refused (409).
    fn replacing(&self, cm: &ConfigMap) -> ConfigMap {
        let mut cm = cm.clone();
        cm.metadata.managed_fields = None;
        cm.data = Some(self.data());
        cm.binary_data = None;
        cm
    }
}

/// What one namespace needs.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// Nothing: in sync, not active, or not listed yet.
    Nothing,
    /// No ConfigMap: create it.
    Create(ConfigMap),
    /// Ours, with other data: replace it with this.
    Update(ConfigMap),
    /// Someone else's: left as it is; whether it holds the bundle.
    Foreign {
        /// Its key holds the bundle.
        holds_root: bool,
        /// Its version, to log it once.
        version: String,
    },
}

/// The objects of one watch by key, a relisting swapped in whole when it completes.
#[derive(Debug)]
struct Known<V> {
    current: BTreeMap<String, V>,
    relisting: Option<BTreeMap<String, V>>,
    listed: bool,
}

/// Which namespaces a change concerns.
#[derive(Debug, PartialEq, Eq)]
enum Touched {
    None,
    One(String),
    All,
}

impl<V: PartialEq> Known<V> {
    fn new() -> Self {
        Known {
            current: BTreeMap::new(),
            relisting: None,
            listed: false,
        }
    }

    /// Applies `event`; `read` gives an object's key and what to keep of it (`None`: nothing,
    /// as if it were deleted), or no key for an object to ignore.
    fn event<K>(&mut self, event: watcher::Event<K>, read: impl Fn(&K) -> Option<(String, Option<V>)>) -> Touched {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                Touched::None
            }
            watcher::Event::InitApply(obj) => {
                if let Some((key, Some(v))) = read(&obj) {
                    self.relisting.get_or_insert_with(BTreeMap::new).insert(key, v);
                }
                Touched::None
            }
            watcher::Event::InitDone => {
                self.current = self.relisting.take().unwrap_or_default();
                self.listed = true;
                Touched::All
            }
            watcher::Event::Apply(obj) => match read(&obj) {
                Some((key, Some(v))) => {
                    if self.current.get(&key) == Some(&v) {
                        return Touched::None;
                    }
                    self.current.insert(key.clone(), v);
                    Touched::One(key)
                }
                Some((key, None)) => self.remove(key),
                None => Touched::None,
            },
            watcher::Event::Delete(obj) => match read(&obj) {
                Some((key, _)) => self.remove(key),
                None => Touched::None,
            },
        }
    }

    fn remove(&mut self, key: String) -> Touched {
        match self.current.remove(&key) {
            Some(_) => Touched::One(key),
            None => Touched::None,
        }
    }
}

/// The cluster's own namespaces, where no workload is meshed (Istio's namespace controller
/// leaves them out too).
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Whether a namespace takes the ConfigMap: not being deleted, not the cluster's own.
fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
        && !ns
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| SYSTEM_NAMESPACES.contains(&n))
}

/// How often one namespace's ConfigMap may be written.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Writes (or tries) in a row, each within [`CALM`] of the one before.
    streak: u32,
    last: Instant,
}

impl Pace {
    /// When the next write may go.
    fn next(&self) -> Instant {
        let wait = match self.streak {
            0 => Duration::ZERO,
            n => MIN_WAIT.saturating_mul(1 << (n - 1).min(16)).min(MAX_WAIT),
        };
        self.last + wait
    }

    fn wrote(&mut self, now: Instant) {
        self.streak = if now.duration_since(self.last) >= CALM {
            1
        } else {
            self.streak.saturating_add(1)
        };
        self.last = now;
    }
}

/// The publisher's state: what the watches show, and what is due when.
struct Publisher {
    root: RootConfigMap,
    /// Active namespaces.
    namespaces: Known<()>,
    /// ConfigMaps of the published name, by namespace.
    config_maps: Known<ConfigMap>,
    /// Namespaces to look at, and from when.
    due: BTreeMap<String, Instant>,
    pace: BTreeMap<String, Pace>,
    /// Namespaces whose last write failed (logged at warning level once per streak).
    failing: BTreeSet<String>,
    /// The version of each foreign ConfigMap last logged.
    reported: BTreeMap<String, String>,
}

/// One watch event.
enum Change {
    Namespace(Result<watcher::Event<Namespace>, watcher::Error>),
    ConfigMap(Result<watcher::Event<ConfigMap>, watcher::Error>),
}

impl Publisher {
    fn new(root: RootConfigMap) -> Self {
        Publisher {
            root,
            namespaces: Known::new(),
            config_maps: Known::new(),
            due: BTreeMap::new(),
            pace: BTreeMap::new(),
            failing: BTreeSet::new(),
            reported: BTreeMap::new(),
        }
    }

    fn listed(&self) -> bool {
        self.namespaces.listed && self.config_maps.listed
    }

    fn change(&mut self, change: Change, now: Instant) {
        let name = self.root.name.clone();
        let touched = match change {
            Change::Namespace(Ok(e)) => self.namespaces.event(e, |ns: &Namespace| {
                let key = ns.metadata.name.clone().filter(|n| !n.is_empty())?;
                Some((key, active(ns).then_some(())))
            }),
            Change::ConfigMap(Ok(e)) => self.config_maps.event(e, |cm: &ConfigMap| {
                // The field selector already asks for this name; an API server that ignored it
                // must not make another ConfigMap look like ours.
                if cm.metadata.name.as_deref() != Some(name.as_str()) {
                    return None;
                }
                let key = cm.metadata.namespace.clone().filter(|n| !n.is_empty())?;
                Some((key, Some(cm.clone())))
            }),
            Change::Namespace(Err(e)) | Change::ConfigMap(Err(e)) => {
                tracing::warn!("Kubernetes watch for the CA root ConfigMaps failed: {e}; retrying");
                Touched::None
            }
        };
        match touched {
            Touched::None => {}
            Touched::One(ns) => {
                self.due.insert(ns, now);
            }
            Touched::All => {
                let all: Vec<String> = self.namespaces.current.keys().cloned().collect();
                self.due.extend(all.into_iter().map(|ns| (ns, now)));
            }
        }
        // A namespace that is gone or terminating needs nothing more.
        let namespaces = &self.namespaces.current;
        if self.namespaces.listed {
            self.due.retain(|ns, _| namespaces.contains_key(ns));
            self.pace.retain(|ns, _| namespaces.contains_key(ns));
            self.failing.retain(|ns| namespaces.contains_key(ns));
        }
    }

    fn plan(&self, ns: &str) -> Plan {
        if !self.listed() || !self.namespaces.current.contains_key(ns) {
            return Plan::Nothing;
        }
        match self.config_maps.current.get(ns) {
            None => Plan::Create(self.root.fresh(ns)),
            Some(cm) if !RootConfigMap::managed(cm) => Plan::Foreign {
                holds_root: cm.data.as_ref().and_then(|d| d.get(&self.root.key)) == Some(&self.root.pem),
                version: cm.metadata.resource_version.clone().unwrap_or_default(),
            },
            Some(cm) if self.root.current(cm) => Plan::Nothing,
            Some(cm) => Plan::Update(self.root.replacing(cm)),
        }
    }

    /// What a read or write showed `ns`'s ConfigMap to be, before its watch event comes: so
    /// that another change in between does not write it again.
    fn found(&mut self, ns: &str, cm: Option<ConfigMap>) {
        match cm {
            Some(cm) => self.config_maps.current.insert(ns.to_owned(), cm),
            None => self.config_maps.current.remove(ns),
        };
    }

    fn report_foreign(&mut self, ns: &str, holds_root: bool, version: String) {
        if self.reported.get(ns) == Some(&version) {
            return;
        }
        let (name, label) = (&self.root.name, format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        if holds_root {
            tracing::info!(
                "ConfigMap {ns}/{name} has no label {label}: left as it is; it holds the mesh root today but will \
                 not follow a rotation (label it to hand it over)"
            );
        } else {
            tracing::warn!(
                "ConfigMap {ns}/{name} has no label {label}: left as it is, although it does not hold the mesh's \
                 trust bundle, so sidecars there cannot verify the control plane (label it to hand it over, or \
                 delete it)"
            );
        }
        self.reported.insert(ns.to_owned(), version);
    }

    fn failed(&mut self, ns: &str, what: &str, e: &kube::Error) {
        let hint = match e {
            kube::Error::Api(s) if s.code == 403 && s.message.contains(" cannot ") => {
                " (the control plane's service account needs get, list, watch, create and update on configmaps)"
            }
            _ => "",
        };
        let message = format!(
            "{what} ConfigMap {ns}/{}: {}{hint}; retrying",
            self.root.name,
            super::api_error(e)
        );
        if self.failing.insert(ns.to_owned()) {
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }

    fn succeeded(&mut self, ns: &str) {
        if self.failing.remove(ns) {
            tracing::info!("ConfigMap {ns}/{} is published again", self.root.name);
        }
    }

    /// Brings `ns` in sync: at most one write, paced; a 409 re-reads the ConfigMap, and what
    /// it still needs waits for its turn.
    async fn sync(&mut self, client: &kube::Client, ns: &str, now: Instant) {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let name = self.root.name.clone();
        let (write, what) = match self.plan(ns) {
            Plan::Nothing => return self.succeeded(ns),
            Plan::Foreign { holds_root, version } => return self.report_foreign(ns, holds_root, version),
            Plan::Create(cm) => (cm, "creating"),
            Plan::Update(cm) => (cm, "updating"),
        };
        let pace = self.pace.entry(ns.to_owned()).or_insert(Pace { streak: 0, last: now });
        if pace.next() > now {
            self.due.insert(ns.to_owned(), pace.next());
            return;
        }
        pace.wrote(now);
        let answer = if what == "creating" {
            api.create(&PostParams::default(), &write).await
        } else {
            api.replace(&name, &PostParams::default(), &write).await
        };
        match answer {
            Ok(cm) => {
                if what == "creating" {
                    tracing::info!("published the mesh root in ConfigMap {ns}/{name}");
                } else {
                    tracing::info!("ConfigMap {ns}/{name} held another bundle; replaced it with the mesh root");
                }
                self.found(ns, Some(cm));
                self.succeeded(ns);
            }
            Err(kube::Error::Api(s)) if s.code == 409 || (s.code == 404 && what == "updating") => {
                tracing::info!(
                    "ConfigMap {ns}/{name} changed while {what} it ({}, likely another replica); reading it again",
                    s.reason
                );
                match api.get_opt(&name).await {
                    Ok(cm) => {
                        self.found(ns, cm);
                        if self.plan(ns) != Plan::Nothing {
                            let next = self.pace.get(ns).map_or(now, Pace::next);
                            self.due.insert(ns.to_owned(), next);
                        } else {
                            self.succeeded(ns);
                        }
                    }
                    Err(e) => self.retry(ns, "reading", &e, now),
                }
            }
            Err(e) => self.retry(ns, what, &e, now),
        }
    }

    fn retry(&mut self, ns: &str, what: &str, e: &kube::Error, now: Instant) {
        self.failed(ns, what, e);
        let pace = self.pace.entry(ns.to_owned()).or_insert(Pace { streak: 1, last: now });
        self.due.insert(ns.to_owned(), pace.next().max(now + MIN_WAIT));
    }
}

/// Keeps the ConfigMap `root` in every active namespace through `client`, until the watches end
/// (they do not, short of the process stopping).
pub async fn run(client: kube::Client, root: RootConfigMap) {
    let namespaces = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(Change::Namespace);
    let selector = format!("metadata.name={}", root.name);
    let config_maps = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&selector),
    )
    .default_backoff()
    .map(Change::ConfigMap);
    let mut changes = futures_util::stream::select(namespaces.boxed(), config_maps.boxed());
    let mut publisher = Publisher::new(root);
    let mut announced = false;
    loop {
        let wake = publisher
            .due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + MAX_WAIT);
        tokio::select! {
            change = changes.next() => match change {
                Some(change) => publisher.change(change, Instant::now()),
                None => return,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
        if !publisher.listed() {
            continue;
        }
        if !announced {
            announced = true;
            tracing::info!(
                namespaces = publisher.namespaces.current.len(),
                "publishing the mesh root in ConfigMap {} of every namespace",
                publisher.root.name
            );
        }
        let now = Instant::now();
        let ready: Vec<String> = publisher
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in ready {
            publisher.due.remove(&ns);
            publisher.sync(&client, &ns, Instant::now()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootConfigMap {
        RootConfigMap {
            name: "ringmesh-ca-root".into(),
            key: "root-cert.pem".into(),
            pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        }
    }

    fn namespace(name: &str, terminating: bool) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        if terminating {
            ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some("Terminating".into()),
                ..Default::default()
            });
        }
        ns
    }

    fn listed(p: &mut Publisher, namespaces: Vec<Namespace>, config_maps: Vec<ConfigMap>) {
        let now = Instant::now();
        p.change(Change::Namespace(Ok(watcher::Event::Init)), now);
        for ns in namespaces {
            p.change(Change::Namespace(Ok(watcher::Event::InitApply(ns))), now);
        }
        p.change(Change::Namespace(Ok(watcher::Event::InitDone)), now);
        p.change(Change::ConfigMap(Ok(watcher::Event::Init)), now);
        for cm in config_maps {
            p.change(Change::ConfigMap(Ok(watcher::Event::InitApply(cm))), now);
        }
        p.change(Change::ConfigMap(Ok(watcher::Event::InitDone)), now);
    }

    #[test]
    fn each_namespace_is_planned_by_what_it_holds() {
        let r = root();
        let mut p = Publisher::new(r.clone());
        assert_eq!(p.plan("shop"), Plan::Nothing, "nothing before both watches listed");
        let mut stale = r.fresh("stale");
        stale.data = Some(BTreeMap::from([(r.key.clone(), "old".to_owned())]));
        let mut foreign = r.fresh("theirs");
        foreign.metadata.labels = None;
        foreign.metadata.resource_version = Some("7".into());
        listed(
            &mut p,
            vec![
                namespace("shop", false),
                namespace("done", false),
                namespace("stale", false),
                namespace("theirs", false),
                namespace("leaving", true),
            ],
            vec![r.fresh("done"), stale.clone(), foreign],
        );
        assert_eq!(p.plan("shop"), Plan::Create(r.fresh("shop")));
        assert_eq!(p.plan("done"), Plan::Nothing);
        let Plan::Update(updated) = p.plan("stale") else {
            panic!("stale data is replaced: {:?}", p.plan("stale"))
        };
        assert_eq!(updated.data, Some(r.data()));
        assert_eq!(
            p.plan("theirs"),
            Plan::Foreign {
                holds_root: true,
                version: "7".into()
            }
        );
        assert_eq!(p.plan("leaving"), Plan::Nothing, "a terminating namespace is skipped");
        assert!(!p.due.contains_key("leaving"), "{:?}", p.due);
        assert_eq!(p.due.len(), 4, "{:?}", p.due);
    }

    #[test]
    fn writes_to_one_namespace_are_paced_and_calm_down() {
        let t = Instant::now();
        let mut pace = Pace { streak: 0, last: t };
        assert_eq!(pace.next(), t, "the first write goes at once");
        let mut waits = Vec::new();
        let mut now = t;
        for _ in 0..10 {
            pace.wrote(now);
            waits.push(pace.next() - now);
            now = pace.next();
        }
        assert_eq!(waits[..4], [MIN_WAIT, MIN_WAIT * 2, MIN_WAIT * 4, MIN_WAIT * 8]);
        assert_eq!(waits[9], MAX_WAIT, "{waits:?}");
        pace.wrote(now + CALM);
        assert_eq!(pace.streak, 1, "a write long after the last starts over");
    }
}
