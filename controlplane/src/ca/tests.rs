use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use super::*;

fn root_ca(settings: CaSettings) -> (Ca, CaMaterial) {
    let m = generate_root(&settings.trust_domain).unwrap();
    (Ca::new(&m, settings).unwrap(), m)
}

fn short_lived() -> CaSettings {
    CaSettings {
        cert_lifetime: Duration::from_secs(120),
        max_cert_lifetime: Duration::from_secs(600),
        ..Default::default()
    }
}

/// A CSR with a new key, naming `sans` (URIs or DNS names).
fn csr(sans: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| {
            if s.contains("://") {
                SanType::URI(s.to_string().try_into().unwrap())
            } else {
                SanType::DnsName(s.to_string().try_into().unwrap())
            }
        })
        .collect();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uris(der: &[u8]) -> Vec<String> {
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    let san = x.subject_alternative_name().unwrap().expect("a SAN extension");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn reviews() -> WorkloadId {
    WorkloadId::new("shop", "reviews").unwrap()
}

#[test]
fn a_root_is_made_once_and_kept_in_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (first, created) = store::load_or_create_dir(dir.path(), || generate_root("cluster.local")).unwrap();
    assert!(created);
    let (cert, key) = store::dir_paths(dir.path());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "the key is readable by its owner only"
    );
    let (again, created) =
        store::load_or_create_dir(dir.path(), || panic!("a root exists; nothing is generated")).unwrap();
    assert!(!created);
    assert_eq!(again, first, "a restart reads the same root");
    let ca = Ca::new(&again, CaSettings::default()).unwrap();
    assert_eq!(
        ca.trust_bundle(),
        pem_certs("root", &std::fs::read_to_string(&cert).unwrap()).unwrap()
    );
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(ca.trust_bundle()[0].as_ref()).unwrap();
    assert!(x.is_ca());
    assert_eq!(x.subject().to_string(), "CN=ringmesh root CA cluster.local, O=ringmesh");
    let years = x.validity().time_to_expiration().unwrap().whole_days() / 365;
    assert_eq!(years, 9, "ten years, less the moment since");
    // No temporary file is left beside them.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("ca"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_certificate_without_its_key_is_an_error_not_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    store::load_or_create_dir(dir.path(), || generate_root("cluster.local")).unwrap();
    let (_, key) = store::dir_paths(dir.path());
    std::fs::remove_file(&key).unwrap();
    let e = store::load_or_create_dir(dir.path(), || generate_root("cluster.local")).unwrap_err();
    assert!(e.to_string().contains("root-key.pem: missing"), "{e}");
}

#[test]
fn a_csr_is_signed_for_the_proven_identity_only() {
    let (ca, _) = root_ca(short_lived());
    let spiffe = "spiffe://cluster.local/ns/shop/sa/reviews";
    for asked in [vec![], vec![spiffe]] {
        let signed = ca.sign(&csr(&asked), &reviews(), Duration::ZERO).unwrap();
        assert_eq!(signed.chain.len(), 1, "a root signs: the chain is the leaf");
        assert_eq!(
            uris(signed.chain[0].as_ref()),
            [spiffe],
            "exactly one SAN, the SPIFFE id"
        );
        assert_eq!(signed.trust_bundle, ca.trust_bundle());
        let (_, x) = x509_parser::certificate::X509Certificate::from_der(signed.chain[0].as_ref()).unwrap();
        assert!(!x.is_ca());
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        assert_eq!(x.raw_serial().len(), 16);
        let (nb, na) = (x.validity().not_before.timestamp(), x.validity().not_after.timestamp());
        assert_eq!(na - nb, 120 + 300, "the default lifetime, from five minutes back");
    }
    for other in [
        vec!["spiffe://cluster.local/ns/shop/sa/admin"],
        vec![spiffe, "spiffe://cluster.local/ns/kube-system/sa/default"],
        vec!["reviews.shop.svc"],
    ] {
        match ca.sign(&csr(&other), &reviews(), Duration::ZERO) {
            Err(SignError::OtherIdentity { asked, allowed }) => {
                assert_eq!(allowed, spiffe);
                assert!(!asked.contains(spiffe), "only the others are named: {asked}");
            }
            r => panic!("{other:?}: {r:?}"),
        }
    }
    let mut broken = csr(&[]);
    let last = broken.len() - 1;
    broken[last] ^= 0xff;
    assert!(matches!(
        ca.sign(&broken, &reviews(), Duration::ZERO),
        Err(SignError::BadCsr(_))
    ));
    assert!(matches!(
        ca.sign(b"junk", &reviews(), Duration::ZERO),
        Err(SignError::BadCsr(_))
    ));
}

