# Sourced by run.sh (uses its $BIN, $work, pids, check), or run on its own:
#   bash tests/interop/telemetry.sh   (builds the debug binaries; BIN=dir picks another build;
#   as root for the full-disk step and to install Debian's prometheus when it is missing)
# Ports 20xxx.
# Observability against the field's own tools. Debian's `prometheus` (our own process, config
# and storage under $work; the package's service is never started) scrapes a proxy under
# ringmesh-loadgen at a fixed rate and the control plane that proxy is connected to, every
# second: `rate(istio_requests_total[30s])` through Prometheus' HTTP API, at an instant whose
# window lies inside the load, must be the load generator's rate within 10 %, both targets up,
# the duration histogram's median a number. `promtool check metrics` reads both expositions (a
# wrong one made on purpose must fail it). Access logs: moved away under curl's traffic, reopened
# on SIGUSR1, every request's line in exactly one of the two files; on a full disk (a 16 KiB
# tmpfs in a mount namespace of the proxy's own) every request still answered and the lost lines
# counted.
if ! declare -F check >/dev/null; then
  set -euo pipefail
  cd "$(dirname "$0")/../.."
  if [ -z "${BIN:-}" ]; then
    cargo build -q -p ringmesh-proxy -p ringmesh-loadgen -p ringmesh-control --bins
    BIN=target/debug
  fi
  source tests/interop/standalone.sh
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
  telemetry_standalone=1
fi
tw="$work/telemetry"
mkdir -p "$tw/cp"
tm_start=$SECONDS

# Debian's prometheus (2.42 in bookworm) when missing. Its package starts a service on :9090
# where it can; a policy-rc.d that refuses (unless one is already there) keeps it down: this part
# runs its own server.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    tm_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && tm_policy=1
    fi
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null || true
    [ -z "$tm_policy" ] || rm -f /usr/sbin/policy-rc.d
  fi
fi
check "telemetry: Debian's prometheus and promtool installed" \
  bash -c "command -v prometheus >/dev/null && command -v promtool >/dev/null"

