//! Where the CA's root lives, so that restarts and replicas sign with one key.
//!
//! - `--config-dir DIR`: `DIR/ca/root-cert.pem` and `DIR/ca/root-key.pem` (mode 0600), each
//!   written to a temporary file and renamed into place. The key is written first: a crash
//!   between the two leaves a key without a certificate, which the next start replaces (no
//!   proxy ever saw it), never a certificate without its key.
//! - `--etcd`: `<prefix>/ca/root-cert.pem` and `<prefix>/ca/root-key.pem`, created in one
//!   transaction that succeeds only if the certificate's key does not exist yet, so of two
//!   replicas starting together one writes and the other reads what it wrote.
//! - `--kubernetes`: the Secret `ringmesh-ca` (keys `ca-cert.pem`, `ca-key.pem`) in
//!   `--ca-namespace`, created if absent; a 409 means another replica created it first, and it
//!   is read. A Secret missing a key, or holding one that does not parse, is an error naming
//!   the Secret and the key: never replaced by a new root.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{CaError, CaMaterial};
use crate::etcd::{Compare, EtcdClient, TxnOp};

/// The folder under `--config-dir` holding the root.
pub const CA_DIR: &str = "ca";
/// The root certificate's file name (also its etcd key's last part).
pub const ROOT_CERT: &str = "root-cert.pem";
/// The root key's file name (also its etcd key's last part).
pub const ROOT_KEY: &str = "root-key.pem";
/// The Kubernetes Secret holding the root.
pub const SECRET_NAME: &str = "ringmesh-ca";
/// The Secret's key for the certificate.
pub const SECRET_CERT: &str = "ca-cert.pem";
/// The Secret's key for the private key.
pub const SECRET_KEY: &str = "ca-key.pem";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `text` beside `path` and renames it into place, with `mode`.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The paths of the root in `dir` (the `--config-dir`).
pub fn dir_paths(dir: &Path) -> (PathBuf, PathBuf) {
    let ca = dir.join(CA_DIR);
    (ca.join(ROOT_CERT), ca.join(ROOT_KEY))
}

/// The root kept in `dir/ca/`, made with `generate` when there is none.
pub fn load_or_create_dir(
    dir: &Path,
    generate: impl FnOnce() -> Result<CaMaterial, CaError>,
) -> Result<(CaMaterial, bool), CaError> {
    let (cert_path, key_path) = dir_paths(dir);
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(p)(e)),
    };
    match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => return Ok((CaMaterial { cert_pem, key_pem }, false)),
        (Some(_), None) => {
            return Err(CaError::Invalid {
                what: key_path.display().to_string(),
                reason: format!(
                    "missing while {} exists; restore the key, or remove both to make a new root (every proxy's \
                     certificate then stops being trusted)",
                    cert_path.display()
                ),
            })
        }
        _ => {}
    }
    let m = generate()?;
    let ca_dir = dir.join(CA_DIR);
    std::fs::create_dir_all(&ca_dir).map_err(io(&ca_dir))?;
    write_atomic(&key_path, &m.key_pem, 0o600)?;
    write_atomic(&cert_path, &m.cert_pem, 0o644)?;
    Ok((m, true))
}

