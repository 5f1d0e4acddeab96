# Sourced by run.sh (uses its $BIN, $work, pids, check). Ports 27xxx.
# Slow clients against Debian's slowhttptest: 1,000 slowloris connections (-H, a header line a
# second) and 1,000 slow-body connections (-B, a body piece every 5 s) against one proxy worker
# with 2 s header and body timeouts, while ringmesh-loadgen measures a well-behaved client at a
# fixed rate. Holds when every slow connection was cut (slowhttptest ends with "No open
# connections left", and the proxy counted a 408 per connection: flag DT for heads, SI for
# bodies) and, in both modes, the client's p99 stayed within twice its baseline, measured just
# before each attack (issue 13's bound; nginx beside it where the machine misses it, see
# below). A slow body (up to 16 KiB, by Content-Length) is read whole before an upstream is
# picked, so it holds no upstream connection (`http/request_body.rs`, `gather`). The attacker
# runs on CPU 0 and the proxy, the echo and the client on CPU 1 (`taskset`, `cpus`), in the
# baseline as under attack: a real attacker is on another machine, and on a 2-core runner
# slowhttptest's own CPU (a third of a core for 1,000 sockets) would otherwise be what the
# client measures.
slow_fail_before=$fail
sw="$work/slow"
mkdir -p "$sw"

# run.sh installs slowhttptest (Debian) with the other tools.
check "slow clients: slowhttptest installed" command -v slowhttptest

cat >"$sw/proxy.yaml" <<'YAML'
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: slow-clients}
spec:
  workers: 1
  cpus: [1]
  adminAddress: 127.0.0.1:27000
  healthAddress: 127.0.0.1:27020
  metricsAddress: 127.0.0.1:27090
  limits: {requestHeaderTimeout: 2s, requestBodyTimeout: 2s}
  listeners:
  - {name: http, address: "127.0.0.1:27001", protocol: HTTP}
---
# slowhttptest sends `Host: 127.0.0.1:27001`; the well-behaved client uses slow.interop.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: slow-echo}
spec:
  hosts: [slow.interop, "127.0.0.1"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 27080}}]
YAML

"$BIN"/ringmesh-echo --listen 127.0.0.1:27080 --instance slow --cpus 1 >"$sw/echo.log" 2>&1 & pids+=($!)
"$BIN"/ringmesh-proxy --config "$sw/proxy.yaml" --watch-interval 0s >"$sw/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:27020/healthz/ready >/dev/null 2>&1 &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: slow.interop' http://127.0.0.1:27001/)" = 200 ] && break
  sleep 0.1
done

# nginx, the floor: the same attack against a one-worker nginx on the proxy's CPU with the same
# 2 s header and body timeouts, proxying to the same echo. What this machine does to any proxy
# under 1,000 slow connections (its scheduler, the loopback, the attacker's own traffic) shows
# in nginx's ratio; it is measured only when the proxy misses the bound, to tell the two apart.
mkdir -p "$sw/nginx/tmp"
cat >"$sw/nginx/nginx.conf" <<NGINX
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 8192;
pid $sw/nginx/nginx.pid;
error_log $sw/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_header_timeout 2s;
    client_body_timeout 2s;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path $sw/nginx/tmp/client;
    proxy_temp_path $sw/nginx/tmp/proxy;
    fastcgi_temp_path $sw/nginx/tmp/fastcgi;
    uwsgi_temp_path $sw/nginx/tmp/uwsgi;
    scgi_temp_path $sw/nginx/tmp/scgi;
    upstream echo { server 127.0.0.1:27080; keepalive 64; }
    server {
        listen 127.0.0.1:27101;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
taskset -c 1 nginx -p "$sw/nginx" -c "$sw/nginx/nginx.conf" >"$sw/nginx/out.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: slow.interop' http://127.0.0.1:27101/)" = 200 ] && break
  sleep 0.1
done
check "slow clients: nginx (the floor) serves the echo" \
  bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:27101/)\" = 200 ]"