tm_wait() { # seconds command... → 0 once the command succeeds (polled every 0.1 s until the deadline)
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
tm_get() { # port path → the status code of GET through a proxy's listener, Host echo.telemetry
  curl -s --max-time 2 -o /dev/null -w '%{http_code}' -H 'Host: echo.telemetry' "http://127.0.0.1:$1$2"
}
tm_ok() { [ "$(tm_get "$@")" = 200 ]; }
tm_metric() { # metrics-port name → the value of an unlabelled sample on the proxy's exposition
  curl -fsS --max-time 2 "http://127.0.0.1:$1/stats/prometheus" | awk -v n="$2" '$1 == n {print $2}'
}
tm_lines() { # file → its line count (0 when it does not exist)
  if [ -e "$1" ]; then wc -l <"$1"; else echo 0; fi
}
tm_query() { # promql [unix-time] → the value of the query's one-element instant vector, or nothing
  { curl -fsS --max-time 5 -G --data-urlencode "query=$1" ${2:+--data-urlencode "time=$2"} \
      http://127.0.0.1:20909/api/v1/query |
      python3 -c 'import json, sys
r = json.load(sys.stdin)
v = r["data"]["result"] if r.get("status") == "success" and r["data"]["resultType"] == "vector" else []
print(v[0]["value"][1] if len(v) == 1 else "")'; } 2>>"$tw/query.log" || true
}
tm_within() { # value reference fraction → |value - reference| <= fraction × reference, reference > 0
  python3 -c 'import math, sys
v, r, f = (float(x) for x in sys.argv[1:])
sys.exit(0 if math.isfinite(v) and r > 0 and abs(v - r) <= f * r else 1)' "$1" "$2" "$3" 2>/dev/null
}
tm_finite() { # value → a finite number >= 0
  python3 -c 'import math, sys; v = float(sys.argv[1]); sys.exit(0 if math.isfinite(v) and v >= 0 else 1)' "$1" 2>/dev/null
}
tm_json_lines() { # file... → every line of every file is one JSON object
  python3 -c 'import json, sys
for name in sys.argv[1:]:
    for line in open(name):
        assert isinstance(json.loads(line), dict), line' "$@"
}

# ---------------------------------------------------------------- the scraped mesh
# The control plane, an echo, and a proxy subscribed to the control plane (the echo's
# ServiceEntry comes from there) with the telemetry block of the issue: a JSON access log, the
# reason header, a series bound.
cat >"$tw/cp/echo.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.telemetry]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 20080}}]
YAML
"$BIN"/ringmesh-control --config-dir "$tw/cp" --listen 127.0.0.1:20010 --listen-tls off \
  --metrics-listen 127.0.0.1:20014 >"$tw/control.log" 2>&1 & pids+=($!)
"$BIN"/ringmesh-echo --listen 127.0.0.1:20080 --instance telemetry-echo >"$tw/echo.log" 2>&1 & pids+=($!)
cat >"$tw/load.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: telemetry-load}
spec:
  workers: 1
  adminAddress: 127.0.0.1:20000
  healthAddress: 127.0.0.1:20020
  metricsAddress: 127.0.0.1:20090
  listeners:
  - {name: http, address: "127.0.0.1:20001", protocol: HTTP}
  controlPlane: {address: 127.0.0.1:20010, nodeId: telemetry-load}
  workload: {name: client, namespace: default}
  telemetry:
    accessLog: {path: $tw/load-access.log, encoding: JSON}
    reasonHeader: true
    metrics: {maxSeries: 1000}
YAML
"$BIN"/ringmesh-proxy --config "$tw/load.yaml" --watch-interval 0s >"$tw/load.log" 2>&1 & pids+=($!)

cat >"$tw/prometheus.yml" <<'YAML'
global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}
scrape_configs:
- job_name: proxy
  metrics_path: /stats/prometheus
  static_configs: [{targets: ["127.0.0.1:20090"]}]
- job_name: control
  metrics_path: /metrics
  static_configs: [{targets: ["127.0.0.1:20014"]}]
YAML
prometheus --config.file="$tw/prometheus.yml" --storage.tsdb.path="$tw/prometheus-data" \
  --web.listen-address=127.0.0.1:20909 --log.level=warn >"$tw/prometheus.log" 2>&1 & pids+=($!)

tm_wait 20 tm_ok 20001 / || true
check "telemetry: the proxy serves the echo with the control plane's ServiceEntry" tm_ok 20001 /
tm_wait 20 curl -fsS http://127.0.0.1:20909/-/ready || true
tm_both_up() { [ "$(tm_query 'count(up == 1)')" = 2 ]; }
tm_wait 20 tm_both_up || true
check "telemetry: prometheus ready, scraping the proxy and the control plane" tm_both_up

# 200 rps for 2 s of warm-up and 36 s measured: Prometheus' 30 s window ending 35 s after the
# start lies inside the load with 3 s to spare on each side (a process start included).
lg_start=$(date +%s)
"$BIN"/ringmesh-loadgen http://127.0.0.1:20001/ -H 'Host: echo.telemetry' --rate 200 -c 4 -t 1 \
  -d 36s --warmup 2s --no-progress --json "$tw/loadgen.json" >"$tw/loadgen.txt" 2>&1 || true
tm_at=$((lg_start + 35))
read -r lg_requests lg_errors lg_rate < <(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(r["requests"], r["errors"], r["rate_rps"])' "$tw/loadgen.json" 2>/dev/null || echo "0 unknown 0")
check "telemetry: ringmesh-loadgen answered $lg_requests requests at $lg_rate rps, $lg_errors errors" \
  bash -c "[ '$lg_errors' = 0 ] && [ '$lg_requests' -gt 0 ]"
prom_rate=$(tm_query 'sum(rate(istio_requests_total{reporter="source"}[30s]))' "$tm_at")
check "telemetry: prometheus' rate(istio_requests_total[30s]) = ${prom_rate:-nothing} rps, the load generator's $lg_rate rps within 10 %" \
  tm_within "${prom_rate:-nan}" "$lg_rate" 0.10
# The 200s only: the same rate (no request failed), and the labels a dashboard selects by.
prom_ok=$(tm_query 'sum(rate(istio_requests_total{reporter="source",response_code="200",destination_service="echo.telemetry",request_protocol="http"}[30s]))' "$tm_at")
check "telemetry: by Istio's labels (response_code 200, destination_service, request_protocol) the same rate (${prom_ok:-nothing} rps)" \
  tm_within "${prom_ok:-nan}" "$lg_rate" 0.10
up_proxy=$(tm_query 'min_over_time(up{job="proxy"}[30s])' "$tm_at")
up_control=$(tm_query 'min_over_time(up{job="control"}[30s])' "$tm_at")
check "telemetry: up = 1 for the proxy (${up_proxy:-nothing}) and the control plane (${up_control:-nothing}) through the window" \
  bash -c "[ '$up_proxy' = 1 ] && [ '$up_control' = 1 ]"
p50=$(tm_query 'histogram_quantile(0.5, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="source"}[30s])))' "$tm_at")
check "telemetry: histogram_quantile(0.5, istio_request_duration_milliseconds) is a number (${p50:-nothing} ms)" \
  tm_finite "${p50:-nan}"
xds=$(tm_query 'pilot_xds' "$tm_at")
acks=$(tm_query 'ringmesh_control_acks_total' "$tm_at")
check "telemetry: prometheus reads the control plane: pilot_xds = ${xds:-nothing} (the proxy), ${acks:-no} ACKs" \
  bash -c "[ '$xds' = 1 ] && [ '${acks:-0}' -ge 1 ]"
# What Prometheus refused to store: duplicate series in one scrape, samples out of order.
curl -fsS --max-time 5 http://127.0.0.1:20909/metrics >"$tw/prometheus-self.txt" || true
check "telemetry: prometheus stored every scraped sample (no duplicate, out-of-order or out-of-bounds one)" \
  bash -c "grep -q '^prometheus_target_scrapes_sample_duplicate_timestamp_total ' '$tw/prometheus-self.txt' &&
    ! grep -E '^prometheus_target_scrapes_sample_(duplicate_timestamp|out_of_order|out_of_bounds)_total [^0]' '$tw/prometheus-self.txt'"

# ---------------------------------------------------------------- promtool check metrics
# promtool (2.42) parses the exposition — a syntax error, a second HELP or TYPE line, a family
# split in two fail with "error while linting" and exit 1 — then lints the names: each problem a
# line `NAME TEXT` on stderr, exit 3. Every problem fails the check except these, on names that
# are not ours to change: Istio's (its dashboards and alerts read them as they are: the proxy's
# standard metrics in milliseconds, istiod's counters without `_total`) and the overhead
# histogram the observability issue names.
cat >"$tw/promtool-accepted.txt" <<'TXT'
istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"
ringmesh_proxy_overhead_microseconds use base unit "seconds" instead of "microseconds"
pilot_xds_pushes counter metrics should have "_total" suffix
pilot_total_xds_rejects counter metrics should have "_total" suffix
citadel_server_success_cert_issuance_count counter metrics should have "_total" suffix
citadel_server_success_cert_issuance_count non-histogram and non-summary metrics should not have "_count" suffix
TXT
tm_promtool() { # exposition-file family → promtool accepts the file (beyond the list above), which has the family
  local out=$1.promtool rc=0
  promtool check metrics <"$1" >"$out" 2>&1 || rc=$?
  if grep -q "^# TYPE $2 " "$1" && { [ "$rc" = 0 ] || [ "$rc" = 3 ]; } &&
    ! grep -vxF -f "$tw/promtool-accepted.txt" "$out" | grep -q .; then
    return 0
  fi
  echo "    promtool exit $rc:"
  grep -vxF -f "$tw/promtool-accepted.txt" "$out" | sed 's/^/    /'
  return 1
}
curl -fsS --max-time 5 http://127.0.0.1:20090/stats/prometheus >"$tw/proxy.prom" || true
curl -fsS --max-time 5 http://127.0.0.1:20000/stats/prometheus >"$tw/admin.prom" || true
curl -fsS --max-time 5 http://127.0.0.1:20014/metrics >"$tw/control.prom" || true
check "telemetry: promtool check metrics accepts the proxy's exposition (:20090/stats/prometheus, $(grep -c '^# TYPE' "$tw/proxy.prom") families)" \
  tm_promtool "$tw/proxy.prom" istio_requests_total
check "telemetry: promtool check metrics accepts the admin port's /stats/prometheus" \
  tm_promtool "$tw/admin.prom" istio_request_duration_milliseconds
check "telemetry: promtool check metrics accepts the control plane's exposition (:20014/metrics, $(grep -c '^# TYPE' "$tw/control.prom") families)" \
  tm_promtool "$tw/control.prom" pilot_xds
# The checks above can fail: a counter of ours without `_total`, a family declared twice.
{ cat "$tw/proxy.prom"; printf '# HELP ringmesh_bogus A counter without its suffix.\n# TYPE ringmesh_bogus counter\nringmesh_bogus 1\n'; } >"$tw/bad-lint.prom"
{ cat "$tw/proxy.prom"; grep -A1 '^# HELP ringmesh_downstream_rq_total ' "$tw/proxy.prom"; } >"$tw/bad-parse.prom"
check "telemetry: promtool's check refuses a counter without _total and a family declared twice (made on purpose)" \
  bash -c "$(declare -f tm_promtool); tw='$tw'; ! tm_promtool '$tw/bad-lint.prom' istio_requests_total >/dev/null && ! tm_promtool '$tw/bad-parse.prom' istio_requests_total >/dev/null"

# ---------------------------------------------------------------- access logs: rotation
# A second proxy with nothing but a JSON access log. curl sends 200 requests at 100 a second
# (/rot/1 … /rot/200, one connection); a quarter in, the file is moved away (as logrotate does)
# and the proxy gets SIGUSR1: every request's line is then in exactly one of the two files, the
# moved one's before the new one's. 50 more requests all go to the new file.
tm_proxy() { # name port-base(hundreds) access-log-path → pid in $tm_pid
  cat >"$tw/$1.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: telemetry-$1}
spec:
  workers: 1
  adminAddress: 127.0.0.1:$(($2 + 0))
  healthAddress: 127.0.0.1:$(($2 + 20))
  metricsAddress: 127.0.0.1:$(($2 + 90))
  listeners:
  - {name: http, address: "127.0.0.1:$(($2 + 1))", protocol: HTTP}
  telemetry:
    accessLog: {path: $3, encoding: JSON}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.telemetry]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 20080}}]
