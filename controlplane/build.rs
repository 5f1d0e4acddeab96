//! Compiles etcd's protos (`proto/etcd/`, vendored from etcd) into the client `etcd.rs` speaks,
//! with protox (a protobuf compiler in pure Rust) so that no build needs a system `protoc`, and
//! sets the shared link flags of the binaries (`build/link.rs`).

#[path = "../build/link.rs"]
mod link;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    link::main();
    let protos = [
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/api/mvccpb/kv.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // Clients only; `etcd.rs` builds its own channels (one per member, see `EtcdClient`).
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
