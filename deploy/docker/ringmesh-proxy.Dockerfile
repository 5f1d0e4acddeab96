# The sidecar: docker build -f deploy/docker/ringmesh-proxy.Dockerfile -t ringmesh/ringmesh-proxy:latest .
# Runs as 1337 (the UID `ringmesh iptables -u` exempts from capture; the injector sets it too).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Stripped: the release profile keeps line tables for `perf`, which an image does not need.
RUN cargo build --release --locked -p ringmesh-proxy --bin ringmesh-proxy \
 && strip target/release/ringmesh-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ringmesh-proxy /usr/local/bin/ringmesh-proxy
USER 1337:1337
EXPOSE 15001 15006 15020 15090
ENTRYPOINT ["/usr/local/bin/ringmesh-proxy"]