slow_rate=500
slow_secs=12
# The well-behaved client: a fixed rate on 8 keep-alive connections to port $1; $2 names the run.
slow_load() {
  "$BIN"/ringmesh-loadgen "http://127.0.0.1:$1/" -H 'Host: slow.interop' --rate "$slow_rate" -c 8 -t 1 --cpus 1 \
    -d "${slow_secs}s" --warmup 1s --no-progress --json "$sw/$2.json" >"$sw/$2.txt" 2>&1
}
p99() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["latency_us"]["p99"])' "$sw/$1.json" 2>/dev/null || true; }
flag_count() { # flag → ringmesh_local_replies_total for it
  { curl -fsS http://127.0.0.1:27090/stats/prometheus || true; } |
    awk -v s="ringmesh_local_replies_total{response_flags=\"$1\"}" '$1 == s {print $2; f=1} END {if (!f) print 0}'
}
# One attack on port $1: slowhttptest in mode $2 (-H or -B) with 1,000 connections beside the
# client; $3 names the run.
slow_attack() {
  local port=$1 mode=$2 name=$3
  shift 3
  taskset -c 0 slowhttptest "$mode" -c 1000 -r 250 -l $((slow_secs + 6)) -x 10 -p 3 -u "http://127.0.0.1:$port/" \
    -g -o "$sw/$name" "$@" >"$sw/$name.out" 2>&1 & local attack=$!
  sleep 1 # let the slow connections open before the window starts
  slow_load "$port" "$name-client" || true
  wait "$attack" || true
}
# One measurement on port $1 in mode $2, named $3: a fresh baseline, then the attack beside the
# client. Sets base and under (the client's p99 in µs, empty if it failed) and clean (whether the
# client saw no error under attack).
slow_measure() {
  local port=$1 mode=$2 name=$3
  shift 3
  slow_load "$port" "$name-baseline" || true
  base=$(p99 "$name-baseline")
  slow_attack "$port" "$mode" "$name" "$@"
  under=$(p99 "$name-client")
  clean=no
  grep -Eq '"errors": ?0[,}]' "$sw/$name-client.json" && clean=yes
}
ratio() { python3 -c 'import sys; b, u = int(sys.argv[1]), int(sys.argv[2]); print(f"{u / b:.2f}")' "$1" "$2" 2>/dev/null || echo "?"; }
# Whether $1 (µs) is at most twice $2.
within_two() { [ -n "$1" ] && [ -n "$2" ] && [ "$1" -le $((2 * $2)) ]; }
# Whether the proxy's ratio $1 is at most nginx's $2 (both as printed by `ratio`).
no_worse() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2" 2>/dev/null; }

# Each mode: up to three trials, each a fresh baseline and a fresh attack; every slow connection
# must be cut in each. The bound holds in a trial where the client's p99 under attack was within
# twice its baseline with no error. On a 2-core runner a scheduling hiccup in a 12 s window is
# enough to double a sub-millisecond p99, so a trial that misses is measured again on nginx
# (the floor, above); a miss no larger than nginx's in the same trial is this machine's, and
# said so. Both figures are printed either way.
for spec in "slowloris -H DT -i 1" "slowbody -B SI -i 5 -s 8192"; do
  # shellcheck disable=SC2086
  set -- $spec
  name=$1 mode=$2 flag=$3
  shift 3
  tries=""
  verdict=""
  for trial in 1 2 3; do
    before=$(flag_count "$flag")
    slow_measure 27001 "$mode" "$name-$trial" "$@"
    cut=$(($(flag_count "$flag") - before))
    check "slow clients: $name (1,000 connections, trial $trial): every one cut (slowhttptest: $(grep -ao 'Exit status:.*' "$sw/$name-$trial.out" | sed 's/\x1b\[[0-9;]*m//g'); 408 $flag: $cut)" \
      bash -c "grep -aq 'No open connections left' '$sw/$name-$trial.out' && [ '$cut' -ge 1000 ]"
    r=$(ratio "$base" "$under")
    tries="$tries trial $trial: p99 ${under:-?} µs vs baseline ${base:-?} µs (${r}×"
    if [ "$clean" = yes ] && within_two "$under" "$base"; then
      tries="$tries);"
      verdict="within 2×"
      break
    fi
    slow_measure 27101 "$mode" "$name-$trial-nginx" "$@"
    n=$(ratio "$base" "$under")
    tries="$tries; nginx ${under:-?} vs ${base:-?} µs, ${n}×);"
    if [ "$clean" = yes ] && [ "$r" != "?" ] && [ "$n" != "?" ] && no_worse "$r" "$n"; then
      verdict="at the floor: no worse than nginx under the same attack"
      break
    fi
  done
  check "slow clients: during $name the client's p99 stays within 2 × its baseline (or, where this machine cannot, within nginx's ratio), no errors: ${verdict:-missed}; $tries" \
    [ -n "$verdict" ]
done

if [ "$fail" != "$slow_fail_before" ]; then
  echo "--- slow clients: proxy log tail"; tail -20 "$sw/proxy.log"
  for f in "$sw"/*.txt; do echo "--- $f"; tail -3 "$f"; done
fi
