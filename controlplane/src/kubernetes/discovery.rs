//! Service discovery from the cluster, as Istio does it: every Kubernetes `Service` becomes a
//! `ServiceEntry` document, so a VirtualService or DestinationRule for `reviews` (in the
//! Service's namespace) or `reviews.shop.svc.cluster.local` reaches the pods behind it with no
//! ServiceEntry written by hand.
//!
//! Three kinds are read: core/v1 `Service` (ports, cluster IPs), discovery.k8s.io/v1
//! `EndpointSlice` (the addresses behind a Service, their readiness and the Pod each one is) and
//! core/v1 `Pod` (labels, service account, whether the mesh injected a sidecar). Each is kept as
//! the few facts needed, and whenever one changes the documents are derived again from all
//! three; the one compiler then reads them like any other ServiceEntry, so a synthesized service
//! means in a proxy exactly what the same ServiceEntry written by hand means.
//!
//! The rules:
//! - **ready**: an endpoint is served only while its slice says it is ready (`conditions.ready`
//!   not `false`; absent means ready, as the API documents) and, when it names a Pod, while
//!   that Pod is known: a deleted Pod is withdrawn even before its slice is updated.
//! - **meshed**: an endpoint carries `security.istio.io/tlsMode: istio`, the label proxies read
//!   as "a sidecar serves this address", only when its Pod has one the mesh injected: the
//!   annotation `ringmesh.io/status` (ringmesh's injector) or `sidecar.istio.io/status`
//!   (Istio's, which also labels the Pod itself; Pod labels are copied as they are).
//! - **precedence**: a ServiceEntry a user wrote for the same host wins; the synthesized one is
//!   dropped (debug log), because the compiler refuses a host defined twice and that would
//!   refuse the whole set.
//! - **locality**: an endpoint carries the `topology.kubernetes.io/region`/`zone` and
//!   `topology.istio.io/subzone` labels (what locality-aware balancing reads) from its Pod's
//!   labels where they say them, else from its Node's labels, else the zone from its slice
//!   (`endpoints[].zone`), as Istio derives a Pod's locality from its Node. Nodes are read for
//!   those three labels only; until they are listed (or if the service account may not list
//!   them) endpoints are served without what only the Node says.
//! - `ExternalName` Services, Services without TCP ports and slices of FQDN addresses are not
//!   served (debug log); proxies carry TCP only, so UDP and SCTP ports are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use ringmesh_api::proto::Document;
use ringmesh_api::registry::fqdn;
use ringmesh_api::resources::{EndpointSpec, Location, Resolution, ServiceEntrySpec, ServicePortSpec};

use super::listing::{Listing, Name, Read};

/// The kinds read for discovery: `(group, version, kind, plural)`.
pub const KINDS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Service", "services"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "Node", "nodes"),
];

/// The label of an EndpointSlice that names its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Pod annotations an injected sidecar leaves: ringmesh's injector's, Istio's.
pub const SIDECAR_ANNOTATIONS: &[&str] = &["ringmesh.io/status", "sidecar.istio.io/status"];
/// The endpoint label that marks an address served by a sidecar (auto mTLS, HTTP/2 upgrade).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Istio's Service annotation restricting which namespaces see it (`exportTo`).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// What is kept of a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFacts {
    /// Cluster IPs (none for a headless Service).
    addresses: Vec<String>,
    /// TCP ports, in the Service's order.
    ports: Vec<PortFacts>,
    export_to: Option<Vec<String>>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq)]
struct PortFacts {
    /// The name as EndpointSlices repeat it (empty for the one unnamed port).
    kube_name: String,
    /// The port as served: an unnamed one is named `port-<number>`, since ServiceEntry ports
    /// need a name.
    spec: ServicePortSpec,
}

/// What is kept of an EndpointSlice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceFacts {
    /// The Service it belongs to (same namespace).
    service: String,
    /// Port on the endpoints by port name (empty for an unnamed port): how named target ports
    /// are resolved.
    ports: BTreeMap<String, u16>,
    endpoints: Vec<EndpointFacts>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq)]
