use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use ringmesh_api::proto::{control_message, Certificate, CertificateRefusal};

use super::manager::CertManager;
use super::*;

const SPIFFE: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

fn settings() -> ringmesh_api::snapshot::ProxySettings {
    let yaml = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  controlPlane:\n    address: 127.0.0.1:15012\n    credentialFile: /nonexistent/token\n  workload:\n    name: reviews\n    namespace: shop\n    serviceAccount: reviews\n  identity:\n    certLifetime: 90s\n";
    let (resources, _) = ringmesh_api::load_str("p.yaml", yaml).expect("loads");
    ringmesh_api::compile(&ringmesh_api::CompileInput {
        resources,
        ..Default::default()
    })
    .expect("compiles")
    .snapshot
    .proxy
}

/// A root, as the control plane's CA would have.
fn root() -> (Issuer<'static, KeyPair>, rcgen::Certificate) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert)
}

/// Signs a leaf for `uri` with `key`'s public key.
fn leaf(issuer: &Issuer<'static, KeyPair>, key: &KeyPair, uri: &str) -> rcgen::Certificate {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(uri.to_owned().try_into().unwrap())];
    params.not_after = (SystemTime::now() + Duration::from_secs(90)).into();
    params.signed_by(key, issuer).unwrap()
}

#[test]
fn a_store_moves_the_version_workers_compare() {
    let cell = IdentityCell::new();
    assert!(cell.load().is_none());
    assert_eq!(cell.version(), 0);
    let (issuer, root) = root();
    let key = KeyPair::generate().unwrap();
    let id = Identity::new(
        vec![leaf(&issuer, &key, SPIFFE).der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        vec![root.der().clone()],
    )
    .unwrap();
    cell.store(id);
    assert_eq!(cell.version(), 1);
    let loaded = cell.load().unwrap();
    assert_eq!(loaded.spiffe_id, SPIFFE);
    assert_eq!(loaded.serial.len() % 2, 0);
    assert!(loaded.not_before < loaded.not_after);
}

#[test]
fn a_key_of_another_certificate_or_a_leaf_without_spiffe_id_is_refused() {
    let (issuer, root) = root();
    let (key, other) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let e = Identity::new(
        vec![leaf(&issuer, &key, SPIFFE).der().clone()],
        PrivateKeyDer::Pkcs8(other.serialize_der().into()),
        vec![root.der().clone()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let e = Identity::new(
        vec![leaf(&issuer, &key, "https://example.com/").der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        vec![root.der().clone()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("no spiffe://"), "{e}");
}

#[test]
fn files_of_the_users_pki_load_into_the_cell() {
    let dir = std::env::temp_dir().join(format!("ringmesh-identity-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (issuer, root) = root();
    let key = KeyPair::generate().unwrap();
    let cert = leaf(&issuer, &key, SPIFFE);
    let files = ringmesh_api::snapshot::IdentityFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.ca, root.pem()).unwrap();
    let (cell, status) = (IdentityCell::new(), CertStatusCell::default());
    load_files(&files, &cell, &status);
    assert_eq!(cell.load().unwrap().spiffe_id, SPIFFE);
    load_files(&files, &cell, &status);
    assert_eq!(cell.version(), 1, "the same files again change nothing");
    std::fs::write(&files.key, "junk").unwrap();
    load_files(&files, &cell, &status);
    assert!(status.load().last_error.is_some(), "a bad file is reported");
    assert_eq!(
        cell.load().unwrap().spiffe_id,
        SPIFFE,
        "and the certificate in use stays"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_manager_stores_an_answer_and_keeps_it_through_a_refusal() {
    let (cell, status) = (Arc::new(IdentityCell::new()), CertStatusCell::default());
    let mut m = CertManager::new(cell.clone(), status.clone(), &settings());
    m.stream_up();
    assert!(m.due().is_some(), "no certificate yet: ask at once");
    let req = m.request().unwrap();
    assert_eq!(req.lifetime_seconds, 90);
    assert!(m.due().is_none(), "one request in flight at a time");
    // Sign the CSR as the control plane would.
    let csr = rcgen::CertificateSigningRequestParams::from_der(&req.csr_der.clone().into()).unwrap();
    assert!(
        matches!(&csr.params.subject_alt_names[..], [SanType::URI(u)] if u.as_str() == SPIFFE),
        "the CSR asks for the workload's own identity"
    );
    let (issuer, root) = root();
    let signed = csr.signed_by(&issuer).unwrap();
    m.answer(control_message::Message::Certificate(Certificate {
        request_id: req.request_id,
        chain_der: vec![signed.der().to_vec()],
        trust_bundle_der: vec![root.der().to_vec()],
    }));
    let id = cell.load().expect("stored");
    assert_eq!(id.spiffe_id, SPIFFE);
    assert_eq!(status.load().rotations, 1);
    assert!(status.load().last_error.is_none());
    // The next request, refused: the certificate stays, the reason is shown.
    let req = m.request().unwrap();
    m.answer(control_message::Message::CertificateRefusal(CertificateRefusal {
        request_id: req.request_id,
        reason: "token expired".into(),
    }));
    assert_eq!(cell.version(), 1);
    assert!(status.load().last_error.as_deref().unwrap().contains("token expired"));
    // An answer to no request in flight is ignored.
    m.answer(control_message::Message::Certificate(Certificate {
        request_id: 99,
        ..Default::default()
    }));
    assert_eq!(cell.version(), 1);
}

#[test]
fn times_are_rfc3339_utc() {
    assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)),
        "2000-02-29T01:01:01Z"
    );
}
