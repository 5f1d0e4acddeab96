//! `ringmesh-control-bench`: the control plane scale benchmark (see [`control_plane`]), or —
//! re-executed by itself with `__control ARGS` when asked for `--embedded-control` — the control
//! plane from the ringmesh-control library in its own process.

#[path = "../control_plane/mod.rs"]
pub mod control_plane;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if args.get(1).is_some_and(|a| a == "__control") {
        let mut role_args = vec![args[0].clone()];
        role_args.extend_from_slice(&args[2..]);
        control_plane::embedded::run(&role_args)
    } else {
        control_plane::run(args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh-control-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
