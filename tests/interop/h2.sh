# Sourced by run.sh (uses its $BIN, $work, pids, check, and $PY, a Python with grpcio). Ports 23xxx.
# HTTP/2 and gRPC against third-party peers: Python grpcio client and servers through two proxies
# (client-side → server-side → server, the server-side one on epoll: streams, deadline, error
# status, per-call balancing, a down server answered with a gRPC status); h2load and
# `curl --http2-prior-knowledge` through the client-side proxy to ringmesh-echo over h2c (curl
# also to the echo over HTTP/1.1, the translation). Each peer is first checked against the other
# directly, so that a failure through the proxies is the proxies'.
h2_fail_before=$fail
h2w="$work/h2"
mkdir -p "$h2w"
GRPC_PY=tests/interop/grpc_interop.py

wait_until() { # tries command... → 0 once the command succeeds (polled every 0.1 s, at most tries times)
  local tries=$1
  shift
  for _ in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

"$BIN"/ringmesh-echo --listen 127.0.0.1:23080 --instance h2-echo >"$h2w/echo.log" 2>&1 & pids+=($!)
"$PY" "$GRPC_PY" serve 127.0.0.1:23050 --name a >"$h2w/grpc-a.log" 2>&1 & pids+=($!)
"$PY" "$GRPC_PY" serve 127.0.0.1:23051 --name b >"$h2w/grpc-b.log" 2>&1 & pids+=($!)

cat >"$h2w/client-side.yaml" <<'YAML'
# The client's sidecar: every gRPC host and echo-mesh through the server's sidecar (a peer proxy:
# tlsMode istio), and two hosts on ringmesh-echo, one over h2c and one over HTTP/1.1.
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: h2-client-side}
spec:
  workers: 2
  adminAddress: 127.0.0.1:23100
  healthAddress: 127.0.0.1:23120
  metricsAddress: 127.0.0.1:23190
  listeners:
  - {name: outbound, address: "127.0.0.1:23101", protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc}
spec:
  hosts: [grpc.interop, grpc-lb.interop, grpc-down.interop]
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {grpc: 23201}, labels: {security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-mesh}
spec:
  hosts: [echo-mesh.interop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 23201}, labels: {security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-h2}
spec:
  hosts: [echo-h2.interop]
  ports: [{number: 80, name: http2, protocol: HTTP2}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http2: 23080}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-h1}
spec:
  hosts: [echo-h1.interop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 23080}}]
YAML
cat >"$h2w/server-side.yaml" <<'YAML'
# The server's sidecar, on epoll (the client-side one runs the default driver, io_uring where
# allowed): gRPC to the Python servers, grpc-lb balanced over both, grpc-down to a closed port;
# echo-mesh to ringmesh-echo over HTTP/1.1.
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: h2-server-side}
spec:
  workers: 2
  io: epoll
  adminAddress: 127.0.0.1:23200
  healthAddress: 127.0.0.1:23220
  metricsAddress: 127.0.0.1:23290
  listeners:
  - {name: inbound, address: "127.0.0.1:23201", protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc}
spec:
  hosts: [grpc.interop]
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {grpc: 23050}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc-lb}
spec:
  hosts: [grpc-lb.interop]
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {grpc: 23050}}
  - {address: 127.0.0.1, ports: {grpc: 23051}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: grpc-lb}
spec:
  host: grpc-lb.interop
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc-down}
spec:
  hosts: [grpc-down.interop]
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {grpc: 23059}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-mesh}
spec:
  hosts: [echo-mesh.interop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 23080}}]
YAML
for side in client-side server-side; do
  "$BIN"/ringmesh-proxy --config "$h2w/$side.yaml" --watch-interval 0s >"$h2w/$side.log" 2>&1 & pids+=($!)
done

check "h2: ringmesh-echo answers h2c" wait_until 100 curl -fsS --noproxy '*' --http2-prior-knowledge -o /dev/null http://127.0.0.1:23080/
check "h2: Python gRPC server a up" wait_until 3 "$PY" "$GRPC_PY" client 127.0.0.1:23050 ready
check "h2: Python gRPC server b up" wait_until 3 "$PY" "$GRPC_PY" client 127.0.0.1:23051 ready
check "h2: client-side proxy ready" wait_until 100 curl -fsS --noproxy '*' -o /dev/null http://127.0.0.1:23120/healthz/ready
check "h2: server-side proxy ready" wait_until 100 curl -fsS --noproxy '*' -o /dev/null http://127.0.0.1:23220/healthz/ready