YAML
}
rot="$tw/rot"
mkdir -p "$rot"
tm_proxy logs 20100 "$rot/access.log"
"$BIN"/ringmesh-proxy --config "$tw/logs.yaml" --watch-interval 0s >"$tw/logs.log" 2>&1 &
logs_pid=$!
pids+=($logs_pid)
tm_wait 10 curl -fsS http://127.0.0.1:20120/healthz/ready || true
curl -s --max-time 60 --rate 100/s -o /dev/null -w '%{http_code}\n' -H 'Host: echo.telemetry' \
  "http://127.0.0.1:20101/rot/[1-200]" >"$rot/codes-1.txt" 2>"$rot/curl-1.err" &
curl_pid=$!
tm_at_least() { [ "$(tm_lines "$1")" -ge "$2" ]; }
tm_wait 10 tm_at_least "$rot/access.log" 50 || true
mv "$rot/access.log" "$rot/access.log.1" 2>/dev/null || true
kill -USR1 "$logs_pid"
tm_wait 5 grep -q 'SIGUSR1: access-log files reopen' "$tw/logs.log" || true
wait "$curl_pid" || true
tm_sum_is() { [ $(($(tm_lines "$rot/access.log.1") + $(tm_lines "$rot/access.log"))) = "$1" ]; }
tm_wait 5 tm_sum_is 200 || true
old=$(tm_lines "$rot/access.log.1")
new=$(tm_lines "$rot/access.log")
check "telemetry: curl's 200 requests at 100/s through the logging proxy all got 200" \
  bash -c "[ \"\$(grep -cx 200 '$rot/codes-1.txt')\" = 200 ]"
