//! The control plane's Kubernetes side against a fake API server on loopback (plain HTTP, a
//! thread per connection):
//! - the Istio-objects source: list, then watch events (added, modified, deleted), a refused
//!   set that leaves the last good one served;
//! - service discovery: Services, EndpointSlices and Pods recorded from a cluster
//!   (`tests/fixtures/kubernetes/`, Kubernetes' own JSON) served as ServiceEntries, followed
//!   through readiness changes and Pod deletions, a hand-written ServiceEntry taking
//!   precedence, and no config served before every kind was listed;
//! - the CA root kept in the Secret `ringmesh-ca`: created on first start, loaded on restart,
//!   one root for replicas starting together, a damaged Secret reported by key;
//! - service-account tokens checked with TokenReview, through discovery streams that ask for a
//!   certificate: the proven identity gets one, everything else a refusal saying why;
//! - the mesh root published as the ConfigMap `ringmesh-ca-root` in every active namespace
//!   (recorded Namespaces and ConfigMaps): created, recreated, updated, a terminating
//!   namespace and a ConfigMap without our label left alone, a rival replica's 409.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ringmesh_api::proto::{
    control_message, proxy_message, Certificate, CertificateRequest, Workload, PROTOCOL_VERSION,
};
use ringmesh_control::ca::{self, store, Authority, Ca, CaError, CaMaterial, CaSettings};
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::ResourceSet;
use serde_json::{json, Value};
use x509_parser::prelude::FromDer as _;

/// What the fake answers to a TokenReview of one token.
#[derive(Clone, Copy)]
enum Review {
    /// `authenticated: true` as this user.
    User(&'static str),
    /// `authenticated: false` with this `status.error`.
    Unauthenticated(&'static str),
    /// An error status instead of a review: code, reason, message.
    Fails(u16, &'static str, &'static str),
}

/// One request the fake answered (watches aside), and the status it answered with.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    body: Value,
    code: u16,
}

/// What the fake API server holds.
#[derive(Default)]
struct Api {
    /// Watch events waiting per plural.
    pending: HashMap<String, Vec<Value>>,
    /// Objects listed per plural.
    listed: HashMap<String, Vec<Value>>,
    /// Secrets by namespace and name, as a GET returns them.
    secrets: HashMap<(String, String), Value>,
    /// TokenReview answers by token; an unknown token is not authenticated.
    reviews: HashMap<String, Review>,
    /// Every request answered, in order.
    requests: Vec<Request>,
    /// GETs of a Secret are answered only once this many arrived (bounded by [`WAIT`]), each
    /// with what was stored when it arrived: replicas that all find no Secret before any
    /// creates it.
    hold_secret_gets: usize,
    secret_gets: usize,
    /// Plurals whose lists are answered 503 (an API server that cannot list them yet).
    failing: std::collections::HashSet<String>,
    /// ConfigMaps by namespace and name, as a GET returns them; a create or update is also
    /// sent on the ConfigMaps' watch, as the API server does.
    config_maps: std::collections::BTreeMap<(String, String), Value>,
    /// The last resource version given out.
    version: u64,
    /// Namespaces where another replica creates the ConfigMap (this object) just before ours
    /// arrives: our create is answered 409.
    rival_creates: HashMap<String, Value>,
}

#[derive(Default)]
struct Fake {
    api: Mutex<Api>,
    /// Notified on every GET of a Secret.
    secret_get: Condvar,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, Api> {
        self.api.lock().unwrap()
    }

    fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }
}

fn serve(fake: Arc<Fake>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let fake = fake.clone();
            std::thread::spawn(move || connection(s, fake));
        }
    });
    port
}

/// A client of the fake on `port`, as the control plane's own would be.
fn client(port: u16) -> kube::Client {
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// The request line and headers, and the body (by `Content-Length`); `None` once the client
/// closed the connection.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn connection(mut s: TcpStream, fake: Arc<Fake>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some((head, body)) = read_request(&mut s) {
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_string();
        let target = words.next().unwrap_or("").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if query.contains("watch=true") || query.contains("watch=1") {
            let plural = path.rsplit('/').next().unwrap_or("").to_string();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            while Instant::now() < deadline {
                let events = fake.lock().pending.remove(&plural).unwrap_or_default();
                for e in events {
                    let line = format!("{e}\n");
                    if s.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
                        .is_err()
                    {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // Answered and recorded under one lock, so that the record's order is the order the
        // answers were decided in.
        let mut api = fake.lock();
        let (code, answer) = answer(&mut api, &method, path, query, &body);
        let secret_get = method == "GET" && path.contains("/secrets/");
        api.requests.push(Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            body,
            code,
        });
        if secret_get {
            // Decided now, answered once the others held arrived too.
            api.secret_gets += 1;
            fake.secret_get.notify_all();
            let hold = api.hold_secret_gets;
            drop(fake.secret_get.wait_timeout_while(api, WAIT, |a| a.secret_gets < hold));
        } else {
            drop(api);
        }
        let text = match code {
            200 => "OK",
            201 => "Created",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            _ => "Status",
        };
        let answer = answer.to_string();
        let reply = format!(
            "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if s.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The API server's error object.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn answer(api: &mut Api, method: &str, path: &str, query: &str, body: &Value) -> (u16, Value) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["api", "v1", "configmaps"]) => {
            // The field selector the watch asks with, `metadata.name=NAME`, as the API server
            // applies it.
            let name = query
                .split('&')
                .find_map(|p| p.strip_prefix("fieldSelector="))
                .map(|s| s.replace("%3D", "="))
                .and_then(|s| s.strip_prefix("metadata.name=").map(str::to_owned));
            let items: Vec<Value> = api
                .config_maps
                .iter()
                .filter(|((_, n), _)| name.as_ref().is_none_or(|name| n == name))
                .map(|(_, cm)| cm.clone())
                .collect();
            let list = json!({"apiVersion": "v1", "kind": "ConfigMapList",
                              "metadata": {"resourceVersion": api.version.to_string()}, "items": items});
            (200, list)
        }
        ("GET", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
            match api.config_maps.get(&(ns.to_string(), name.to_string())) {
                Some(cm) => (200, cm.clone()),
                None => (
                    404,
                    status(404, "NotFound", &format!("configmaps \"{name}\" not found")),
                ),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "configmaps"]) => {
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (ns.to_string(), name.clone());
            if let Some(rival) = api.rival_creates.remove(*ns) {
                store_config_map(api, rival, "ADDED");
            }
            if api.config_maps.contains_key(&key) {
                let message = format!("configmaps \"{name}\" already exists");
                return (409, status(409, "AlreadyExists", &message));
            }
            (201, store_config_map(api, body.clone(), "ADDED"))
        }
        ("PUT", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
            let key = (ns.to_string(), name.to_string());
            let Some(stored) = api.config_maps.get(&key) else {
                return (
                    404,
                    status(404, "NotFound", &format!("configmaps \"{name}\" not found")),
                );
            };
            if stored["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                let message = format!(
                    "Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please \
                     apply your changes to the latest version and try again"
                );
                return (409, status(409, "Conflict", &message));
            }
            (200, store_config_map(api, body.clone(), "MODIFIED"))
        }
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            match api.secrets.get(&(ns.to_string(), name.to_string())) {
                Some(s) => (200, s.clone()),
                None => (404, status(404, "NotFound", &format!("secrets \"{name}\" not found"))),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (ns.to_string(), name.clone());
            if api.secrets.contains_key(&key) {
                let message = format!("secrets \"{name}\" already exists");
                return (409, status(409, "AlreadyExists", &message));
            }
            let mut stored = body.clone();
            stored["metadata"]["resourceVersion"] = json!("1");
            stored["metadata"]["uid"] = json!(format!("{ns}-{name}"));
            api.secrets.insert(key, stored.clone());
            (201, stored)
        }
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let review = api.reviews.get(token).copied();
            let status = match review {
                Some(Review::User(user)) => {
                    json!({"authenticated": true, "user": {"username": user, "uid": "u-1", "groups": ["system:authenticated"]}})
                }
                Some(Review::Unauthenticated(error)) => json!({"authenticated": false, "error": error}),
                Some(Review::Fails(code, reason, message)) => return (code, status(code, reason, message)),
                None => json!({"authenticated": false, "error": "[invalid bearer token]"}),
            };
            let mut review = body.clone();
            review["status"] = status;
            (201, review)
        }
        _ => {
            let plural = path.rsplit('/').next().unwrap_or("");
            if api.failing.contains(plural) {
                return (
                    503,
                    status(
                        503,
                        "ServiceUnavailable",
                        "the server is currently unable to handle the request",
                    ),
                );
            }
            let items = api.listed.get(plural).cloned().unwrap_or_default();
            let list = json!({"apiVersion": "networking.istio.io/v1", "kind": "List",
                              "metadata": {"resourceVersion": "1"}, "items": items});
            (200, list)
        }
    }
}

