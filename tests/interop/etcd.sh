# Sourced by run.sh (uses its $BIN, $work, pids, check). Ports 24xxx.
# Two ringmesh-control replicas sharing etcd: resources applied to replica A reach proxies on
# replica B, workloads announced to one replica are endpoints on the other, and proxies fail
# over to B when A is killed, with no failed request.
ed="$work/etcd"
mkdir -p "$ed"
start_etcd() {
  etcd --name ringmesh-interop --data-dir "$ed/data" \
    --listen-client-urls http://127.0.0.1:24379 --advertise-client-urls http://127.0.0.1:24379 \
    --listen-peer-urls http://127.0.0.1:24380 --initial-advertise-peer-urls http://127.0.0.1:24380 \
    --initial-cluster ringmesh-interop=http://127.0.0.1:24380 >>"$ed/etcd.log" 2>&1 &
  etcd_pid=$!
  pids+=($etcd_pid)
  for _ in $(seq 50); do
    curl -fsS -X POST -d '{"key":"AA=="}' http://127.0.0.1:24379/v3/kv/range >/dev/null 2>&1 && break
    sleep 0.2
  done
}
start_etcd
check "etcd: started" curl -fsS -X POST -d '{"key":"AA=="}' http://127.0.0.1:24379/v3/kv/range -o /dev/null

# etcd unreachable at start: a clear error naming the address. A busy --listen port: an error
# naming it.
$BIN/ringmesh-control --etcd http://127.0.0.1:24999 --listen 127.0.0.1:24019 --listen-tls off >"$ed/unreachable.log" 2>&1 && code=0 || code=$?
check "etcd: unreachable at start is an error naming the address" \
  bash -c "[ $code != 0 ] && grep -q 'etcd at http://127.0.0.1:24999 is unreachable' '$ed/unreachable.log'"
$BIN/ringmesh-control --etcd http://127.0.0.1:24379 --listen 127.0.0.1:24379 --listen-tls off >"$ed/busy.log" 2>&1 && code=0 || code=$?
check "etcd: a --listen address in use is an error naming it" \
  bash -c "[ $code != 0 ] && grep -q 'cannot listen on 127.0.0.1:24379: ' '$ed/busy.log'"

A=127.0.0.1:24010
B=127.0.0.1:24011
start_replica() { # name listen listen-tls (two replicas on one machine need a TLS port each)
  $BIN/ringmesh-control --etcd http://127.0.0.1:24379 --etcd-prefix /interop --listen "$2" --listen-tls "$3" --grace 3s \
    >>"$ed/control-$1.log" 2>&1 &
  eval "cp_$1=\$!"
  pids+=($!)
}
start_replica a $A 127.0.0.1:24012
start_replica b $B 127.0.0.1:24013
# Both replicas listening before any proxy starts: a proxy tries its replicas in order, and one
# that found A not up yet would start on B (the failover checks below need it on A).
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/24010) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/24011) 2>/dev/null && break
  sleep 0.1
done
$BIN/ringmesh-echo --listen 127.0.0.1:24081 --instance v1 >/dev/null 2>&1 & pids+=($!)
$BIN/ringmesh-echo --listen 127.0.0.1:24082 --instance v2 >/dev/null 2>&1 & pids+=($!)
# The example sidecars on 24xxx ports, each given both replicas (its own first): client-a and
# reviews-v1 start on A, client-b and reviews-v2 on B.
sidecar() { # example name port-digit replicas
  # 25000/25001/25020/25090 (and 26xxx/27xxx) → 24N00/24N01/24N20/24N90.
  sed -E -e "s/address: 127\.0\.0\.1:15010/addresses: [$4]/" \
      -e "s/127\.0\.0\.1:2[567]0([0-9]{2})/127.0.0.1:24$3\1/" \
      -e "s/nodeId: $1/nodeId: $2/" \
      -e 's/http: 18081/http: 24081/' -e 's/http: 18082/http: 24082/' \
      "deploy/examples/control-plane/$1.yaml" >"$ed/$2.yaml"
  $BIN/ringmesh-proxy --config "$ed/$2.yaml" --watch-interval 0s >"$ed/$2.log" 2>&1 & pids+=($!)
}
sidecar client client-a 1 "$A, $B"
sidecar client client-b 4 "$B, $A"
sidecar reviews-v1 reviews-v1 2 "$A, $B"
sidecar reviews-v2 reviews-v2 3 "$B, $A"
check "etcd: the client-a sidecar compiled with two replicas" grep -q "addresses: \[$A, $B\]" "$ed/client-a.yaml"

split_yaml() { # weight-v1 weight-v2
  { cat deploy/examples/control-plane/mesh/reviews.yaml; echo ---; cat deploy/examples/control-plane/reviews-route.yaml; } |
    sed -e "s/weight: 90$/weight: $1/" -e "s/weight: 10$/weight: $2/"
}
split_yaml 90 10 >"$ed/split.yaml"
RINGMESH_CONTROL_PLANE=$A $BIN/ringmesh apply -f "$ed/split.yaml" >"$ed/apply1.txt" 2>&1 || true
check "etcd: ringmesh apply to replica A" grep -q 'created' "$ed/apply1.txt"
check "etcd: the resources are in etcd under the prefix" bash -c \
  "curl -fsS -X POST -d '{\"key\":\"$(printf /interop/resources/VirtualService/default/reviews | base64 -w0)\"}' http://127.0.0.1:24379/v3/kv/range | grep -q '\"kvs\"'"

