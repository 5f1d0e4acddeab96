# Sourced by run.sh (uses its $BIN, $work, pids, check, $PY). Ports 22xxx.
# Mutual TLS on an inbound listener against third-party clients: openssl s_client and curl with
# no client certificate, another CA's, and the mesh's (HTTP/1.1 and HTTP/2 over TLS), plaintext
# curl, and sslscan for the versions and suites offered (TLS 1.3 only by default, 1.2 by
# config, nothing weak). Certificates come from tests/interop/mesh_pki.py (Python's
# cryptography), not from the proxy's own code, so the two sides share no implementation.
mw="$work/mtls"
mkdir -p "$mw"
"$PY" tests/interop/mesh_pki.py "$mw" server=spiffe://cluster.local/ns/shop/sa/reviews \
  client=spiffe://cluster.local/ns/default/sa/curl
"$PY" tests/interop/mesh_pki.py "$mw" --ca other stranger=spiffe://cluster.local/ns/default/sa/curl
"$BIN"/ringmesh-echo --listen 127.0.0.1:22080 --instance mtls-echo >"$mw/echo.log" 2>&1 & pids+=($!)

mtls_proxy() { # name inbound-port admin-port min-version
  cat >"$mw/$1.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: $1}
spec:
  workers: 1
  adminAddress: 127.0.0.1:$3
  healthAddress: 127.0.0.1:$(($3 + 20))
  metricsAddress: 127.0.0.1:$(($3 + 90))
  meshMTLS: {minProtocolVersion: $4}
  workload: {name: reviews, namespace: shop, serviceAccount: reviews}
  identity: {certFile: $mw/server.pem, keyFile: $mw/server-key.pem, caFile: $mw/mesh-ca.pem}
  listeners:
  - {name: inbound, address: "127.0.0.1:$2", protocol: HTTP, direction: INBOUND}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.shop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 22080}}]
YAML
  "$BIN"/ringmesh-proxy --config "$mw/$1.yaml" >"$mw/$1.log" 2>&1 & pids+=($!)
}
mtls_proxy strict 22001 22000 TLSV1_3
mtls_proxy tls12 22101 22100 TLSV1_2
for port in 22020 22120; do
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz/ready")" = 200 ] && break
    sleep 0.1
  done
done

REQ=$'GET / HTTP/1.1\r\nHost: reviews.shop\r\nConnection: close\r\n\r\n'
s_client() { # output-file extra-openssl-args... → 0 when the app answered 200 over TLS
  local out=$1
  shift
  printf '%s' "$REQ" | timeout 10 openssl s_client -connect 127.0.0.1:22001 -alpn http/1.1 -ign_eof "$@" >"$out" 2>&1
  grep -q 'HTTP/1.1 200' "$out"
}
check "mtls: openssl s_client with the mesh's certificate gets 200 over TLS 1.3" \
  bash -c "$(declare -f s_client); REQ=\$0; s_client '$mw/s_client-mesh.txt' -cert '$mw/client.pem' -key '$mw/client-key.pem' && grep -q 'TLSv1.3' '$mw/s_client-mesh.txt'" "$REQ"
check "mtls: openssl s_client without a client certificate is refused" \
  bash -c "$(declare -f s_client); REQ=\$0; ! s_client '$mw/s_client-none.txt' && grep -qi 'alert' '$mw/s_client-none.txt'" "$REQ"
check "mtls: openssl s_client with another CA's certificate is refused" \
  bash -c "$(declare -f s_client); REQ=\$0; ! s_client '$mw/s_client-other.txt' -cert '$mw/stranger.pem' -key '$mw/stranger-key.pem' && grep -qi 'alert' '$mw/s_client-other.txt'" "$REQ"
# curl: -k because the server's certificate names a workload (a SPIFFE URI), not a host; what
# is tested here is the proxy's demand for the client's.
check "mtls: curl without a client certificate fails" \
  bash -c "! curl -sk --max-time 5 -H 'Host: reviews.shop' https://127.0.0.1:22001/ -o /dev/null"
check "mtls: curl with another CA's certificate fails" \
  bash -c "! curl -sk --max-time 5 --cert '$mw/stranger.pem' --key '$mw/stranger-key.pem' -H 'Host: reviews.shop' https://127.0.0.1:22001/ -o /dev/null"
check "mtls: curl over plaintext is closed (STRICT)" \
  bash -c "! curl -s --max-time 5 -H 'Host: reviews.shop' http://127.0.0.1:22001/ -o /dev/null"