check "telemetry: moved under traffic and SIGUSR1: $old lines in the moved file, $new in a new one, 200 in all" \
  bash -c "[ '$old' -ge 50 ] && [ '$new' -ge 1 ] && [ $((old + new)) = 200 ]"
tm_paths() { # file... → the request paths of the files' JSON lines, in order
  python3 -c 'import json, sys
for name in sys.argv[1:]:
    for line in open(name):
        print(json.loads(line)["path"])' "$@"
}
check "telemetry: each request's line once, the moved file's all before the new file's (JSON lines)" \
  bash -c "$(declare -f tm_paths); [ \"\$(tm_paths '$rot/access.log.1' '$rot/access.log' 2>/dev/null)\" = \"\$(seq -f '/rot/%g' 200)\" ]"
curl -s --max-time 30 -o /dev/null -w '%{http_code}\n' -H 'Host: echo.telemetry' \
  "http://127.0.0.1:20101/after/[1-50]" >"$rot/codes-2.txt" 2>"$rot/curl-2.err" || true
tm_new_is() { [ "$(tm_lines "$rot/access.log")" = "$1" ]; }
tm_wait 5 tm_new_is $((new + 50)) || true
after_ok=$(grep -cx 200 "$rot/codes-2.txt" || true)
after_lines=$({ tm_paths "$rot/access.log" | tail -n +$((new + 1)) | grep -c '^/after/'; } 2>/dev/null || true)
check "telemetry: 50 more requests ($after_ok answered 200): their $after_lines lines in the new file, the moved one kept its $old ($(tm_lines "$rot/access.log.1"))" \
  bash -c "[ '$after_ok' = 50 ] && [ '$after_lines' = 50 ] && [ '$(tm_lines "$rot/access.log")' = $((new + 50)) ] && [ '$(tm_lines "$rot/access.log.1")' = '$old' ]"