struct EndpointFacts {
    addresses: Vec<IpAddr>,
    ready: bool,
    /// The Pod it is, by `targetRef`.
    pod: Option<Name>,
    /// The Node it runs on (`nodeName`).
    node: Option<String>,
    /// Its zone as the slice says it.
    zone: Option<String>,
}

/// What is kept of a Node: where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// `(label, value)` for each topology label the Node has.
    topology: Vec<(&'static str, String)>,
}

/// The labels locality-aware balancing reads, in `region/zone/subzone` order.
const TOPOLOGY_LABELS: [&str; 3] = [
    ringmesh_api::compile::REGION_LABEL,
    ringmesh_api::compile::ZONE_LABEL,
    ringmesh_api::compile::SUBZONE_LABEL,
];

/// What is kept of a Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    labels: BTreeMap<String, String>,
    service_account: Option<String>,
    /// A sidecar the mesh injected serves it.
    meshed: bool,
}

/// The Services, EndpointSlices and Pods of the cluster.
#[derive(Debug)]
pub struct Cluster {
    services: Listing<ServiceFacts>,
    slices: Listing<SliceFacts>,
    pods: Listing<PodFacts>,
    nodes: Listing<NodeFacts>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            services: Listing::new("Service"),
            slices: Listing::new("EndpointSlice"),
            pods: Listing::new("Pod"),
            nodes: Listing::new("Node"),
        }
    }
}

impl Cluster {
    /// Whether Services, EndpointSlices and Pods were listed once (Nodes only add locality, and
    /// a control plane not allowed to list them still serves).
    pub fn listed(&self) -> bool {
        self.services.listed() && self.slices.listed() && self.pods.listed()
    }

    /// Applies one watcher event of `kind` (one of [`KINDS`]); whether anything served may have
    /// changed.
    pub fn event(&mut self, kind: &str, event: watcher::Event<DynamicObject>) -> bool {
        match kind {
            "Service" => self.services.event(event, read_service),
            "EndpointSlice" => self.slices.event(event, read_slice),
            "Pod" => self.pods.event(event, read_pod),
            "Node" => self.nodes.event(event, read_node),
            _ => false,
        }
    }