# --- gRPC: grpcio client → grpcio server, directly, then through both proxies ----------------
grpc_case() { # target authority case → runs one case of grpc_interop.py (bounded: every call has a deadline)
  timeout 120 "$PY" "$GRPC_PY" client "$1" --authority "$2" "$3"
}
for c in unary server-stream client-stream bidi-stream deadline error; do
  check "grpc direct: $c" grpc_case 127.0.0.1:23050 grpc.interop "$c"
done
for c in unary server-stream client-stream bidi-stream deadline error; do
  check "grpc through two proxies: $c" grpc_case 127.0.0.1:23101 grpc.interop "$c"
done
check "grpc through two proxies: calls on one channel balanced per call over two servers" \
  grpc_case 127.0.0.1:23101 grpc-lb.interop spread
check "grpc through two proxies: a server that is down answers UNAVAILABLE as a gRPC status" \
  grpc_case 127.0.0.1:23101 grpc-down.interop unavailable

# --- curl --http2-prior-knowledge ------------------------------------------------------------
curl_h2() { # name authority url [curl args...] → body in $h2w/curl-NAME.body, prints "status version"
  curl -sS --noproxy '*' --max-time 10 --http2-prior-knowledge -o "$h2w/curl-$1.body" \
    -w '%{http_code} %{http_version}' -H "Host: $2" "${@:3}"
}
curl_h2_ok() { # name authority want-file curl-args-and-url... → 200 over HTTP/2, body byte for byte want-file
  local meta
  meta=$(curl_h2 "$1" "$2" "${@:4}") || { echo "  curl failed (${meta:-no response})"; return 1; }
  [ "$meta" = "200 2" ] || { echo "  status and HTTP version: '$meta', expected '200 2'"; return 1; }
  cmp -s "$h2w/curl-$1.body" "$3" || { echo "  body '$(head -c 200 "$h2w/curl-$1.body")', expected '$(cat "$3")'"; return 1; }
}
curl_h2_upstream_saw() { # name authority url line... → 200 over HTTP/2, the echo's /headers dump has each line
  local meta name=$1 authority=$2 url=$3
  shift 3
  meta=$(curl_h2 "$name" "$authority" "$url") || { echo "  curl failed (${meta:-no response})"; return 1; }
  [ "$meta" = "200 2" ] || { echo "  status and HTTP version: '$meta', expected '200 2'"; return 1; }
  for line in "$@"; do
    tr -d '\r' <"$h2w/curl-$name.body" | grep -qixF "$line" ||
      { echo "  no '$line'; the upstream saw:"; sed 's/^/    /' "$h2w/curl-$name.body"; return 1; }
  done
}
# The echo's GET body read over HTTP/1.1 (its 64 bytes): what every GET below must return.
curl -fsS --noproxy '*' -o "$h2w/get.want" http://127.0.0.1:23080/ || true
printf 'hello-h2-interop, a POST body\n\x00\xff' >"$h2w/post.want"
check "curl: the echo's GET body is 64 bytes" [ "$(stat -c %s "$h2w/get.want" 2>/dev/null)" = 64 ]
check "curl h2c direct: GET" curl_h2_ok get-direct echo-h2.interop "$h2w/get.want" http://127.0.0.1:23080/
check "curl h2c direct: POST body echoed" curl_h2_ok post-direct echo-h2.interop "$h2w/post.want" \
  --data-binary "@$h2w/post.want" http://127.0.0.1:23080/echo
check "curl h2c through the proxy: GET to an h2c upstream" \
  curl_h2_ok get-proxy-h2 echo-h2.interop "$h2w/get.want" http://127.0.0.1:23101/
check "curl h2c through the proxy: POST body echoed by an h2c upstream" \
  curl_h2_ok post-proxy-h2 echo-h2.interop "$h2w/post.want" --data-binary "@$h2w/post.want" http://127.0.0.1:23101/echo
check "curl h2c through the proxy: the h2c upstream is asked over HTTP/2 for echo-h2.interop" \
  curl_h2_upstream_saw head-proxy-h2 echo-h2.interop http://127.0.0.1:23101/headers \
  ':scheme: http' ':authority: echo-h2.interop' ':path: /headers'
check "curl h2c through the proxy: GET to an HTTP/1.1 upstream" \
  curl_h2_ok get-proxy-h1 echo-h1.interop "$h2w/get.want" http://127.0.0.1:23101/
check "curl h2c through the proxy: POST body echoed by an HTTP/1.1 upstream" \
  curl_h2_ok post-proxy-h1 echo-h1.interop "$h2w/post.want" --data-binary "@$h2w/post.want" http://127.0.0.1:23101/echo
check "curl h2c through the proxy: the HTTP/1.1 upstream is asked over HTTP/1.1 for echo-h1.interop" \
  curl_h2_upstream_saw head-proxy-h1 echo-h1.interop http://127.0.0.1:23101/headers \
  'GET /headers HTTP/1.1' 'host: echo-h1.interop'

