//! Mutual TLS between proxies and authorization on inbound listeners, end to end: two real
//! proxies with certificates from a test CA (`spec.identity` files), an upstream behind the
//! server's inbound listener, and outsiders knocking on that listener with plaintext, no
//! certificate, a certificate of another CA, or a mesh certificate of another workload; and
//! the `x-forwarded-client-cert` the app behind the server sees.

use std::time::Duration;

use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::pki::{client_config, tls_exchange, Leaf, TestCa};
use ringmesh_tests::proxy::{proxy_config, service_entry, temp_dir, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};

const MESHED: &[(&str, &str)] = &[("security.istio.io/tlsMode", "istio")];

/// An inbound HTTP listener (`direction: INBOUND`) named `inbound`.
const INBOUND: &str = "  - name: inbound\n    address: 127.0.0.1:0\n    protocol: HTTP\n    direction: INBOUND\n";

fn workload(ns: &str, sa: &str) -> String {
    format!("  workload:\n    name: {sa}\n    namespace: {ns}\n    serviceAccount: {sa}\n")
}

fn peer_authentication(ns: &str, mode: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  mtls:\n    mode: {mode}\n")
}

/// The workload `shop/reviews` behind a proxy whose inbound listener takes `mode`, with
/// `policies` (more YAML documents) in force.
struct Server {
    proxy: TestProxy,
    up: Upstream,
    _certs: tempfile::TempDir,
}

impl Server {
    fn start(io: IoMode, ca: &TestCa, mode: &str, policies: &[String]) -> Server {
        let up = Upstream::named("app");
        let certs = temp_dir();
        let spec = format!(
            "{}{}",
            workload("shop", "reviews"),
            ca.identity_spec(certs.path(), "shop", "reviews")
        );
        let mut docs = vec![
            proxy_config(io, INBOUND, &spec),
            service_entry("reviews", "reviews.shop", 80, &[(up.addr, &[])]),
            peer_authentication("shop", mode),
        ];
        docs.extend_from_slice(policies);
        Server {
            proxy: TestProxy::start(&docs),
            up,
            _certs: certs,
        }
    }

    fn inbound(&self) -> std::net::SocketAddr {
        self.proxy.listener("inbound")
    }
}

/// A client-side proxy of workload `ns/sa` whose service `reviews.shop` is the server's
/// inbound listener, labelled as a proxy (auto mTLS).
fn client_proxy(io: IoMode, ca: &TestCa, server: &Server, ns: &str, sa: &str) -> (TestProxy, tempfile::TempDir) {
    let certs = temp_dir();
    let spec = format!("{}{}", workload(ns, sa), ca.identity_spec(certs.path(), ns, sa));
    let proxy = TestProxy::start(&[
        proxy_config(io, "", &spec),
        service_entry("reviews", "reviews.shop", 80, &[(server.inbound(), MESHED)]),
    ]);
    (proxy, certs)
}