    /// One ServiceEntry document per served Service, in namespace and name order, leaving out
    /// the hosts in `taken` (defined by the users' ServiceEntries).
    pub fn service_entries(&self, taken: &BTreeSet<String>) -> Vec<Document> {
        let mut slices: BTreeMap<(&str, &str), Vec<&SliceFacts>> = BTreeMap::new();
        for ((ns, _), slice) in self.slices.objects() {
            slices.entry((ns, &slice.service)).or_default().push(slice);
        }
        let mut documents = Vec::new();
        for ((ns, name), service) in self.services.objects() {
            let host = fqdn(name, ns);
            if taken.contains(&host) {
                tracing::debug!(
                    "Service {ns}/{name} not served as a ServiceEntry: one written for {host} takes precedence"
                );
                continue;
            }
            let slices = slices.get(&(ns.as_str(), name.as_str())).map_or(&[][..], Vec::as_slice);
            let spec = ServiceEntrySpec {
                export_to: service.export_to.clone(),
                hosts: vec![host],
                addresses: service.addresses.clone(),
                ports: service.ports.iter().map(|p| p.spec.clone()).collect(),
                location: Some(Location::MeshInternal),
                resolution: Some(Resolution::Static),
                endpoints: self.endpoints(service, slices),
                ..Default::default()
            };
            let value = serde_json::json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": { "name": name, "namespace": ns },
                "spec": spec,
            });
            match serde_yaml::to_string(&value) {
                Ok(yaml) => documents.push(Document {
                    source: source(ns, name),
                    yaml,
                }),
                Err(e) => tracing::warn!("Service {ns}/{name} not served: {e}"),
            }
        }
        documents
    }

    /// The ready endpoints of `slices`, one per address (the first slice naming it wins).
    fn endpoints(&self, service: &ServiceFacts, slices: &[&SliceFacts]) -> Vec<EndpointSpec> {
        let mut endpoints: BTreeMap<IpAddr, EndpointSpec> = BTreeMap::new();
        for slice in slices {
            // Where the slice's ports differ from the Service's target port (a named one).
            let overrides: BTreeMap<String, i64> = service
                .ports
                .iter()
                .filter_map(|p| {
                    let on_endpoint = i64::from(*slice.ports.get(&p.kube_name)?);
                    (on_endpoint != p.spec.target_port.unwrap_or(p.spec.number))
                        .then(|| (p.spec.name.clone(), on_endpoint))
                })
                .collect();
            for e in slice.endpoints.iter().filter(|e| e.ready) {
                let pod = match &e.pod {
                    Some(pod) => match self.pods.objects().get(pod) {
                        Some(facts) => Some(facts),
                        // Not listed yet, or deleted before its slice was updated.
                        None => continue,
                    },
                    None => None,
                };
                let mut labels = pod.map(|p| p.labels.clone()).unwrap_or_default();
                if pod.is_some_and(|p| p.meshed) {
                    labels.insert(TLS_MODE_LABEL.into(), "istio".into());
                }
                self.add_locality(e, &mut labels);
                for address in &e.addresses {
                    endpoints.entry(*address).or_insert_with(|| EndpointSpec {
                        address: address.to_string(),
                        ports: overrides.clone(),
                        labels: labels.clone(),
                        service_account: pod.and_then(|p| p.service_account.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        endpoints.into_values().collect()
    }

    /// Fills in the topology labels the Pod's own labels left out: from the endpoint's Node,
    /// then the zone its slice names.
    fn add_locality(&self, e: &EndpointFacts, labels: &mut BTreeMap<String, String>) {
        let node = e
            .node
            .as_ref()
            // Nodes have no namespace: listed under `default`, as `name_of` keys them.
            .and_then(|n| self.nodes.objects().get(&("default".to_owned(), n.clone())));
        for (label, value) in node.iter().flat_map(|n| &n.topology) {
            labels.entry((*label).to_owned()).or_insert_with(|| value.clone());
        }
        if let Some(zone) = &e.zone {
            labels
                .entry(TOPOLOGY_LABELS[1].to_owned())
                .or_insert_with(|| zone.clone());
        }
    }
}

/// The source a synthesized document is named by in diagnostics and deltas.
pub fn source(namespace: &str, name: &str) -> String {
    format!("kubernetes:service/{namespace}/{name}")
}

/// `obj` as the typed object `K` (its `apiVersion` and `kind` are the watch's; list items
/// carry none).
fn typed<K: serde::de::DeserializeOwned>(obj: &DynamicObject) -> Result<K, String> {
    let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    if let Some(fields) = value.as_object_mut() {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    serde_json::from_value(value).map_err(|e| format!("unreadable: {e}"))
}

fn read_service((ns, name): &Name, obj: &DynamicObject) -> Read<ServiceFacts> {
    let service: Service = match typed(obj) {
        Ok(s) => s,
        Err(e) => return Read::Unreadable(e),
    };
    let spec = service.spec.unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        tracing::debug!("Service {ns}/{name} is an ExternalName Service; not served");
        return Read::Skip;
    }
    let mut ports: Vec<PortFacts> = Vec::new();
    for p in spec.ports.unwrap_or_default() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        let Some(number) = u16::try_from(p.port).ok().filter(|n| *n != 0) else {
            tracing::debug!("Service {ns}/{name}: port {} is out of range; left out", p.port);
            continue;
        };
        if !protocol.eq_ignore_ascii_case("TCP") {
            tracing::debug!("Service {ns}/{name}: port {number} is {protocol}; only TCP is proxied");
            continue;
        }
        let kube_name = p.name.unwrap_or_default();
        let port_name = if kube_name.is_empty() {
            format!("port-{number}")
        } else {
            kube_name.clone()
        };
        if ports
            .iter()
            .any(|q| q.spec.number == i64::from(number) || q.spec.name == port_name)
        {
            tracing::debug!("Service {ns}/{name}: port {number} repeats another's number or name; left out");
            continue;
        }
        let target_port = match p.target_port {
            Some(IntOrString::Int(t)) => u16::try_from(t).ok().filter(|t| *t != 0).map(i64::from),
            // A named port is resolved per endpoint from the slices.
            _ => None,
        };
        ports.push(PortFacts {
            kube_name,
            spec: ServicePortSpec {
                number: i64::from(number),
                name: port_name,
                protocol: p.app_protocol.as_deref().and_then(protocol_of),
                target_port,
            },
        });
    }
    if ports.is_empty() {
        tracing::debug!("Service {ns}/{name} has no TCP port; not served");
        return Read::Skip;
    }
    let ips = spec
        .cluster_ips
        .unwrap_or_else(|| spec.cluster_ip.into_iter().collect());
    // `None` (headless) and anything else that is no address are left out.
    let addresses = ips
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .collect();
    let export_to = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty());
    Read::Keep(ServiceFacts {
        addresses,
        ports,
        export_to,
    })
}

/// A Service port's `appProtocol` as the ServiceEntry `protocol` Istio reads it as; `None` for
/// one Istio does not know (the port's name decides then, `http-web` and the like).
fn protocol_of(app_protocol: &str) -> Option<String> {
    let p = app_protocol.trim().to_ascii_lowercase();
    let istio = match p.as_str() {
        "http" | "kubernetes.io/ws" => "HTTP",
        "http2" | "kubernetes.io/h2c" => "HTTP2",
        "grpc" => "GRPC",
        "grpc-web" => "GRPC-WEB",
        "https" | "kubernetes.io/wss" => "HTTPS",
        "tcp" => "TCP",
        "tls" => "TLS",
        "mysql" => "MYSQL",
        "mongo" => "MONGO",
        "redis" => "REDIS",
        _ => return None,
    };
    Some(istio.to_owned())
}

fn read_slice((ns, name): &Name, obj: &DynamicObject) -> Read<SliceFacts> {
    let slice: EndpointSlice = match typed(obj) {
        Ok(s) => s,
        Err(e) => return Read::Unreadable(e),
    };
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        tracing::debug!(
            "EndpointSlice {ns}/{name} holds {} addresses; only IP addresses are served",
            slice.address_type
        );
        return Read::Skip;
    }
    let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        tracing::debug!("EndpointSlice {ns}/{name} names no Service ({SERVICE_NAME_LABEL}); not served");
        return Read::Skip;
    };
    let ports = slice
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP").eq_ignore_ascii_case("TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|n| *n != 0)?;
            Some((p.name.unwrap_or_default(), port))
        })
        .collect();
    let endpoints = slice
        .endpoints
        .unwrap_or_default()
        .into_iter()
        .map(|e| EndpointFacts {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            ready: e.conditions.and_then(|c| c.ready) != Some(false),
            pod: e.target_ref.filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                let pod_ns = r.namespace.filter(|n| !n.is_empty()).unwrap_or_else(|| ns.clone());
                Some((pod_ns, r.name.filter(|n| !n.is_empty())?))
            }),
            node: e.node_name.filter(|n| !n.is_empty()),
            zone: e.zone.filter(|z| !z.is_empty()),
        })
        .collect();
    Read::Keep(SliceFacts {
        service: service.clone(),
        ports,
        endpoints,
    })
}

