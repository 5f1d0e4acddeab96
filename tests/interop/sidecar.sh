# Sourced by run.sh (uses its $BIN, $work, $PY, check), or run on its own as root:
#   PY=target/interop-venv/bin/python bash tests/interop/sidecar.sh   (BIN=dir picks a build;
#   default: the debug build)
# Two "pods" as network namespaces joined by a veth pair (10.78.0.0/24), nothing leaves them.
# Each has apps that know nothing of the mesh, `ringmesh iptables` applied, and a proxy running
# as UID 1337 with `spec.capture`. A client in pod A reaches servers in pod B by a service's
# virtual IP through both proxies: HTTP/1.1 (a VirtualService header match picks a second
# server), HTTP/2 (curl's h2c and Python's grpcio) and server-first TCP; tcpdump on the veth
# shows mutual TLS and no plaintext. An unknown destination is passed through (ALLOW_ANY), then
# refused (REGISTRY_ONLY, by a hot reload); a plaintext client is refused by STRICT; a proxy
# killed with -9 and restarted serves again; --cleanup leaves each namespace's rules as before.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$(dirname "$0")/../.."
  if [ "$(id -u)" != 0 ]; then
    echo "sidecar: needs root (network namespaces, iptables)" >&2
    exit 1
  fi
  for bin in tcpdump curl iptables-restore; do
    command -v "$bin" >/dev/null 2>&1 && continue
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends tcpdump curl iptables iproute2 >/dev/null
    break
  done
  PY=${PY:-target/interop-venv/bin/python}
  if [ -z "${BIN:-}" ]; then
    cargo build -q -p ringmesh-control --bin ringmesh -p ringmesh-proxy --bin ringmesh-proxy
    BIN=target/debug
  fi
  source tests/interop/standalone.sh
  sidecar_standalone=1
fi

sw="$work/sidecar"
mkdir -p "$sw"
# The proxies run as UID 1337: what they read must be readable by it.
chmod 755 "$work" "$sw"
sc_a=rmsc-a-$$
sc_b=rmsc-b-$$
sc_pids=()
sc_teardown() {
  for p in "${sc_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sc_pids=()
  ip netns del "$sc_a" 2>/dev/null || true
  ip netns del "$sc_b" 2>/dev/null || true
}
if [ -n "${sidecar_standalone:-}" ]; then
  trap 'sc_teardown; rm -rf "$work"' EXIT
else
  trap 'sc_teardown; cleanup' EXIT
fi
in_a() { ip netns exec "$sc_a" "$@"; }
in_b() { ip netns exec "$sc_b" "$@"; }
sc_py=/usr/bin/python3
[ -x "$sc_py" ] || sc_py=$PY
app=$(realpath tests/interop/sidecar_app.py)
ringmesh=$(realpath "$BIN/ringmesh")
cp "$BIN/ringmesh-proxy" "$sw/ringmesh-proxy"
chmod 755 "$sw/ringmesh-proxy"

ip netns add "$sc_a"
ip netns add "$sc_b"
ip link add rmsc0 netns "$sc_a" type veth peer name rmsc1 netns "$sc_b"
for ns in "$sc_a" "$sc_b"; do ip -n "$ns" link set lo up; done
ip -n "$sc_a" addr add 10.78.0.1/24 dev rmsc0
ip -n "$sc_b" addr add 10.78.0.2/24 dev rmsc1
ip -n "$sc_a" addr add fd78::1/64 dev rmsc0 nodad
ip -n "$sc_b" addr add fd78::2/64 dev rmsc1 nodad
ip -n "$sc_a" link set rmsc0 up
ip -n "$sc_b" link set rmsc1 up
# The services' virtual IPs route out of the pod, as cluster IPs do; capture takes them first.
ip -n "$sc_a" route add 10.96.0.0/16 dev rmsc0
ip -n "$sc_a" -6 route add fd96::/64 dev rmsc0

"$PY" tests/interop/mesh_pki.py "$sw" client=spiffe://cluster.local/ns/shop/sa/client \
  server=spiffe://cluster.local/ns/shop/sa/server >/dev/null