check "mtls: curl with the mesh's certificate, HTTP/1.1 over TLS: 200 from the app" \
  bash -c "curl -sk --max-time 5 --http1.1 --cert '$mw/client.pem' --key '$mw/client-key.pem' -H 'Host: reviews.shop' -D - https://127.0.0.1:22001/ -o /dev/null | tr -d '\r' | grep -qi '^x-ringmesh-instance: mtls-echo'"
check "mtls: curl with the mesh's certificate, HTTP/2 over TLS (ALPN h2): 200" \
  bash -c "[ \"\$(curl -sk --max-time 5 --http2 --cert '$mw/client.pem' --key '$mw/client-key.pem' -H 'Host: reviews.shop' -o /dev/null -w '%{http_version} %{http_code}' https://127.0.0.1:22001/)\" = '2 200' ]"
check "mtls: the proxy counted the refusals" \
  bash -c "curl -fsS http://127.0.0.1:22090/stats/prometheus | grep -E '^ringmesh_inbound_tls_handshake_failed_total [1-9]' >/dev/null && curl -fsS http://127.0.0.1:22090/stats/prometheus | grep -E '^ringmesh_inbound_plaintext_refused_total [1-9]' >/dev/null"

# Versions and suites offered, as a scanner sees them.
sslscan --no-colour --no-heartbleed 127.0.0.1:22001 >"$mw/sslscan.txt" 2>&1 || true
sslscan --no-colour --no-heartbleed 127.0.0.1:22101 >"$mw/sslscan12.txt" 2>&1 || true
weak='(SSLv2|SSLv3|TLSv1\.0|TLSv1\.1) +enabled|NULL|EXP|RC4|DES|CBC|MD5|anon'
check "mtls: sslscan: TLS 1.3 enabled, 1.2 disabled by default" \
  bash -c "grep -Eq 'TLSv1.3 +enabled' '$mw/sslscan.txt' && grep -Eq 'TLSv1.2 +disabled' '$mw/sslscan.txt'"
check "mtls: sslscan: TLS 1.2 enabled with meshMTLS.minProtocolVersion TLSV1_2" \
  grep -Eq 'TLSv1.2 +enabled' "$mw/sslscan12.txt"
check "mtls: sslscan: no SSL, TLS 1.0 or 1.1, no weak suite offered" \
  bash -c "grep -E '^(Accepted|Preferred)' '$mw/sslscan.txt' '$mw/sslscan12.txt' >'$mw/accepted.txt'; [ -s '$mw/accepted.txt' ] && ! grep -Eq '$weak' '$mw/accepted.txt' && ! grep -Eq '(SSLv2|SSLv3|TLSv1\.0|TLSv1\.1) +enabled' '$mw/sslscan.txt' '$mw/sslscan12.txt'"
# sslscan lists no TLS 1.2 suites for a server that demands a client certificate, so the 1.2
# suites are checked one by one with s_client: forward-secret AEAD ones negotiate, CBC and
# RSA-key-exchange ones are refused.
suite12() { # cipher → the cipher negotiated over TLS 1.2 with the mesh certificate (empty if refused)
  echo | timeout 5 openssl s_client -connect 127.0.0.1:22101 -tls1_2 -cipher "$1" \
    -cert "$mw/client.pem" -key "$mw/client-key.pem" 2>/dev/null | sed -n 's/.*Cipher is \([A-Z0-9-]*\).*/\1/p' | grep -v NONE | head -1
}
check "mtls: TLS 1.2 (when allowed) negotiates ECDHE with AES-GCM and ChaCha20-Poly1305" \
  bash -c "$(declare -f suite12); mw='$mw'; [ \"\$(suite12 ECDHE-ECDSA-AES128-GCM-SHA256)\" = ECDHE-ECDSA-AES128-GCM-SHA256 ] && [ \"\$(suite12 ECDHE-ECDSA-CHACHA20-POLY1305)\" = ECDHE-ECDSA-CHACHA20-POLY1305 ]"
check "mtls: TLS 1.2 refuses CBC and non-forward-secret suites" \
  bash -c "$(declare -f suite12); mw='$mw'; for c in ECDHE-ECDSA-AES128-SHA ECDHE-ECDSA-AES256-SHA384 AES128-SHA AES128-GCM-SHA256 DES-CBC3-SHA; do [ -z \"\$(suite12 \$c)\" ] || exit 1; done"