fn counter(p: &TestProxy, name: &str) -> u64 {
    let text = admin_get(p.admin(), "/stats/prometheus").1;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An HTTP/1.1 request over TLS to `addr` with `cert` (or none): the status, or `None` when
/// the handshake or the exchange failed.
fn tls_get(addr: std::net::SocketAddr, cert: Option<&Leaf>, path: &str) -> Option<u16> {
    let config = client_config(cert, &[b"http/1.1"]);
    let req = format!("GET {path} HTTP/1.1\r\nHost: reviews.shop\r\nConnection: close\r\n\r\n");
    let out = runtime().block_on(tls_exchange(addr, config, req.as_bytes())).ok()?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Plaintext GET straight at the inbound listener: the status, or `None` when the proxy closed
/// the connection without an answer.
fn plain_get(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: reviews.shop\r\n\r\n").as_bytes());
    c.response().map(|r| r.status)
}

/// STRICT: the client proxy's requests arrive over mTLS (HTTP/2 inside), an HTTP/1.1 client
/// with a mesh certificate is served, and plaintext, no certificate and another CA's
/// certificate are all refused before any byte reaches the app.
fn strict_serves_mesh_certificates_only(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca, "STRICT", &[]);
    let (client, _c) = client_proxy(io, &ca, &server, "default", "client");
    for i in 0..5 {
        let r = Client::connect(client.http()).get("reviews.shop", &format!("/r{i}"));
        assert_eq!((r.status, r.text()), (200, "app".to_string()), "through both proxies");
    }
    assert_eq!(server.up.count(), 5);
    assert!(counter(&server.proxy, "ringmesh_inbound_tls_handshakes_total") >= 1);
    assert!(counter(&client, "ringmesh_outbound_tls_handshakes_total") >= 1);
    assert_eq!(
        counter(&server.proxy, "ringmesh_downstream_cx_h2_total"),
        1,
        "HTTP/2 inside TLS"
    );

    assert_eq!(plain_get(server.inbound(), "/plain"), None, "plaintext refused");
    assert_eq!(counter(&server.proxy, "ringmesh_inbound_plaintext_refused_total"), 1);
    assert_eq!(
        tls_get(server.inbound(), None, "/no-cert"),
        None,
        "no client certificate"
    );
    let other = TestCa::new("another root");
    let foreign = other.issue("shop", "reviews");
    assert_eq!(
        tls_get(server.inbound(), Some(&foreign), "/foreign"),
        None,
        "another CA"
    );
    assert_eq!(server.up.count(), 5, "nothing refused reached the app");

    let mesh = ca.issue("default", "curl");
    assert_eq!(tls_get(server.inbound(), Some(&mesh), "/h1-over-tls"), Some(200));
    assert_eq!(server.up.count(), 6);
}

/// PERMISSIVE takes plaintext and mTLS on the same port; DISABLE takes plaintext and a
/// ClientHello is just bytes to the HTTP parser.
fn permissive_takes_both_and_disable_takes_plaintext(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca, "PERMISSIVE", &[]);
    assert_eq!(plain_get(server.inbound(), "/plain"), Some(200));
    let mesh = ca.issue("default", "curl");
    assert_eq!(tls_get(server.inbound(), Some(&mesh), "/tls"), Some(200));
    let (client, _c) = client_proxy(io, &ca, &server, "default", "client");
    assert_eq!(Client::connect(client.http()).get("reviews.shop", "/via").status, 200);
    assert_eq!(server.up.count(), 3);

    let server = Server::start(io, &ca, "DISABLE", &[]);
    assert_eq!(plain_get(server.inbound(), "/plain"), Some(200));
    assert_eq!(tls_get(server.inbound(), Some(&mesh), "/tls"), None);
    assert_eq!(server.up.count(), 1);
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  action: {action}\n  rules:\n{rules}")
}

/// ALLOW and DENY by principal, namespace, method, path and header, decided on the server with
/// the identity the client proxy's certificate proves; a denial is 403 `RBAC: access denied`
/// and never reaches the app.
fn authorization_by_identity_and_request(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let allow = policy(
        "frontend-reads",
        "ALLOW",
        "  - from:\n    - source:\n        principals: [cluster.local/ns/default/sa/frontend]\n    to:\n    - operation:\n        methods: [GET]\n        paths: [\"/public*\"]\n  - from:\n    - source:\n        namespaces: [ops]\n",
    );
    let deny = policy(
        "blocked-header",
        "DENY",
        "  - when:\n    - key: request.headers[x-block]\n      values: [\"yes\"]\n",
    );
    let server = Server::start(io, &ca, "STRICT", &[allow, deny]);
    let (frontend, _f) = client_proxy(io, &ca, &server, "default", "frontend");
    let (other, _o) = client_proxy(io, &ca, &server, "default", "other");
    let (ops, _p) = client_proxy(io, &ca, &server, "ops", "anything");

    let get = |p: &TestProxy, method: &str, path: &str, extra: &str| {
        let mut c = Client::connect(p.http());
        c.send(
            format!("{method} {path} HTTP/1.1\r\nHost: reviews.shop\r\nContent-Length: 0\r\n{extra}\r\n").as_bytes(),
        );
        let r = c.response().expect("response");
        (r.status, r.text())
    };
    let denied = (403, "RBAC: access denied".to_string());
    assert_eq!(get(&frontend, "GET", "/public/a", ""), (200, "app".into()));
    assert_eq!(get(&frontend, "POST", "/public/a", ""), denied, "method");
    assert_eq!(get(&frontend, "GET", "/private", ""), denied, "path");
    assert_eq!(
        get(&frontend, "GET", "/public/a", "x-block: yes\r\n"),
        denied,
        "DENY by header"
    );
    assert_eq!(get(&other, "GET", "/public/a", ""), denied, "principal");
    assert_eq!(get(&ops, "DELETE", "/anything", ""), (200, "app".into()), "namespace");
    assert_eq!(get(&ops, "GET", "/x", "x-block: yes\r\n"), denied, "DENY before ALLOW");
    assert_eq!(server.up.count(), 2);
    assert_eq!(counter(&server.proxy, "ringmesh_rbac_denied_total"), 5);

    // By port: a DENY on the inbound port itself (known once the listener is bound).
    let port = server.inbound().port();
    let deny_port = policy(
        "port",
        "DENY",
        &format!("  - to:\n    - operation:\n        ports: [\"{port}\"]\n        paths: [/public/port]\n"),
    );
    let certs_spec = std::fs::read_to_string(&server.proxy.config).expect("config");
    server.proxy.rewrite(&[certs_spec, deny_port]);
    ringmesh_testkit::eventually(Duration::from_secs(10), "the port policy applies", || {
        get(&frontend, "GET", "/public/port", "") == denied
    })
    .expect("the port policy applies");
    assert_eq!(get(&frontend, "GET", "/public/other", ""), (200, "app".into()));
}

