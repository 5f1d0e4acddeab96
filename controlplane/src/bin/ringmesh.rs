//! `ringmesh` binary: see [`ringmesh_control::cli`].

fn main() {
    std::process::exit(ringmesh_control::cli::run(std::env::args_os()));
}
