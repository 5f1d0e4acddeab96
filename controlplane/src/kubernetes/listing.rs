//! The objects of one watched kind, as kube-rs's watcher reports them: a listing (`Init`,
//! `InitApply`…, `InitDone`) replaces the whole set at once, so that a watch resumed after a
//! break never serves half a list; single events change one object in between.
//!
//! Objects are kept as what the control plane needs of them (`V`), never whole: a Pod is kept
//! as its labels and service account, not its spec. An object that cannot be read is left out
//! and reported once (again only after it was readable or deleted in between), so a bad object
//! re-sent on every re-list does not flood the log.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::DynamicObject;
use kube::runtime::watcher;

/// Namespace and name of an object (`default` when it has no namespace, as `kubectl` does).
pub type Name = (String, String);

/// What reading one object gave.
#[derive(Debug)]
pub enum Read<V> {
    /// Kept as `V`.
    Keep(V),
    /// Deliberately not served (an `ExternalName` Service, a Service without ports); the
    /// reader logged why at debug level. A kept object that turns into this is withdrawn.
    Skip,
    /// Malformed: withdrawn, and `reason` logged once.
    Unreadable(String),
}

/// The objects of one kind.
#[derive(Debug)]
pub struct Listing<V> {
    kind: &'static str,
    current: BTreeMap<Name, V>,
    /// The listing under way, swapped in whole at `InitDone`.
    relisting: Option<BTreeMap<Name, V>>,
    listed: bool,
    /// Objects whose unreadability was reported already.
    reported: BTreeSet<Name>,
}

impl<V: PartialEq> Listing<V> {
    /// No objects of `kind` (named in logs), not listed yet.
    pub fn new(kind: &'static str) -> Self {
        Listing {
            kind,
            current: BTreeMap::new(),
            relisting: None,
            listed: false,
            reported: BTreeSet::new(),
        }
    }

    /// Whether a first complete listing arrived.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The objects, by namespace and name.
    pub fn objects(&self) -> &BTreeMap<Name, V> {
        &self.current
    }

    /// Applies one watcher event, reading objects with `read`; whether the served set may have
    /// changed (a completed listing always counts as a change).
    pub fn event(
        &mut self,
        event: watcher::Event<DynamicObject>,
        read: impl Fn(&Name, &DynamicObject) -> Read<V>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                if let Some((name, Some(v))) = self.read(&obj, &read) {
                    self.relisting.get_or_insert_with(BTreeMap::new).insert(name, v);
                }
                false
            }
            watcher::Event::InitDone => {
                self.current = self.relisting.take().unwrap_or_default();
                self.reported.retain(|n| !self.current.contains_key(n));
                self.listed = true;
                true
            }
            watcher::Event::Apply(obj) => match self.read(&obj, &read) {
                Some((name, Some(v))) => {
                    let old = self.current.insert(name.clone(), v);
                    old.as_ref() != self.current.get(&name)
                }
                Some((name, None)) => self.current.remove(&name).is_some(),
                None => false,
            },
            watcher::Event::Delete(obj) => match name_of(&obj) {
                Some(name) => {
                    self.reported.remove(&name);
                    self.current.remove(&name).is_some()
                }
                None => false,
            },
        }
    }

    /// The object's name and what to keep of it (`None`: nothing); `None` for an object without
    /// a name, which no later event can name either.
    fn read(
        &mut self,
        obj: &DynamicObject,
        read: &impl Fn(&Name, &DynamicObject) -> Read<V>,
    ) -> Option<(Name, Option<V>)> {
        let Some(name) = name_of(obj) else {
            tracing::debug!(kind = self.kind, "an object without a name is ignored");
            return None;
        };
        let kept = match read(&name, obj) {
            Read::Keep(v) => {
                self.reported.remove(&name);
                Some(v)
            }
            Read::Skip => None,
            Read::Unreadable(reason) => {
                if self.reported.insert(name.clone()) {
                    tracing::warn!(
                        "{} {}/{} ignored: {reason} (reported once until it changes)",
                        self.kind,
                        name.0,
                        name.1
                    );
                }
                None
            }
        };
        Some((name, kept))
    }
}

/// Namespace and name of `obj`, `None` without a name.
pub fn name_of(obj: &DynamicObject) -> Option<Name> {
    let name = obj.metadata.name.clone().filter(|n| !n.is_empty())?;
    let namespace = obj
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    Some((namespace, name))
}
