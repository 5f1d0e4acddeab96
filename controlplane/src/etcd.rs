//! etcd as the shared resource store and workload registry of several `ringmesh-control`
//! replicas (`--etcd`).
//!
//! **Why the JSON gateway.** The `etcd-client` crate compiles etcd's protos with a system
//! `protoc`, which this build does not allow. etcd serves the same KV, lease and watch API as
//! JSON over HTTP (the grpc-gateway, at `/v3/` since 3.4), so a few POSTs with hyper and
//! serde_json cover what ringmesh needs without any generated code: range, put, txn (for
//! compare-and-write), lease grant/keep-alive, and watch (a streamed response of JSON objects).
//! Keys and values travel base64-encoded; 64-bit integers arrive as JSON strings.
//!
//! **Layout** under the prefix (default `/ringmesh`):
//! - `<prefix>/resources/<kind>/<namespace>/<name>`: one resource, the YAML the user applied.
//!   [`EtcdStore`] checks an apply or delete against the whole set with the same code as the
//!   directory store (`store::plan_apply`, `store::plan_delete`) and writes it in one
//!   transaction that fails if any key it replaces changed meanwhile.
//! - `<prefix>/workloads/<node_id>`: a proxy's announced workload with its readiness
//!   ([`WorkloadRecord`], JSON), written by the replica the proxy is connected to under a lease
//!   that replica keeps alive with TTL = `--grace`: the workloads of a replica that dies expire
//!   after the grace period, as a disconnected proxy's do.
//!
//! Every replica follows both prefixes (range, then watch from the next revision; each watch
//! event re-reads the prefix, which keeps the logic a plain "replace the set"). When etcd goes
//! away the last known sets keep being served, the loss is logged once, and the loops retry with
//! back-off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ringmesh_api::proto::{Document, Workload};
use ringmesh_api::{documents, Diagnostic, Diagnostics};
use serde_json::{json, Value};

use crate::server::{ControlPlane, RemoteWorkload};
use crate::store::{
    check_units, plan_apply, plan_delete, ApplyReport, ResourceKey, ResourceSet, StoreError, StoredResource, Unit,
};

/// Default key prefix (`--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = "/ringmesh";
/// Time limit of one unary call (connect, request, whole reply).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A watch with no message for this long is reopened (and the prefix re-read), so a silently
/// dead connection is noticed.
pub const WATCH_IDLE: Duration = Duration::from_secs(30);
/// Largest reply body accepted from etcd.
pub const MAX_REPLY: usize = 64 << 20;
/// Longest wait between retries while etcd is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A `--etcd` entry is not `http://host:port`.
    #[error("--etcd {0:?}: expected http://host:port (TLS is not supported)")]
    BadEndpoint(String),
    /// No endpoint answered.
    #[error("etcd at {endpoint} is unreachable: {reason}")]
    Unreachable {
        /// The endpoint tried last.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// No answer within the time limit.
    #[error("etcd at {endpoint}: no answer to {path} within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The API path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// etcd answered with an error.
    #[error("etcd at {endpoint}: {path}: {message}")]
    Api {
        /// The endpoint.
        endpoint: String,
        /// The API path.
        path: String,
        /// etcd's message (or the HTTP status).
        message: String,
    },
    /// The reply was not what the API documents.
    #[error("etcd: unexpected reply to {path}: {message}")]
    Decode {
        /// The API path.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The watch was cancelled by etcd (e.g. its start revision was compacted).
    #[error("etcd cancelled the watch: {0}")]
    WatchCancelled(String),
}

/// One `--etcd` member.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// `host:port`.
    authority: String,
    /// As given, for messages.
    url: String,
}

fn parse_endpoint(url: &str) -> Result<Member, EtcdError> {
    let bad = || EtcdError::BadEndpoint(url.to_owned());
    let rest = url.trim().strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || authority.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(Member {
        authority: authority.to_owned(),
        url: url.trim().to_owned(),
    })
}

/// A key-value pair read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value (UTF-8; other bytes are replaced).
    pub value: String,
    /// Revision of its last change.
    pub mod_revision: i64,
}

/// A client of etcd's JSON gateway. Cheap to clone; calls go to the member that last
/// answered and move on to the next one when it does not.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    members: Arc<Vec<Member>>,
    current: Arc<AtomicUsize>,
    timeout: Duration,
}

