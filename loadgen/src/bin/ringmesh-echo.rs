//! `ringmesh-echo --listen ADDR`: the upstream test server (see `ringmesh_loadgen::echo`).

fn main() -> anyhow::Result<()> {
    ringmesh_loadgen::echo_main(std::env::args_os())
}