/// Stores `cm` with a new resource version, sends it on the ConfigMaps' watch as `event`, and
/// returns it as stored.
fn store_config_map(api: &mut Api, mut cm: Value, event: &str) -> Value {
    api.version += 1;
    cm["metadata"]["resourceVersion"] = json!(api.version.to_string());
    let key = (
        cm["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        cm["metadata"]["name"].as_str().unwrap_or_default().to_string(),
    );
    api.config_maps.insert(key, cm.clone());
    let event = json!({"type": event, "object": cm});
    api.pending.entry("configmaps".into()).or_default().push(event);
    cm
}

fn object(kind: &str, name: &str, rv: u32, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
           "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(), "uid": name},
           "spec": spec})
}

fn vs(name: &str, rv: u32, host: &str) -> Value {
    object(
        "VirtualService",
        name,
        rv,
        json!({"hosts": [host], "http": [{"route": [{"destination": {"host": "reviews.test"}}]}]}),
    )
}

/// How long a test waits for a watch event to be served (and the fake for held requests).
const WAIT: Duration = Duration::from_secs(5);

fn sources(cp: &ControlPlane) -> Vec<String> {
    cp.resources().documents.iter().map(|d| d.source.clone()).collect()
}

#[tokio::test]
async fn istio_objects_are_listed_watched_and_a_bad_set_is_refused() {
    let fake = Arc::new(Fake::default());
    {
        let mut a = fake.lock();
        let se = object(
            "ServiceEntry",
            "reviews",
            1,
            json!({"hosts": ["reviews.test"], "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                   "resolution": "STATIC", "endpoints": [{"address": "127.0.0.1", "labels": {"version": "v1"}}]}),
        );
        a.listed.insert("serviceentries".into(), vec![se]);
        a.listed
            .insert("virtualservices".into(), vec![vs("reviews", 1, "reviews.test")]);
    }
    let client = client(serve(fake.clone()));
    let cp = ControlPlane::new(ResourceSet::default(), ServerConfig::default());
    let (synced, listed) = tokio::sync::oneshot::channel();
    tokio::spawn(ringmesh_control::kubernetes::run(client, cp.clone(), synced));
    tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("listed within 10 s")
        .expect("listed");

    let listed = [
        "kubernetes:serviceentry/default/reviews",
        "kubernetes:virtualservice/default/reviews",
    ];
    if let Err(e) = common::eventually_async(WAIT, "both listed objects served", || sources(&cp) == listed).await {
        panic!("{e}: {:?}", sources(&cp));
    }
    let doc = &cp.resources().documents[1].yaml;
    assert!(
        doc.contains("kind: VirtualService") && doc.contains("reviews.test"),
        "{doc}"
    );
    assert!(
        !doc.contains("resourceVersion"),
        "only name, namespace and labels are served: {doc}"
    );

    // A VirtualService whose timeout is no duration: the set does not compile and is refused.
    let push = |plural: &str, e: Value| fake.lock().pending.entry(plural.into()).or_default().push(e);
    let bad = object(
        "VirtualService",
        "canary",
        2,
        json!({"hosts": ["canary.test"], "http": [{"route": [{"destination": {"host": "reviews.test"}}], "timeout": "soon"}]}),
    );
    // Fixed right after, on the same watch: the control plane handles the two in order, so
    // once the fixed set is served the refused one was handled, and it must not have been
    // served in between (every set served moves the generation by one).
    let generation = cp.generation();
    push("virtualservices", json!({"type": "ADDED", "object": bad}));
    push(
        "virtualservices",
        json!({"type": "MODIFIED", "object": vs("canary", 3, "canary.test")}),
    );
    if let Err(e) = common::eventually_async(WAIT, "the fixed set served", || sources(&cp).len() == 3).await {
        panic!("{e}: {:?}", sources(&cp));
    }
    assert_eq!(
        cp.generation(),
        generation + 1,
        "a refused set must not be served: only the fixed one moves the generation"
    );
    assert!(
        cp.resources().documents.iter().all(|d| !d.yaml.contains("soon")),
        "the refused document is not served: {:?}",
        cp.resources().documents
    );
    push(
        "virtualservices",
        json!({"type": "DELETED", "object": vs("canary", 4, "canary.test")}),
    );
    if let Err(e) = common::eventually_async(WAIT, "the deleted object withdrawn", || sources(&cp).len() == 2).await {
        panic!("{e}: {:?}", sources(&cp));
    }
}

const CA_NAMESPACE: &str = "istio-system";
const SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";
const CA_SECRET: &str = "/api/v1/namespaces/istio-system/secrets/ringmesh-ca";

fn generate() -> Result<CaMaterial, CaError> {
    ca::generate_root("cluster.local")
}

/// For a start that must find the stored root: making one would silently replace it.
fn must_not_generate() -> Result<CaMaterial, CaError> {
    Err(CaError::Invalid {
        what: "test".into(),
        reason: "a new root was made although one is stored".into(),
    })
}

/// `(method, path, status)` of each request.
fn calls(requests: &[Request]) -> Vec<(&str, &str, u16)> {
    requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.code))
        .collect()
}

