//! Istio's pod annotations the injector reads, and what they become: `ringmesh iptables` flags,
//! the sidecar's resources, whether probes are rewritten.
//!
//! A value the injector cannot honour (a port list that does not parse, a quantity Kubernetes
//! would refuse, an interception mode or interface exclusion `ringmesh iptables` lacks) is an
//! error naming the annotation: the pod is refused with that reason, as Istio's injector does,
//! rather than started with capture rules other than the ones asked for.

use std::collections::BTreeMap;

use crate::capture::{CaptureConfig, ListFlags};

use super::settings::{InjectSettings, ProxyResources};
use super::InjectError;

/// `sidecar.istio.io/inject`: `"false"` opts a pod out, `"true"` (as a label) opts it in.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// `sidecar.istio.io/rewriteAppHTTPProbers: "false"` leaves the app's probes as they are.
pub const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// Istio's own sidecar's record: a pod Istio injected is left alone.
pub const ISTIO_STATUS: &str = "sidecar.istio.io/status";
/// `sidecar.istio.io/interceptionMode`: only `REDIRECT` is supported.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

/// Istio's per-pod proxy settings (a YAML `ProxyConfig`): its `concurrency` is read, the rest
/// is Envoy's and ignored.
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
const CPU: &str = "sidecar.istio.io/proxyCPU";
const MEMORY: &str = "sidecar.istio.io/proxyMemory";
const CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
const MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";

/// Istio's capture annotations and the `ringmesh iptables` flag each becomes.
const CAPTURE: [(&str, &str); 7] = [
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "-i"),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "-x"),
    ("traffic.sidecar.istio.io/includeInboundPorts", "-b"),
    ("traffic.sidecar.istio.io/excludeInboundPorts", "-d"),
    ("traffic.sidecar.istio.io/includeOutboundPorts", "-q"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "-o"),
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "-c"),
];
/// Istio's annotation that `ringmesh iptables` has no flag for.
const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";

/// A pod's annotations (absent: none).
#[derive(Debug, Clone, Copy)]
pub struct Annotations<'a>(pub Option<&'a serde_json::Map<String, serde_json::Value>>);

impl<'a> Annotations<'a> {
    /// The value of `name`, when it is a string.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.and_then(|m| m.get(name)).and_then(|v| v.as_str())
    }

    /// Whether `name` says `false` (Istio reads `false`, `"false"`, case-insensitively).
    pub fn is_false(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    }

    /// The `ringmesh iptables` arguments for this pod: the ports, the proxy's user, and each
    /// capture annotation as its flag. Checked with the very parser the init container runs.
    pub fn capture_args(&self, settings: &InjectSettings) -> Result<Vec<String>, InjectError> {
        if let Some(mode) = self.get(INTERCEPTION_MODE) {
            if !mode.trim().eq_ignore_ascii_case("REDIRECT") {
                return Err(InjectError::Annotation {
                    name: INTERCEPTION_MODE.into(),
                    reason: format!("{mode:?}: only REDIRECT is supported"),
                });
            }
        }
        if self.get(EXCLUDE_INTERFACES).is_some_and(|v| !v.trim().is_empty()) {
            return Err(InjectError::Annotation {
                name: EXCLUDE_INTERFACES.into(),
                reason: "not supported by `ringmesh iptables`".into(),
            });
        }
        let uid = settings.proxy_uid.to_string();
        let mut args: Vec<String> = ["-p", "15001", "-z", "15006", "-u", &uid, "-g", &uid]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut lists = ListFlags::default();
        let mut given = BTreeMap::new();
        for (name, flag) in CAPTURE {
            if let Some(v) = self.get(name) {
                let v = v.trim().to_string();
                let slot = match flag {
                    "-i" => &mut lists.outbound_ip_ranges_include,
                    "-x" => &mut lists.outbound_ip_ranges_exclude,
                    "-b" => &mut lists.inbound_ports_include,
                    "-d" => &mut lists.inbound_ports_exclude,
                    "-q" => &mut lists.outbound_ports_include,
                    "-o" => &mut lists.outbound_ports_exclude,
                    _ => &mut lists.kube_virt_interfaces,
                };
                slot.clone_from(&v);
                given.insert(flag, v);
            }
        }
        let uid32 = u32::try_from(settings.proxy_uid).unwrap_or(1337);
        CaptureConfig::from_flags(15001, 15006, uid32, None, &lists).map_err(|e| {
            let name = CAPTURE
                .iter()
                .find(|(_, f)| e.flag.ends_with(&flag_long(f)))
                .map_or("traffic.sidecar.istio.io/*", |(n, _)| *n);
            InjectError::Annotation {
                name: name.into(),
                reason: format!("{:?}: {}", e.value, e.reason),
            }
        })?;
        // `-i` and `-b` always, as Istio writes them; the others only when given.
        for flag in ["-i", "-x", "-b", "-d", "-q", "-o", "-c"] {
            let value = match (flag, given.get(flag)) {
                (_, Some(v)) => v.clone(),
                ("-i" | "-b", None) => "*".into(),
                _ => continue,
            };
            args.push(flag.into());
            args.push(value);
        }
        Ok(args)
    }

    /// The sidecar's resources: the settings', each replaced by its annotation when present.
    pub fn resources(&self, defaults: &ProxyResources) -> Result<ProxyResources, InjectError> {
        let pick = |name: &str, default: &Option<String>| -> Result<Option<String>, InjectError> {
            match self.get(name) {
                None => Ok(default.clone()),
                Some(v) if is_quantity(v.trim()) => Ok(Some(v.trim().to_string())),
                Some(v) => Err(InjectError::Annotation {
                    name: name.into(),
                    reason: format!("{v:?} is not a Kubernetes quantity (e.g. 100m, 2, 128Mi)"),
                }),
            }
        };
        Ok(ProxyResources {
            cpu_request: pick(CPU, &defaults.cpu_request)?,
            memory_request: pick(MEMORY, &defaults.memory_request)?,
            cpu_limit: pick(CPU_LIMIT, &defaults.cpu_limit)?,
            memory_limit: pick(MEMORY_LIMIT, &defaults.memory_limit)?,
        })
    }
}