/// A DENY on `/admin` holds for every spelling of it, and a route's direct 403 on `/admin`
/// too: each is answered 403 or refused with 400, and the app never sees an admin path.
fn no_spelling_walks_around_a_deny(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let deny = policy(
        "no-admin",
        "DENY",
        "  - to:\n    - operation:\n        paths: [/admin, \"/admin/*\"]\n",
    );
    let server = Server::start(io, &ca, "PERMISSIVE", &[deny]);
    let spellings = [
        "/admin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/adm%69n",
        "/%2e/admin",
        "/a/../admin",
        "/x/..%2fadmin",
        "/%2fadmin",
        "/\\admin",
        "\\admin",
        "/admin/",
        "/admin;x",
        "/admin#frag",
        "/ADMIN/../admin",
        "/admin/%2e%2e/admin",
        "/admin%00",
    ];
    for path in spellings {
        let status = plain_get(server.inbound(), path);
        assert!(matches!(status, Some(403 | 400) | None), "{path}: {status:?}");
    }
    assert!(
        server
            .up
            .received()
            .iter()
            .all(|r| !r.target.to_ascii_lowercase().contains("admin")),
        "{:?}",
        server
            .up
            .received()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>()
    );
    // What is not admin passes, normalized.
    assert_eq!(plain_get(server.inbound(), "//shop//./items/../cart"), Some(200));
    assert_eq!(
        server.up.received().last().map(|r| r.target.clone()),
        Some("/shop/cart".into())
    );

    // The same spellings against a route that answers /admin itself.
    let up = Upstream::named("app");
    let route = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: site\nspec:\n  hosts: [site.test]\n  http:\n  - match:\n    - uri: {prefix: /admin}\n    directResponse: {status: 403}\n  - route:\n    - destination: {host: site.test}\n".to_string();
    let proxy = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("site", "site.test", 80, &[(up.addr, &[])]),
        route,
    ]);
    for path in spellings {
        let mut c = Client::connect(proxy.http());
        c.send(format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n").as_bytes());
        let status = c.response().map(|r| r.status);
        assert!(matches!(status, Some(403 | 400) | None), "{path}: {status:?}");
    }
    assert!(
        up.received()
            .iter()
            .all(|r| !r.target.to_ascii_lowercase().contains("admin")),
        "{:?}",
        up.received().iter().map(|r| r.target.clone()).collect::<Vec<_>>()
    );
}

/// A TCP server that reads until EOF, then answers with the reversed bytes and closes: only a
/// tunnel that passes the client's half-close through both proxies lets it answer.
fn reverse_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all);
                all.reverse();
                let _ = s.write_all(&all);
            });
        }
    });
    addr
}

