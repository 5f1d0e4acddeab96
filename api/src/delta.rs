//! Incremental snapshots (protocol 3): the control plane sends what changed since the last
//! snapshot it sent on a stream, and the proxy rebuilds the whole set from its copy.
//!
//! Why: with 1,000 workloads a whole snapshot is ~100 KB, and a policy change sent in whole to
//! 1,000 proxies moved 100 MB through HTTP/2 framing for a change of a few hundred bytes; every
//! stream's send buffer also grew to the size of the largest message it sent. A delta carries
//! only the documents and endpoints that changed, and a whole snapshot goes out as a `reset`
//! delta split into parts of at most [`PART_BYTES`].
//!
//! Both sides use this module: [`diff`] and [`parts`] on the control plane, [`Assembler`] in the
//! proxy (and in every test or benchmark client), so the two cannot disagree on what an
//! endpoint's key is or in which order documents compile.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;

use crate::proto::{control_message, ControlMessage, Document, Endpoint, EndpointKey, Snapshot, SnapshotDelta};

/// Upper bound on one part of a whole snapshot, encoded (a single larger document or endpoint
/// still goes out alone, whole).
pub const PART_BYTES: usize = 8 * 1024;

/// What identifies an endpoint: host, address and ports (two workloads on one address serve
/// different ports). Labels and weight are what an update may change.
pub type Key = (String, String, Vec<(String, u32)>);

/// The key of `e`.
pub fn key_of(e: &Endpoint) -> Key {
    key(&e.host, &e.address, &e.ports)
}

/// The key of the endpoint with these fields.
pub fn key(host: &str, address: &str, ports: &HashMap<String, u32>) -> Key {
    let mut p: Vec<(String, u32)> = ports.iter().map(|(k, v)| (k.clone(), *v)).collect();
    p.sort();
    (host.to_owned(), address.to_owned(), p)
}

fn key_message(e: &Endpoint) -> EndpointKey {
    EndpointKey {
        host: e.host.clone(),
        address: e.address.clone(),
        ports: e.ports.clone(),
    }
}

/// Why a delta could not be applied. The proxy ends the stream and reconnects; the control
/// plane then sends the whole snapshot again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    /// The delta is based on a version this side does not hold.
    #[error("delta for version {version} is based on version {base}, but this proxy holds version {held}")]
    WrongBase {
        /// The delta's version.
        version: u64,
        /// The version it applies to.
        base: u64,
        /// What this side holds.
        held: u64,
    },
    /// A part of a split snapshot arrived for another version than the parts before it.
    #[error("part of version {got} arrived while version {expected} was incomplete")]
    PartMismatch {
        /// The version of the parts so far.
        expected: u64,
        /// The new part's version.
        got: u64,
    },
    /// The encoded message did not decode.
    #[error("undecodable message: {0}")]
    Decode(String),
}

/// The documents and endpoints a proxy was sent, rebuilt from whole snapshots and deltas.
#[derive(Debug, Default, Clone)]
pub struct Assembler {
    version: u64,
    documents: Vec<Document>,
    endpoints: BTreeMap<Key, Endpoint>,
    /// The version whose parts are arriving (`continued` seen, last part not yet).
    partial: Option<u64>,
    /// Whether the last message said the control plane's registry is still warming.
    registry_warming: bool,
}

impl Assembler {
    /// An assembler holding nothing (version 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The version held.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Takes one message from the control plane. Returns the whole snapshot when the message
    /// completes one (a `SharedSnapshot`, or the last part of a delta), `None` when it does not
    /// (a refusal, a certificate, or a part with more to come).
    pub fn feed(&mut self, message: ControlMessage) -> Result<Option<Snapshot>, DeltaError> {
        match message.message {
            Some(control_message::Message::SharedSnapshot(shared)) => {
                let mut s = Snapshot::decode(shared.snapshot).map_err(|e| DeltaError::Decode(e.to_string()))?;
                s.nonce = shared.nonce;
                self.partial = None;
                self.version = s.version;
                self.registry_warming = s.registry_warming;
                self.documents = s.documents.clone();
                self.endpoints = s.endpoints.iter().map(|e| (key_of(e), e.clone())).collect();
                Ok(Some(s))
            }
            Some(control_message::Message::SharedDelta(shared)) => {
                let mut d = SnapshotDelta::decode(shared.delta).map_err(|e| DeltaError::Decode(e.to_string()))?;
                d.nonce = shared.nonce;
                self.apply(d)
            }
            Some(
                control_message::Message::Refusal(_)
                | control_message::Message::Certificate(_)
                | control_message::Message::CertificateRefusal(_),
            )
            | None => Ok(None),
        }
    }