/// A Pod is read from its metadata and one field of its spec, not parsed whole: Pods are the
/// most numerous and the largest objects watched.
fn read_pod(_: &Name, obj: &DynamicObject) -> Read<PodFacts> {
    let annotations = obj.metadata.annotations.as_ref();
    let service_account = match obj.data.pointer("/spec/serviceAccountName") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(sa)) => Some(sa.clone()).filter(|s| !s.is_empty()),
        Some(other) => return Read::Unreadable(format!("spec.serviceAccountName is not text: {other}")),
    };
    Read::Keep(PodFacts {
        labels: obj.metadata.labels.clone().unwrap_or_default(),
        service_account,
        meshed: annotations.is_some_and(|a| SIDECAR_ANNOTATIONS.iter().any(|k| a.contains_key(*k))),
    })
}

/// A Node is read for its topology labels alone.
fn read_node(_: &Name, obj: &DynamicObject) -> Read<NodeFacts> {
    let labels = obj.metadata.labels.as_ref();
    let topology = TOPOLOGY_LABELS
        .iter()
        .filter_map(|&l| Some((l, labels?.get(l).filter(|v| !v.is_empty())?.clone())))
        .collect();
    Read::Keep(NodeFacts { topology })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn event(value: serde_json::Value) -> watcher::Event<DynamicObject> {
        watcher::Event::Apply(object(value))
    }

    fn listed(cluster: &mut Cluster) {
        for (_, _, kind, _) in KINDS {
            cluster.event(kind, watcher::Event::Init);
            cluster.event(kind, watcher::Event::InitDone);
        }
    }

    /// Every document the derivation makes compiles, whatever odd ports the Service has: one
    /// that did not would refuse every resource of the cluster.
    #[test]
    fn odd_services_still_compile() {
        let mut cluster = Cluster::default();
        listed(&mut cluster);
        cluster.event(
            "Service",
            event(serde_json::json!({
                "metadata": {"name": "odd", "namespace": "shop"},
                "spec": {"clusterIPs": ["10.0.0.1", "fd00::1", "bogus"], "ports": [
                    {"port": 53, "protocol": "UDP"},
                    {"port": 80, "targetPort": "web"},
                    {"name": "dup", "port": 80},
                    {"name": "big", "port": 70000},
                    {"name": "grpc", "port": 90, "appProtocol": "kubernetes.io/h2c", "targetPort": 0}
                ]}
            })),
        );
        cluster.event(
            "EndpointSlice",
            event(serde_json::json!({
                "metadata": {"name": "odd-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "odd"}},
                "addressType": "IPv4",
                "ports": [{"port": 8080}, {"name": "grpc", "port": 90}, {"name": "stray", "port": 5}],
                "endpoints": [{"addresses": ["10.1.0.1", "nonsense"]}, {"addresses": ["10.1.0.1"]}]
            })),
        );
        let docs = cluster.service_entries(&BTreeSet::new());
        assert_eq!(docs.len(), 1);
        crate::server::check_compiles(&docs, &[]).unwrap_or_else(|e| panic!("{e}\n{}", docs[0].yaml));
        let yaml = &docs[0].yaml;
        for wanted in [
            "name: port-80",
            "port-80: 8080",
            "protocol: HTTP2",
            "fd00::1",
            "address: 10.1.0.1",
        ] {
            assert!(yaml.contains(wanted), "{wanted:?} in {yaml}");
        }
        for unwanted in ["53", "dup", "big", "bogus", "stray", "nonsense"] {
            assert!(!yaml.contains(unwanted), "{unwanted:?} left out of {yaml}");
        }
    }

    /// An endpoint without `conditions.ready` is ready (as the API documents), the exportTo
    /// annotation is carried, and a Service turned `ExternalName` is withdrawn, as is one gone
    /// from a re-listing.
    #[test]
    fn endpoints_carry_their_locality_from_pod_node_or_slice() {
        let mut cluster = Cluster::default();
        listed(&mut cluster);
        cluster.event(
            "Service",
            event(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": "10.0.0.9", "ports": [{"name": "http", "port": 80}]}
            })),
        );
        for (pod, labels) in [
            ("on-node", serde_json::json!({"app": "web"})),
            (
                "own-zone",
                serde_json::json!({"app": "web", "topology.kubernetes.io/zone": "z-pod"}),
            ),
        ] {
            cluster.event(
                "Pod",
                event(serde_json::json!({"metadata": {"name": pod, "namespace": "shop", "labels": labels}})),
            );
        }
        let pod = |name: &str| serde_json::json!({"kind": "Pod", "name": name, "namespace": "shop"});
        cluster.event(
            "EndpointSlice",
            event(serde_json::json!({
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.1.0.2"], "nodeName": "n1", "zone": "z-slice", "targetRef": pod("on-node")},
                    {"addresses": ["10.1.0.3"], "nodeName": "n1", "targetRef": pod("own-zone")},
                    {"addresses": ["10.1.0.4"], "nodeName": "unknown", "zone": "z-slice"}
                ]
            })),
        );
        let labels = |cluster: &Cluster| -> Vec<BTreeMap<String, String>> {
            let docs = cluster.service_entries(&BTreeSet::new());
            let (resources, _) = ringmesh_api::load_str("t", &docs[0].yaml).expect("loads");
            let ringmesh_api::resources::Resource::ServiceEntry(se) = &resources[0] else {
                panic!("{resources:?}")
            };
            se.spec.endpoints.iter().map(|e| e.labels.clone()).collect()
        };
        // No Node listed yet: the slice's zone only.
        let before = labels(&cluster);
        assert_eq!(before[0].get(ZONE), Some(&"z-slice".to_owned()));
        assert_eq!(before[0].get(REGION), None);

        assert!(cluster.event(
            "Node",
            event(serde_json::json!({"metadata": {"name": "n1", "labels": {
                "topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": "z-node",
                "topology.istio.io/subzone": "s1", "kubernetes.io/os": "linux"}}})),
        ));
        let after = labels(&cluster);
        // The Node's labels before the slice's zone; the Pod's own before either.
        assert_eq!(after[0].get(REGION), Some(&"r1".to_owned()));
        assert_eq!(after[0].get(ZONE), Some(&"z-node".to_owned()));
        assert_eq!(after[0].get(SUBZONE), Some(&"s1".to_owned()));
        assert_eq!(after[1].get(ZONE), Some(&"z-pod".to_owned()));
        assert_eq!(after[1].get(REGION), Some(&"r1".to_owned()));
        assert_eq!(after[2].get(ZONE), Some(&"z-slice".to_owned()));
        assert!(
            after.iter().all(|l| !l.contains_key("kubernetes.io/os")),
            "only topology labels"
        );
    }

    const REGION: &str = "topology.kubernetes.io/region";
    const ZONE: &str = "topology.kubernetes.io/zone";
    const SUBZONE: &str = "topology.istio.io/subzone";

    #[test]
    fn unknown_readiness_export_to_and_withdrawals() {
        let mut cluster = Cluster::default();
        listed(&mut cluster);
        let service = |kind: &str| {
            serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop",
                             "annotations": {EXPORT_TO_ANNOTATION: ".,ops"}},
                "spec": {"type": kind, "clusterIP": "10.0.0.9", "ports": [{"name": "http", "port": 80}],
                         "externalName": "web.example.com"}
            })
        };
        assert!(cluster.event("Service", event(service("ClusterIP"))));
        cluster.event(
            "EndpointSlice",
            event(serde_json::json!({
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.2"], "conditions": {}}]
            })),
        );
        let docs = cluster.service_entries(&BTreeSet::new());
        let yaml = &docs[0].yaml;
        assert!(yaml.contains("address: 10.1.0.2"), "{yaml}");
        assert!(yaml.contains("- ops") && yaml.contains("- ."), "{yaml}");
        assert!(yaml.contains("- 10.0.0.9"), "{yaml}");
        assert!(
            cluster
                .service_entries(&BTreeSet::from(["web.shop.svc.cluster.local".to_string()]))
                .is_empty(),
            "a taken host is not synthesized"
        );

        assert!(cluster.event("Service", event(service("ExternalName"))), "withdrawn");
        assert!(cluster.service_entries(&BTreeSet::new()).is_empty());

        cluster.event("Service", event(service("ClusterIP")));
        assert_eq!(cluster.service_entries(&BTreeSet::new()).len(), 1);
        // A watch resumed after a break: the Service is not in the new listing.
        cluster.event("Service", watcher::Event::Init);
        assert_eq!(
            cluster.service_entries(&BTreeSet::new()).len(),
            1,
            "served until the listing ends"
        );
        assert!(cluster.event("Service", watcher::Event::InitDone));
        assert!(cluster.service_entries(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn app_protocols_as_istio_reads_them() {
        assert_eq!(protocol_of("kubernetes.io/h2c").as_deref(), Some("HTTP2"));
        assert_eq!(protocol_of("GRPC").as_deref(), Some("GRPC"));
        assert_eq!(protocol_of("kubernetes.io/wss").as_deref(), Some("HTTPS"));
        assert_eq!(protocol_of("example.com/custom"), None);
    }
}
