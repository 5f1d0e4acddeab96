//! `ringmesh-bench`: runs the benchmark suite, or — re-executed by the suite itself — one of
//! its server roles (`__echo ARGS`, `__proxy ARGS`), so every server is its own process.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = match ringmesh_bench::run_role(&args) {
        Some(r) => r,
        None => ringmesh_bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