/// A Secret value (base64) as text.
fn decoded(v: &Value) -> String {
    let b64 = v.as_str().unwrap_or_else(|| panic!("base64 text expected, got {v}"));
    String::from_utf8(BASE64.decode(b64).unwrap()).unwrap()
}

fn is_ca_certificate(pem: &str) -> bool {
    let der = ca::pem_certs("test", pem).unwrap().remove(0);
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).unwrap();
    x.is_ca()
}

#[tokio::test]
async fn the_ca_root_is_created_in_a_secret_and_loaded_from_it_on_restart() {
    let fake = Arc::new(Fake::default());
    let port = serve(fake.clone());
    let (root, created) = store::load_or_create_secret(&client(port), CA_NAMESPACE, generate)
        .await
        .unwrap();
    assert!(created, "there was no Secret: the root is made");
    let requests = fake.requests();
    assert_eq!(calls(&requests), [("GET", CA_SECRET, 404), ("POST", SECRETS, 201)]);
    let posted = &requests[1].body;
    assert_eq!(posted["metadata"]["name"], "ringmesh-ca", "{posted}");
    assert_eq!(posted["metadata"]["namespace"], CA_NAMESPACE, "{posted}");
    assert_eq!(posted["type"], "Opaque", "{posted}");
    let (cert_pem, key_pem) = (
        decoded(&posted["data"]["ca-cert.pem"]),
        decoded(&posted["data"]["ca-key.pem"]),
    );
    assert_eq!(
        (cert_pem.as_str(), key_pem.as_str()),
        (root.cert_pem.as_str(), root.key_pem.as_str())
    );
    assert!(
        is_ca_certificate(&cert_pem),
        "the stored certificate is a CA's: {cert_pem}"
    );
    let first = Ca::new(&root, CaSettings::default()).expect("the stored pair is a CA and its key");

    // A restart (a new client, a new process as far as the API server can tell) loads it.
    let (again, created) = store::load_or_create_secret(&client(port), CA_NAMESPACE, must_not_generate)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, root, "the restart signs with the stored root");
    let restarted = Ca::new(&again, CaSettings::default()).unwrap();
    assert_eq!(
        restarted.trust_bundle(),
        first.trust_bundle(),
        "the same certificate bytes"
    );
    assert_eq!(
        calls(&fake.requests())[2..],
        [("GET", CA_SECRET, 200)],
        "a restart only reads"
    );
}

#[tokio::test]
async fn replicas_starting_together_agree_on_one_root() {
    let fake = Arc::new(Fake::default());
    // Both replicas' GETs are answered only once both arrived: both find no Secret, both make
    // a root and create it, and the API server takes one.
    fake.lock().hold_secret_gets = 2;
    let port = serve(fake.clone());
    let (a, b) = (client(port), client(port));
    let (a, b) = tokio::join!(
        store::load_or_create_secret(&a, CA_NAMESPACE, generate),
        store::load_or_create_secret(&b, CA_NAMESPACE, generate),
    );
    let ((a, a_created), (b, b_created)) = (a.unwrap(), b.unwrap());
    assert!(
        a_created != b_created,
        "one replica created the Secret, the other read it"
    );
    assert_eq!(a, b, "both replicas sign with one root");
    let stored = fake.lock().secrets[&(CA_NAMESPACE.to_string(), "ringmesh-ca".to_string())].clone();
    assert_eq!(decoded(&stored["data"]["ca-cert.pem"]), a.cert_pem);
    assert_eq!(decoded(&stored["data"]["ca-key.pem"]), a.key_pem);

    let requests = fake.requests();
    let mut calls = calls(&requests);
    let (gets_first, rest) = calls.split_at_mut(2);
    assert_eq!(gets_first, [("GET", CA_SECRET, 404); 2], "both found no Secret");
    rest.sort();
    assert_eq!(
        rest,
        [("GET", CA_SECRET, 200), ("POST", SECRETS, 201), ("POST", SECRETS, 409)],
        "the second create was refused (409), and that replica read the winner's root"
    );
}

#[tokio::test]
async fn a_secret_missing_a_key_or_holding_garbage_is_an_error_naming_both() {
    let fake = Arc::new(Fake::default());
    let port = serve(fake.clone());
    let root = generate().unwrap();
    let other = generate().unwrap();
    let b64 = |s: &[u8]| json!(BASE64.encode(s));
    let (cert, key) = (b64(root.cert_pem.as_bytes()), b64(root.key_pem.as_bytes()));
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("no key", json!({"ca-cert.pem": cert}), &["has no ca-key.pem"]),
        ("no certificate", json!({"ca-key.pem": key}), &["has no ca-cert.pem"]),
        ("no data", json!({}), &["has no ca-cert.pem"]),
        (
            "a certificate that is no PEM",
            json!({"ca-cert.pem": b64(b"not a certificate"), "ca-key.pem": key}),
            &["ca-cert.pem: no CERTIFICATE block"],
        ),
        (
            "a certificate that is not text",
            json!({"ca-cert.pem": b64(&[0xff, 0xfe, 0x00]), "ca-key.pem": key}),
            &["ca-cert.pem is not text"],
        ),
        (
            "a key that is no PEM",
            json!({"ca-cert.pem": cert, "ca-key.pem": b64(b"not a key")}),
            &["ca-key.pem: not a PEM private key"],
        ),
        (
            "another root's key",
            json!({"ca-cert.pem": cert, "ca-key.pem": b64(other.key_pem.as_bytes())}),
            &["ca-cert.pem and ca-key.pem", "not the key of the CA certificate"],
        ),
    ];
    for (case, data, wanted) in cases {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "ringmesh-ca", "namespace": CA_NAMESPACE, "resourceVersion": "1"},
            "data": data});
        fake.lock()
            .secrets
            .insert((CA_NAMESPACE.into(), "ringmesh-ca".into()), secret);
        let e = store::load_or_create_secret(&client(port), CA_NAMESPACE, must_not_generate)
            .await
            .expect_err(case)
            .to_string();
        assert!(e.contains("istio-system/ringmesh-ca"), "{case}: names the Secret: {e}");
        for w in wanted {
            assert!(e.contains(w), "{case}: {w:?} expected in {e}");
        }
    }
    assert!(
        fake.requests().iter().all(|r| r.method == "GET"),
        "a damaged Secret is never replaced: {:?}",
        calls(&fake.requests())
    );
}

const REVIEWS_TOKEN: &str = "sa-token-shop-reviews";
const EXPIRED_TOKEN: &str = "sa-token-expired";
const FORBIDDEN_TOKEN: &str = "sa-token-forbidden";
const ADMIN_TOKEN: &str = "user-token-admin";
const REVIEWS_ID: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