/// Opaque TCP between two proxies over mTLS: a client-side TCP listener to the server's
/// inbound TCP listener (STRICT): a megabyte each way with the client's half-close, and a DENY
/// by principal that closes the connection before the app is dialled.
fn tcp_over_mtls(io: IoMode) {
    use std::io::{Read, Write};
    let ca = TestCa::new("mesh root");
    let app = reverse_server();
    let server_certs = temp_dir();
    let server_spec = format!(
        "{}{}",
        workload("shop", "db"),
        ca.identity_spec(server_certs.path(), "shop", "db")
    );
    let inbound = "  - name: inbound-db\n    address: 127.0.0.1:0\n    protocol: TCP\n    direction: INBOUND\n    destination: {host: app.local, port: 5432}\n";
    let app_se = |host: &str, addr: std::net::SocketAddr, labels: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{tcp: {}}}{labels}}}\n",
            host.replace('.', "-"),
            addr.port()
        )
    };
    let deny = policy(
        "no-intruder",
        "DENY",
        "  - from:\n    - source:\n        principals: [cluster.local/ns/default/sa/intruder]\n",
    );
    let server = TestProxy::start(&[
        proxy_config(io, inbound, &server_spec),
        app_se("app.local", app, ""),
        peer_authentication("shop", "STRICT"),
        deny,
    ]);
    let client_for = |sa: &str| {
        let certs = temp_dir();
        let spec = format!(
            "{}{}",
            workload("default", sa),
            ca.identity_spec(certs.path(), "default", sa)
        );
        let outbound =
            "  - name: db\n    address: 127.0.0.1:0\n    protocol: TCP\n    destination: {host: db.shop, port: 5432}\n";
        let proxy = TestProxy::start(&[
            proxy_config(io, outbound, &spec),
            app_se(
                "db.shop",
                server.listener("inbound-db"),
                ", labels: {security.istio.io/tlsMode: istio}",
            ),
        ]);
        (proxy, certs)
    };
    let (client, _c) = client_for("web");
    let mut c = std::net::TcpStream::connect(client.listener("db")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let writer = {
        let mut w = c.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            w.write_all(&payload).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    let mut want = payload;
    want.reverse();
    assert!(
        got == want,
        "payload through two proxies over mTLS: {} bytes back",
        got.len()
    );
    assert!(counter(&server, "ringmesh_inbound_tls_handshakes_total") >= 1);
    assert_eq!(
        plain_get(server.listener("inbound-db"), "/"),
        None,
        "STRICT: plaintext closed"
    );

    let (intruder, _i) = client_for("intruder");
    let mut c = std::net::TcpStream::connect(intruder.listener("db")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"let me in");
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(got.is_empty(), "denied: nothing comes back");
    assert_eq!(counter(&server, "ringmesh_rbac_denied_total"), 1);
}

/// A DestinationRule's `subjectAltNames` pins which workload may serve the hop: the server
/// proxy proves `shop/reviews`; a rule that asks for another identity fails the request (503),
/// one that lists it passes.
fn subject_alt_names_pin_the_server(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca, "STRICT", &[]);
    let rule = |san: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews.shop\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n      subjectAltNames: [\"{san}\"]\n")
    };
    for (san, want) in [
        ("spiffe://cluster.local/ns/shop/sa/ratings", 503),
        ("spiffe://cluster.local/ns/shop/sa/reviews", 200),
    ] {
        let certs = temp_dir();
        let spec = format!(
            "{}{}",
            workload("default", "web"),
            ca.identity_spec(certs.path(), "default", "web")
        );
        let client = TestProxy::start(&[
            proxy_config(io, "", &spec),
            service_entry("reviews", "reviews.shop", 80, &[(server.inbound(), MESHED)]),
            rule(san),
        ]);
        let r = Client::connect(client.http()).get("reviews.shop", "/pinned");
        assert_eq!(r.status, want, "{san}: {}", r.text());
    }
    assert_eq!(
        server.up.count(),
        1,
        "only the pinned identity's request reached the app"
    );
}

