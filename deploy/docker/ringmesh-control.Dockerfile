# The control plane and the `ringmesh` CLI (deploy/kubernetes/base uses this image):
#   docker build -f deploy/docker/ringmesh-control.Dockerfile -t ringmesh/ringmesh-control:latest .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ringmesh-control --bin ringmesh-control --bin ringmesh \
 && strip target/release/ringmesh-control target/release/ringmesh

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ringmesh-control /src/target/release/ringmesh /usr/local/bin/
# distroless' nonroot user (65532).
USER nonroot:nonroot
EXPOSE 15010 15012 15017
ENTRYPOINT ["/usr/local/bin/ringmesh-control"]