/// A fake that reviews the tokens above.
fn token_reviewer() -> (Arc<Fake>, kube::Client) {
    let fake = Arc::new(Fake::default());
    fake.lock().reviews = [
        (REVIEWS_TOKEN, Review::User("system:serviceaccount:shop:reviews")),
        (EXPIRED_TOKEN, Review::Unauthenticated("service account token has expired")),
        (
            FORBIDDEN_TOKEN,
            Review::Fails(
                403,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:istio-system:ringmesh-control\" \
                 cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
            ),
        ),
        (ADMIN_TOKEN, Review::User("kubernetes-admin")),
    ]
    .into_iter()
    .map(|(t, r)| (t.to_string(), r))
    .collect();
    let port = serve(fake.clone());
    (fake, client(port))
}

/// A control plane running a CA that checks Kubernetes tokens with `kube`; its discovery
/// address and root.
async fn control_plane(kube: kube::Client, require_credential: bool) -> (SocketAddr, Vec<u8>) {
    let ca = Ca::new(&generate().unwrap(), CaSettings::default()).unwrap();
    let root = ca.trust_bundle()[0].as_ref().to_vec();
    let authority = Authority {
        ca,
        kube: Some(kube),
        require_credential,
    };
    let config = ServerConfig {
        debounce: Duration::from_millis(10),
        ..Default::default()
    };
    let cp = ControlPlane::new(ResourceSet::default(), config).with_authority(Arc::new(authority));
    (common::serve_discovery(&cp).await, root)
}

/// The `Hello` of node `node`, workload `ns/sa`, sending `credential`.
fn hello(node: &str, ns: &str, sa: &str, credential: &str) -> ringmesh_api::proto::ProxyMessage {
    let workload = Workload {
        name: node.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        ..Default::default()
    };
    let mut hello = common::hello(node, workload, PROTOCOL_VERSION);
    if let Some(proxy_message::Message::Hello(h)) = &mut hello.message {
        h.credential = credential.into();
    }
    hello
}

/// A CSR with a new key for `spiffe`, as a proxy makes it.
fn csr(spiffe: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.to_string().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// Opens a discovery stream as a proxy of workload `ns/sa` sending `credential`, asks for a
/// certificate for that workload, and returns the answer: the certificate, or the refusal's
/// reason.
async fn ask_certificate(
    addr: SocketAddr,
    node: &str,
    ns: &str,
    sa: &str,
    credential: &str,
) -> Result<Certificate, String> {
    let mut proxy = common::FakeProxy::connect(addr, hello(node, ns, sa, credential)).await;
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    proxy
        .send(proxy_message::Message::CertificateRequest(CertificateRequest {
            request_id: 7,
            csr_der: csr(&spiffe),
            lifetime_seconds: 0,
        }))
        .await;
    // Config comes on the stream too; the answer is among the next few messages.
    for _ in 0..20 {
        match proxy.next().await.expect("the stream stays open").message {
            Some(control_message::Message::Certificate(c)) => {
                assert_eq!(c.request_id, 7);
                return Ok(c);
            }
            Some(control_message::Message::CertificateRefusal(r)) => {
                assert_eq!(r.request_id, 7);
                return Err(r.reason);
            }
            _ => {}
        }
    }
    panic!("{node}: no answer to the certificate request");
}

/// The leaf's URI names, and whether the root issued it.
fn leaf_names(c: &Certificate, root: &[u8]) -> (Vec<String>, bool) {
    use x509_parser::extensions::GeneralName;
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&c.chain_der[0]).unwrap();
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(root).unwrap();
    let san = leaf.subject_alternative_name().unwrap().expect("a SAN extension");
    let uris = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    (uris, leaf.issuer() == root.subject())
}

#[tokio::test]
async fn service_account_tokens_are_checked_with_token_review() {
    let (fake, kube) = token_reviewer();
    let (addr, root) = control_plane(kube, false).await;

    // The token's service account, announced as such: a certificate for it.
    let c = ask_certificate(addr, "reviews-1", "shop", "reviews", REVIEWS_TOKEN)
        .await
        .expect("a certificate for the proven service account");
    assert_eq!(leaf_names(&c, &root), (vec![REVIEWS_ID.to_string()], true));
    assert_eq!(c.trust_bundle_der, std::slice::from_ref(&root));

    // The same token from a proxy announcing another service account: refused, naming both.
    let e = ask_certificate(addr, "ratings-1", "shop", "ratings", REVIEWS_TOKEN)
        .await
        .expect_err("a token for another service account");
    assert!(e.contains(REVIEWS_ID) && e.contains("shop/ratings"), "{e}");

    // Not authenticated: the API server's reason is passed on.
    let e = ask_certificate(addr, "reviews-2", "shop", "reviews", EXPIRED_TOKEN)
        .await
        .expect_err("an expired token");
    assert!(
        e.contains("TokenReview")
            && e.contains("did not authenticate")
            && e.contains("service account token has expired"),
        "{e}"
    );

    // The control plane may not create TokenReviews: the 403 and what to grant.
    let e = ask_certificate(addr, "reviews-3", "shop", "reviews", FORBIDDEN_TOKEN)
        .await
        .expect_err("a forbidden TokenReview");
    assert!(
        e.starts_with("TokenReview failed: 403 Forbidden: tokenreviews.authentication.k8s.io is forbidden")
            && e.contains("needs `create` on `tokenreviews`"),
        "{e}"
    );
    assert!(
        !e.contains("Status {"),
        "the API server's answer, not kube's debug dump: {e}"
    );

    // A person's token (authenticated, but no service account) proves no workload.
    let e = ask_certificate(addr, "reviews-4", "shop", "reviews", ADMIN_TOKEN)
        .await
        .expect_err("a user account's token");
    assert!(
        e.contains("\"kubernetes-admin\"") && e.contains("not to a service account"),
        "{e}"
    );

    // Each stream asked the API server once, with the token the proxy sent.
    let reviewed: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .map(|r| r.body["spec"]["token"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        reviewed,
        [
            REVIEWS_TOKEN,
            REVIEWS_TOKEN,
            EXPIRED_TOKEN,
            FORBIDDEN_TOKEN,
            ADMIN_TOKEN
        ]
    );
}

#[tokio::test]
async fn require_credential_refuses_the_stream_a_token_review_refuses() {
    let (_fake, kube) = token_reviewer();
    let (addr, _) = control_plane(kube, true).await;
    for (token, wanted) in [
        (FORBIDDEN_TOKEN, "TokenReview failed: 403 Forbidden"),
        (EXPIRED_TOKEN, "did not authenticate"),
    ] {
        let refused = common::FakeProxy::try_connect(addr, hello("reviews-1", "shop", "reviews", token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{token}: the stream opened"));
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains(wanted), "{token}: {refused:?}");
    }
    let c = ask_certificate(addr, "reviews-2", "shop", "reviews", REVIEWS_TOKEN)
        .await
        .expect("the proven service account is served");
    assert!(!c.chain_der.is_empty());
}

// Service discovery.

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";
const API_SERVER: &str = "kubernetes.default.svc.cluster.local";
/// The ready, meshed `reviews` Pod (`version: v1`), at its container port `web`.
const REVIEWS_V1: (&str, bool) = ("10.244.1.12:8080", true);
/// The `reviews` Pod without a sidecar (`version: v2`), not ready in the recorded slice.
const REVIEWS_V2: (&str, bool) = ("10.244.2.17:8080", false);

/// The items of a list recorded with `kubectl get -o json` under `tests/fixtures/kubernetes/`.
fn recorded(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubernetes")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    list["items"].as_array().expect("a list").clone()
}

/// The recorded object `name` of `file`.
fn recorded_one(file: &str, name: &str) -> Value {
    recorded(file)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {file}"))
}

/// An Istio object in namespace `shop`.
fn in_shop(kind: &str, name: &str, spec: Value) -> Value {
    let mut o = object(kind, name, 1, spec);
    o["metadata"]["namespace"] = json!("shop");
    o
}

/// Routes `reviews` (a short name, resolved in `shop`) to the subset of Pods labelled
/// `app: reviews`.
fn reviews_routing() -> [(&'static str, Value); 2] {
    [
        (
            "virtualservices",
            in_shop(
                "VirtualService",
                "reviews",
                json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "live"}}]}]}),
            ),
        ),
        (
            "destinationrules",
            in_shop(
                "DestinationRule",
                "reviews",
                json!({"host": "reviews", "subsets": [{"name": "live", "labels": {"app": "reviews"}}]}),
            ),
        ),
    ]
}