check "telemetry: every access-log line parses as a JSON object (python3 json.loads)" tm_json_lines "$rot/access.log.1" "$rot/access.log"
check "telemetry: ringmesh_access_log_reopens_total = 1, nothing dropped or lost" \
  bash -c "$(declare -f tm_metric); [ \"\$(tm_metric 20190 ringmesh_access_log_reopens_total)\" = 1 ] && [ \"\$(tm_metric 20190 ringmesh_access_log_dropped_total)\" = 0 ] && [ \"\$(tm_metric 20190 ringmesh_access_log_lines_lost_total)\" = 0 ]"

# ---------------------------------------------------------------- access logs: a full disk
# The proxy in a mount namespace of its own (unshare -m, private propagation) whose log
# directory is a 16 KiB tmpfs: a few dozen JSON lines fill it. 300 requests must all be
# answered 200; the failed writes are counted, and the lines the file holds plus those counted
# lost are the requests, each line whole (a torn one is cut away).
if [ "$(id -u)" = 0 ]; then
  full="$tw/full"
  mkdir -p "$full"
  tm_proxy full 20200 "$full/access.log"
  # unshare execs sh, which execs the proxy: $! is the proxy's pid.
  unshare -m --propagation private sh -c 'mount -t tmpfs -o size=16k ringmesh-full "$1" && exec "$2" --config "$3" --watch-interval 0s' \
    sh "$full" "$BIN/ringmesh-proxy" "$tw/full.yaml" >"$tw/full.log" 2>&1 &
  full_pid=$!
  pids+=($full_pid)
  tm_wait 10 curl -fsS http://127.0.0.1:20220/healthz/ready || true
  tm_in_ns() { nsenter -t "$full_pid" -m "$@"; }
  check "telemetry: full disk: the proxy's log directory is a 16 KiB tmpfs in its own mount namespace" \
    bash -c "$(declare -f tm_in_ns); full_pid=$full_pid; tm_in_ns df -k '$full' | grep -Eq '^ringmesh-full +16 ' && ! df -k '$full' | grep -q '^ringmesh-full'"
  curl -s --max-time 60 -o /dev/null -w '%{http_code}\n' -H 'Host: echo.telemetry' \
    "http://127.0.0.1:20201/full/[1-300]" >"$full/codes.txt" 2>"$full/curl.err" || true
  tm_full_accounted() { # the file's lines + lost + dropped = 300
    local lines lost dropped
    lines=$(tm_in_ns cat "$full/access.log" | wc -l)
    lost=$(tm_metric 20290 ringmesh_access_log_lines_lost_total)
    dropped=$(tm_metric 20290 ringmesh_access_log_dropped_total)
    [ $((lines + ${lost:-0} + ${dropped:-0})) = 300 ] && [ "${lost:-0}" -gt 0 ]
  }
  tm_wait 5 tm_full_accounted || true
  full_errors=$(tm_metric 20290 ringmesh_access_log_write_errors_total || true)
  full_lost=$(tm_metric 20290 ringmesh_access_log_lines_lost_total || true)
  full_lines=$(tm_in_ns cat "$full/access.log" 2>/dev/null | wc -l || true)
  check "telemetry: full disk: 300 requests, all answered 200" bash -c "[ \"\$(grep -cx 200 '$full/codes.txt')\" = 300 ]"
  check "telemetry: full disk: ringmesh_access_log_write_errors_total = ${full_errors:-nothing} > 0" \
    bash -c "[ '${full_errors:-0}' -gt 0 ]"
  check "telemetry: full disk: $full_lines lines in the file + ${full_lost:-nothing} counted lost = 300, every line whole JSON" \
    bash -c "$(declare -f tm_in_ns tm_metric tm_full_accounted); full_pid=$full_pid; full='$full'; tm_full_accounted &&
      tm_in_ns cat '$full/access.log' >'$full/copy.log' && python3 -c 'import json, sys
for line in open(sys.argv[1]): json.loads(line)' '$full/copy.log'"
  check "telemetry: full disk: the proxy logged the lost lines and still serves" \
    bash -c "grep -q 'access log lines lost' '$tw/full.log' && [ \"\$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: echo.telemetry' http://127.0.0.1:20201/)\" = 200 ]"
else
  echo "skip telemetry: full disk: needs root (a tmpfs mounted in a mount namespace of its own)"
fi

echo "telemetry: the part took $((SECONDS - tm_start)) s"
if [ -n "${telemetry_standalone:-}" ]; then
  echo "telemetry: $pass passed, $fail failed"
  [ "$fail" = 0 ]
fi
