//! `ringmesh-proxy` binary: see [`ringmesh_proxy::run_cli`].

fn main() -> std::process::ExitCode {
    match ringmesh_proxy::run_cli(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