/// `base64(text)`.
pub fn b64(text: &str) -> String {
    B64.encode(text.as_bytes())
}

fn unb64(path: &str, v: Option<&Value>) -> Result<String, EtcdError> {
    let Some(v) = v else { return Ok(String::new()) };
    let s = v
        .as_str()
        .ok_or_else(|| decode(path, "a key or value is not a string"))?;
    let bytes = B64.decode(s).map_err(|e| decode(path, &format!("bad base64: {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn decode(path: &str, message: &str) -> EtcdError {
    EtcdError::Decode {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

/// An int64 field: the gateway writes them as strings, absent when zero.
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of every key starting with `prefix`: the prefix with its last byte
/// incremented (bytes of 0xff dropped), or `"\0"` (all keys) for an all-0xff prefix.
pub fn prefix_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `/v3/kv/range` body for every key under `prefix`.
pub fn range_request(prefix: &str) -> Value {
    json!({"key": b64(prefix), "range_end": B64.encode(prefix_range_end(prefix))})
}

/// The revision and pairs of a `/v3/kv/range` reply.
pub fn decode_range(reply: &Value) -> Result<(i64, Vec<Kv>), EtcdError> {
    let path = "/v3/kv/range";
    let revision = int(reply.get("header").and_then(|h| h.get("revision")));
    let mut out = Vec::new();
    match reply.get("kvs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(kvs)) => {
            for kv in kvs {
                out.push(Kv {
                    key: unb64(path, kv.get("key"))?,
                    value: unb64(path, kv.get("value"))?,
                    mod_revision: int(kv.get("mod_revision")),
                });
            }
        }
        Some(_) => return Err(decode(path, "`kvs` is not a list")),
    }
    Ok((revision, out))
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Put `value` at `key`, attached to `lease` when non-zero.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Lease id, 0 for none.
        lease: i64,
    },
    /// Delete `key`.
    Delete(String),
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last change is at this revision (0: the key does not exist).
    ModRevision(String, i64),
    /// The key holds exactly this value.
    Value(String, String),
}

/// `/v3/kv/txn` body: every `ops` if all `compare` hold, nothing otherwise.
pub fn txn_request(compare: &[Compare], ops: &[TxnOp]) -> Value {
    let compare: Vec<Value> = compare
        .iter()
        .map(|c| match c {
            Compare::ModRevision(k, r) => {
                json!({"key": b64(k), "result": "EQUAL", "target": "MOD", "mod_revision": r.to_string()})
            }
            Compare::Value(k, v) => json!({"key": b64(k), "result": "EQUAL", "target": "VALUE", "value": b64(v)}),
        })
        .collect();
    let success: Vec<Value> = ops
        .iter()
        .map(|op| match op {
            TxnOp::Put { key, value, lease } => {
                let mut put = json!({"key": b64(key), "value": b64(value)});
                if *lease != 0 {
                    put["lease"] = Value::String(lease.to_string());
                }
                json!({"request_put": put})
            }
            TxnOp::Delete(k) => json!({"request_delete_range": {"key": b64(k)}}),
        })
        .collect();
    json!({"compare": compare, "success": success})
}

/// Splits the complete JSON messages off the front of a watch stream's buffer (the gateway
/// writes one object per message, newline-separated); an incomplete tail stays in `buf`.
pub fn take_messages(buf: &mut Vec<u8>) -> Result<Vec<Value>, EtcdError> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    let mut consumed = 0;
    loop {
        match stream.next() {
            Some(Ok(v)) => {
                out.push(v);
                consumed = stream.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(decode("/v3/watch", &e.to_string())),
            None => {
                consumed = buf.len();
                break;
            }
        }
    }
    let blank = buf[consumed..].iter().take_while(|b| b.is_ascii_whitespace()).count();
    buf.drain(..consumed + blank);
    Ok(out)
}

/// What one watch message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is set up (or a progress notification): nothing changed.
    Quiet,
    /// Keys under the prefix changed.
    Changed,
}

/// Reads one watch message (`{"result": {...}}` or `{"error": {...}}`).
pub fn decode_watch(msg: &Value) -> Result<WatchMessage, EtcdError> {
    if let Some(e) = msg.get("error") {
        let m = e.get("message").and_then(Value::as_str).unwrap_or("error");
        return Err(EtcdError::WatchCancelled(m.to_owned()));
    }
    let r = msg.get("result").ok_or_else(|| decode("/v3/watch", "no `result`"))?;
    if r.get("canceled").and_then(Value::as_bool) == Some(true) {
        let reason = r.get("cancel_reason").and_then(Value::as_str).unwrap_or("");
        let compact = int(r.get("compact_revision"));
        return Err(EtcdError::WatchCancelled(format!(
            "{reason} (compacted at revision {compact})"
        )));
    }
    match r.get("events") {
        Some(Value::Array(e)) if !e.is_empty() => Ok(WatchMessage::Changed),
        _ => Ok(WatchMessage::Quiet),
    }
}

/// An open watch: its streamed reply.
#[derive(Debug)]
pub struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    endpoint: String,
}

impl Watch {
    /// Waits for the next change. `Ok(false)`: the stream ended or stayed idle for
    /// [`WATCH_IDLE`] (reopen it); `Err`: it failed or was cancelled.
    pub async fn changed(&mut self) -> Result<bool, EtcdError> {
        loop {
            for m in take_messages(&mut self.buf)? {
                if decode_watch(&m)? == WatchMessage::Changed {
                    return Ok(true);
                }
            }
            if self.buf.len() > MAX_REPLY {
                return Err(decode("/v3/watch", "message too large"));
            }
            let frame = match tokio::time::timeout(WATCH_IDLE, self.body.frame()).await {
                Err(_) | Ok(None) => return Ok(false),
                Ok(Some(Err(e))) => {
                    return Err(EtcdError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason: e.to_string(),
                    })
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

impl EtcdClient {
    /// A client of the comma-separated `http://host:port` members in `endpoints`.
    pub fn new(endpoints: &str) -> Result<EtcdClient, EtcdError> {
        let members = endpoints
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(parse_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() {
            return Err(EtcdError::BadEndpoint(endpoints.to_owned()));
        }
        Ok(EtcdClient {
            members: Arc::new(members),
            current: Arc::new(AtomicUsize::new(0)),
            timeout: CALL_TIMEOUT,
        })
    }

    /// The members, as given, for messages.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sends `body` to `path` on one member; the response head within the time limit.
    async fn send(
        &self,
        m: &Member,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, EtcdError> {
        let unreachable = |reason: String| EtcdError::Unreachable {
            endpoint: m.url.clone(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(&m.authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &m.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| unreachable(e.to_string()))?;
        sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))
    }

    /// One unary call, tried on each member in turn from the one that last answered.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let m = &self.members[idx];
            let attempt = async {
                let resp = self.send(m, path, body).await?;
                let status = resp.status();
                let bytes = http_body_util::Limited::new(resp.into_body(), MAX_REPLY)
                    .collect()
                    .await
                    .map_err(|e| EtcdError::Unreachable {
                        endpoint: m.url.clone(),
                        reason: e.to_string(),
                    })?
                    .to_bytes();
                let value: Value = serde_json::from_slice(&bytes).map_err(|e| decode(path, &e.to_string()))?;
                if !status.is_success() {
                    let message = value
                        .get("message")
                        .or_else(|| value.get("error"))
                        .and_then(Value::as_str)
                        .map_or_else(|| status.to_string(), str::to_owned);
                    return Err(EtcdError::Api {
                        endpoint: m.url.clone(),
                        path: path.to_owned(),
                        message,
                    });
                }
                Ok(value)
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(v)) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                // etcd answered: another member would say the same.
                Ok(Err(e @ (EtcdError::Api { .. } | EtcdError::Decode { .. }))) => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(EtcdError::Timeout {
                        endpoint: m.url.clone(),
                        path: path.to_owned(),
                        timeout: self.timeout,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::BadEndpoint(String::new())))
    }

    /// Every key under `prefix`, with the store's revision.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        decode_range(&self.call("/v3/kv/range", &range_request(prefix)).await?)
    }

    /// Runs a transaction; `Ok(false)` when a comparison failed (nothing was done).
    pub async fn txn(&self, compare: &[Compare], ops: &[TxnOp]) -> Result<bool, EtcdError> {
        let reply = self.call("/v3/kv/txn", &txn_request(compare, ops)).await?;
        Ok(reply.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Puts `value` at `key` under `lease` (0: none).
    pub async fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), EtcdError> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if lease != 0 {
            body["lease"] = Value::String(lease.to_string());
        }
        self.call("/v3/kv/put", &body).await.map(|_| ())
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({"key": b64(key)}))
            .await
            .map(|_| ())
    }

    /// Grants a lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let reply = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()})).await?;
        match int(reply.get("ID")) {
            0 => Err(decode("/v3/lease/grant", "no lease id")),
            id => Ok(id),
        }
    }

    /// Renews a lease; its remaining TTL, 0 when it has expired.
    pub async fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let reply = self
            .call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        // The gateway streams this call: one `{"result": ...}` per request sent.
        let r = reply.get("result").unwrap_or(&reply);
        Ok(int(r.get("TTL")))
    }

    /// Opens a watch of every key under `prefix` from `start_revision` on.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix),
            "range_end": B64.encode(prefix_range_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let m = &self.members[(first + i) % n];
            match tokio::time::timeout(self.timeout, self.send(m, "/v3/watch", &body)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    return Ok(Watch {
                        body: resp.into_body(),
                        buf: Vec::new(),
                        endpoint: m.url.clone(),
                    })
                }
                Ok(Ok(resp)) => {
                    last = Some(EtcdError::Api {
                        endpoint: m.url.clone(),
                        path: "/v3/watch".into(),
                        message: resp.status().to_string(),
                    })
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(EtcdError::Timeout {
                        endpoint: m.url.clone(),
                        path: "/v3/watch".into(),
                        timeout: self.timeout,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::BadEndpoint(String::new())))
    }
}

/// Follows every key under `prefix`: `on_set` gets the whole set at start and after every
/// change. While etcd is unreachable nothing is called (the caller keeps what it has); the
/// loss and the recovery are logged once each, and retries back off from 100 ms to
/// [`MAX_BACKOFF`]. Runs until the task is dropped.
pub async fn follow(client: EtcdClient, prefix: String, mut on_set: impl FnMut(Vec<Kv>)) {
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let result: Result<(), EtcdError> = async {
            let (revision, kvs) = client.range_prefix(&prefix).await?;
            if lost {
                tracing::info!(prefix = %prefix, "etcd reachable again; following its changes");
                lost = false;
            }
            on_set(kvs);
            let mut watch = client.watch(&prefix, revision + 1).await?;
            backoff = Duration::from_millis(100);
            while watch.changed().await? {
                on_set(client.range_prefix(&prefix).await?.1);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if !lost {
                tracing::error!(prefix = %prefix, "{e}; serving the last known set and retrying");
                lost = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Resources in etcd: the `--etcd` counterpart of [`crate::store::DirStore`], with the same
/// checks.
#[derive(Debug)]
pub struct EtcdStore {
    client: EtcdClient,
    prefix: String,
    /// Serialises this replica's applies and deletes (replicas among themselves are kept
    /// apart by the transactions' comparisons).
    write: tokio::sync::Mutex<()>,
}

/// The key of one resource: `<prefix>/resources/<kind>/<namespace>/<name>`.
pub fn resource_key(prefix: &str, k: &ResourceKey) -> String {
    format!("{prefix}/resources/{}/{}/{}", k.kind, k.namespace, k.name)
}

/// Builds the served set from the pairs under `<prefix>/resources/`, refusing a set that does
/// not compile (every diagnostic, one a line). Each key is a source of its own, so
/// diagnostics name `<key>:<line>`.
pub fn resource_set(prefix: &str, kvs: &[Kv]) -> Result<ResourceSet, String> {
    check_units(&units_of(kvs))?;
    let mut set = ResourceSet::default();
    for kv in kvs {
        for (line, yaml) in documents(&kv.value) {
            let document = Document {
                source: format!("{}:{line}", kv.key),
                yaml,
            };
            if let Ok(key) = ResourceKey::of_yaml(&document.yaml) {
                let applied = resource_key(prefix, &key) == kv.key;
                set.resources.push(StoredResource {
                    key,
                    document: document.clone(),
                    file: PathBuf::from(&kv.key),
                    applied,
                });
            }
            set.documents.push(document);
        }
    }
    Ok(set)
}

impl EtcdStore {
    /// The store under `prefix`. Reads it once, so an unreachable etcd or a set that does not
    /// compile is an error at start (naming the address or every diagnostic), not later.
    pub async fn open(client: EtcdClient, prefix: &str) -> Result<(EtcdStore, ResourceSet), StoreError> {
        let prefix = prefix.trim_end_matches('/').to_owned();
        let (_, kvs) = client.range_prefix(&format!("{prefix}/resources/")).await?;
        let set = resource_set(&prefix, &kvs)
            .map_err(|msg| StoreError::Refused(Diagnostics(vec![Diagnostic::error(msg)])))?;
        Ok((
            EtcdStore {
                client,
                prefix,
                write: tokio::sync::Mutex::new(()),
            },
            set,
        ))
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    async fn read(&self) -> Result<Vec<Kv>, StoreError> {
        Ok(self
            .client
            .range_prefix(&format!("{}/resources/", self.prefix))
            .await?
            .1)
    }

    /// As [`crate::store::DirStore::apply`]; on success the new set is returned too.
    pub async fn apply(
        &self,
        files: &[(String, String)],
        dry_run: bool,
    ) -> Result<(ApplyReport, Option<ResourceSet>), StoreError> {
        let _guard = self.write.lock().await;
        let kvs = self.read().await?;
        let units = units_of(&kvs);
        let own = |k: &ResourceKey| resource_key(&self.prefix, k);
        let plan = plan_apply(&units, files, &own);
        if !plan.report.applied || dry_run {
            let mut report = plan.report;
            report.applied &= !dry_run;
            return Ok((report, None));
        }
        if plan.writes.is_empty() {
            return Ok((plan.report, None));
        }
        let revisions: BTreeMap<&str, i64> = kvs.iter().map(|kv| (kv.key.as_str(), kv.mod_revision)).collect();
        let compare: Vec<Compare> = plan
            .writes
            .iter()
            .map(|(name, _, _)| Compare::ModRevision(name.clone(), revisions.get(name.as_str()).copied().unwrap_or(0)))
            .collect();
        let ops: Vec<TxnOp> = plan
            .writes
            .iter()
            .map(|(name, _, yaml)| TxnOp::Put {
                key: name.clone(),
                value: yaml.clone(),
                lease: 0,
            })
            .collect();
        if !self.client.txn(&compare, &ops).await? {
            let keys = plan
                .writes
                .iter()
                .map(|w| w.1.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(StoreError::Conflict(keys));
        }
        let set = resource_set(&self.prefix, &self.read().await?).ok();
        Ok((plan.report, set))
    }

    /// As [`crate::store::DirStore::delete`]: `Ok(None)` when there is no such resource,
    /// otherwise the key removed and the new set.
    pub async fn delete(&self, key: &ResourceKey) -> Result<Option<(String, Option<ResourceSet>)>, StoreError> {
        let _guard = self.write.lock().await;
        let kvs = self.read().await?;
        let own = |k: &ResourceKey| resource_key(&self.prefix, k);
        let Some(name) = plan_delete(&units_of(&kvs), key, &own)? else {
            return Ok(None);
        };
        let rev = kvs.iter().find(|kv| kv.key == name).map_or(0, |kv| kv.mod_revision);
        if !self
            .client
            .txn(
                &[Compare::ModRevision(name.clone(), rev)],
                &[TxnOp::Delete(name.clone())],
            )
            .await?
        {
            return Err(StoreError::Conflict(key.to_string()));
        }
        let set = resource_set(&self.prefix, &self.read().await?).ok();
        Ok(Some((name, set)))
    }

    /// Follows the resources in etcd and serves every set that compiles; a set that does not
    /// is logged with every diagnostic and the last good one stays. Runs forever.
    pub async fn follow(self: Arc<Self>, cp: ControlPlane) {
        let prefix = self.prefix.clone();
        let mut last_error: Option<String> = None;
        follow(
            self.client.clone(),
            format!("{prefix}/resources/"),
            move |kvs| match resource_set(&prefix, &kvs) {
                Ok(set) => {
                    last_error = None;
                    if set.documents != cp.resources().documents {
                        tracing::info!(resources = set.resources.len(), "resources in etcd changed; pushing");
                        cp.set_resources(set);
                    }
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::error!("resources in etcd refused; serving the last good set:\n{e}");
                    }
                    last_error = Some(e);
                }
            },
        )
        .await
    }
}

fn units_of(kvs: &[Kv]) -> Vec<Unit> {
    kvs.iter()
        .map(|kv| Unit {
            name: kv.key.clone(),
            text: kv.value.clone(),
        })
        .collect()
}

/// A workload in the shared registry (`<prefix>/workloads/<node_id>`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecord {
    /// Workload name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Service account.
    #[serde(default)]
    pub service_account: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// IP addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Service hosts.
    #[serde(default)]
    pub services: Vec<String>,
    /// Target port per port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Whether the app is ready.
    pub ready: bool,
    /// The replica the proxy is connected to.
    pub replica: String,
}

impl WorkloadRecord {
    /// The record of a workload announced to `replica`.
    pub fn new(w: &Workload, ready: bool, replica: &str) -> WorkloadRecord {
        WorkloadRecord {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            labels: w.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            addresses: w.addresses.clone(),
            services: w.services.clone(),
            ports: w.ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            ready,
            replica: replica.to_owned(),
        }
    }

    /// Back to the control plane's type.
    pub fn remote(self) -> RemoteWorkload {
        RemoteWorkload {
            workload: Workload {
                name: self.name,
                namespace: self.namespace,
                service_account: self.service_account,
                labels: self.labels.into_iter().collect(),
                addresses: self.addresses,
                services: self.services,
                ports: self.ports.into_iter().collect(),
            },
            ready: self.ready,
            replica: self.replica,
        }
    }
}

/// Other replicas' workloads from the pairs under `<prefix>/workloads/`: `replica`'s own and
/// unreadable records are left out (an unreadable one is logged).
pub fn remote_workloads(prefix: &str, replica: &str, kvs: &[Kv]) -> BTreeMap<String, RemoteWorkload> {
    let dir = format!("{prefix}/workloads/");
    let mut out = BTreeMap::new();
    for kv in kvs {
        let Some(node) = kv.key.strip_prefix(&dir) else {
            continue;
        };
        match serde_json::from_str::<WorkloadRecord>(&kv.value) {
            Ok(r) if r.replica == replica => {}
            Ok(r) => {
                out.insert(node.to_owned(), r.remote());
            }
            Err(e) => tracing::warn!(key = %kv.key, "unreadable workload record ignored: {e}"),
        }
    }
    out
}

/// Publishes this replica's workloads to `<prefix>/workloads/<node_id>` under a lease of `ttl`
/// renewed every third of it, and follows every replica's so that endpoints span them all.
/// A record is rewritten when its workload or readiness changes (while the proxy is connected
/// here) and removed (only if it is still this replica's: a proxy may have moved on) when the
/// proxy's grace period ends. When
/// the lease is lost (etcd was away longer than `ttl`) a new one is granted and every record
/// rewritten. Runs forever.
pub async fn run_registry(client: EtcdClient, prefix: String, replica: String, ttl: Duration, cp: ControlPlane) {
    let prefix = prefix.trim_end_matches('/').to_owned();
    let follower = {
        let cp = cp.clone();
        let replica = replica.clone();
        let prefix = prefix.clone();
        follow(client.clone(), format!("{prefix}/workloads/"), move |kvs| {
            cp.set_remote_workloads(remote_workloads(&prefix, &replica, &kvs))
        })
    };
    tokio::spawn(follower);
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let renew_every = (ttl / 3).max(Duration::from_millis(500));
    let mut changes = cp.subscribe();
    let mut lease = 0i64;
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    let mut next_renew = tokio::time::Instant::now() + renew_every;
    loop {
        let result: Result<(), EtcdError> = async {
            if lease == 0 {
                lease = client.grant(ttl_secs).await?;
                written.clear();
                next_renew = tokio::time::Instant::now() + renew_every;
            }
            if tokio::time::Instant::now() >= next_renew {
                if client.keepalive(lease).await? <= 0 {
                    tracing::warn!(
                        lease,
                        "registry lease expired; granting a new one and rewriting the workloads"
                    );
                    lease = 0;
                    return Ok(());
                }
                next_renew = tokio::time::Instant::now() + renew_every;
            }
            let desired: BTreeMap<String, String> = cp
                .local_workloads()
                .into_iter()
                .filter_map(|(node, w, ready, connected)| {
                    if !connected {
                        // Kept as written until its grace ends, never rewritten: the proxy may
                        // be connected to another replica now, whose record must not be undone.
                        return written.get(&node).cloned().map(|v| (node, v));
                    }
                    serde_json::to_string(&WorkloadRecord::new(&w, ready, &replica))
                        .ok()
                        .map(|j| (node, j))
                })
                .collect();
            for (node, value) in &desired {
                if written.get(node) != Some(value) {
                    client.put(&format!("{prefix}/workloads/{node}"), value, lease).await?;
                    written.insert(node.clone(), value.clone());
                }
            }
            let gone: Vec<String> = written.keys().filter(|n| !desired.contains_key(*n)).cloned().collect();
            for node in gone {
                let key = format!("{prefix}/workloads/{node}");
                let value = written.get(&node).cloned().unwrap_or_default();
                client
                    .txn(&[Compare::Value(key.clone(), value)], &[TxnOp::Delete(key)])
                    .await?;
                written.remove(&node);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                if lost {
                    tracing::info!("etcd reachable again; workloads published");
                    lost = false;
                }
                backoff = Duration::from_millis(100);
                if lease == 0 {
                    continue;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep_until(next_renew) => {}
                }
            }
            Err(e) => {
                if !lost {
                    tracing::error!("{e}; workloads not published, retrying");
                    lost = true;
                }
                // Whatever was written may be gone with the lease; check it on the next round.
                next_renew = tokio::time::Instant::now();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_host_port() {
        let c = EtcdClient::new("http://127.0.0.1:2379, http://10.0.0.2:2379/").unwrap();
        assert_eq!(c.members[0].authority, "127.0.0.1:2379");
        assert_eq!(c.members[1].authority, "10.0.0.2:2379");
        for bad in [
            "https://a:1",
            "127.0.0.1:2379",
            "http://a",
            "http://a:0",
            "http://a:1/x",
            "",
        ] {
            assert!(EtcdClient::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefix_ranges_end_after_the_prefix() {
        assert_eq!(prefix_range_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_range_end(""), vec![0]);
        let r = range_request("/r/");
        assert_eq!(r["key"], "L3Iv");
        assert_eq!(r["range_end"], "L3Iw");
    }

    #[test]
    fn range_replies_decode() {
        let reply: Value = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","revision":"42"},"kvs":[{"key":"L3IvYQ==","create_revision":"3","mod_revision":"7","version":"2","value":"aGVsbG8="}],"count":"1"}"#,
        )
        .unwrap();
        let (rev, kvs) = decode_range(&reply).unwrap();
        assert_eq!(rev, 42);
        assert_eq!(
            kvs,
            vec![Kv {
                key: "/r/a".into(),
                value: "hello".into(),
                mod_revision: 7
            }]
        );
        // An empty range has no `kvs`; bad replies are errors, not panics.
        assert_eq!(
            decode_range(&json!({"header": {"revision": "5"}})).unwrap(),
            (5, vec![])
        );
        assert!(decode_range(&json!({"kvs": 3})).is_err());
        assert!(decode_range(&json!({"kvs": [{"key": "!!"}]})).is_err());
        assert!(decode_range(&json!({"kvs": [{"key": 1}]})).is_err());
    }

    #[test]
    fn transactions_encode_compares_and_ops() {
        let t = txn_request(
            &[
                Compare::ModRevision("/k".into(), 0),
                Compare::Value("/w".into(), "v".into()),
            ],
            &[
                TxnOp::Put {
                    key: "/k".into(),
                    value: "x".into(),
                    lease: 12,
                },
                TxnOp::Delete("/w".into()),
            ],
        );
        assert_eq!(
            t["compare"][0],
            json!({"key": "L2s=", "result": "EQUAL", "target": "MOD", "mod_revision": "0"})
        );
        assert_eq!(t["compare"][1]["target"], "VALUE");
        assert_eq!(t["compare"][1]["value"], "dg==");
        assert_eq!(t["success"][0]["request_put"]["lease"], "12");
        assert_eq!(t["success"][1]["request_delete_range"]["key"], "L3c=");
    }

    #[test]
    fn watch_streams_split_into_messages() {
        let mut buf = br#"{"result":{"header":{"revision":"3"},"created":true}}
{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2E="}}]}}
{"result":{"hea"#
            .to_vec();
        let msgs = take_messages(&mut buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(decode_watch(&msgs[0]).unwrap(), WatchMessage::Quiet);
        assert_eq!(decode_watch(&msgs[1]).unwrap(), WatchMessage::Changed);
        assert_eq!(buf, br#"{"result":{"hea"#.to_vec());
        buf.extend_from_slice(br#"der":{}}}"#);
        assert_eq!(take_messages(&mut buf).unwrap().len(), 1);
        assert!(buf.is_empty());
        let cancelled = json!({"result": {"canceled": true, "compact_revision": "9"}});
        assert!(decode_watch(&cancelled).unwrap_err().to_string().contains('9'));
        assert!(decode_watch(&json!({"error": {"message": "boom"}})).is_err());
        assert!(take_messages(&mut b"}{".to_vec()).is_err());
    }

    #[test]
    fn ints_arrive_as_strings_or_numbers() {
        assert_eq!(int(Some(&json!("7587"))), 7587);
        assert_eq!(int(Some(&json!(12))), 12);
        assert_eq!(int(Some(&json!("x"))), 0);
        assert_eq!(int(None), 0);
    }

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n";
    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  http:\n  - route: [{destination: {host: reviews.test}}]\n";

    fn kv(key: &str, value: &str) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            mod_revision: 1,
        }
    }

    #[test]
    fn resource_sets_compile_as_a_whole_and_name_their_keys() {
        let se = kv("/p/resources/ServiceEntry/default/reviews", SE);
        let vs = kv("/p/resources/VirtualService/default/reviews", VS);
        let set = resource_set("/p", &[se.clone(), vs.clone()]).unwrap();
        assert_eq!(set.documents.len(), 2);
        assert!(set.resources.iter().all(|r| r.applied));
        assert_eq!(set.documents[1].source, "/p/resources/VirtualService/default/reviews:1");
        // A VirtualService routing to a host nobody defines yet is taken (a warning, as in
        // Istio); one naming a subset nobody defines is refused, naming its key.
        assert!(resource_set("/p", std::slice::from_ref(&vs)).is_ok());
        let subset_vs = VS.replace("{host: reviews.test}", "{host: reviews.test, subset: v1}");
        let bad = kv("/p/resources/VirtualService/default/reviews", &subset_vs);
        let err = resource_set("/p", &[se.clone(), bad]).unwrap_err();
        assert!(err.contains("/p/resources/VirtualService/default/reviews"), "{err}");

        // Apply and delete plans use the etcd keys as units.
        let own = |k: &ResourceKey| resource_key("/p", k);
        let plan = plan_apply(
            &units_of(std::slice::from_ref(&se)),
            &[("in.yaml".into(), VS.into())],
            &own,
        );
        assert!(plan.report.applied, "{:?}", plan.report);
        assert_eq!(plan.writes[0].0, "/p/resources/VirtualService/default/reviews");
        // Deleting what a stored resource needs is refused: here the subsets a route names.
        let dr_yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews.test\n  subsets: [{name: v1, labels: {version: v1}}]\n";
        let dr = kv("/p/resources/DestinationRule/default/reviews", dr_yaml);
        let routed = kv("/p/resources/VirtualService/default/reviews", &subset_vs);
        let dr_key = ResourceKey::of_yaml(dr_yaml).unwrap();
        let refused = plan_delete(&units_of(&[se.clone(), dr, routed]), &dr_key, &own).unwrap_err();
        assert!(matches!(refused, StoreError::Refused(_)), "{refused}");
        let se_key = ResourceKey::of_yaml(SE).unwrap();
        assert!(plan_delete(&units_of(&[se.clone(), vs]), &se_key, &own).is_ok());
        assert_eq!(
            plan_delete(&units_of(&[se]), &se_key, &own).unwrap().as_deref(),
            Some("/p/resources/ServiceEntry/default/reviews")
        );
    }

    #[test]
    fn workload_records_round_trip_and_skip_this_replica() {
        let w = Workload {
            name: "reviews-v1".into(),
            namespace: "default".into(),
            services: vec!["reviews.local".into()],
            addresses: vec!["127.0.0.1".into()],
            ports: [("http".to_string(), 18081u32)].into_iter().collect(),
            ..Default::default()
        };
        let a = serde_json::to_string(&WorkloadRecord::new(&w, true, "a")).unwrap();
        let b = serde_json::to_string(&WorkloadRecord::new(&w, false, "b")).unwrap();
        let kvs = [
            kv("/p/workloads/n1", &a),
            kv("/p/workloads/n2", &b),
            kv("/p/workloads/bad", "{"),
        ];
        let remote = remote_workloads("/p", "a", &kvs);
        assert_eq!(remote.len(), 1);
        let r = &remote["n2"];
        assert_eq!((r.workload.clone(), r.ready, r.replica.as_str()), (w, false, "b"));
    }
}
