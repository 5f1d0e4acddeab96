//! Compiles `proto/` into Rust with protox (a protobuf compiler in pure Rust), so no build needs
//! a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ringmesh/v1/discovery.proto", "proto/ringmesh/v1/admin.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // No `connect` helpers: api stays free of a transport; the binaries pick theirs.
    tonic_prost_build::configure()
        .build_transport(false)
        // Shared by every stream that sends it: a reference count, not a copy, per proxy.
        .bytes(".ringmesh.v1.SharedSnapshot.snapshot")
        .bytes(".ringmesh.v1.SharedDelta.delta")
        // Small per-stream buffers (see `proto::SmallBufferCodec`).
        .codec_path("crate::proto::SmallBufferCodec")
        .compile_fds(fds)?;

    // OTLP traces (`proto/opentelemetry/`, see its README): the proxy's span exporter and the
    // tests' collector. prost's default codec: an export is one message, not a stream.
    let otlp = [
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "proto/opentelemetry/proto/trace/v1/trace.proto",
        "proto/opentelemetry/proto/common/v1/common.proto",
        "proto/opentelemetry/proto/resource/v1/resource.proto",
    ];
    for p in &otlp {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(&otlp[..1], ["proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;
    Ok(())
}