/// A root rotation with the user's own PKI (`spec.identity` files, re-read on reload): both
/// proxies first trust the old and the new root, the server moves to a certificate of the new
/// root while clients of the old one keep being served, and once the old root is dropped its
/// certificates are refused.
fn root_rotation_with_an_overlap(io: IoMode) {
    let (old, new) = (TestCa::new("old root"), TestCa::new("new root"));
    let up = Upstream::named("app");
    let files = temp_dir();
    let write = |name: &str, text: &str| std::fs::write(files.path().join(name), text).expect("write pki file");
    let install = |prefix: &str, leaf: &Leaf| {
        write(&format!("{prefix}-cert.pem"), &leaf.cert_pem);
        write(&format!("{prefix}-key.pem"), &leaf.key_pem);
    };
    let identity = |prefix: &str| {
        let p = files.path();
        format!(
            "  identity:\n    certFile: {}\n    keyFile: {}\n    caFile: {}\n",
            p.join(format!("{prefix}-cert.pem")).display(),
            p.join(format!("{prefix}-key.pem")).display(),
            p.join("bundle.pem").display()
        )
    };
    write("bundle.pem", &old.root_pem());
    install("server", &old.issue("shop", "reviews"));
    let server_docs = |step: &str| {
        vec![
            format!(
                "# {step}\n{}",
                proxy_config(
                    io,
                    INBOUND,
                    &format!("{}{}", workload("shop", "reviews"), identity("server"))
                )
            ),
            service_entry("reviews", "reviews.shop", 80, &[(up.addr, &[])]),
            peer_authentication("shop", "STRICT"),
        ]
    };
    let server = TestProxy::start(&server_docs("old root"));
    let client = |prefix: &str, leaf: Leaf| {
        install(prefix, &leaf);
        TestProxy::start(&[
            proxy_config(io, "", &format!("{}{}", workload("default", prefix), identity(prefix))),
            service_entry("reviews", "reviews.shop", 80, &[(server.listener("inbound"), MESHED)]),
        ])
    };
    let status = |p: &TestProxy| Client::connect(p.http()).get("reviews.shop", "/rotation").status;
    let handshakes = || counter(&server, "ringmesh_inbound_tls_handshakes_total");
    assert_eq!(
        status(&client("web-old", old.issue("default", "web-old"))),
        200,
        "before the rotation"
    );

    // 1. Both roots trusted; the server moves to a certificate of the new root.
    write("bundle.pem", &format!("{}{}", old.root_pem(), new.root_pem()));
    install("server", &new.issue("shop", "reviews"));
    let before = handshakes();
    server.rewrite(&server_docs("both roots"));
    ringmesh_testkit::eventually(Duration::from_secs(10), "the server reloads its certificate", || {
        admin_get(server.admin(), "/certs").1.contains("new root")
    })
    .expect("the new certificate is in use");
    let old_client = client("web-old2", old.issue("default", "web-old2"));
    assert_eq!(
        status(&old_client),
        200,
        "a client of the old root, server of the new one"
    );
    let new_client = client("web-new", new.issue("default", "web-new"));
    assert_eq!(status(&new_client), 200, "a client of the new root");
    assert!(handshakes() >= before + 2, "each came in over a new handshake");

    // 2. The old root dropped: its certificates are refused, the new ones served.
    write("bundle.pem", &new.root_pem());
    server.rewrite(&server_docs("new root only"));
    ringmesh_testkit::eventually(Duration::from_secs(10), "the server drops the old root", || {
        !admin_get(server.admin(), "/certs").1.contains("old root")
    })
    .expect("the old root is gone from the bundle");
    assert_eq!(
        status(&client("web-old3", old.issue("default", "web-old3"))),
        503,
        "the old root's certificate is refused"
    );
    assert_eq!(status(&client("web-new2", new.issue("default", "web-new2"))), 200);
}

