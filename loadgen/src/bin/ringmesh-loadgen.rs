//! `ringmesh-loadgen URL --rate R ...`: open- or closed-loop HTTP/1.1 load (see the library).

fn main() -> std::process::ExitCode {
    ringmesh_loadgen::loadgen_main(std::env::args_os())
}
