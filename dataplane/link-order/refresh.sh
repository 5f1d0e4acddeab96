#!/usr/bin/env bash
# Refreshes symbols.txt, the order in which the linker lays out ringmesh-proxy's functions
# (build/link.rs says why): the release proxy runs under callgrind on its epoll driver
# (callgrind cannot run io_uring) in the benchmark suite's sidecar shape, starts, serves
# HTTP/1.1, h2c, a local reply and the admin and metrics endpoints, and drains; every function
# it executed is listed, most instructions first, then the io_uring driver's by name.
# Needs valgrind, curl and python3. Run it after a change of dependencies or of the request
# path, then compare the suite's idle RSS before and after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
# The names are those of the main job's build (README: the proxy beside the bench); other
# builds differ in hashes only, which the linker script leaves open.
cargo build --release -q -p ringmesh-proxy -p ringmesh-bench
cargo build --release -q -p ringmesh-loadgen --bin ringmesh-echo
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
target/release/ringmesh-echo --listen 127.0.0.1:25380 >"$work/echo.log" 2>&1 &
cat >"$work/proxy.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: link-order}
spec:
  workers: 1
  io: epoll
  adminAddress: 127.0.0.1:25300
  healthAddress: 127.0.0.1:25321
  metricsAddress: 127.0.0.1:25390
  listeners:
  - {name: outbound, address: "127.0.0.1:25301", protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.bench]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 25380}}]
YAML
# Runs the proxy under callgrind until it is ready; with `traffic`, serves what the suite's rows
# and a scrape ask of it; then drains it (SIGTERM) and waits for the profile.
profile() {
  valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$work/$1.out" \
    target/release/ringmesh-proxy --config "$work/proxy.yaml" >"$work/$1.log" 2>&1 &
  local vg=$!
  for _ in $(seq 1 120); do
    curl -sf -m 2 -o /dev/null http://127.0.0.1:25300/ready && break
    sleep 0.5
  done
  curl -sf -m 2 -o /dev/null http://127.0.0.1:25300/ready || { cat "$work/$1.log"; exit 1; }
  if [ "$1" = traffic ]; then
    get() { curl -s -m 10 -o /dev/null -w '%{http_code} ' "$@"; }
    for _ in $(seq 1 50); do get -H 'Host: echo.bench:8080' http://127.0.0.1:25301/; done
    for _ in $(seq 1 20); do get --http2-prior-knowledge -H 'Host: echo.bench:8080' http://127.0.0.1:25301/; done
    get -d 'a small body' -H 'Host: echo.bench:8080' http://127.0.0.1:25301/
    get -H 'Host: nowhere' http://127.0.0.1:25301/
    for p in /stats/histograms '/stats/histograms?reset' '/stats/histograms?format=hgrm' /stats/prometheus /clusters; do
      get "http://127.0.0.1:25300$p"
    done
    get http://127.0.0.1:25390/stats/prometheus
    echo
  fi
  kill -TERM "$vg"
  wait "$vg" || true
}
profile start
profile traffic
python3 "$here/order.py" "$work/start.out" "$work/traffic.out" target/release/ringmesh-proxy >"$work/symbols.txt"
mv "$work/symbols.txt" "$here/symbols.txt"
echo "profile in $work"; echo "wrote $here/symbols.txt ($(wc -l <"$here/symbols.txt") functions)"
