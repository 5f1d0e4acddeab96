//! Smoke test of `ringmesh-control-bench`: a tiny run end to end (20 proxies, 3 applies, 10
//! reconnects over 2 s) must produce every figure, with every proxy acknowledging every
//! apply. Figures are not judged against targets here — speed lives in the benchmark — only
//! that they exist and are sane.
//!
//! The control plane runs with `--embedded-control` (the ringmesh-control library in a child
//! process of the bench binary): `cargo test -p ringmesh-bench` builds only this package's
//! binaries, and a `target/debug/ringmesh-control` left from an older build could speak an
//! older API, so the test never depends on that file.

use std::process::Command;

/// The bench's output folder for one test, removed when the guard drops (panics included).
fn out_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ringmesh-control-bench-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn a_missing_control_plane_binary_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmesh-control-bench"))
        .args(["--control-bin", "/nonexistent/ringmesh-control", "--out"])
        .arg(out_dir("missing").path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("/nonexistent/ringmesh-control"), "{stderr}");
}

#[test]
fn tiny_run_writes_every_figure() {
    let tmp = out_dir("smoke");
    let out = tmp.path();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmesh-control-bench"))
        .args([
            "--embedded-control",
            "--proxies",
            "20",
            "--repeats",
            "3",
            "--churn",
            "10",
            "--churn-window",
            "2s",
            "--churn-apply-every",
            "0.5s",
            "--idle-sample",
            "0.3s",
            "--sync-timeout",
            "60s",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "apply → last proxy's ACK",
        "**RSS per connected proxy**",
        "**CPU per apply**",
        "**push latency p99**",
        "embedded",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from report.md:\n{md}");
    }
    assert!(stdout.contains(md.trim()), "the table printed is report.md");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["proxies"], 20);
    let apply = &json["apply"];
    let runs = apply["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert_eq!(r["acked"], 20, "every proxy acknowledged: {r}");
        assert!(r["snapshots"].as_u64().unwrap() >= 20, "{r}");
        assert!(r["last_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(apply["all_acked"], true);
    assert_eq!(apply["per_proxy_ms"]["count"], 60);
    let p99 = apply["last_ms"]["p99"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 60_000.0, "{apply}");

    let res = &json["resources"];
    for k in ["rss_idle_kib", "rss_connected_kib", "rss_after_applies_kib"] {
        assert!(res[k].as_u64().unwrap() > 1024, "{k}: {res}");
    }
    assert!(res["rss_per_proxy_kib"].as_f64().is_some(), "{res}");
    assert!(res["cpu_per_snapshot_us"].as_f64().unwrap() >= 0.0, "{res}");
    assert!(json["connect_s"].as_f64().unwrap() > 0.0);
    assert!(json["connect_snapshots"].as_u64().unwrap() >= 20);

    let churn = &json["churn"];
    assert_eq!(churn["reconnects"], 10);
    assert_eq!(churn["reconnects_done"], 10, "{churn}");
    assert_eq!(churn["applies"], 3, "{churn}");
    assert!(churn["push_ms"]["count"].as_u64().unwrap() > 0, "{churn}");
    assert!(churn["push_ms"]["p99"].as_f64().unwrap() > 0.0, "{churn}");
    assert_eq!(churn["missing"], 0, "{churn}");
    assert_eq!(churn["final_synced"], true, "{churn}");
    assert_eq!(churn["final_endpoints_min"], 20, "{churn}");
    assert_eq!(churn["open_streams"], 20, "{churn}");
    assert!(churn["connected_in_registry"].as_u64().unwrap() > 0, "{churn}");
    assert!(churn["cpu_cores"].as_f64().unwrap() >= 0.0);

    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert!(out.join("ringmesh-control.stderr.log").is_file());
}
