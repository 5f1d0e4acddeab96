# Sourced by run.sh (uses its $BIN, $work, pids, check). Ports 29xxx.
cp_dir="$work/mesh"
mkdir -p "$cp_dir"
mesh_yaml() { # weight-v1 weight-v2
  { cat deploy/examples/control-plane/mesh/reviews.yaml; echo ---; cat deploy/examples/control-plane/reviews-route.yaml; } |
    sed -e "s/weight: 90$/weight: $1/" -e "s/weight: 10$/weight: $2/"
}
mesh_yaml 90 10 >"$cp_dir/reviews.yaml"
start_cp() {
  $BIN/ringmesh-control --config-dir "$cp_dir" --listen 127.0.0.1:29010 --listen-tls 127.0.0.1:29012 --watch-interval 100ms \
    >>"$work/control.log" 2>&1 &
  cp_pid=$!
  pids+=($cp_pid)
}
start_cp
$BIN/ringmesh-echo --listen 127.0.0.1:29081 --instance v1 >/dev/null 2>&1 & pids+=($!)
$BIN/ringmesh-echo --listen 127.0.0.1:29082 --instance v2 >/dev/null 2>&1 & pids+=($!)
# The example sidecars, moved to 29xxx ports and this control plane.
for p in client reviews-v1 reviews-v2; do
  # 25000/25001/25020/25090 → 29100/29101/29120/29190, 26xxx → 292xx, 27xxx → 293xx.
  sed -E -e 's/127\.0\.0\.1:15010/127.0.0.1:29010/' -e 's/127\.0\.0\.1:25[0-9]([0-9]{2})/127.0.0.1:291\1/' \
      -e 's/127\.0\.0\.1:26[0-9]([0-9]{2})/127.0.0.1:292\1/' -e 's/127\.0\.0\.1:27[0-9]([0-9]{2})/127.0.0.1:293\1/' \
      -e 's/http: 18081/http: 29081/' -e 's/http: 18082/http: 29082/' \
      "deploy/examples/control-plane/$p.yaml" >"$work/$p.yaml"
  $BIN/ringmesh-proxy --config "$work/$p.yaml" --watch-interval 0s >"$work/$p.log" 2>&1 & pids+=($!)
done
RH='Host: reviews.local'
instances() { # n → "count instance" lines
  for _ in $(seq "$1"); do
    curl -s --max-time 2 -o /dev/null -D - -H "$RH" http://127.0.0.1:29101/ | tr -d '\r' | grep -i '^x-ringmesh-instance' || echo failed
  done | sort | uniq -c
}
for _ in $(seq 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$RH" http://127.0.0.1:29101/)" = 200 ] && break
  sleep 0.2
done
split=$(instances 400)
v2=$(echo "$split" | awk '/v2/ {print $1}')
check "control plane: 90/10 split over 400 requests ($(echo $split | tr '\n' ' '))" \
  bash -c "[ '${v2:-0}' -ge 15 ] && [ '${v2:-0}' -le 75 ] && ! echo '$split' | grep -q failed"

# Move everything to v2 while 2,000 rps flow through the client-side proxy.
$BIN/ringmesh-loadgen http://127.0.0.1:29101/ -H "$RH" --rate 2000 -c 16 -t 1 -d 5s --warmup 0s \
  --no-progress --json "$work/canary.json" >"$work/canary.txt" 2>&1 & lg=$!
sleep 2
mesh_yaml 0 100 >"$cp_dir/reviews.yaml.tmp" && mv "$cp_dir/reviews.yaml.tmp" "$cp_dir/reviews.yaml"
sleep 1
after=$(instances 50)
wait $lg || true
check "control plane: 0/100 applied under load, traffic moved within a second ($(echo $after | tr '\n' ' '))" \
  bash -c "echo '$after' | grep -q '50 x-ringmesh-instance: v2'"
check "control plane: no failed request across the change at 2,000 rps" \
  grep -Eq '"errors": ?0[,}]' "$work/canary.json"

# Kill the control plane mid-run: nothing fails; restart it with a new split: proxies resync.
$BIN/ringmesh-loadgen http://127.0.0.1:29101/ -H "$RH" --rate 2000 -c 16 -t 1 -d 4s --warmup 0s \
  --no-progress --json "$work/down.json" >"$work/down.txt" 2>&1 & lg=$!
sleep 1
kill -9 "$cp_pid"
wait $lg || true
check "control plane killed mid-run: no failed request" grep -Eq '"errors": ?0[,}]' "$work/down.json"
check "control plane killed: proxies keep the last config" bash -c "curl -fsS -D - -o /dev/null -H '$RH' http://127.0.0.1:29101/ | grep -qi 'x-ringmesh-instance: v2'"
cp_state() { curl -fsS http://127.0.0.1:29100/control_plane | tr -d ' \n'; }
retrying=no
for _ in $(seq 20); do
  if cp_state | grep -q '"state":"retrying"'; then retrying=yes; break; fi
  sleep 0.25
done
check "control plane killed: the proxy's /control_plane says retrying ($(curl -fsS http://127.0.0.1:29100/control_plane | grep -o '"last_error": *"[^"]*"' | cut -c1-90))" [ "$retrying" = yes ]
mesh_yaml 100 0 >"$cp_dir/reviews.yaml"
start_cp
resynced=no
for _ in $(seq 60); do
  if curl -fsS -D - -o /dev/null -H "$RH" http://127.0.0.1:29101/ | grep -qi 'x-ringmesh-instance: v1'; then resynced=yes; break; fi
  sleep 0.25
done
check "control plane restarted: proxies resync to its config" [ "$resynced" = yes ]
check "control plane restarted: the proxy's /control_plane says connected" bash -c "curl -fsS http://127.0.0.1:29100/control_plane | tr -d ' \n' | grep -q '\"state\":\"connected\"'"

# Istio's security kinds through the real CLI: an example compiles, a typo in a value is
# refused with the field named.
cat >"$work/authz.yaml" <<'YAML'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels: {app: httpbin}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    to:
    - operation: {methods: ["GET"], paths: ["/info*"]}
YAML
check "ringmesh analyze: Istio's AuthorizationPolicy example compiles" \
  bash -c "$BIN/ringmesh analyze '$work/authz.yaml' >'$work/authz.txt' 2>&1 && ! grep -qi 'error' '$work/authz.txt'"
sed 's/action: ALLOW/action: ALOW/' "$work/authz.yaml" >"$work/authz-bad.yaml"
check "ringmesh analyze: a bad action is refused naming spec.action" \
  bash -c "! $BIN/ringmesh analyze '$work/authz-bad.yaml' >'$work/authz-bad.txt' 2>&1 && grep -q 'spec.action' '$work/authz-bad.txt'"
check "proxy logged the outage and kept serving" grep -q 'keeping the last good config' "$work/client.log"
