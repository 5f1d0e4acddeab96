//! Sidecar injection end to end: `ringmesh inject` of the sample Deployment
//! (`deploy/kubernetes/examples/reviews.yaml`) asserted field by field, its `ProxyConfig`
//! compiled by the proxy's compiler, and the webhook over real HTTPS on loopback answering a
//! recorded `AdmissionReview` with a patch that makes the very pod `ringmesh inject` makes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ringmesh_control::inject::webhook::{self, FileCert, Injector, Namespaces};
use ringmesh_control::inject::InjectSettings;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample() -> PathBuf {
    repo().join("deploy/kubernetes/examples/reviews.yaml")
}

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission-review-pod.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `ringmesh ARGS`: exit code, stdout, stderr.
fn ringmesh(args: &[&str]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut argv = vec!["ringmesh"];
    argv.extend_from_slice(args);
    let code = ringmesh_control::cli::run_with(argv, &mut out, &mut err);
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn env_of<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {container}"))
}

#[test]
fn ringmesh_inject_of_the_sample_deployment() {
    let sample = sample();
    let (code, out, err) = ringmesh(&["inject", "-f", sample.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let input = docs(&std::fs::read_to_string(&sample).unwrap());
    let output = docs(&out);
    assert_eq!(output.len(), 3);
    assert_eq!(output[0], input[0], "the ServiceAccount passes through");
    assert_eq!(output[1], input[1], "the Service passes through");
    let template = &output[2]["spec"]["template"];
    let meta = &template["metadata"];
    let spec = &template["spec"];

    // Labels and annotations.
    assert_eq!(
        meta["labels"],
        json!({"app": "reviews", "version": "v1", "security.istio.io/tlsMode": "istio"})
    );
    let ann = &meta["annotations"];
    assert_eq!(ann["traffic.sidecar.istio.io/excludeOutboundPorts"], "5432", "kept");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "15090");
    assert_eq!(ann["prometheus.io/path"], "/stats/prometheus");
    let status: Value = serde_json::from_str(ann["ringmesh.io/status"].as_str().unwrap()).unwrap();
    assert_eq!(status["initContainers"], json!(["ringmesh-init", "ringmesh-proxy"]));
    assert_eq!(
        status["volumes"],
        json!(["ringmesh-config", "ringmesh-token", "ringmesh-ca-root"])
    );

    // The capture init container.
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "ringmesh-init");
    assert_eq!(init["image"], "ringmesh/ringmesh-init:latest");
    assert_eq!(init["command"], json!(["ringmesh", "iptables"]));
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-i", "*", "-b", "*", "-o", "5432"]
    );
    assert_eq!(
        init["securityContext"],
        json!({
            "allowPrivilegeEscalation": false, "privileged": false, "readOnlyRootFilesystem": false,
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        })
    );
    assert!(init.get("restartPolicy").is_none(), "runs once");
    // The arguments are ones `ringmesh iptables` takes, and say what was asked.
    let mut dry = vec!["iptables", "--dry-run", "--ipv6", "off"];
    dry.extend_from_slice(&args);
    let (code, rules, err) = ringmesh(&dry);
    assert_eq!(code, 0, "{err}");
    assert!(rules.contains("--dport 5432 -j RETURN"), "{rules}");
    assert!(rules.contains("--to-ports 15001"), "{rules}");

    // The native sidecar.
    let proxy = &spec["initContainers"][1];
    assert_eq!(spec["initContainers"].as_array().unwrap().len(), 2);
    assert_eq!(proxy["name"], "ringmesh-proxy");
    assert_eq!(proxy["image"], "ringmesh/ringmesh-proxy:latest");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["args"], json!(["--config", "/etc/ringmesh/config/proxy.yaml"]));
    let health = json!({"path": "/healthz/ready", "port": 15020, "scheme": "HTTP"});
    assert_eq!(proxy["startupProbe"]["httpGet"], health);
    assert_eq!(proxy["startupProbe"]["periodSeconds"], 1);
    assert_eq!(proxy["readinessProbe"]["httpGet"], health);
    assert_eq!(
        proxy["ports"],
        json!([
            {"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"},
            {"name": "http-health", "containerPort": 15020, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "2", "memory": "256Mi"}})
    );
    let sc = &proxy["securityContext"];
    assert_eq!(
        (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
        (Some(1337), Some(1337))
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(
        env_of(proxy, "RINGMESH_WORKLOAD_ADDRESS")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIPs"
    );
    assert_eq!(
        env_of(proxy, "RINGMESH_NODE_ID")["value"],
        "$(POD_NAME).$(POD_NAMESPACE)"
    );
    let probers: Value =
        serde_json::from_str(env_of(proxy, "RINGMESH_KUBE_APP_PROBERS")["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probers,
        json!({
            "/app-health/reviews/readyz": {"httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP"}, "timeoutSeconds": 2},
            "/app-health/reviews/livez": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 1},
        })
    );
    let mounts: Vec<(&str, &str)> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("ringmesh-config", "/etc/ringmesh/config"),
            ("ringmesh-token", "/var/run/secrets/ringmesh/tokens"),
            ("ringmesh-ca-root", "/etc/ringmesh/ca"),
        ]
    );

    // The app's probes, rewritten to the proxy's health port.
    let app = &spec["containers"][0];
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/reviews/readyz", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 2})
    );
    assert_eq!(
        app["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/reviews/livez", "port": 15020, "scheme": "HTTP"}, "failureThreshold": 4})
    );
    assert_eq!(
        app["image"],
        input[2]["spec"]["template"]["spec"]["containers"][0]["image"]
    );

    // Volumes.
    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "ringmesh-config", "downwardAPI": {"items": [
                {"path": "proxy.yaml", "fieldRef": {"fieldPath": "metadata.annotations['ringmesh.io/proxy-config']"}}]}},
            {"name": "ringmesh-token", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3600, "path": "ringmesh-token"}}]}},
            {"name": "ringmesh-ca-root", "configMap": {"name": "ringmesh-ca-root", "items": [
                {"key": "root-cert.pem", "path": "root-cert.pem"}]}},
        ])
    );

    // The ProxyConfig compiles with the proxy's compiler and names the workload.
    let config = ann["ringmesh.io/proxy-config"].as_str().unwrap();
    let (resources, _) = ringmesh_api::load_str("proxy.yaml", config).unwrap_or_else(|d| panic!("{d:?}\n{config}"));
    let compiled = ringmesh_api::compile(&ringmesh_api::CompileInput {
        resources,
        ..Default::default()
    })
    .unwrap_or_else(|d| panic!("{d:?}\n{config}"));
    let p = &compiled.snapshot.proxy;
    assert_eq!(p.workload.name, "reviews");
    assert_eq!(p.workload.namespace, "shop");
    assert_eq!(p.workload.service_account, "bookinfo-reviews");
    assert_eq!(
        p.workload.labels.get("security.istio.io/tlsMode").map(String::as_str),
        Some("istio")
    );
    assert_eq!(p.workload.ports, BTreeMap::from([("http".to_string(), 9080u16)]));
    let readiness = p.workload.readiness.as_ref().unwrap();
    assert_eq!(
        (readiness.port, readiness.http_path.as_deref()),
        (9080, Some("/health"))
    );
    let cp = p.control_plane.as_ref().unwrap();
    assert_eq!(cp.addresses, ["ringmesh-control.ringmesh-system.svc:15012"]);
    assert!(cp.tls.is_some());
    assert_eq!(
        cp.credential_file.as_deref(),
        Some(Path::new("/var/run/secrets/ringmesh/tokens/ringmesh-token"))
    );
    assert_eq!(p.identity.trust_domain, "cluster.local");
    assert!(config.contains("capture: {}"), "{config}");
}