/// A fake API server listing the recorded Services, EndpointSlices and Pods, and `istio`
/// (plural, object).
fn cluster(istio: impl IntoIterator<Item = (&'static str, Value)>) -> Arc<Fake> {
    let fake = Arc::new(Fake::default());
    {
        let mut a = fake.lock();
        for (plural, file) in [
            ("services", "services.json"),
            ("endpointslices", "endpointslices.json"),
            ("pods", "pods.json"),
        ] {
            a.listed.insert(plural.into(), recorded(file));
        }
        for (plural, o) in istio {
            a.listed.entry(plural.into()).or_default().push(o);
        }
    }
    fake
}

/// Runs the Kubernetes source against `fake`; the control plane once its first set is served.
async fn follow(fake: &Arc<Fake>) -> ControlPlane {
    let config = ServerConfig {
        debounce: Duration::from_millis(10),
        ..Default::default()
    };
    let cp = ControlPlane::new(ResourceSet::default(), config);
    let (synced, listed) = tokio::sync::oneshot::channel();
    tokio::spawn(ringmesh_control::kubernetes::run(
        client(serve(fake.clone())),
        cp.clone(),
        synced,
    ));
    tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("listed within 10 s")
        .expect("listed");
    cp
}

/// A proxy of a workload in `shop`, connected to `cp`.
async fn shop_proxy(cp: &ControlPlane) -> common::FakeProxy {
    let addr = common::serve_discovery(cp).await;
    let workload = Workload {
        name: "productpage-1".into(),
        namespace: "shop".into(),
        service_account: "bookinfo-productpage".into(),
        ..Default::default()
    };
    common::FakeProxy::connect(addr, common::hello("productpage-1", workload, PROTOCOL_VERSION)).await
}

/// What the proxy compiles from a snapshot it received (its own files aside).
fn compiled(s: &ringmesh_api::proto::Snapshot) -> ringmesh_api::snapshot::Snapshot {
    let mut resources = Vec::new();
    for d in &s.documents {
        let (mut r, _) =
            ringmesh_api::load_str(&d.source, &d.yaml).unwrap_or_else(|e| panic!("{}: {e:?}\n{}", d.source, d.yaml));
        resources.append(&mut r);
    }
    let input = ringmesh_api::CompileInput {
        resources,
        extra_endpoints: Vec::new(),
        version: s.version,
    };
    ringmesh_api::compile(&input)
        .unwrap_or_else(|e| panic!("the served set compiles: {e:?}"))
        .snapshot
}

/// The endpoints (address, meshed) of the cluster of `host` (its only port) and `subset`.
fn endpoints(s: &ringmesh_api::snapshot::Snapshot, host: &str, subset: Option<&str>) -> Vec<(String, bool)> {
    let cluster = s
        .clusters
        .iter()
        .find(|c| c.service == host && c.subset.as_deref() == subset)
        .unwrap_or_else(|| {
            let names: Vec<&str> = s.clusters.iter().map(|c| c.name.as_str()).collect();
            panic!("no cluster for {host} subset {subset:?} among {names:?}")
        });
    cluster
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.meshed))
        .collect()
}

/// The `live` subset of `reviews`, as the proxy compiles `s`.
fn live(s: &ringmesh_api::proto::Snapshot) -> Vec<(String, bool)> {
    endpoints(&compiled(s), REVIEWS, Some("live"))
}

fn owned(endpoints: &[(&str, bool)]) -> Vec<(String, bool)> {
    endpoints.iter().map(|(a, m)| (a.to_string(), *m)).collect()
}

/// The served ServiceEntry from `source`, as the compiler reads it.
fn served_service_entry(s: &ringmesh_api::proto::Snapshot, source: &str) -> ringmesh_api::resources::ServiceEntry {
    let d = s
        .documents
        .iter()
        .find(|d| d.source == source)
        .unwrap_or_else(|| panic!("{source} served"));
    let (resources, _) = ringmesh_api::load_str(&d.source, &d.yaml).unwrap();
    match resources.into_iter().next() {
        Some(ringmesh_api::resources::Resource::ServiceEntry(se)) => se,
        other => panic!("{source}: a ServiceEntry expected, got {other:?}"),
    }
}

/// Sends a watch event for `object` on the watch of `plural`.
fn push(fake: &Fake, plural: &str, kind: &str, object: Value) {
    let event = json!({"type": kind, "object": object});
    fake.lock().pending.entry(plural.into()).or_default().push(event);
}

/// The recorded `reviews` slice with the `reviews-v2` endpoint ready or not.
fn reviews_slice(v2_ready: bool, rv: u32) -> Value {
    let mut slice = recorded_one("endpointslices.json", "reviews-9tz4m");
    slice["endpoints"][1]["conditions"] = json!({"ready": v2_ready, "serving": v2_ready, "terminating": false});
    slice["metadata"]["resourceVersion"] = json!(rv.to_string());
    slice
}

