# The injected capture init container: `ringmesh iptables` needs iptables-restore (nft and
# legacy back-ends) and root with NET_ADMIN and NET_RAW, for the few milliseconds it runs in a
# new pod, before any app code; the injector grants nothing else (no privilege escalation, every
# other capability dropped). distroless has no iptables, hence Debian slim.
#   docker build -f deploy/docker/ringmesh-init.Dockerfile -t ringmesh/ringmesh-init:latest .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ringmesh-control --bin ringmesh \
 && strip target/release/ringmesh

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ringmesh /usr/local/bin/ringmesh
USER 0:0
ENTRYPOINT ["/usr/local/bin/ringmesh", "iptables"]