#[test]
fn flags_change_images_address_and_trust_domain() {
    let sample = sample();
    let (code, out, err) = ringmesh(&[
        "inject",
        "-f",
        sample.to_str().unwrap(),
        "--proxy-image",
        "registry.example.com/proxy:1",
        "--init-image",
        "registry.example.com/init:1",
        "--discovery-address",
        "cp.example:15012",
        "--trust-domain",
        "example.internal",
    ]);
    assert_eq!(code, 0, "{err}");
    let template = docs(&out)[2]["spec"]["template"].clone();
    assert_eq!(
        template["spec"]["initContainers"][0]["image"],
        "registry.example.com/init:1"
    );
    assert_eq!(
        template["spec"]["initContainers"][1]["image"],
        "registry.example.com/proxy:1"
    );
    let config = template["metadata"]["annotations"]["ringmesh.io/proxy-config"]
        .as_str()
        .unwrap();
    assert!(
        config.contains("address: cp.example:15012") && config.contains("trustDomain: example.internal"),
        "{config}"
    );
    let (_, help, _) = ringmesh(&["inject", "--help"]);
    for default in [
        "ringmesh/ringmesh-proxy:latest",
        "ringmesh/ringmesh-init:latest",
        "ringmesh-control.ringmesh-system.svc:15012",
        "cluster.local",
    ] {
        assert!(help.contains(default), "--help names {default}:\n{help}");
    }
}

