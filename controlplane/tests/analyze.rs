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

#[test]
fn examples_pass() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let (code, out) = run(&["analyze", examples.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: "), "{out}");
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

    // With the typo fixed, the compiler's own checks run: an unknown destination host and
    // weights that do not add up are both reported, with their lines.
    std::fs::write(d.join("b-vs.yaml"), vs.replace("weigth: 90", "weight: 80")).unwrap();
    let (code, out) = run(&["analyze", d.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing.test"), "{out}");
    assert!(out.contains("weights must sum to 100, got 90"), "{out}");
    assert!(out.contains("b-vs.yaml:"), "{out}");
}

#[test]
fn warnings_pass_unless_strict() {
    let tmp = dir("warn");
    let d = tmp.path();
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews.test\n  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 5\n";
    std::fs::write(d.join("all.yaml"), format!("{SE}---\n{dr}")).unwrap();
    let (code, out) = run(&["analyze", d.join("all.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning"), "{out}");
    assert!(out.contains("outlierDetection"), "{out}");
    let (code, _) = run(&["analyze", "--strict", d.join("all.yaml").to_str().unwrap()]);
    assert_eq!(code, 1);
}

#[test]
fn unreadable_input_is_an_error() {
    let (code, out) = run(&["analyze", "/nonexistent/ringmesh.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/nonexistent/ringmesh.yaml"), "{out}");
}
