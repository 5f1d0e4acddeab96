# Optional: the load generator and the echo upstream, for benchmarks inside a cluster.
#   docker build -f deploy/docker/ringmesh-loadgen.Dockerfile -t ringmesh/ringmesh-loadgen:latest .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ringmesh-loadgen --bin ringmesh-loadgen --bin ringmesh-echo \
 && strip target/release/ringmesh-loadgen target/release/ringmesh-echo

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ringmesh-loadgen /src/target/release/ringmesh-echo /usr/local/bin/
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/ringmesh-loadgen"]
