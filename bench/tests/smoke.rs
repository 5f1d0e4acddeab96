//! End-to-end smoke test of the suite itself: a tiny run of `direct` and `ringmesh` through
//! the real binary (so the `__echo`/`__proxy` re-execution, readiness, /proc sampling and the
//! report files are all exercised). Figures are not judged here — speed targets live in the
//! benchmark, never in timed tests — only that every figure was produced.

use std::process::Command;

#[test]
fn tiny_suite_writes_complete_reports() {
    let out = std::env::temp_dir().join(format!("ringmesh-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_ringmesh-bench"))
        .args(["--scenarios", "direct,ringmesh,no-such-proxy"])
        .status()
        .unwrap();
    assert!(!status.success(), "an unknown scenario is rejected");

    let output = Command::new(env!("CARGO_BIN_EXE_ringmesh-bench"))
        .args([
            "--scenarios",
            "direct,ringmesh",
            "--repeats",
            "2",
            "--rate",
            "300",
            "--duration",
            "0.5s",
            "--warmup",
            "0.2s",
            "--throughput-duration",
            "0.3s",
            "--idle-connections",
            "300",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("| direct |") && stdout.contains("| ringmesh |"),
        "{stdout}"
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(
        md.trim(),
        stdout
            .lines()
            .take_while(|l| !l.starts_with("Report:"))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let scenarios = json["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 2);
    for s in scenarios {
        assert_eq!(s["status"], "ok", "{s}");
        assert_eq!(s["runs"].as_array().unwrap().len(), 2);
        assert!(s["throughput_rps"]["median"].as_f64().unwrap() > 0.0);
        assert!(s["latency_us"]["p50"]["median"].as_f64().unwrap() > 0.0);
        assert_eq!(s["errors"], 0, "{s}");
    }
    let rm = &scenarios[1];
    assert!(rm["added_us"]["p50"]["median"].is_number());
    assert!(rm["cpu_cores_per_1k_rps"]["median"].as_f64().unwrap() > 0.0);
    assert!(rm["idle_rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(rm["idle_connections"]["held"], 300);
    assert_eq!(json["targets"].as_array().unwrap().len(), 6);
    for f in [
        "direct-r1.hgrm",
        "direct-r2.hgrm",
        "ringmesh-r1.hgrm",
        "ringmesh-r2.hgrm",
        "ringmesh.yaml",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let hgrm = std::fs::read_to_string(out.join("ringmesh-r2.hgrm")).unwrap();
    let rows = ringmesh_loadgen::parse_hgrm(&hgrm).unwrap();
    assert!(!rows.is_empty());
    let _ = std::fs::remove_dir_all(&out);
}
