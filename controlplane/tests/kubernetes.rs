//! The Kubernetes source against a fake API server on loopback: list, then watch events
//! (added, modified, deleted), a refused set that leaves the last good one served.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::ResourceSet;
use serde_json::{json, Value};

/// Watch events waiting per plural, and the objects listed at start.
#[derive(Default)]
struct Api {
    listed: HashMap<String, Vec<Value>>,
    pending: HashMap<String, Vec<Value>>,
}

fn serve(api: Arc<Mutex<Api>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let api = api.clone();
            std::thread::spawn(move || connection(s, api));
        }
    });
    port
}

fn connection(mut s: TcpStream, api: Arc<Mutex<Api>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let plural = path.rsplit('/').next().unwrap_or("").to_string();
        if query.contains("watch=true") || query.contains("watch=1") {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            while Instant::now() < deadline {
                let events = api.lock().unwrap().pending.remove(&plural).unwrap_or_default();
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
        let items = api.lock().unwrap().listed.get(&plural).cloned().unwrap_or_default();
        let body = json!({"apiVersion": "networking.istio.io/v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}).to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
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

/// How long a test waits for a watch event to be served.
const WAIT: Duration = Duration::from_secs(5);

fn sources(cp: &ControlPlane) -> Vec<String> {
    cp.resources().documents.iter().map(|d| d.source.clone()).collect()
}

#[tokio::test]
async fn istio_objects_are_listed_watched_and_a_bad_set_is_refused() {
    let api = Arc::new(Mutex::new(Api::default()));
    {
        let mut a = api.lock().unwrap();
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
    let port = serve(api.clone());
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
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
    let push = |plural: &str, e: Value| api.lock().unwrap().pending.entry(plural.into()).or_default().push(e);
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