    /// Applies one delta; returns the whole snapshot once the last part is in.
    pub fn apply(&mut self, d: SnapshotDelta) -> Result<Option<Snapshot>, DeltaError> {
        match self.partial {
            Some(v) if v != d.version => {
                return Err(DeltaError::PartMismatch {
                    expected: v,
                    got: d.version,
                })
            }
            Some(_) => {}
            None if d.reset => {
                self.documents.clear();
                self.endpoints.clear();
            }
            None if d.base_version != self.version => {
                return Err(DeltaError::WrongBase {
                    version: d.version,
                    base: d.base_version,
                    held: self.version,
                })
            }
            None => {}
        }
        let removed: HashSet<&str> = d.removed_documents.iter().map(String::as_str).collect();
        if !removed.is_empty() {
            self.documents.retain(|doc| !removed.contains(doc.source.as_str()));
        }
        if !d.documents.is_empty() {
            let mut at: HashMap<String, usize> = self
                .documents
                .iter()
                .enumerate()
                .map(|(i, x)| (x.source.clone(), i))
                .collect();
            for doc in d.documents {
                match at.get(&doc.source) {
                    Some(&i) => self.documents[i] = doc,
                    None => {
                        at.insert(doc.source.clone(), self.documents.len());
                        self.documents.push(doc);
                    }
                }
            }
        }
        if !d.document_order.is_empty() {
            let rank: HashMap<&str, usize> = d
                .document_order
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), i))
                .collect();
            self.documents
                .sort_by_key(|doc| rank.get(doc.source.as_str()).copied().unwrap_or(usize::MAX));
        }
        for k in &d.removed_endpoints {
            self.endpoints.remove(&key(&k.host, &k.address, &k.ports));
        }
        for e in d.endpoints {
            self.endpoints.insert(key_of(&e), e);
        }
        if d.continued {
            self.partial = Some(d.version);
            return Ok(None);
        }
        self.partial = None;
        self.version = d.version;
        self.registry_warming = d.registry_warming;
        Ok(Some(Snapshot {
            version: d.version,
            nonce: d.nonce,
            protocol_version: crate::proto::PROTOCOL_VERSION,
            documents: self.documents.clone(),
            endpoints: self.endpoints.values().cloned().collect(),
            registry_warming: self.registry_warming,
        }))
    }
}

/// What changed from `old` to `new` (both as sent: documents in compile order, endpoints with
/// unique keys), as one delta based on `old.version`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> SnapshotDelta {
    let old_docs: HashMap<&str, &Document> = old.documents.iter().map(|d| (d.source.as_str(), d)).collect();
    let new_sources: HashSet<&str> = new.documents.iter().map(|d| d.source.as_str()).collect();
    let documents = new
        .documents
        .iter()
        .filter(|d| old_docs.get(d.source.as_str()).is_none_or(|o| o.yaml != d.yaml))
        .cloned()
        .collect();
    let removed_documents: Vec<String> = old
        .documents
        .iter()
        .filter(|d| !new_sources.contains(d.source.as_str()))
        .map(|d| d.source.clone())
        .collect();
    // The order the proxy gets without being told: the old one less what was removed, then the
    // new sources in the order they come.
    let implied: Vec<&str> = old
        .documents
        .iter()
        .map(|d| d.source.as_str())
        .filter(|s| new_sources.contains(s))
        .chain(
            new.documents
                .iter()
                .map(|d| d.source.as_str())
                .filter(|s| !old_docs.contains_key(s)),
        )
        .collect();
    let wanted: Vec<&str> = new.documents.iter().map(|d| d.source.as_str()).collect();
    let document_order = if implied == wanted {
        Vec::new()
    } else {
        wanted.iter().map(|s| s.to_string()).collect()
    };
    let old_eps: HashMap<Key, &Endpoint> = old.endpoints.iter().map(|e| (key_of(e), e)).collect();
    let mut new_keys = HashSet::with_capacity(new.endpoints.len());
    let mut endpoints = Vec::new();
    for e in &new.endpoints {
        let k = key_of(e);
        if old_eps.get(&k).is_none_or(|o| *o != e) {
            endpoints.push(e.clone());
        }
        new_keys.insert(k);
    }
    let removed_endpoints = old
        .endpoints
        .iter()
        .filter(|e| !new_keys.contains(&key_of(e)))
        .map(key_message)
        .collect();
    SnapshotDelta {
        version: new.version,
        base_version: old.version,
        nonce: String::new(),
        reset: false,
        continued: false,
        documents,
        removed_documents,
        document_order,
        endpoints,
        removed_endpoints,
        registry_warming: new.registry_warming,
    }
}

