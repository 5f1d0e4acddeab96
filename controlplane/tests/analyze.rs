//! `ringmesh analyze` as a user runs it: the real binary on real files.

use std::path::Path;
use std::process::Command;

/// An empty directory for one test, removed when the returned guard drops: the caller keeps it
/// for the whole test (a panicking test unwinds through the drop and cleans up too).
fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ringmesh-analyze-{name}-"))
        .tempdir()
        .unwrap()
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, ports: {http: 9080}, labels: {version: v1}}]\n";

/// Exit code, stdout and stderr.
fn run_all(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn examples_pass() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let (code, out) = run(&["analyze", examples.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: "), "{out}");
    // The control-plane walkthrough: one file per proxy plus the directory it serves.
    let (code, out, err) = run_all(&["analyze", examples.join("control-plane").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    for proxy in ["client.yaml", "reviews-v1.yaml", "reviews-v2.yaml"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok: ") && l.contains(proxy)),
            "{proxy}: {out}"
        );
    }
    assert!(
        err.contains("read 5 file(s)") && err.contains("mesh/reviews.yaml"),
        "{err}"
    );
}

const PROXY: &str = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata:\n  name: NAME\nspec:\n  listeners:\n  - {name: db, address: 127.0.0.1:0, protocol: TCP, destination: {host: reviews.test}}\n";

/// A tree of per-proxy files and shared resources: subdirectories are read, hidden ones are
/// not, the files read are named, and each proxy is checked with the shared resources when it
/// subscribes to a control plane (alone when it is standalone).
#[test]
fn a_tree_of_proxies_is_analyzed_proxy_by_proxy() {
    let tmp = dir("tree");
    let d = tmp.path();
    std::fs::create_dir_all(d.join("mesh/applied")).unwrap();
    std::fs::create_dir_all(d.join(".git")).unwrap();
    std::fs::write(d.join("mesh/applied/se.yaml"), SE).unwrap();
    std::fs::write(d.join(".git/broken.yaml"), "kind: [").unwrap();
    let subscribed = "  controlPlane: {address: 127.0.0.1:15010}\n";
    std::fs::write(d.join("a.yaml"), format!("{}{subscribed}", PROXY.replace("NAME", "a"))).unwrap();
    std::fs::write(d.join("b.yaml"), format!("{}{subscribed}", PROXY.replace("NAME", "b"))).unwrap();
    let (code, out, err) = run_all(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("read 3 file(s)") && err.contains("mesh/applied/se.yaml"),
        "{err}"
    );
    assert!(!err.contains(".git"), "{err}");
    for name in ["shared resources", "a.yaml", "b.yaml"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok: ") && l.contains(name)),
            "{name}: {out}"
        );
    }
    let (_, json, _) = run_all(&["analyze", "-o", "json", d.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 3, "{json}");
    assert_eq!(v["summary"].as_array().unwrap().len(), 3, "{json}");

    // A standalone proxy is not sent the shared resources: its destination is not defined.
    std::fs::write(d.join("c.yaml"), PROXY.replace("NAME", "c")).unwrap();
    let (code, out, _) = run_all(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("c.yaml:") && l.contains("referenced host not found")),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.contains("a.yaml:") && l.contains("referenced host not found")),
        "{out}"
    );

    // Two ProxyConfigs in one file: no proxy takes that file.
    std::fs::write(
        d.join("c.yaml"),
        format!("{}---\n{}", PROXY.replace("NAME", "c"), PROXY.replace("NAME", "d")),
    )
    .unwrap();
    let (code, out, _) = run_all(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("only one ProxyConfig is allowed"), "{out}");
}

#[test]
fn errors_name_file_line_and_field_and_exit_non_zero() {
    let tmp = dir("bad");
    let d = tmp.path();
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews.test]\n  http:\n  - route:\n    - destination: {host: reviews.test}\n      weigth: 90\n    - destination: {host: missing.test}\n      weight: 10\n";
    std::fs::write(d.join("a-se.yaml"), SE).unwrap();
    std::fs::write(d.join("b-vs.yaml"), vs).unwrap();
    let (code, out) = run(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("b-vs.yaml:10:"), "typo's line: {out}");
    assert!(out.contains("weigth"), "{out}");
    assert!(out.contains("did you mean `weight`"), "suggestion: {out}");
    assert!(out.contains("1 error(s)"), "{out}");

    let (code, json) = run(&["analyze", "-o", "json", d.to_str().unwrap()]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 1, "{json}");
    assert!(v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["line"] == 10 && d["field"].as_str().unwrap().ends_with("weigth")));

    // With the typo fixed, the compiler's own checks run: weights that do not add up are
    // reported with their line.
    std::fs::write(d.join("b-vs.yaml"), vs.replace("weigth: 90", "weight: 80")).unwrap();
    let (code, out) = run(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("weights must sum to 100, got 90"), "{out}");
    assert!(out.contains("b-vs.yaml:12:"), "{out}");

    // A destination host no ServiceEntry defines is a warning, as `istioctl analyze` has it
    // (IST0101): the config passes, unless --strict.
    std::fs::write(d.join("b-vs.yaml"), vs.replace("weigth: 90", "weight: 90")).unwrap();
    let (code, out) = run(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("b-vs.yaml:11: warning: VirtualService default/reviews: spec.http[0].route[1].destination.host: referenced host not found: \"missing.test\""),
        "{out}"
    );
    assert_eq!(run(&["analyze", "--strict", d.to_str().unwrap()]).0, 1);
}

#[test]
fn warnings_pass_unless_strict() {
    let tmp = dir("warn");
    let d = tmp.path();
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews.test\n  trafficPolicy:\n    proxyProtocol:\n      version: V1\n";
    std::fs::write(d.join("all.yaml"), format!("{SE}---\n{dr}")).unwrap();
    let (code, out) = run(&["analyze", d.join("all.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning"), "{out}");
    assert!(out.contains("proxyProtocol"), "{out}");
    let (code, _) = run(&["analyze", "--strict", d.join("all.yaml").to_str().unwrap()]);
    assert_eq!(code, 1);
}

#[test]
fn unreadable_input_is_an_error() {
    let (code, out) = run(&["analyze", "/nonexistent/ringmesh.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/nonexistent/ringmesh.yaml"), "{out}");
}