impl Annotations<'_> {
    /// The sidecar's worker count: `proxy.istio.io/config`'s `concurrency` (0: one per allowed
    /// core, as in Istio), else `default`.
    pub fn proxy_workers(&self, default: Option<u32>) -> Result<Option<u32>, InjectError> {
        let Some(text) = self.get(PROXY_CONFIG) else {
            return Ok(default);
        };
        let bad = |reason: String| InjectError::Annotation {
            name: PROXY_CONFIG.into(),
            reason,
        };
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| bad(format!("not YAML: {e}")))?;
        match value.get("concurrency") {
            None => Ok(default),
            Some(c) => match c.as_u64() {
                Some(0) => Ok(None),
                Some(n) if n <= 1024 => Ok(Some(n as u32)),
                _ => Err(bad(format!("concurrency must be a number from 0 to 1024, got {c:?}"))),
            },
        }
    }
}

/// `-i` → `--outbound-ip-ranges-include`: the long name `CaptureConfig`'s errors carry.
fn flag_long(short: &str) -> String {
    match short {
        "-i" => "outbound-ip-ranges-include",
        "-x" => "outbound-ip-ranges-exclude",
        "-b" => "inbound-ports-include",
        "-d" => "inbound-ports-exclude",
        "-q" => "outbound-ports-include",
        "-o" => "outbound-ports-exclude",
        _ => "kube-virt-interfaces",
    }
    .into()
}

/// Kubernetes' quantity grammar: a decimal number, then an optional binary (`Ki`…`Ei`) or
/// decimal (`n`, `u`, `m`, `k`, `M`…`E`) suffix or an exponent.
pub fn is_quantity(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn capture_annotations_become_ringmesh_iptables_flags() {
        let s = InjectSettings::default();
        let none = Annotations(None).capture_args(&s).unwrap();
        assert_eq!(
            none,
            ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-i", "*", "-b", "*"]
        );
        let m = with(json!({
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32, 10.0.0.0/8",
            "traffic.sidecar.istio.io/excludeInboundPorts": "9090",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5432,6379",
            "traffic.sidecar.istio.io/includeInboundPorts": "8080",
        }));
        let args = Annotations(Some(&m)).capture_args(&s).unwrap();
        let tail: Vec<&str> = args[8..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "-i",
                "*",
                "-x",
                "169.254.169.254/32, 10.0.0.0/8",
                "-b",
                "8080",
                "-d",
                "9090",
                "-o",
                "5432,6379"
            ]
        );
    }

    #[test]
    fn a_bad_capture_annotation_is_refused_by_name() {
        let s = InjectSettings::default();
        for (name, value) in [
            ("traffic.sidecar.istio.io/excludeInboundPorts", "99999"),
            ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.0.0.0/33"),
            ("traffic.sidecar.istio.io/excludeInterfaces", "eth1"),
            ("sidecar.istio.io/interceptionMode", "TPROXY"),
        ] {
            let m = with(json!({ name: value }));
            let e = Annotations(Some(&m)).capture_args(&s).unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn resource_annotations_replace_the_defaults() {
        let m = with(json!({"sidecar.istio.io/proxyCPU": "200m", "sidecar.istio.io/proxyMemoryLimit": "1Gi"}));
        let r = Annotations(Some(&m)).resources(&ProxyResources::default()).unwrap();
        assert_eq!(r.cpu_request.as_deref(), Some("200m"));
        assert_eq!(r.memory_limit.as_deref(), Some("1Gi"));
        assert_eq!(r.memory_request.as_deref(), Some("32Mi"));
        let m = with(json!({"sidecar.istio.io/proxyMemory": "lots"}));
        let e = Annotations(Some(&m))
            .resources(&ProxyResources::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sidecar.istio.io/proxyMemory"), "{e}");
    }

    #[test]
    fn quantities() {
        for ok in ["10m", "2", "0.5", "128Mi", "1Gi", "1e3", "1.5G", "+1"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "10MB", "ten", "1e", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