#[tokio::test]
async fn services_reach_their_ready_pods_without_a_service_entry() {
    let fake = cluster(reviews_routing());
    let cp = follow(&fake).await;
    assert_eq!(
        sources(&cp),
        [
            "kubernetes:destinationrule/shop/reviews",
            "kubernetes:virtualservice/shop/reviews",
            "kubernetes:service/default/kubernetes",
            "kubernetes:service/shop/ratings",
            "kubernetes:service/shop/reviews",
        ],
        "one ServiceEntry per Service; the ExternalName Service `payments` is not served"
    );
    assert_eq!(
        cp.resources().resources.len(),
        2,
        "`get` lists the objects users wrote, not the synthesized ones"
    );

    let mut proxy = shop_proxy(&cp).await;
    let s = proxy.snapshot().await;
    let c = compiled(&s);
    // The VirtualService's `reviews` is the Service's host; only the ready Pod is reached, at
    // the port its slice gives for the Service's named target port, meshed by its
    // `ringmesh.io/status` annotation.
    assert_eq!(endpoints(&c, REVIEWS, Some("live")), owned(&[REVIEWS_V1]));
    assert_eq!(endpoints(&c, REVIEWS, None), owned(&[REVIEWS_V1]));
    // Headless: no VIP, the Pod is reached all the same; meshed by Istio's own Pod label.
    assert_eq!(endpoints(&c, RATINGS, None), owned(&[("10.244.1.30:9090", true)]));
    // An endpoint that is no Pod (the API server's): served, not meshed.
    assert_eq!(endpoints(&c, API_SERVER, None), owned(&[("172.18.0.2:6443", false)]));
    assert!(
        c.clusters.iter().all(|cl| !cl.service.starts_with("payments.")),
        "ExternalName Services are not served"
    );

    let reviews = served_service_entry(&s, "kubernetes:service/shop/reviews");
    assert_eq!(reviews.spec.hosts, [REVIEWS]);
    assert_eq!(reviews.spec.addresses, ["10.96.14.20"], "the cluster IP is the VIP");
    assert_eq!(
        (
            reviews.spec.ports[0].name.as_str(),
            reviews.spec.ports[0].protocol.as_deref()
        ),
        ("http", None),
        "no appProtocol: the port name decides, as Istio reads it"
    );
    let [v1] = reviews.spec.endpoints.as_slice() else {
        panic!("one ready endpoint: {:?}", reviews.spec.endpoints)
    };
    assert_eq!(v1.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(
        v1.labels.get("version").map(String::as_str),
        Some("v1"),
        "the Pod's labels"
    );
    let ratings = served_service_entry(&s, "kubernetes:service/shop/ratings");
    assert!(
        ratings.spec.addresses.is_empty(),
        "headless: {:?}",
        ratings.spec.addresses
    );
    assert_eq!(
        ratings.spec.ports[0].protocol.as_deref(),
        Some("GRPC"),
        "appProtocol: grpc"
    );
}

#[tokio::test]
async fn endpoints_follow_readiness_and_pod_deletion() {
    let fake = cluster(reviews_routing());
    let cp = follow(&fake).await;
    let mut proxy = shop_proxy(&cp).await;
    let first = proxy.snapshot().await;
    assert_eq!(live(&first), owned(&[REVIEWS_V1]));
    proxy.ack(&first).await;

    // The sidecar-less Pod turns ready: reached, and not meshed.
    push(&fake, "endpointslices", "MODIFIED", reviews_slice(true, 2));
    let wanted = owned(&[REVIEWS_V1, REVIEWS_V2]);
    let s = proxy.snapshot_where(WAIT, |s| live(s) == wanted).await;
    assert!(s.is_some(), "the ready Pod added: {:?}", live(&cp_snapshot(&cp)));

    // A Pod deleted before its slice is updated is withdrawn at once, from the service too
    // (not merely from the subset, as an endpoint without its Pod's labels would be).
    let v1 = recorded_one("pods.json", "reviews-v1-5c7b9d8f6-abcde");
    push(&fake, "pods", "DELETED", v1);
    let wanted = owned(&[REVIEWS_V2]);
    let s = proxy
        .snapshot_where(WAIT, |s| {
            let c = compiled(s);
            endpoints(&c, REVIEWS, Some("live")) == wanted && endpoints(&c, REVIEWS, None) == wanted
        })
        .await;
    assert!(s.is_some(), "the deleted Pod withdrawn: {:?}", live(&cp_snapshot(&cp)));

    // Not ready again: withdrawn, and the subset is empty.
    push(&fake, "endpointslices", "MODIFIED", reviews_slice(false, 3));
    let s = proxy.snapshot_where(WAIT, |s| live(s).is_empty()).await;
    assert!(
        s.is_some(),
        "the not-ready Pod withdrawn: {:?}",
        live(&cp_snapshot(&cp))
    );
}

/// What the control plane serves now, as a snapshot of its documents (for failure messages).
fn cp_snapshot(cp: &ControlPlane) -> ringmesh_api::proto::Snapshot {
    ringmesh_api::proto::Snapshot {
        documents: cp.resources().documents,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_service_entry_written_for_a_services_host_takes_precedence() {
    let by_hand = in_shop(
        "ServiceEntry",
        "reviews-by-hand",
        json!({"hosts": ["reviews"], "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
               "resolution": "STATIC", "endpoints": [{"address": "192.0.2.10", "labels": {"app": "reviews"}}]}),
    );
    let fake = cluster(
        reviews_routing()
            .into_iter()
            .chain([("serviceentries", by_hand.clone())]),
    );
    let cp = follow(&fake).await;
    let served = sources(&cp);
    assert!(
        served
            .iter()
            .any(|s| s == "kubernetes:serviceentry/shop/reviews-by-hand")
            && !served.iter().any(|s| s == "kubernetes:service/shop/reviews")
            && served.iter().any(|s| s == "kubernetes:service/shop/ratings"),
        "the hand-written ServiceEntry replaces only the Service of its host: {served:?}"
    );
    let mut proxy = shop_proxy(&cp).await;
    let s = proxy.snapshot().await;
    assert_eq!(live(&s), owned(&[("192.0.2.10:9080", false)]));
    proxy.ack(&s).await;

    // Deleted: the Service is served again.
    push(&fake, "serviceentries", "DELETED", by_hand);
    let wanted = owned(&[REVIEWS_V1]);
    let s = proxy.snapshot_where(WAIT, |s| live(s) == wanted).await;
    assert!(s.is_some(), "the Service's Pods back: {:?}", sources(&cp));
}

#[tokio::test]
async fn nothing_is_served_before_services_slices_and_pods_were_listed() {
    let fake = cluster(reviews_routing());
    fake.lock().failing.insert("pods".into());
    let cp = ControlPlane::new(ResourceSet::default(), ServerConfig::default());
    let (synced, mut listed) = tokio::sync::oneshot::channel();
    tokio::spawn(ringmesh_control::kubernetes::run(
        client(serve(fake.clone())),
        cp.clone(),
        synced,
    ));
    // Two refused lists of Pods: the first was retried after a back-off, and every other kind
    // was listed long before.
    let refused = || {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/pods" && r.code == 503)
            .count()
    };
    if let Err(e) = common::eventually_async(WAIT, "the Pods list refused twice", || refused() >= 2).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    assert!(listed.try_recv().is_err(), "synced before the Pods were listed");
    assert!(cp.resources().documents.is_empty(), "{:?}", sources(&cp));

    fake.lock().failing.clear();
    tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("listed within 10 s once the Pods list")
        .expect("listed");
    assert!(
        sources(&cp).iter().any(|s| s == "kubernetes:service/shop/reviews"),
        "{:?}",
        sources(&cp)
    );
}

// The mesh root in every namespace.

use ringmesh_control::kubernetes::ca_root::{self, RootConfigMap};

/// The ConfigMap the injector mounts (`inject::settings`), and its key.
const ROOT_CONFIG_MAP: &str = "ringmesh-ca-root";
const ROOT_KEY: &str = "root-cert.pem";

/// A fake listing the recorded Namespaces `namespaces` (by name, from `namespaces.json`) and
/// holding the recorded ConfigMaps of `config_maps` (by namespace, from `configmaps.json`), and
/// a publisher of a new root's bundle running against it; the bundle, as `ringmesh ca root`
/// prints it.
async fn publishing(namespaces: &[&str], config_maps: &[&str]) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    {
        let mut a = fake.lock();
        a.version = 100_000;
        let listed = namespaces.iter().map(|n| recorded_one("namespaces.json", n)).collect();
        a.listed.insert("namespaces".into(), listed);
        for cm in recorded("configmaps.json") {
            let ns = cm["metadata"]["namespace"].as_str().unwrap().to_string();
            if config_maps.contains(&ns.as_str()) {
                let name = cm["metadata"]["name"].as_str().unwrap().to_string();
                a.config_maps.insert((ns, name), cm);
            }
        }
    }
    let ca = Ca::new(&generate().unwrap(), CaSettings::default()).unwrap();
    let bundle = ca::to_pem(ca.trust_bundle());
    let root = RootConfigMap::of(ROOT_CONFIG_MAP, &ca);
    assert_eq!(
        root,
        RootConfigMap {
            name: ROOT_CONFIG_MAP.into(),
            key: ROOT_KEY.into(),
            pem: bundle.clone()
        }
    );
    tokio::spawn(ca_root::run(client(serve(fake.clone())), root));
    (fake, bundle)
}

/// The ConfigMap stored in `ns`.
fn root_config_map(fake: &Fake, ns: &str) -> Option<Value> {
    fake.lock()
        .config_maps
        .get(&(ns.to_string(), ROOT_CONFIG_MAP.to_string()))
        .cloned()
}

/// Whether `ns` holds the published ConfigMap: `bundle` under the key, our label.
fn published(fake: &Fake, ns: &str, bundle: &str) -> bool {
    root_config_map(fake, ns).is_some_and(|cm| {
        cm["data"] == json!({ROOT_KEY: bundle})
            && cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ringmesh-control"
    })
}

/// The writes of ConfigMaps: `(method, namespace, status)`.
fn config_map_writes(fake: &Fake) -> Vec<(String, String, u16)> {
    fake.requests()
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/configmaps"))
        .map(|r| {
            (
                r.method.clone(),
                r.path.split('/').nth(4).unwrap_or_default().to_string(),
                r.code,
            )
        })
        .collect()
}

fn write(method: &str, ns: &str, code: u16) -> (String, String, u16) {
    (method.to_string(), ns.to_string(), code)
}

/// Sends `ns` on the Namespaces' watch as added.
fn add_namespace(fake: &Fake, ns: &str) {
    let mut o = recorded_one("namespaces.json", "shop");
    o["metadata"]["name"] = json!(ns);
    o["metadata"]["labels"] = json!({"kubernetes.io/metadata.name": ns});
    o["metadata"]["uid"] = json!(format!("uid-{ns}"));
    push(fake, "namespaces", "ADDED", o);
}

/// A point after which what the publisher did about every event sent before can be counted:
/// the namespace `marker` is added (on the Namespaces' watch) and its ConfigMap awaited, then
/// that ConfigMap is deleted (on the ConfigMaps' watch) and awaited again. Each watch delivers
/// in order, and the publisher handles one event at a time. Leaves two creates in `marker`.
/// Someone deletes `namespace`'s root ConfigMap: gone from the store, and the watch says so.
fn delete_root_config_map(fake: &Fake, namespace: &str) {
    let gone = fake
        .lock()
        .config_maps
        .remove(&(namespace.into(), ROOT_CONFIG_MAP.into()))
        .unwrap();
    push(fake, "configmaps", "DELETED", gone);
}

async fn handled_so_far(fake: &Fake, marker: &str, bundle: &str) {
    add_namespace(fake, marker);
    let made = || published(fake, marker, bundle);
    if let Err(e) = common::eventually_async(WAIT, "the marker namespace published", made).await {
        panic!("{e}: {:?}", config_map_writes(fake));
    }
    delete_root_config_map(fake, marker);
    let made_again = || published(fake, marker, bundle);
    if let Err(e) = common::eventually_async(WAIT, "the marker's ConfigMap made again", made_again).await {
        panic!("{e}: {:?}", config_map_writes(fake));
    }
}

#[tokio::test]
async fn every_active_namespace_gets_the_mesh_root() {
    let (fake, bundle) = publishing(&["default", "kube-system", "shop"], &[]).await;
    // The cluster's own namespaces are left out, as Istio leaves them.
    let all = ["default", "shop"];
    let done = || all.iter().all(|ns| published(&fake, ns, &bundle));
    if let Err(e) = common::eventually_async(WAIT, "every namespace published", done).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    assert!(is_ca_certificate(&bundle), "the trust bundle is the root: {bundle}");
    let shop = root_config_map(&fake, "shop").unwrap();
    assert_eq!(
        shop["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "ringmesh-control"})
    );
    assert_eq!(shop["data"].as_object().unwrap().len(), 1, "one key: {shop}");
    // Only ConfigMaps of that name are watched (the field selector).
    let lists: Vec<Request> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/configmaps")
        .collect();
    assert!(
        !lists.is_empty()
            && lists
                .iter()
                .all(|r| r.query.contains("fieldSelector=metadata.name%3Dringmesh-ca-root")),
        "{lists:?}"
    );
    // Our own creates come back on the watch and change nothing.
    handled_so_far(&fake, "marker", &bundle).await;
    let mut writes = config_map_writes(&fake);
    writes.sort();
    assert_eq!(
        writes,
        ["default", "marker", "marker", "shop"].map(|ns| write("POST", ns, 201)),
        "one create per namespace, none in kube-system, nothing more"
    );
}

#[tokio::test]
async fn a_namespace_created_later_gets_it() {
    let (fake, bundle) = publishing(&["shop"], &[]).await;
    if let Err(e) = common::eventually_async(WAIT, "shop published", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    assert!(root_config_map(&fake, "ratings").is_none());
    add_namespace(&fake, "ratings");
    if let Err(e) = common::eventually_async(WAIT, "the new namespace published", || {
        published(&fake, "ratings", &bundle)
    })
    .await
    {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
}

#[tokio::test]
async fn a_deleted_config_map_comes_back() {
    let (fake, bundle) = publishing(&["shop"], &[]).await;
    if let Err(e) = common::eventually_async(WAIT, "shop published", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    // A user deletes it: gone from the store, and the watch says so.
    delete_root_config_map(&fake, "shop");
    if let Err(e) = common::eventually_async(WAIT, "shop published again", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    assert_eq!(
        config_map_writes(&fake),
        [write("POST", "shop", 201), write("POST", "shop", 201)]
    );
}

#[tokio::test]
async fn a_config_map_holding_another_root_is_updated() {
    // `shop` holds ours (labelled) with the root of before a rotation.
    let (fake, bundle) = publishing(&["shop"], &["shop"]).await;
    let before = root_config_map(&fake, "shop").unwrap();
    assert_ne!(before["data"][ROOT_KEY], json!(bundle));
    if let Err(e) = common::eventually_async(WAIT, "shop updated", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    let requests = fake.requests();
    let put = requests.iter().find(|r| r.method == "PUT").expect("an update");
    assert_eq!(put.path, "/api/v1/namespaces/shop/configmaps/ringmesh-ca-root");
    assert_eq!(
        put.body["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the update names the version it replaces: {}",
        put.body
    );
    assert_eq!(
        put.body["metadata"]["labels"]["team"], "shop",
        "other labels are kept: {}",
        put.body
    );
    assert_eq!(put.body["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        config_map_writes(&fake),
        [write("PUT", "shop", 200)],
        "updated, never created"
    );
}

#[tokio::test]
async fn a_config_map_without_our_label_is_left_alone() {
    // `payments` holds one created by hand, holding another CA's root.
    let (fake, bundle) = publishing(&["payments", "shop"], &["payments"]).await;
    let theirs = root_config_map(&fake, "payments").unwrap();
    if let Err(e) = common::eventually_async(WAIT, "shop published", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    // Even when it changes, or is handed over by its label.
    let mut edited = theirs.clone();
    edited["metadata"]["resourceVersion"] = json!("48400");
    edited["data"]["extra.pem"] = json!("x");
    fake.lock()
        .config_maps
        .insert(("payments".into(), ROOT_CONFIG_MAP.into()), edited.clone());
    push(&fake, "configmaps", "MODIFIED", edited.clone());
    handled_so_far(&fake, "marker", &bundle).await;
    assert_eq!(root_config_map(&fake, "payments").unwrap(), edited);
    let mut writes = config_map_writes(&fake);
    writes.sort();
    assert_eq!(
        writes,
        [
            write("POST", "marker", 201),
            write("POST", "marker", 201),
            write("POST", "shop", 201)
        ],
        "payments untouched"
    );

    let mut handed_over = edited;
    handed_over["metadata"]["resourceVersion"] = json!("48401");
    handed_over["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "ringmesh-control"});
    fake.lock()
        .config_maps
        .insert(("payments".into(), ROOT_CONFIG_MAP.into()), handed_over.clone());
    push(&fake, "configmaps", "MODIFIED", handed_over);
    if let Err(e) =
        common::eventually_async(WAIT, "payments taken over", || published(&fake, "payments", &bundle)).await
    {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
}

#[tokio::test]
async fn a_terminating_namespace_is_skipped() {
    let (fake, bundle) = publishing(&["reviews-old", "shop"], &[]).await;
    if let Err(e) = common::eventually_async(WAIT, "shop published", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    // `reviews-old` was listed first (by name) and decided in the same pass.
    assert!(root_config_map(&fake, "reviews-old").is_none());
    assert_eq!(config_map_writes(&fake), [write("POST", "shop", 201)]);

    // `shop` is deleted: it turns terminating, then its ConfigMap goes.
    let mut leaving = recorded_one("namespaces.json", "shop");
    leaving["metadata"]["deletionTimestamp"] = json!("2026-12-06T17:02:41Z");
    leaving["status"]["phase"] = json!("Terminating");
    push(&fake, "namespaces", "MODIFIED", leaving);
    delete_root_config_map(&fake, "shop");
    handled_so_far(&fake, "marker", &bundle).await;
    assert_eq!(
        config_map_writes(&fake),
        [
            write("POST", "shop", 201),
            write("POST", "marker", 201),
            write("POST", "marker", 201)
        ],
        "the terminating namespace gets nothing back"
    );
}

#[tokio::test]
async fn a_conflict_on_create_is_read_again_and_compared() {
    let fake_rival = |ns: &str, pem: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": ROOT_CONFIG_MAP, "namespace": ns,
                            "labels": {"app.kubernetes.io/managed-by": "ringmesh-control"}},
               "data": {ROOT_KEY: pem}})
    };
    let fake = Arc::new(Fake::default());
    let ca = Ca::new(&generate().unwrap(), CaSettings::default()).unwrap();
    let bundle = ca::to_pem(ca.trust_bundle());
    {
        let mut a = fake.lock();
        a.version = 100_000;
        let listed = ["payments", "shop"]
            .map(|n| recorded_one("namespaces.json", n))
            .to_vec();
        a.listed.insert("namespaces".into(), listed);
        // Another replica creates both first: in `payments` with the same root, in `shop` with
        // the root it still holds during a rollout.
        a.rival_creates
            .insert("payments".into(), fake_rival("payments", &bundle));
        let old = recorded_one("configmaps.json", ROOT_CONFIG_MAP);
        a.rival_creates.insert(
            "shop".into(),
            fake_rival("shop", old["data"][ROOT_KEY].as_str().unwrap()),
        );
    }
    tokio::spawn(ca_root::run(
        client(serve(fake.clone())),
        RootConfigMap::of(ROOT_CONFIG_MAP, &ca),
    ));
    if let Err(e) = common::eventually_async(WAIT, "shop updated", || published(&fake, "shop", &bundle)).await {
        panic!("{e}: {:?}", calls(&fake.requests()));
    }
    handled_so_far(&fake, "marker", &bundle).await;
    let ours = |p: &str| p.contains("/namespaces/payments/") || p.contains("/namespaces/shop/");
    let requests = fake.requests();
    let requests: Vec<(&str, &str, u16)> = calls(&requests).into_iter().filter(|(_, p, _)| ours(p)).collect();
    let cm = |ns: &str| format!("/api/v1/namespaces/{ns}/configmaps");
    let one = |ns: &str| format!("/api/v1/namespaces/{ns}/configmaps/{ROOT_CONFIG_MAP}");
    assert_eq!(
        requests,
        [
            ("POST", cm("payments").as_str(), 409),
            ("GET", one("payments").as_str(), 200),
            ("POST", cm("shop").as_str(), 409),
            ("GET", one("shop").as_str(), 200),
            ("PUT", one("shop").as_str(), 200),
        ],
        "payments held the same root already: read and left; shop held another: updated once"
    );
}

#[test]
fn ringmesh_control_help_names_the_published_config_map() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmesh-control"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for wanted in [
        "--no-publish-ca-root",
        "ringmesh-ca-root",
        "root-cert.pem",
        "app.kubernetes.io/managed-by=ringmesh-control",
    ] {
        assert!(help.contains(wanted), "--help names {wanted}:\n{help}");
    }
}
