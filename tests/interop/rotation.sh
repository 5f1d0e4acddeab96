# Sourced by run.sh (uses its $BIN, $work, pids, check). Ports 21xxx.
# Certificate rotation under load: ringmesh-control's CA issues 60 s certificates (renewed at
# half-life) to two proxies that authenticate with bootstrap tokens over the TLS port; the
# server side's inbound listener is STRICT. ringmesh-loadgen sends 2,000 rps through both for
# ROTATION_SECONDS (240 by default: several rotations of each proxy); no request may fail, and
# each proxy's serial must change at least three times during the run.
rw="$work/rotation"
mkdir -p "$rw/cp"
rot_secs=${ROTATION_SECONDS:-240}
"$BIN"/ringmesh-control --config-dir "$rw/cp" --listen 127.0.0.1:21010 --listen-tls 127.0.0.1:21012 \
  --cert-lifetime 60s --max-cert-lifetime 60s >"$rw/control.log" 2>&1 & pids+=($!)
"$BIN"/ringmesh-echo --listen 127.0.0.1:21080 --instance rotation-echo >"$rw/echo.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -s "$rw/cp/ca/root-cert.pem" ] && break; sleep 0.1; done
for sa in web reviews; do
  ns=default; [ "$sa" = reviews ] && ns=shop
  for _ in $(seq 50); do
    "$BIN"/ringmesh --control-plane 127.0.0.1:21010 token create -n "$ns" --service-account "$sa" --ttl 1h \
      >"$rw/$sa.token" 2>>"$rw/token.log" && break
    sleep 0.1
  done
done
rot_proxy() { # name admin-port namespace service-account extra-listener extra-docs
  cat >"$rw/$1.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: $1}
spec:
  workers: 1
  adminAddress: 127.0.0.1:$2
  healthAddress: 127.0.0.1:$(($2 + 20))
  metricsAddress: 127.0.0.1:$(($2 + 90))
  controlPlane:
    address: 127.0.0.1:21012
    nodeId: $1
    credentialFile: $rw/$4.token
    tls: {caCertFile: $rw/cp/ca/root-cert.pem}
  workload: {name: $1, namespace: $3, serviceAccount: $4}
  identity: {certLifetime: 60s}
  listeners:
$5
$6
YAML
  "$BIN"/ringmesh-proxy --config "$rw/$1.yaml" >"$rw/$1.log" 2>&1 & pids+=($!)
}
rot_proxy server 21200 shop reviews "  - {name: inbound, address: \"127.0.0.1:21201\", protocol: HTTP, direction: INBOUND}" "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.shop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 21080}}]"
rot_proxy client 21100 default web "  - {name: outbound, address: \"127.0.0.1:21101\", protocol: HTTP}" "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.shop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 21201}, labels: {security.istio.io/tlsMode: istio}}]"
serial() { curl -fsS "http://127.0.0.1:$1/certs" | tr -d ' \n' | grep -o '"serial":"[0-9a-fA-F]*"' | head -1; }
for _ in $(seq 100); do
  [ -n "$(serial 21100)" ] && [ -n "$(serial 21200)" ] && \
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: reviews.shop' http://127.0.0.1:21101/)" = 200 ] && break
  sleep 0.2
done
check "rotation: both proxies hold CA certificates and a request crosses the mTLS hop" \
  bash -c "[ -n \"\$(curl -fsS http://127.0.0.1:21200/certs | grep 'spiffe://cluster.local/ns/shop/sa/reviews')\" ] && [ \"\$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: reviews.shop' http://127.0.0.1:21101/)\" = 200 ] && curl -fsS http://127.0.0.1:21290/stats/prometheus | grep -Eq '^ringmesh_inbound_tls_handshakes_total [1-9]'"
"$BIN"/ringmesh-loadgen http://127.0.0.1:21101/ -H 'Host: reviews.shop' --rate 2000 -c 16 -t 1 -d "${rot_secs}s" \
  --warmup 0s --no-progress --json "$rw/load.json" >"$rw/load.txt" 2>&1 & lg=$!
: >"$rw/serials-client"; : >"$rw/serials-server"
while kill -0 "$lg" 2>/dev/null; do
  serial 21100 >>"$rw/serials-client"
  serial 21200 >>"$rw/serials-server"
  sleep 5
done
wait "$lg" || true
rotations() { sort -u "$1" | grep -c serial; }
check "rotation: no failed request at 2,000 rps for ${rot_secs}s ($(grep -Eo '"(requests|errors)": ?[0-9]+' "$rw/load.json" | tr '\n' ' '))" \
  bash -c "grep -Eq '\"errors\": ?0[,}]' '$rw/load.json' && grep -Eq '\"requests\": ?[1-9][0-9]{4,}' '$rw/load.json'"
check "rotation: the client side renewed its certificate ($(($(rotations "$rw/serials-client") - 1)) times)" \
  [ "$(rotations "$rw/serials-client")" -ge 4 ]
check "rotation: the server side renewed its certificate ($(($(rotations "$rw/serials-server") - 1)) times)" \
  [ "$(rotations "$rw/serials-server")" -ge 4 ]
