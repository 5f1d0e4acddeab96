#!/usr/bin/env bash
# Interop tests: the proxy driven by real third-party programs (curl, wrk, h2load, Python's
# grpcio, OpenTelemetry's OTLP code) on loopback. Installs what it needs (Debian packages;
# grpcio and opentelemetry-proto from PyPI into a virtualenv under target/), builds the release
# binaries, runs every check and fails when one did not hold. Bounded: every load run has a
# fixed size or duration.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
for bin in curl wrk haproxy nginx etcd h2load ss openssl sslscan iptables-nft-restore iptables-legacy-restore tcpdump setpriv prometheus promtool slowhttptest; do
  command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # The tests run their own nginx, haproxy, etcd and prometheus: a policy-rc.d that refuses
    # (unless the machine has one) keeps the packages' services from starting on a host with an
    # init system.
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
    fi
    rc=0
    { apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends curl wrk haproxy nginx-light etcd-server nghttp2-client iproute2 openssl sslscan iptables tcpdump util-linux prometheus slowhttptest >/dev/null; } || rc=$?
    [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || exit "$rc"
  else
    echo "interop: missing ${need[*]} and not root to install them" >&2
    exit 1
  fi
fi
# grpcio for the gRPC peers (tests/interop/grpc_interop.py) and opentelemetry-proto for the OTLP
# receiver (tests/interop/otlp_receiver.py), in a virtualenv of its own so that neither the
# system's Python nor another project's packages are touched. Debian's python3 needs
# python3-venv for it.
venv=target/interop-venv
if [ ! -x "$venv/bin/pip" ] && ! python3 -m venv "$venv"; then
  if [ "$(id -u)" != 0 ]; then
    echo "interop: python3 cannot make a virtualenv and not root to install python3-venv" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt
PY=$venv/bin/python

cargo build --release -q -p ringmesh-proxy -p ringmesh-loadgen -p ringmesh-control --bins
BIN=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

pass=0
fail=0
check() { # name, condition-command...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}

$BIN/ringmesh-echo --listen 127.0.0.1:28080 --instance v1 >"$work/echo1.log" 2>&1 & pids+=($!)
$BIN/ringmesh-echo --listen 127.0.0.1:28081 --instance v2 >"$work/echo2.log" 2>&1 & pids+=($!)
$BIN/ringmesh-echo --listen 127.0.0.1:28082 --tcp >"$work/echo3.log" 2>&1 & pids+=($!)

cat >"$work/proxy.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: interop}
spec:
  workers: 1
  adminAddress: 127.0.0.1:25000
  healthAddress: 127.0.0.1:25020
  metricsAddress: 127.0.0.1:25090
  listeners:
  - {name: http, address: "127.0.0.1:25001", protocol: HTTP}
  - {name: tcp, address: "127.0.0.1:25002", protocol: TCP, destination: {host: tcp.interop, port: 7}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.interop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 28080}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 28081}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp}
spec:
  hosts: [tcp.interop]
  ports: [{number: 7, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tcp: 28082}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo.interop
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo.interop]
  http:
  - match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: echo.interop, subset: v2}}]
  - route: [{destination: {host: echo.interop, subset: v1}}]
YAML

RINGMESH_IO=${RINGMESH_IO:-auto} $BIN/ringmesh-proxy --config "$work/proxy.yaml" --watch-interval 0s >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=($proxy_pid)
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:25020/healthz/ready >/dev/null 2>&1 && break
  sleep 0.1
done

H='Host: echo.interop'
check "proxy ready" curl -fsS -o /dev/null http://127.0.0.1:25020/healthz/ready
check "start-up log names the io driver" grep -Eq 'io=(io_uring|epoll)' "$work/proxy.log"
check "curl GET routed to v1" bash -c "curl -fsS -D - -H '$H' http://127.0.0.1:25001/ -o /dev/null | grep -qi 'x-ringmesh-instance: v1'"
check "curl canary header routed to v2" bash -c "curl -fsS -D - -H '$H' -H 'x-canary: 1' http://127.0.0.1:25001/ -o /dev/null | grep -qi 'x-ringmesh-instance: v2'"
check "curl POST body echoed" bash -c "[ \"\$(curl -fsS -H '$H' --data-binary hello-interop http://127.0.0.1:25001/echo)\" = hello-interop ]"
check "curl chunked upload echoed" bash -c "[ \"\$(printf 'chunky' | curl -fsS -H '$H' -H 'Transfer-Encoding: chunked' --data-binary @- http://127.0.0.1:25001/echo)\" = chunky ]"
check "curl unknown host is 404" bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: nope' http://127.0.0.1:25001/)\" = 404 ]"
check "curl keep-alive reuses the connection" bash -c "curl -sv -H '$H' http://127.0.0.1:25001/a http://127.0.0.1:25001/b 2>&1 | grep -q 'Re-using existing connection'"
check "tcp listener echoes" bash -c "[ \"\$(printf 'tcp-bytes' | curl -s --max-time 3 telnet://127.0.0.1:25002 || true)\" = tcp-bytes ]"