through() { # port n → "count instance" lines
  for _ in $(seq "$2"); do
    curl -s --max-time 2 -o /dev/null -D - -H 'Host: reviews.local' "http://127.0.0.1:$1/" | tr -d '\r' |
      grep -i '^x-ringmesh-instance' || echo failed
  done | sort | uniq -c
}
moves_to() { # port instance → "yes" once 20 requests of 20 reach instance (within 5 s), else "no"
  for _ in $(seq 20); do
    if through "$1" 20 | grep -q "20 x-ringmesh-instance: $2"; then echo yes; return; fi
    sleep 0.25
  done
  echo no
}
for _ in $(seq 50); do
  through 24401 20 | grep -q 'v1' && through 24401 20 | grep -q v2 && break
  sleep 0.2
done
split=$(through 24401 400)
v2=$(echo "$split" | awk '/v2/ {print $1}')
check "etcd: 90/10 applied to A splits traffic through client-b on B ($(echo $split | tr '\n' ' '))" \
  bash -c "[ '${v2:-0}' -ge 15 ] && [ '${v2:-0}' -le 75 ] && ! echo '$split' | grep -q failed"
check "etcd: reviews-v1's workload (on A) is an endpoint at client-b (on B)" \
  bash -c "curl -fsS http://127.0.0.1:24400/clusters | grep -q 24081"
check "etcd: reviews-v2's workload (on B) is an endpoint at client-a (on A)" \
  bash -c "curl -fsS http://127.0.0.1:24100/clusters | grep -q 24082"

split_yaml 0 100 >"$ed/split.yaml"
RINGMESH_CONTROL_PLANE=$A $BIN/ringmesh apply -f "$ed/split.yaml" >"$ed/apply2.txt" 2>&1 || true
sleep 1
after=$(through 24401 50)
check "etcd: 0/100 applied to A moves traffic through client-b within a second ($(echo $after | tr '\n' ' '))" \
  bash -c "echo '$after' | grep -q '50 x-ringmesh-instance: v2'"

# Kill replica A under load through client-a (connected to A): nothing fails, client-a and
# reviews-v1 fail over to B, and what is applied to B then reaches client-a.
check "etcd: client-a connected to replica A" grep -q "connected to the control plane.*control_plane=$A" "$ed/client-a.log"
$BIN/ringmesh-loadgen http://127.0.0.1:24101/ -H 'Host: reviews.local' --rate 1000 -c 16 -t 1 -d 5s --warmup 0s \
  --no-progress --json "$ed/failover.json" >"$ed/failover.txt" 2>&1 & lg=$!
sleep 1
kill -9 "$cp_a"
wait $lg || true
check "etcd: replica A killed mid-load: no failed request ($(grep -Eo '"requests": ?[0-9]+' "$ed/failover.json" | head -1))" \
  grep -Eq '"errors": ?0[,}]' "$ed/failover.json"
check "etcd: client-a failed over to replica B" grep -q "connected to the control plane.*control_plane=$B" "$ed/client-a.log"
check "etcd: reviews-v1 failed over to replica B" grep -q "connected to the control plane.*control_plane=$B" "$ed/reviews-v1.log"
split_yaml 100 0 >"$ed/split.yaml"
RINGMESH_CONTROL_PLANE=$B $BIN/ringmesh apply -f "$ed/split.yaml" >"$ed/apply3.txt" 2>&1 || true
moved=$(moves_to 24101 v1)
check "etcd: after failover, 100/0 applied to B reaches client-a" [ "$moved" = yes ]
# A's lease (TTL = --grace 3s) expires; reviews-v1 is now B's own and keeps serving.
sleep 4
late=$(through 24101 10)
check "etcd: reviews-v1 still an endpoint after A's lease expired ($(echo $late | tr '\n' ' '))" \
  bash -c "curl -fsS http://127.0.0.1:24100/clusters | grep -q 24081 && echo '$late' | grep -q '10 x-ringmesh-instance: v1'"

# etcd lost: replica B keeps serving what it last read and says so; etcd back (same data):
# B follows again and an apply to B reaches client-b.
kill -9 "$etcd_pid"
sleep 1
lost=$(through 24401 20)
check "etcd: etcd killed, proxies keep the last config ($(echo $lost | tr '\n' ' '))" \
  bash -c "echo '$lost' | grep -q '20 x-ringmesh-instance: v1'"
check "etcd: replica B logged the loss and serves the last known set" grep -q 'serving the last known set' "$ed/control-b.log"
RINGMESH_CONTROL_PLANE=$B $BIN/ringmesh apply -f "$ed/split.yaml" >"$ed/apply-lost.txt" 2>&1 && code=0 || code=$?
check "etcd: etcd killed, ringmesh apply to B fails naming etcd, not the control plane" \
  bash -c "[ $code = 1 ] && grep -q 'the control plane at $B cannot reach its store: etcd at http://127.0.0.1:24379 is unreachable' '$ed/apply-lost.txt' && ! grep -q 'cannot reach the control plane' '$ed/apply-lost.txt'"
start_etcd
split_yaml 0 100 >"$ed/split.yaml"
applied=no
for _ in $(seq 20); do
  if RINGMESH_CONTROL_PLANE=$B $BIN/ringmesh apply -f "$ed/split.yaml" >"$ed/apply4.txt" 2>&1; then applied=yes; break; fi
  sleep 0.5
done
moved=$(moves_to 24401 v2)
check "etcd: etcd restarted, replica B follows it again (apply $applied, moved $moved)" [ "$moved" = yes ]