# --- h2load: many streams over one connection and over a few ---------------------------------
h2load_run() { # name requests clients streams url → h2load's output in $h2w/h2load-NAME.txt (bounded)
  timeout 120 h2load -n "$2" -c "$3" -m "$4" -H ':authority: echo-h2.interop' "$5" >"$h2w/h2load-$1.txt" 2>&1 || true
}
h2load_all_ok() { # name requests → 0 only when h2load says all of them completed with a 2xx over h2c
  local out="$h2w/h2load-$1.txt" n=$2
  if grep -qx 'Application protocol: h2c' "$out" &&
    grep -qx "requests: $n total, $n started, $n done, $n succeeded, 0 failed, 0 errored, 0 timeout" "$out" &&
    grep -qx "status codes: $n 2xx, 0 3xx, 0 4xx, 0 5xx" "$out"; then
    return 0
  fi
  echo "  h2load $1: $(grep -E '^(Application protocol|requests|status codes):' "$out" | paste -sd'|' || true)"
  return 1
}
h2load_read_as_failed() { # name requests summary-regex → h2load printed that summary, and h2load_all_ok refuses it
  grep -Eqx "$3" "$h2w/h2load-$1.txt" || { echo "  h2load $1: $(grep '^requests:' "$h2w/h2load-$1.txt")"; return 1; }
  ! h2load_all_ok "$1" "$2" >/dev/null
}
# What a failed run looks like must read as failed: every request answered 503; nothing listening.
h2load_run all-503 200 1 10 http://127.0.0.1:23080/status/503
check "h2load: a run whose every request gets a 503 is read as failed" h2load_read_as_failed all-503 200 \
  'requests: 200 total, 200 started, 200 done, 0 succeeded, 200 failed, 0 errored, 0 timeout'
h2load_run refused 200 2 10 http://127.0.0.1:23099/
check "h2load: a run against a closed port is read as failed" h2load_read_as_failed refused 200 \
  'requests: 200 total, 0 started, 0 done, 0 succeeded, 200 failed, 200 errored, 0 timeout'
h2load_run one-direct 20000 1 100 http://127.0.0.1:23080/
check "h2load direct: 20,000 requests, 100 streams over 1 connection" h2load_all_ok one-direct 20000
h2load_run few-direct 20000 4 25 http://127.0.0.1:23080/
check "h2load direct: 20,000 requests, 25 streams on each of 4 connections" h2load_all_ok few-direct 20000
h2load_run one-proxy 20000 1 100 http://127.0.0.1:23101/
check "h2load through the proxy: 20,000 requests, 100 streams over 1 connection" h2load_all_ok one-proxy 20000
h2load_run few-proxy 20000 4 25 http://127.0.0.1:23101/
check "h2load through the proxy: 20,000 requests, 25 streams on each of 4 connections" h2load_all_ok few-proxy 20000
# --- HTTP/1.1 between two proxies: carried over a few multiplexed HTTP/2 connections -----------
# wrk holds 16 HTTP/1.1 connections to the client-side proxy for 3 s; the connections from it to
# the server-side proxy are counted every 0.1 s meanwhile (the loop ends with wrk, at most 30 s).
timeout 30 wrk -t1 -c16 -d3s -H 'Host: echo-mesh.interop' http://127.0.0.1:23101/ >"$h2w/wrk-mesh.txt" 2>&1 &
wrk_pid=$!
peak=0
while kill -0 "$wrk_pid" 2>/dev/null; do
  n=$(ss -Htn state established '( dport = :23201 )' | wc -l)
  [ "$n" -gt "$peak" ] && peak=$n
  sleep 0.1
done
wait "$wrk_pid" || true
wrk_all_ok() { # file → wrk completed requests, all 2xx, with no socket errors
  if grep -Eq '^ *[1-9][0-9]* requests in' "$1" && ! grep -q 'Non-2xx' "$1" && ! grep -q 'Socket errors' "$1"; then
    return 0
  fi
  sed 's/^/    /' "$1"
  return 1
}
between() { # value low high
  [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]
}
check "mesh: wrk's HTTP/1.1 through both proxies, all 2xx, no socket errors" wrk_all_ok "$h2w/wrk-mesh.txt"
check "mesh: wrk's 16 connections cross between the proxies on 1 to 4 connections (peak $peak)" between "$peak" 1 4

if [ "$fail" -gt "$h2_fail_before" ]; then
  for side in client-side server-side; do
    echo "  last lines of the $side proxy's log:"
    tail -n 15 "$h2w/$side.log" | sed 's/^/    /'
  done
fi