wrk -t1 -c16 -d3s -H "$H" --latency http://127.0.0.1:25001/ >"$work/wrk.txt" 2>&1 || true
cat "$work/wrk.txt"
check "wrk ran with no socket errors" bash -c "! grep -q 'Socket errors' '$work/wrk.txt'"
check "wrk got only 2xx" bash -c "! grep -q 'Non-2xx' '$work/wrk.txt'"
check "wrk completed requests" bash -c "grep -Eq '^ *[1-9][0-9]* requests in' '$work/wrk.txt'"
check "metrics count the requests" bash -c "curl -fsS http://127.0.0.1:25090/stats/prometheus | grep -Eq '^ringmesh_downstream_rq_total [0-9]{3,}'"

# SIGHUP reloads (file watching is off for this proxy): the default route moves to v2.
sed -i 's/subset: v1}}]$/subset: v2}}]/' "$work/proxy.yaml"
kill -HUP "$proxy_pid"
sleep 0.5
check "SIGHUP reload moves the default route to v2" bash -c "curl -fsS -D - -H '$H' http://127.0.0.1:25001/ -o /dev/null | grep -qi 'x-ringmesh-instance: v2'"
# A broken file on SIGHUP is refused and v2 keeps serving.
echo "  hostz: [oops]" >>"$work/proxy.yaml"
kill -HUP "$proxy_pid"
sleep 0.5
check "bad reload refused, old config serves" bash -c "curl -fsS -D - -H '$H' http://127.0.0.1:25001/ -o /dev/null | grep -qi 'x-ringmesh-instance: v2'"
check "bad reload logged with file and field" grep -q 'proxy.yaml:.*hostz' "$work/proxy.log"
# SIGTERM drains and exits 0.
kill -TERM "$proxy_pid"
code=0
for _ in $(seq 100); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
wait "$proxy_pid" || code=$?
check "SIGTERM exits cleanly" [ "$code" = 0 ]

# HTTP/2 and gRPC: Python grpcio client and server through two proxies, h2load and
# curl --http2-prior-knowledge through one.
source tests/interop/h2.sh

# The control plane with real processes: ringmesh-control, two app-side proxies announcing
# v1 and v2 workloads, a client-side proxy, and ringmesh-loadgen at 2,000 rps through it.
source tests/interop/control_plane.sh

# Observability: Debian's prometheus scraping a proxy under ringmesh-loadgen and the control
# plane, promtool on both expositions, access logs rotated (SIGUSR1) and on a full disk.
source tests/interop/telemetry.sh

# Distributed tracing: two proxies in a chain exporting to an OTLP receiver on grpcio and
# opentelemetry-proto (one over gRPC, one over HTTP/protobuf): one trace with parent links, a
# caller's traceparent kept, B3 multi and single in and out.
source tests/interop/tracing.sh

# Mutual TLS on an inbound listener against openssl s_client, curl and sslscan.
source tests/interop/mtls.sh

# Certificates rotated every 30 s under 2,000 rps through two mTLS proxies.
source tests/interop/rotation.sh

# Two ringmesh-control replicas sharing etcd (--etcd): apply to one, serve from both, fail over.
source tests/interop/etcd.sh

# `ringmesh iptables` (transparent capture) in network namespaces of its own, nft and legacy.
source tests/interop/capture.sh

# Two pods (network namespaces) with capture and a proxy each: HTTP/1.1, HTTP/2, gRPC and TCP
# by a service's virtual IP through both proxies in mutual TLS (tcpdump on the veth).
source tests/interop/sidecar.sh

# The Kubernetes manifests against the API schemas (kubernetes-validate).
source tests/interop/manifests.sh

# Slow clients: slowhttptest's slowloris and slow-body modes (1,000 connections each) cut by the
# header and body timeouts while a measured client keeps its p99 within twice its baseline.
source tests/interop/slow_clients.sh

echo "interop: $pass passed, $fail failed"
[ "$fail" = 0 ]