#[test]
fn lifetimes_are_bounded() {
    let (ca, _) = root_ca(short_lived());
    assert_eq!(ca.lifetime(Duration::ZERO), Duration::from_secs(120));
    assert_eq!(ca.lifetime(Duration::from_secs(3600)), Duration::from_secs(600));
    assert_eq!(ca.lifetime(Duration::from_secs(5)), MIN_CERT_LIFETIME);
    let signed = ca.sign(&csr(&[]), &reviews(), Duration::from_secs(86400)).unwrap();
    let left = signed.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(600) && left > Duration::from_secs(590),
        "{left:?}"
    );
}

#[test]
fn tokens_prove_their_identity_until_they_expire() {
    let (ca, _) = root_ca(CaSettings::default());
    let now = SystemTime::now();
    let (token, expires) = ca.create_token(&reviews(), Duration::from_secs(3600), now);
    assert!(token.starts_with("rmt1."), "{token}");
    assert_eq!(ca.verify_token(&token, now), Ok(reviews()));
    assert_eq!(
        ca.verify_token(&token, SystemTime::UNIX_EPOCH + Duration::from_secs(expires + 5)),
        Err(TokenError::Expired {
            id: "spiffe://cluster.local/ns/shop/sa/reviews".into(),
            ago: 5
        })
    );
    // Another CA (key) did not make it.
    let (other, _) = root_ca(CaSettings::default());
    assert_eq!(other.verify_token(&token, now), Err(TokenError::BadSignature));
    // A payload changed to another identity keeps the old MAC, which no longer matches.
    let (_, payload_mac) = token.split_once('.').unwrap();
    let (_, mac) = payload_mac.split_once('.').unwrap();
    let forged_payload = URL_SAFE_NO_PAD.encode(format!("kube-system:admin:{expires}"));
    let forged = format!("rmt1.{forged_payload}.{mac}");
    assert_eq!(ca.verify_token(&forged, now), Err(TokenError::BadSignature));
    for junk in ["", "rmt1.", "rmt1.abc", "hello.world.x", "rmt1.!!.??"] {
        assert!(ca.verify_token(junk, now).is_err(), "{junk:?}");
    }
}

#[test]
fn the_same_key_makes_tokens_every_replica_accepts() {
    let (ca, m) = root_ca(CaSettings::default());
    let replica = Ca::new(&m, CaSettings::default()).unwrap();
    let (token, _) = ca.create_token(&reviews(), DEFAULT_TOKEN_TTL, SystemTime::now());
    assert_eq!(replica.verify_token(&token, SystemTime::now()), Ok(reviews()));
}

#[test]
fn an_intermediate_ships_in_the_chain_and_the_roots_in_the_bundle() {
    let (root, root_m) = root_ca(CaSettings::default());
    // An intermediate signed by `root`.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&root_m.cert_pem, KeyPair::from_pem(&root_m.key_pem).unwrap()).unwrap();
    let inter = params.signed_by(&key, &issuer).unwrap();
    let m = CaMaterial {
        cert_pem: inter.pem(),
        key_pem: key.serialize_pem(),
    };
    let ca = Ca::new(
        &m,
        CaSettings {
            upstream_roots: root.trust_bundle().to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    let signed = ca.sign(&csr(&[]), &reviews(), Duration::ZERO).unwrap();
    assert_eq!(signed.chain.len(), 2);
    assert_eq!(&signed.chain[1], inter.der());
    assert_eq!(
        signed.trust_bundle,
        root.trust_bundle(),
        "the bundle is the roots above it"
    );
    // The key must be the certificate's.
    let wrong = CaMaterial {
        cert_pem: inter.pem(),
        key_pem: root_m.key_pem.clone(),
    };
    assert!(Ca::new(&wrong, CaSettings::default())
        .unwrap_err()
        .to_string()
        .contains("not the key of the CA certificate"));
}

#[test]
fn extra_roots_join_the_bundle() {
    let (old, _) = root_ca(CaSettings::default());
    let (ca, _) = root_ca(CaSettings {
        extra_roots: old.trust_bundle().to_vec(),
        ..Default::default()
    });
    assert_eq!(ca.trust_bundle().len(), 2);
    assert_eq!(&ca.trust_bundle()[1], &old.trust_bundle()[0]);
    let pem = to_pem(ca.trust_bundle());
    assert_eq!(pem_certs("bundle", &pem).unwrap(), ca.trust_bundle(), "PEM round trip");
}

#[test]
fn names_that_could_bend_a_spiffe_id_are_refused() {
    assert!(WorkloadId::new("shop", "reviews").is_ok());
    for (ns, sa) in [("shop/x", "a"), ("", "a"), ("Shop", "a"), ("shop", "a:b"), ("-a", "b")] {
        assert!(WorkloadId::new(ns, sa).is_err(), "{ns}/{sa}");
    }
}