chmod 644 "$sw"/*.pem

# What both proxies know (a control plane would serve it): services with virtual IPs whose
# endpoints are pod B's address, served by a sidecar (tlsMode istio), and the routing.
cat >"$sw/mesh.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  addresses: [10.96.0.10, "fd96::10"]
  ports: [{number: 80, name: http, targetPort: 8080}]
  endpoints: [{address: 10.78.0.2, labels: {app: web, security.istio.io/tlsMode: istio}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-v2, namespace: shop}
spec:
  hosts: [web-v2]
  addresses: [10.96.0.11]
  ports: [{number: 80, name: http, targetPort: 8081}]
  endpoints: [{address: 10.78.0.2, labels: {app: web, security.istio.io/tlsMode: istio}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo]
  addresses: [10.96.0.12]
  ports: [{number: 50051, name: grpc, protocol: GRPC}]
  endpoints: [{address: 10.78.0.2, labels: {security.istio.io/tlsMode: istio}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: banner, namespace: shop}
spec:
  hosts: [banner]
  addresses: [10.96.0.13]
  ports: [{number: 7000, name: tcp-banner}]
  endpoints: [{address: 10.78.0.2, labels: {security.istio.io/tlsMode: istio}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: web-v2}}]
  - route: [{destination: {host: web}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
EOF
sc_proxy_config() { # name sa address ports-yaml extra-yaml
  cat <<EOF
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: $1}
spec:
  capture: {}
  workload:
    name: $1
    namespace: shop
    serviceAccount: $2
    addresses: [$3]
    ports: $4
  identity: {certFile: $sw/$2.pem, keyFile: $sw/$2-key.pem, caFile: $sw/mesh-ca.pem}
$5
EOF
}
sc_proxy_config client client 10.78.0.1 "{}" "" >"$sw/client.yaml"
sc_proxy_config web server 10.78.0.2 "{http: 8080, http-v2: 8081, grpc: 50051, tcp-banner: 7000}" "" >"$sw/server.yaml"

start_app() { # ns log args...
  local ns=$1 log=$2
  shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 &
  sc_pids+=($!)
  for _ in $(seq 200); do
    grep -q ready "$log" && return 0
    sleep 0.05
  done
  echo "sidecar: app in $ns did not start: $(cat "$log")" >&2
  return 1
}
start_app "$sc_b" "$sw/v1.log" "$sc_py" "$app" http 8080 v1
start_app "$sc_b" "$sw/v2.log" "$sc_py" "$app" http 8081 v2
start_app "$sc_b" "$sw/plain.log" "$sc_py" "$app" http 9999 outside-the-mesh
start_app "$sc_b" "$sw/banner.log" "$sc_py" "$app" banner 7000 banner
ip netns exec "$sc_b" "$PY" tests/interop/grpc_interop.py serve 0.0.0.0:50051 --name pod-b >"$sw/grpc.log" 2>&1 &
sc_pids+=($!)

sc_nat() { # ns → iptables-save -t nat, both families, without comments and counters
  ip netns exec "$1" iptables-save -t nat | grep -v '^#' | sed -E 's/ \[[0-9]+:[0-9]+\]$//'
  ip netns exec "$1" ip6tables-save -t nat | grep -v '^#' | sed -E 's/ \[[0-9]+:[0-9]+\]$//'
}
sc_nat "$sc_a" >"$sw/a-before"
sc_nat "$sc_b" >"$sw/b-before"
in_a "$ringmesh" iptables >"$sw/a-iptables.log" 2>&1
# Port 9999 of pod B stands for a server outside the mesh: not captured there.
in_b "$ringmesh" iptables -d 9999 >"$sw/b-iptables.log" 2>&1

start_proxy() { # ns name → pid in $sc_proxy_pid
  ip netns exec "$1" setpriv --reuid=1337 --regid=1337 --clear-groups \
    "$sw/ringmesh-proxy" -c "$sw/mesh.yaml,$sw/$2.yaml" --watch-interval 200ms >>"$sw/$2-proxy.log" 2>&1 &
  sc_proxy_pid=$!
  sc_pids+=($sc_proxy_pid)
  local i
  for i in $(seq 200); do
    [ "$(ip netns exec "$1" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15020/healthz/ready)" = 200 ] && return 0
    sleep 0.05
  done
  echo "sidecar: proxy $2 not ready: $(tail -5 "$sw/$2-proxy.log")" >&2
  return 1
}
start_proxy "$sc_b" server
start_proxy "$sc_a" client
pid_a=$sc_proxy_pid
# grpcio's server says nothing when it is up: its port answering is the sign.
for _ in $(seq 200); do
  in_b bash -c 'exec 3<>/dev/tcp/127.0.0.1/50051' 2>/dev/null && break
  sleep 0.05
done

# Everything that crosses the veth while the checks below run.
in_b tcpdump -i rmsc1 -U -s 0 -w "$sw/veth.pcap" tcp >"$sw/tcpdump.log" 2>&1 &
tcpdump_pid=$!
sc_pids+=($tcpdump_pid)
for _ in $(seq 100); do
  grep -q "listening on" "$sw/tcpdump.log" && break
  sleep 0.05
done

# A pod without a sidecar (the proxy's own user is not captured) speaking plaintext: STRICT
# closes it after its first bytes (curl: 52, empty reply, or 56, reset).
in_a setpriv --reuid=1337 --regid=1337 --clear-groups curl -s -m 5 -o /dev/null http://10.78.0.2:8080/ && code=0 || code=$?
check "sidecar: plaintext to the app's port is refused under STRICT (curl exit $code)" bash -c "[ $code = 52 ] || [ $code = 56 ]"

host=web.shop.svc.cluster.local
get() { # curl args... → "status body" (one line)
  rm -f "$sw/body"
  in_a curl -s -m 10 -o "$sw/body" -w '%{http_code} ' "$@" 2>/dev/null || true
  [ -f "$sw/body" ] && tr -d '\n' <"$sw/body"
  return 0
}
r=$(get --resolve "$host:80:10.96.0.10" "http://$host/")
check "sidecar: HTTP/1.1 to web's virtual IP reaches v1 through both proxies ($r)" [ "$r" = "200 v1" ]
r=$(get --resolve "$host:80:10.96.0.10" -H 'x-canary: yes' "http://$host/")
check "sidecar: the VirtualService's header match sends x-canary: yes to v2 ($r)" [ "$r" = "200 v2" ]
r=$(get http://10.96.0.10/)
check "sidecar: a request naming the virtual IP as its Host reaches the service dialled ($r)" [ "$r" = "200 v1" ]
r=$(get -g "http://[fd96::10]/")
check "sidecar: IPv6 virtual IP, captured by the IPv6 listener ($r)" [ "$r" = "200 v1" ]
xfcc=$(in_a curl -s -m 10 -D - -o /dev/null --resolve "$host:80:10.96.0.10" "http://$host/" | tr -d '\r' | sed -n 's/^x-saw-xfcc: //p')
check "sidecar: the app sees the client pod's identity in x-forwarded-client-cert ($xfcc)" \
  bash -c "[[ '$xfcc' == *'URI=spiffe://cluster.local/ns/shop/sa/client' ]]"
r=$(get --http2-prior-knowledge --resolve "$host:80:10.96.0.10" "http://$host/")
check "sidecar: HTTP/2 (curl h2c) to the virtual IP reaches the HTTP/1.1 app ($r)" [ "$r" = "200 v1" ]
for case in unary server-stream bidi-stream; do
  in_a "$PY" tests/interop/grpc_interop.py client 10.96.0.12:50051 --authority echo.shop.svc.cluster.local "$case" \
    >"$sw/grpc-$case.log" 2>&1 && code=0 || code=$?
  check "sidecar: gRPC $case (grpcio on both sides) through both proxies" [ "$code" = 0 ]
done
r=$(in_a "$sc_py" "$app" banner-client 10.96.0.13 7000 2>&1 || true)
check "sidecar: server-first TCP through both proxies ($r)" [ "$r" = "banner says hello / PING" ]

# tcpdump stopped at once may lose what it had not read yet: stop it once the probe's plaintext
# GET (sent before everything else) and the last check's packets are in its file.
for _ in $(seq 50); do
  [ "$(tcpdump -r "$sw/veth.pcap" -nn 'tcp port 7000' 2>/dev/null | wc -l)" -gt 6 ] && break
  sleep 0.1
done
kill "$tcpdump_pid" 2>/dev/null || true
wait "$tcpdump_pid" 2>/dev/null || true
tcpdump -r "$sw/veth.pcap" -nn -A 2>/dev/null >"$sw/veth.txt" || true
mesh_packets=$(tcpdump -r "$sw/veth.pcap" -nn 'tcp port 8080 or tcp port 8081 or tcp port 50051 or tcp port 7000' 2>/dev/null | wc -l)
handshakes=$(tcpdump -r "$sw/veth.pcap" -nn 'tcp[((tcp[12] & 0xf0) >> 2)] = 0x16' 2>/dev/null | wc -l)
check "sidecar: the veth carried the mesh's traffic ($mesh_packets packets) with TLS handshakes ($handshakes)" \
  bash -c "[ $mesh_packets -gt 20 ] && [ $handshakes -gt 4 ]"
check "sidecar: no plaintext HTTP, gRPC path or banner on the veth (but the STRICT probe's own GET)" \
  bash -c "! grep -aE 'x-canary|HTTP/1.1 200|banner says hello|ringmesh.interop.Echo|outside-the-mesh' '$sw/veth.txt' &&
    [ \$(grep -ac ': HTTP: GET / HTTP/1.1' '$sw/veth.txt') = 1 ]"
check "sidecar: the server pod's certificate was issued by the mesh CA (trusted by the client)" \
  grep -q "ringmesh_outbound_tls_handshakes_total [1-9]" <(in_a curl -s http://127.0.0.1:15090/stats/prometheus)
in_b curl -s http://127.0.0.1:15090/stats/prometheus >"$sw/b-stats"
check "sidecar: the server proxy counted mTLS handshakes and app-port connections" bash -c "
  grep -q 'ringmesh_inbound_tls_handshakes_total [1-9]' '$sw/b-stats' &&
  grep -q 'ringmesh_capture_inbound_app_port_total [1-9]' '$sw/b-stats' &&
  grep -q 'ringmesh_inbound_plaintext_refused_total [1-9]' '$sw/b-stats'"

# A pod's own address (as a headless Service gives it): to that endpoint as TCP, in mutual TLS
# to its proxy, which serves the HTTP inside.
r=$(get http://10.78.0.2:8080/)
check "sidecar: a request to the server pod's own IP reaches it through both proxies ($r)" [ "$r" = "200 v1" ]
check "sidecar: ... counted as a captured endpoint" \
  grep -q "ringmesh_capture_outbound_endpoint_total [1-9]" <(in_a curl -s http://127.0.0.1:15090/stats/prometheus)
# An unknown destination: passed through as TCP under ALLOW_ANY (the default)...
r=$(get http://10.78.0.2:9999/)
check "sidecar: ALLOW_ANY passes an unknown destination through ($r)" [ "$r" = "200 outside-the-mesh" ]
check "sidecar: ... counted as passthrough" \
  grep -q "ringmesh_capture_passthrough_total [1-9]" <(in_a curl -s http://127.0.0.1:15090/stats/prometheus)
# ... and refused once the config says REGISTRY_ONLY (a hot reload, no restart).
sc_proxy_config client client 10.78.0.1 "{}" "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}" >"$sw/client.yaml.new"
mv "$sw/client.yaml.new" "$sw/client.yaml"
for _ in $(seq 100); do
  in_a curl -s http://127.0.0.1:15000/config_dump | grep -q REGISTRY_ONLY && break
  sleep 0.1
done
r=$(get http://10.78.0.2:9999/)
check "sidecar: REGISTRY_ONLY refuses an unknown destination (status '$r')" [ "$r" = "000 " ]
check "sidecar: ... counted" \
  grep -q "ringmesh_capture_registry_only_refused_total [1-9]" <(in_a curl -s http://127.0.0.1:15090/stats/prometheus)
r=$(get --resolve "$host:80:10.96.0.10" "http://$host/")
check "sidecar: ... while services still work ($r)" [ "$r" = "200 v1" ]
r=$(get http://10.78.0.2:8081/)
check "sidecar: ... and so do their endpoints' own addresses ($r)" [ "$r" = "200 v2" ]

# The client pod's proxy killed: its app's connections fail (nothing listens where they are
# redirected) rather than leave the pod in plaintext; restarted, it serves again.
kill -9 "$pid_a"
wait "$pid_a" 2>/dev/null || true
r=$(get --resolve "$host:80:10.96.0.10" "http://$host/")
check "sidecar: with the proxy killed, the app's request fails instead of bypassing it ('$r')" [ "$r" = "000 " ]
start_proxy "$sc_a" client
r=$(get --resolve "$host:80:10.96.0.10" "http://$host/")
check "sidecar: restarted, the proxy serves again ($r)" [ "$r" = "200 v1" ]

for p in "${sc_pids[@]}"; do kill "$p" 2>/dev/null || true; done
sc_pids=()
in_a "$ringmesh" iptables --cleanup >>"$sw/a-iptables.log" 2>&1
in_b "$ringmesh" iptables --cleanup >>"$sw/b-iptables.log" 2>&1
check "sidecar: --cleanup leaves pod A's nat rules as before" diff -u "$sw/a-before" <(sc_nat "$sc_a")
check "sidecar: --cleanup leaves pod B's nat rules as before" diff -u "$sw/b-before" <(sc_nat "$sc_b")
sc_teardown

if [ -n "${sidecar_standalone:-}" ]; then
  echo "sidecar: $pass passed, $fail failed"
  [ "$fail" = 0 ]
fi