/// `s` as `reset` deltas of at most [`PART_BYTES`] each (encoded), in compile order: every
/// part but the last has `continued`.
pub fn parts(s: &Snapshot) -> Vec<SnapshotDelta> {
    let empty = |reset: bool| SnapshotDelta {
        version: s.version,
        reset,
        continued: true,
        registry_warming: s.registry_warming,
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut cur = empty(true);
    let mut size = 0usize;
    // Starts a new part when `n` more bytes would overflow a non-empty one.
    let mut room = |cur: &mut SnapshotDelta, n: usize| {
        if size > 0 && size + n > PART_BYTES {
            out.push(std::mem::replace(cur, empty(false)));
            size = 0;
        }
        size += n;
    };
    for d in &s.documents {
        room(&mut cur, d.encoded_len() + 4);
        cur.documents.push(d.clone());
    }
    for e in &s.endpoints {
        room(&mut cur, e.encoded_len() + 4);
        cur.endpoints.push(e.clone());
    }
    cur.continued = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SharedDelta;

    fn doc(source: &str, yaml: &str) -> Document {
        Document {
            source: source.into(),
            yaml: yaml.into(),
        }
    }

    fn ep(address: &str, port: u32, version: &str) -> Endpoint {
        Endpoint {
            host: "reviews".into(),
            address: address.into(),
            ports: [("http".to_string(), port)].into_iter().collect(),
            labels: [("version".to_string(), version.to_string())].into_iter().collect(),
            weight: 1,
        }
    }

    fn snap(version: u64, documents: Vec<Document>, endpoints: Vec<Endpoint>) -> Snapshot {
        Snapshot {
            version,
            nonce: String::new(),
            protocol_version: crate::proto::PROTOCOL_VERSION,
            documents,
            endpoints,
            registry_warming: false,
        }
    }

    fn shared(d: &SnapshotDelta, nonce: &str) -> ControlMessage {
        ControlMessage {
            message: Some(control_message::Message::SharedDelta(SharedDelta {
                delta: d.encode_to_vec().into(),
                nonce: nonce.into(),
            })),
        }
    }

    /// What the proxy rebuilds, compared as the compiler sees it: documents in order, endpoints
    /// as a set.
    fn same(a: &Snapshot, b: &Snapshot) {
        assert_eq!(a.version, b.version);
        assert_eq!(a.documents, b.documents);
        let mut x: Vec<_> = a.endpoints.iter().map(|e| (key_of(e), e.clone())).collect();
        let mut y: Vec<_> = b.endpoints.iter().map(|e| (key_of(e), e.clone())).collect();
        x.sort_by(|p, q| p.0.cmp(&q.0));
        y.sort_by(|p, q| p.0.cmp(&q.0));
        assert_eq!(x, y);
    }

    #[test]
    fn a_whole_snapshot_in_parts_then_deltas_rebuild_every_version() {
        let big = "x".repeat(3000);
        let v1 = snap(
            1,
            (0..20).map(|i| doc(&format!("f.yaml:{i}"), &big)).collect(),
            (0..500)
                .map(|i| ep(&format!("10.0.{}.{}", i / 250, i % 250), 9080, "v1"))
                .collect(),
        );
        let first = parts(&v1);
        assert!(first.len() > 4, "{} parts", first.len());
        assert!(first.iter().all(|p| p.encoded_len() <= PART_BYTES + 64));
        assert!(first[0].reset && first.iter().skip(1).all(|p| !p.reset));
        assert!(first.iter().rev().skip(1).all(|p| p.continued) && !first.last().unwrap().continued);

        let mut a = Assembler::new();
        for (i, p) in first.iter().enumerate() {
            let got = a.feed(shared(p, "n1")).unwrap();
            assert_eq!(got.is_some(), i + 1 == first.len());
            if let Some(s) = got {
                same(&s, &v1);
                assert_eq!(s.nonce, "n1");
            }
        }

        // A changed document, a removed one, a new one; an endpoint relabelled, one gone, one new.
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.documents[3].yaml = "changed".into();
        v2.documents.remove(7);
        v2.documents.push(doc("g.yaml:1", "new"));
        v2.endpoints[0].labels.insert("version".into(), "v2".into());
        v2.endpoints.remove(9);
        v2.endpoints.push(ep("10.9.9.9", 9080, "v2"));
        let d = diff(&v1, &v2);
        assert_eq!(d.documents.len(), 2);
        assert_eq!(d.removed_documents, vec!["f.yaml:7".to_string()]);
        assert!(d.document_order.is_empty(), "the implied order is right");
        assert_eq!(d.endpoints.len(), 2);
        assert_eq!(d.removed_endpoints.len(), 1);
        assert!(d.encoded_len() < 4000, "{} bytes", d.encoded_len());
        same(&a.feed(shared(&d, "n2")).unwrap().unwrap(), &v2);

        // Reordered documents carry the order; the same address on another port is another
        // endpoint.
        let mut v3 = v2.clone();
        v3.version = 3;
        v3.documents.swap(0, 5);
        v3.endpoints.push(ep("10.9.9.9", 9081, "v2"));
        let d = diff(&v2, &v3);
        assert_eq!(d.document_order.len(), v3.documents.len());
        assert!(d.documents.is_empty());
        assert_eq!(d.endpoints.len(), 1);
        same(&a.apply(d).unwrap().unwrap(), &v3);
        assert_eq!(a.version(), 3);
    }

    #[test]
    fn a_delta_on_another_base_or_a_stray_part_is_refused() {
        let v1 = snap(1, vec![doc("a:1", "a")], vec![ep("10.0.0.1", 80, "v1")]);
        let v2 = snap(2, vec![doc("a:1", "b")], vec![]);
        let v3 = snap(3, vec![], vec![]);
        let mut a = Assembler::new();
        assert_eq!(
            a.apply(diff(&v1, &v2)),
            Err(DeltaError::WrongBase {
                version: 2,
                base: 1,
                held: 0
            })
        );
        let mut first = parts(&v1);
        first[0].continued = true;
        assert_eq!(a.apply(first[0].clone()), Ok(None));
        let mut stray = parts(&v3).remove(0);
        stray.reset = false;
        assert_eq!(a.apply(stray), Err(DeltaError::PartMismatch { expected: 1, got: 3 }));
        let err = a.feed(ControlMessage {
            message: Some(control_message::Message::SharedDelta(SharedDelta {
                delta: vec![0xff, 0xff].into(),
                nonce: String::new(),
            })),
        });
        assert!(matches!(err, Err(DeltaError::Decode(_))), "{err:?}");
    }

    #[test]
    fn the_registry_warming_flag_travels_in_parts_and_in_deltas_that_change_nothing_else() {
        let mut v1 = snap(
            1,
            vec![doc("a:1", &"a".repeat(PART_BYTES))],
            vec![ep("10.0.0.1", 80, "v1")],
        );
        v1.registry_warming = true;
        let first = parts(&v1);
        assert!(first.len() > 1 && first.iter().all(|p| p.registry_warming));
        let mut a = Assembler::new();
        let got = first.iter().filter_map(|p| a.apply(p.clone()).unwrap()).last().unwrap();
        assert!(got.registry_warming);
        // The warm-up ends: the only change is the flag, and the delta says so.
        let v2 = Snapshot {
            version: 2,
            registry_warming: false,
            ..v1.clone()
        };
        let d = diff(&v1, &v2);
        assert!(d.documents.is_empty() && d.endpoints.is_empty() && !d.registry_warming);
        assert!(!a.apply(d).unwrap().unwrap().registry_warming);
    }

    #[test]
    fn an_empty_snapshot_is_one_part() {
        let p = parts(&snap(5, vec![], vec![]));
        assert_eq!(p.len(), 1);
        assert!(p[0].reset && !p[0].continued);
        let mut a = Assembler::new();
        let s = a.apply(p[0].clone()).unwrap().unwrap();
        assert_eq!((s.version, s.documents.len(), s.endpoints.len()), (5, 0, 0));
    }
}