/// The hex SHA-256 of the certificate in `pem`: the `Hash=` an XFCC element carries for it.
fn cert_hash(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("cert pem");
    ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every `x-forwarded-client-cert` field the app received with its last request.
fn xfcc_seen(up: &Upstream) -> Vec<String> {
    let last = up.received().pop().expect("the app got a request");
    last.headers
        .into_iter()
        .filter(|(n, _)| n == "x-forwarded-client-cert")
        .map(|(_, v)| v)
        .collect()
}

/// An XFCC the app of a client-side proxy tries to slip through: two fields, two spellings.
const FORGED: &str = "X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/shop/sa/reviews;URI=spiffe://cluster.local/ns/ops/sa/admin\r\n\
x-forwarded-client-cert: URI=spiffe://cluster.local/ns/kube-system/sa/root\r\n";

/// `x-forwarded-client-cert` as Istio's sidecars set it: the app behind a STRICT inbound
/// listener sees one element naming its own workload (`By`), the caller's certificate (`Hash`)
/// and the caller (`URI`), whatever the calling app put in the field itself (the client-side
/// proxy removes that), over HTTP/1.1 and HTTP/2 from the app; a mesh peer's own XFCC is kept
/// in front of ours.
fn xfcc_names_the_caller_as_istio_does(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca, "STRICT", &[]);
    let (client, client_certs) = client_proxy(io, &ca, &server, "default", "client");
    let client_pem = std::fs::read_to_string(client_certs.path().join("cert.pem")).expect("client cert");
    let ours = format!(
        "By=spiffe://cluster.local/ns/shop/sa/reviews;Hash={};Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/client",
        cert_hash(&client_pem)
    );

    // HTTP/1.1 app -> client proxy -> (HTTP/2 over mTLS) -> server proxy -> HTTP/1.1 app.
    let mut c = Client::connect(client.http());
    c.send(format!("GET /xfcc HTTP/1.1\r\nHost: reviews.shop\r\n{FORGED}\r\n").as_bytes());
    assert_eq!(c.response().map(|r| r.status), Some(200));
    assert_eq!(xfcc_seen(&server.up), [ours.as_str()], "one element, ours");
    // A second request on the same connections: the same element, made once per connection.
    let r = Client::connect(client.http()).get("reviews.shop", "/again");
    assert_eq!(r.status, 200);
    assert_eq!(xfcc_seen(&server.up), [ours.as_str()]);

    // An HTTP/2 app: its XFCC does not reach the server's app either.
    let mut h2 = ringmesh_tests::h2client::H2Client::connect(client.http());
    let req = http::Request::get("http://reviews.shop/xfcc-h2")
        .header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/ops/sa/admin")
        .header("x-forwarded-client-cert", "By=x;URI=y")
        .body(())
        .expect("request");
    assert_eq!(h2.request(req, b"", None).status, 200);
    assert_eq!(xfcc_seen(&server.up), [ours.as_str()]);

    // A mesh peer that speaks HTTP/1.1 over mTLS itself (an ingress gateway, say) forwards an
    // XFCC of its own: kept, ours after it, in one field.
    let gateway = ca.issue("istio-system", "gateway");
    let config = client_config(Some(&gateway), &[b"http/1.1"]);
    let req = "GET /via-gateway HTTP/1.1\r\nHost: reviews.shop\r\nConnection: close\r\n\
x-forwarded-client-cert: Hash=00;URI=spiffe://edge/user\r\n\r\n";
    let out = runtime()
        .block_on(tls_exchange(server.inbound(), config, req.as_bytes()))
        .expect("HTTP/1.1 over mTLS");
    assert!(out.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        xfcc_seen(&server.up),
        [format!(
            "Hash=00;URI=spiffe://edge/user,By=spiffe://cluster.local/ns/shop/sa/reviews;Hash={};Subject=\"\";URI=spiffe://cluster.local/ns/istio-system/sa/gateway",
            cert_hash(&gateway.cert_pem)
        )]
    );
}

/// PERMISSIVE: a plaintext client proved nothing, so whatever XFCC it sends is removed before
/// the app sees the request, over HTTP/1.1 and HTTP/2 (prior knowledge).
fn a_plaintext_client_cannot_forge_xfcc(io: IoMode) {
    let ca = TestCa::new("mesh root");
    let server = Server::start(io, &ca, "PERMISSIVE", &[]);
    let mut c = Client::connect(server.inbound());
    c.send(
        format!("GET /plain HTTP/1.1\r\nHost: reviews.shop\r\n{FORGED}X-FORWARDED-CLIENT-CERT: \r\n\r\n").as_bytes(),
    );
    assert_eq!(c.response().map(|r| r.status), Some(200));
    assert_eq!(xfcc_seen(&server.up), Vec::<String>::new());

    let mut h2 = ringmesh_tests::h2client::H2Client::connect(server.inbound());
    let req = http::Request::get("http://reviews.shop/plain-h2")
        .header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/ops/sa/admin")
        .body(())
        .expect("request");
    assert_eq!(h2.request(req, b"", None).status, 200);
    assert_eq!(xfcc_seen(&server.up), Vec::<String>::new());
    assert_eq!(server.up.count(), 2);
}

both_io!(
    xfcc_names_the_caller_as_istio_does,
    a_plaintext_client_cannot_forge_xfcc,
    root_rotation_with_an_overlap,
    subject_alt_names_pin_the_server,
    tcp_over_mtls,
    strict_serves_mesh_certificates_only,
    permissive_takes_both_and_disable_takes_plaintext,
    authorization_by_identity_and_request,
    no_spelling_walks_around_a_deny,
);
