//! `ringmesh-echo --listen ADDR`: the upstream test server (see `ringmesh_loadgen::echo`).

fn main() -> std::process::ExitCode {
    match ringmesh_loadgen::echo_main(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line naming the cause (e.g. the address in use), not a debug dump.
        Err(e) => {
            eprintln!("ringmesh-echo: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