#[test]
fn injecting_the_output_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.yaml");
    let sample = sample();
    let (code, _, err) = ringmesh(&["inject", "-f", sample.to_str().unwrap(), "-o", once.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, twice, err) = ringmesh(&["inject", "-f", once.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Deployment/reviews-v1: not injected: already injected"),
        "{err}"
    );
    assert_eq!(docs(&twice), docs(&std::fs::read_to_string(&once).unwrap()));
}

#[test]
fn opted_out_pods_and_other_kinds_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.yaml");
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, annotations: {sidecar.istio.io/inject: \"false\"}}\nspec:\n  containers: [{name: a, image: x}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '0 1 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: job, image: x}]\n";
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = ringmesh(&["inject", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (input, output) = (docs(text), docs(&out));
    assert_eq!(output[0], input[0]);
    assert_eq!(output[1], input[1]);
    assert!(
        err.contains("Pod/a: not injected: sidecar.istio.io/inject is \"false\""),
        "{err}"
    );
    let job = &output[2]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(job["spec"]["initContainers"][1]["name"], "ringmesh-proxy");
    // Without a namespace in the manifest, `default`.
    assert!(job["metadata"]["annotations"]["ringmesh.io/proxy-config"]
        .as_str()
        .unwrap()
        .contains("namespace: default"));
}

#[test]
fn bad_input_is_refused_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {traffic.sidecar.istio.io/excludeInboundPorts: \"http\"}}\nspec:\n  containers: [{name: a}]\n",
    )
    .unwrap();
    let (code, out, err) = ringmesh(&["inject", "-f", file.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("document 2 (Pod p): annotation traffic.sidecar.istio.io/excludeInboundPorts"),
        "{err}"
    );
    std::fs::write(&file, "kind: Pod\nspec: [unclosed\n").unwrap();
    let (code, _, err) = ringmesh(&["inject", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("document 1"), "{err}");
}

/// The webhook on loopback with a fresh certificate for `localhost`; its address and the
/// certificate (PEM) a client must trust.
async fn webhook(
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
) -> (std::net::SocketAddr, String, tempfile::TempDir) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls = webhook::server_config(FileCert::open(&cert_file, &key_file).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let injector = Injector {
        settings: InjectSettings::default(),
        namespaces: Namespaces::Fixed(namespaces),
    };
    tokio::spawn(webhook::serve(listener, Arc::new(tls), Arc::new(injector)));
    (addr, cert.pem(), dir)
}

/// One HTTPS request as the API server makes it: status and body.
async fn post(addr: std::net::SocketAddr, ca_pem: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: ringmesh-control.ringmesh-system.svc:443\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let status = std::str::from_utf8(&answer[9..12]).unwrap().parse().unwrap();
    (status, answer[split + 4..].to_vec())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The patch of an answer applied to the review's pod.
fn patched(review: &Value, answer: &Value) -> Value {
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[tokio::test]
async fn the_webhook_answers_a_recorded_review_with_the_pod_ringmesh_inject_makes() {
    let ns = BTreeMap::from([("shop".to_string(), labels(&[("istio-injection", "enabled")]))]);
    let (addr, ca, _dir) = webhook(ns).await;
    let review = fixture();
    let (status, body) = post(addr, &ca, "/inject", &serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let pod = patched(&review, &answer);

    // The same pod, offline.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, serde_yaml::to_string(&review["request"]["object"]).unwrap()).unwrap();
    let (code, out, err) = ringmesh(&["inject", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(docs(&out)[0], pod);

    // What the pod holds.
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "ringmesh-init");
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], "6f7c9d8b4");
    assert_eq!(pod["metadata"]["labels"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/reviews/readyz"
    );
    let vols: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        vols,
        [
            "kube-api-access-x7k2p",
            "ringmesh-config",
            "ringmesh-token",
            "ringmesh-ca-root"
        ]
    );
    let config = pod["metadata"]["annotations"]["ringmesh.io/proxy-config"]
        .as_str()
        .unwrap();
    assert!(
        config.contains("name: reviews\n") && config.contains("serviceAccount: bookinfo-reviews"),
        "{config}"
    );

    // A pod already injected (the API server reinvoking the webhook) gets an empty patch.
    let mut again = review.clone();
    again["request"]["object"] = pod.clone();
    let (status, body) = post(addr, &ca, "/inject", &serde_json::to_vec(&again).unwrap()).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
}

#[tokio::test]
async fn the_webhook_follows_namespace_labels_and_opt_outs() {
    let ns = BTreeMap::from([
        ("shop".to_string(), labels(&[("ringmesh-injection", "enabled")])),
        ("legacy".to_string(), labels(&[("istio-injection", "disabled")])),
    ]);
    let (addr, ca, _dir) = webhook(ns).await;
    let ask = |namespace: &str, edit: &dyn Fn(&mut Value)| {
        let mut review = fixture();
        review["request"]["namespace"] = json!(namespace);
        review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
        edit(&mut review["request"]["object"]);
        serde_json::to_vec(&review).unwrap()
    };
    let is_patched = |body: &[u8]| -> bool {
        let answer: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        answer["response"].get("patch").is_some()
    };
    /// A namespace, a change to the recorded pod, whether it gets a patch.
    type Case<'a> = (&'a str, &'a dyn Fn(&mut Value), bool);
    let cases: [Case<'_>; 6] = [
        ("shop", &|_| {}, true),
        ("elsewhere", &|_| {}, false),
        (
            "legacy",
            &|p| p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true"),
            false,
        ),
        (
            "elsewhere",
            &|p| p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true"),
            true,
        ),
        (
            "shop",
            &|p| p["metadata"]["annotations"]["sidecar.istio.io/inject"] = json!("false"),
            false,
        ),
        ("shop", &|p| p["spec"]["hostNetwork"] = json!(true), false),
    ];
    for (i, (namespace, edit, want)) in cases.iter().enumerate() {
        let (status, body) = post(addr, &ca, "/inject", &ask(namespace, *edit)).await;
        assert_eq!(status, 200);
        assert_eq!(is_patched(&body), *want, "case {i} in {namespace}");
    }
    // A pod whose annotations ask for what cannot be done is refused with the reason.
    let body = ask("shop", &|p| {
        p["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = json!("10.0.0.0/40")
    });
    let (status, body) = post(addr, &ca, "/inject", &body).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("excludeOutboundIPRanges"), "{message}");
    // A pod the injector cannot patch is let through unpatched, never refused.
    let body = ask("shop", &|p| p["spec"]["volumes"] = json!({"not": "a list"}));
    let (_, body) = post(addr, &ca, "/inject", &body).await;
    assert!(!is_patched(&body));
}

#[tokio::test]
async fn a_malformed_review_gets_400_with_the_reason() {
    let (addr, ca, _dir) = webhook(BTreeMap::new()).await;
    for (body, reason) in [
        (b"not json".to_vec(), "expected ident"),
        (
            br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}}"#
                .to_vec(),
            "only admission.k8s.io/v1",
        ),
        (
            br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}"#.to_vec(),
            "request.uid",
        ),
        (br#"{"kind": "Pod"}"#.to_vec(), "AdmissionReview"),
    ] {
        let (status, answer) = post(addr, &ca, "/inject", &body).await;
        let answer = String::from_utf8(answer).unwrap();
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(reason), "{reason}: {answer}");
    }
    let (status, _) = post(addr, &ca, "/other", b"{}").await;
    assert_eq!(status, 404);
}