/// The root kept in etcd under `prefix/ca/`, made with `generate` when there is none; the
/// second value says whether this call created it.
pub async fn load_or_create_etcd(
    client: &EtcdClient,
    prefix: &str,
    generate: impl Fn() -> Result<CaMaterial, CaError>,
) -> Result<(CaMaterial, bool), CaError> {
    let base = format!("{}/{CA_DIR}/", prefix.trim_end_matches('/'));
    let (cert_key, key_key) = (format!("{base}{ROOT_CERT}"), format!("{base}{ROOT_KEY}"));
    // Two rounds: a root deleted between a lost transaction and the read is made again.
    for _ in 0..3 {
        let (_, kvs) = client.range_prefix(&base).await?;
        let get = |k: &str| kvs.iter().find(|kv| kv.key == k).map(|kv| kv.value.clone());
        if let (Some(cert_pem), Some(key_pem)) = (get(&cert_key), get(&key_key)) {
            return Ok((CaMaterial { cert_pem, key_pem }, false));
        }
        let m = generate()?;
        let created = client
            .txn(
                &[Compare::ModRevision(cert_key.clone(), 0)],
                &[
                    TxnOp::Put {
                        key: key_key.clone(),
                        value: m.key_pem.clone(),
                        lease: 0,
                    },
                    TxnOp::Put {
                        key: cert_key.clone(),
                        value: m.cert_pem.clone(),
                        lease: 0,
                    },
                ],
            )
            .await?;
        if created {
            return Ok((m, true));
        }
        tracing::info!("another replica created the CA root first; using it");
    }
    Err(CaError::Invalid {
        what: format!("etcd {base}"),
        reason: format!("{cert_key} exists without {key_key}"),
    })
}

/// The root kept in the Secret [`SECRET_NAME`] of `namespace`, made with `generate` when there
/// is none.
pub async fn load_or_create_secret(
    client: &kube::Client,
    namespace: &str,
    generate: impl FnOnce() -> Result<CaMaterial, CaError>,
) -> Result<(CaMaterial, bool), CaError> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    use kube::api::{Api, PostParams};
    let name = format!("{namespace}/{SECRET_NAME}");
    let err = |reason: String| CaError::Kubernetes {
        name: name.clone(),
        reason,
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    // What is stored is checked here, so that a damaged Secret is reported as such, by key,
    // rather than as a CA that does not parse; and never replaced by a new root.
    let read = |s: &Secret| -> Result<CaMaterial, CaError> {
        let data = s.data.clone().unwrap_or_default();
        let field = |k: &str| {
            let b = data.get(k).ok_or_else(|| {
                err(format!(
                    "has no {k}; restore it, or delete the Secret to make a new root (every proxy's certificate \
                     then stops being trusted)"
                ))
            })?;
            String::from_utf8(b.0.clone()).map_err(|_| err(format!("{k} is not text (PEM expected)")))
        };
        let m = CaMaterial {
            cert_pem: field(SECRET_CERT)?,
            key_pem: field(SECRET_KEY)?,
        };
        super::pem_certs(SECRET_CERT, &m.cert_pem).map_err(|e| err(e.to_string()))?;
        rcgen::KeyPair::from_pem(&m.key_pem).map_err(|e| err(format!("{SECRET_KEY}: not a PEM private key: {e}")))?;
        // The pair: a CA certificate, and the key of that certificate.
        super::Ca::new(&m, super::CaSettings::default())
            .map_err(|e| err(format!("{SECRET_CERT} and {SECRET_KEY}: {e}")))?;
        Ok(m)
    };
    let api_err = |e: kube::Error| err(crate::kubernetes::api_error(&e));
    if let Some(s) = api.get_opt(SECRET_NAME).await.map_err(api_err)? {
        return Ok((read(&s)?, false));
    }
    let m = generate()?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [
                (SECRET_CERT.to_owned(), ByteString(m.cert_pem.clone().into_bytes())),
                (SECRET_KEY.to_owned(), ByteString(m.key_pem.clone().into_bytes())),
            ]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok((m, true)),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!("another replica created the CA secret first; using it");
            let s = api.get(SECRET_NAME).await.map_err(api_err)?;
            Ok((read(&s)?, false))
        }
        Err(e) => Err(api_err(e)),
    }
}

/// Reads a user's CA (`--ca-cert`, `--ca-key`).
pub fn read_supplied(cert: &Path, key: &Path) -> Result<CaMaterial, CaError> {
    Ok(CaMaterial {
        cert_pem: std::fs::read_to_string(cert).map_err(io(cert))?,
        key_pem: std::fs::read_to_string(key).map_err(io(key))?,
    })
}

/// Reads PEM certificates from a file (`--ca-bundle`, `--ca-extra-roots`).
pub fn read_roots(what: &str, path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, CaError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    super::pem_certs(&format!("{what} {}", path.display()), &text)
}
