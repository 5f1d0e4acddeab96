# Sourced by run.sh (uses its $BIN, $work, pids, check, $PY), or run on its own:
#   bash tests/interop/tracing.sh   (builds the debug binaries and the virtualenv run.sh makes;
#   BIN=dir picks another build, PY=python one with grpcio and opentelemetry-proto)
# Ports 26xxx.
# Distributed tracing against OpenTelemetry's own code: tests/interop/otlp_receiver.py, a
# receiver on grpcio and opentelemetry-proto's generated stubs, takes OTLP/gRPC and OTLP/HTTP
# (protobuf) and writes each span as a JSON line. curl → client-side proxy (outbound, workload
# default/client, sampling 100 %, exporting over gRPC) → server-side proxy (inbound, workload
# shop/reviews, sampling 0 % so that it follows the caller's decision, exporting over
# HTTP/protobuf) → ringmesh-echo, whose /headers answers with the request head it got. Every
# request carries its own x-request-id, which both spans carry as `guid:x-request-id`:
#   no trace field  → one trace over both spans, the server's span the client's child, the
#                     client's a root; W3C and B3 multi to the app; Envoy's attributes;
#   traceparent     → the caller's trace id, the client's span its child; tracestate kept;
#                     W3C alone to the app; a caller's "not sampled" kept and nothing exported;
#   B3 multi/single → the same trace id, the same style out (a 64-bit id kept at 16 digits);
#   the two exports → every span of the client proxy came over gRPC, every span of the server
#                     proxy over HTTP, as many as each proxy counts exported.
# Negative controls show the checks can fail: the link check on a copy whose parent link is
# doctored, an attribute check with a wrong value, and the receiver refusing a JSON body.
if ! declare -F check >/dev/null; then
  set -euo pipefail
  cd "$(dirname "$0")/../.."
  if [ -z "${PY:-}" ]; then
    venv=${venv:-target/interop-venv}
    if ! "$venv/bin/python" -c 'import grpc, opentelemetry.proto' 2>/dev/null; then
      [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt
    fi
    PY=$venv/bin/python
  fi
  if [ -z "${BIN:-}" ]; then
    cargo build -q -p ringmesh-proxy -p ringmesh-loadgen --bins
    BIN=target/debug
  fi
  source tests/interop/standalone.sh
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
  tracing_standalone=1
fi
trw="$work/tracing"
mkdir -p "$trw"
tr_start=$SECONDS
OTLP="tests/interop/otlp_receiver.py"
SPANS="$trw/spans.jsonl"

tr_wait() { # seconds command... → 0 once the command succeeds (polled every 0.1 s until the deadline)
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
tr_get() { # id path [curl args...] → GET through both proxies with x-request-id: id; the app's
  # view of the request head in $trw/id.head, the status code on stdout
  local id=$1 path=$2
  shift 2
  curl -s --max-time 5 -o "$trw/$id.head" -w '%{http_code}' -H 'Host: reviews.shop' \
    -H "x-request-id: $id" -H 'User-Agent: tracing-interop' "$@" "http://127.0.0.1:26201$path" || true
}
tr_seen() { # id field → the values of a request field the app got (one a line, in order)
  [ -e "$trw/$1.head" ] || return 0
  tr -d '\r' <"$trw/$1.head" | awk -v n="$2" '{ i = index($0, ":"); if (i > 1 && tolower(substr($0, 1, i - 1)) == tolower(n)) { v = substr($0, i + 1); sub(/^ +/, "", v); print v } }'
}
tr_spans() { # id → how many spans carry guid:x-request-id id
  "$PY" "$OTLP" spans "$SPANS" --rid "$1" --field span_id 2>/dev/null | wc -l
}
tr_have() { [ "$(tr_spans "$1")" -ge "$2" ]; }
tr_field() { # id service kind field → the field of that one span
  "$PY" "$OTLP" spans "$SPANS" --rid "$1" --service "$2" --kind "$3" --field "$4" 2>/dev/null | head -1 || true
}
tr_ids() { # id → "trace client-span server-span" of the request's two spans, in tr_T, tr_C, tr_S
  tr_T=$(tr_field "$1" client.default CLIENT trace_id)
  tr_C=$(tr_field "$1" client.default CLIENT span_id)
  tr_S=$(tr_field "$1" reviews.shop SERVER span_id)
}
tr_links() { # id [caller-span] → the link check of otlp_receiver.py
  "$PY" "$OTLP" links "$SPANS" "$1" client.default reviews.shop ${2:+--caller "$2"}
}
tr_fields_are() { # id field expected... → the app got exactly these values of the field
  local id=$1 name=$2
  shift 2
  local want
  want=$(printf '%s\n' "$@")
  [ "$(tr_seen "$id" "$name")" = "$want" ] && return 0
  echo "    $id: the app got $name: [$(tr_seen "$id" "$name" | paste -sd, -)], want [$(printf '%s' "$want" | paste -sd, -)]"
  return 1
}
tr_none_of() { # id field... → the app got none of these fields
  local id=$1 name rc=0
  shift
  for name in "$@"; do
    if [ -n "$(tr_seen "$id" "$name")" ]; then
      echo "    $id: the app got $name: $(tr_seen "$id" "$name" | paste -sd, -)"
      rc=1
    fi
  done
  return $rc
}
tr_metric() { # metrics-port name → the value of an unlabelled sample on the proxy's exposition
  curl -fsS --max-time 2 "http://127.0.0.1:$1/stats/prometheus" | awk -v n="$2" '$1 == n {print $2}'
}

# ---------------------------------------------------------------- the receiver, the app, the chain
"$PY" "$OTLP" serve --grpc 127.0.0.1:26317 --http 127.0.0.1:26318 --out "$SPANS" \
  --ready "$trw/receiver.ready" >"$trw/receiver.log" 2>&1 & pids+=($!)
"$BIN"/ringmesh-echo --listen 127.0.0.1:26080 --instance tracing-app >"$trw/echo.log" 2>&1 & pids+=($!)

tr_proxy() { # name port-base(hundreds) listener-yaml workload-yaml sampling collector-port protocol endpoint-yaml
  cat >"$trw/$1.yaml" <<YAML
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: tracing-$1}
spec:
  workers: 1
  adminAddress: 127.0.0.1:$(($2 + 0))
  healthAddress: 127.0.0.1:$(($2 + 20))
  metricsAddress: 127.0.0.1:$(($2 + 90))
  listeners:
  - $3
  workload: $4
  telemetry:
    tracing:
      sampling: $5
      opentelemetry:
        service: 127.0.0.1
        port: $6
        $7: {timeout: 2s}
        batch: {scheduleDelay: 50ms}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.shop]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [$8]
YAML
  "$BIN"/ringmesh-proxy --config "$trw/$1.yaml" --watch-interval 0s >"$trw/$1.log" 2>&1 & pids+=($!)
}
# The server side: an inbound listener in front of the app; its spans go over OTLP/HTTP.
tr_proxy server 26100 '{name: inbound, address: "127.0.0.1:26106", protocol: HTTP, direction: INBOUND}' \
  '{name: reviews, namespace: shop}' 0 26318 http '{address: 127.0.0.1, ports: {http: 26080}}'
# The client side: an outbound listener whose endpoint is the server proxy, labelled as meshed
# (the hop between the proxies is HTTP/2); its spans go over OTLP/gRPC.
tr_proxy client 26200 '{name: http, address: "127.0.0.1:26201", protocol: HTTP}' \
  '{name: client, namespace: default}' 100 26317 grpc \
  '{address: 127.0.0.1, ports: {http: 26106}, labels: {security.istio.io/tlsMode: istio}}'

tr_wait 20 test -s "$trw/receiver.ready" || true
check "tracing: the OTLP receiver (grpcio $("$PY" -c 'import grpc; print(grpc.__version__)' 2>/dev/null), opentelemetry-proto's stubs) serves gRPC on :26317 and HTTP on :26318" \
  test -s "$trw/receiver.ready"
tr_wait 20 curl -fsS http://127.0.0.1:26120/healthz/ready || true
tr_wait 20 curl -fsS http://127.0.0.1:26220/healthz/ready || true
check "tracing: both proxies ready" \
  bash -c "curl -fsS -o /dev/null http://127.0.0.1:26120/healthz/ready && curl -fsS -o /dev/null http://127.0.0.1:26220/healthz/ready"

# ---------------------------------------------------------------- (a) no trace field
code=$(tr_get tr-a /headers)
check "tracing: curl GET /headers through both proxies without a trace field: $code" [ "$code" = 200 ]
tr_wait 10 tr_have tr-a 2 || true
tr_ids tr-a
check "tracing: no trace field: the client proxy's CLIENT span ${tr_C:-none} and the server proxy's SERVER span ${tr_S:-none} in one trace ${tr_T:-none}, the server's the client's child, the client's a root" \
  tr_links tr-a
check "tracing: no trace field: the app got traceparent 00-${tr_T:-?}-${tr_S:-?}-01 and B3 multi (the server's span, the client's as parent, sampled), once each" \
  bash -c "$(declare -f tr_seen tr_fields_are tr_none_of); trw='$trw'
    tr_fields_are tr-a traceparent '00-$tr_T-$tr_S-01' && tr_fields_are tr-a x-b3-traceid '$tr_T' &&
    tr_fields_are tr-a x-b3-spanid '$tr_S' && tr_fields_are tr-a x-b3-parentspanid '$tr_C' &&
    tr_fields_are tr-a x-b3-sampled 1 && tr_none_of tr-a b3 tracestate"
# Envoy's tags as its OpenTelemetry tracer sets them (strings), Istio's names.
tr_common=(attr:http.method=GET attr:http.status_code=200 attr:http.url=http://reviews.shop/headers
  "attr:upstream_cluster=outbound|80||reviews.shop" "attr:upstream_cluster.name=outbound|80||reviews.shop"
  attr:guid:x-request-id=tr-a attr:user_agent=tracing-interop attr:component=proxy attr:response_flags=-
  attr:peer.address=127.0.0.1 name=reviews.shop:80/* status_code=UNSET scope=ringmesh-proxy)
check "tracing: the client proxy's span: http.method GET, http.status_code 200, http.url, upstream_cluster, guid:x-request-id, http.protocol HTTP/1.1, name reviews.shop:80/*, service.name client.default" \
  "$PY" "$OTLP" expect "$SPANS" --rid tr-a --service client.default --kind CLIENT "${tr_common[@]}" \
  attr:http.protocol=HTTP/1.1 attr:istio.namespace=default attr:istio.canonical_service=client \
  resource:service.name=client.default resource:istio.namespace=default
check "tracing: the server proxy's span: the same tags, http.protocol HTTP/2 (the hop between the proxies), service.name reviews.shop" \
  "$PY" "$OTLP" expect "$SPANS" --rid tr-a --service reviews.shop --kind SERVER "${tr_common[@]}" \
  attr:http.protocol=HTTP/2 attr:istio.namespace=shop attr:istio.canonical_service=reviews \
  resource:service.name=reviews.shop resource:istio.namespace=shop
tr_nested() { # id → the server's span lies within the client's, each ends after it starts
  local cs ce ss se
  cs=$(tr_field "$1" client.default CLIENT start_time_unix_nano)
  ce=$(tr_field "$1" client.default CLIENT end_time_unix_nano)
  ss=$(tr_field "$1" reviews.shop SERVER start_time_unix_nano)
  se=$(tr_field "$1" reviews.shop SERVER end_time_unix_nano)
  [ -n "$cs" ] && [ -n "$ss" ] && [ "$cs" -le "$ss" ] && [ "$ss" -lt "$se" ] && [ "$se" -le "$ce" ] && return 0
  echo "    $1: client [$cs, $ce], server [$ss, $se]"
  return 1
}
check "tracing: the server's span lies within the client's (start and end times)" tr_nested tr-a
# A 500 from the app: an error span on both sides (Envoy's `error: true`, OTLP status ERROR).
code=$(tr_get tr-err /status/500)
tr_wait 10 tr_have tr-err 2 || true
check "tracing: the app's 500 ($code): both spans http.status_code 500, error true, status ERROR, one trace" \
  bash -c "$(declare -f tr_links); PY='$PY' OTLP='$OTLP' SPANS='$SPANS'; [ '$code' = 500 ] && tr_links tr-err &&
    for side in 'client.default CLIENT' 'reviews.shop SERVER'; do
      set -- \$side
      '$PY' '$OTLP' expect '$SPANS' --rid tr-err --service \$1 --kind \$2 attr:http.status_code=500 attr:error=true status_code=ERROR || exit 1
    done"

# ---------------------------------------------------------------- (b) a caller's traceparent
TRACE=4bf92f3577b34da6a3ce929d0e0e4736
CALLER=00f067aa0ba902b7
code=$(tr_get tr-b /headers -H "traceparent: 00-$TRACE-$CALLER-01" -H 'tracestate: vendor=opaque,other=1')
tr_wait 10 tr_have tr-b 2 || true
tr_ids tr-b
check "tracing: traceparent in ($code): both spans keep trace $TRACE, the client's span ${tr_C:-none} the caller's $CALLER child, the server's ${tr_S:-none} the client's" \
  bash -c "$(declare -f tr_links); PY='$PY' OTLP='$OTLP' SPANS='$SPANS'; [ '$code' = 200 ] && [ '$tr_T' = $TRACE ] && tr_links tr-b $CALLER"
check "tracing: traceparent in: the app got traceparent 00-$TRACE-${tr_S:-?}-01, tracestate unchanged, no B3" \
  bash -c "$(declare -f tr_seen tr_fields_are tr_none_of); trw='$trw'
    tr_fields_are tr-b traceparent '00-$TRACE-$tr_S-01' && tr_fields_are tr-b tracestate 'vendor=opaque,other=1' &&
    tr_none_of tr-b b3 x-b3-traceid x-b3-spanid x-b3-parentspanid x-b3-sampled"
# The caller decided not to sample: the trace id goes on with the decision, nothing is exported
# (checked at the end, once the later requests' spans are in).
UNSAMPLED=0af7651916cd43dd8448eb211c80319c
code=$(tr_get tr-b0 /headers -H "traceparent: 00-$UNSAMPLED-$CALLER-00")
tp=$(tr_seen tr-b0 traceparent)
check "tracing: traceparent in, not sampled ($code): the app got ${tp:-nothing}, the trace id kept, not sampled, a new parent" \
  bash -c "[ '$code' = 200 ] && [[ '$tp' =~ ^00-$UNSAMPLED-[0-9a-f]{16}-00$ ]] && [[ '$tp' != *$CALLER* ]]"

# ---------------------------------------------------------------- (c) B3 in, B3 out
B3TRACE=80f198ee56343ba864fe8b2a57d3eff7
code=$(tr_get tr-c /headers -H "X-B3-TraceId: $B3TRACE" -H "X-B3-SpanId: $CALLER" -H 'X-B3-Sampled: 1')
tr_wait 10 tr_have tr-c 2 || true
tr_ids tr-c
check "tracing: B3 multi in ($code): both spans keep trace $B3TRACE, the client's the caller's child, the server's the client's" \
  bash -c "$(declare -f tr_links); PY='$PY' OTLP='$OTLP' SPANS='$SPANS'; [ '$code' = 200 ] && [ '$tr_T' = $B3TRACE ] && tr_links tr-c $CALLER"
check "tracing: B3 multi in: the app got x-b3-traceid $B3TRACE, x-b3-spanid ${tr_S:-?}, x-b3-parentspanid ${tr_C:-?}, x-b3-sampled 1, no W3C or b3" \
  bash -c "$(declare -f tr_seen tr_fields_are tr_none_of); trw='$trw'
    tr_fields_are tr-c x-b3-traceid $B3TRACE && tr_fields_are tr-c x-b3-spanid '$tr_S' &&
    tr_fields_are tr-c x-b3-parentspanid '$tr_C' && tr_fields_are tr-c x-b3-sampled 1 &&
    tr_none_of tr-c traceparent tracestate b3"
B3SINGLE=e457b5a2e4d86bd1f0a2b3c4d5e6f708
code=$(tr_get tr-d /headers -H "b3: $B3SINGLE-$CALLER-1")
tr_wait 10 tr_have tr-d 2 || true
tr_ids tr-d
check "tracing: B3 single in ($code): both spans keep trace $B3SINGLE, linked; the app got b3 $B3SINGLE-${tr_S:-?}-1-${tr_C:-?} alone" \
  bash -c "$(declare -f tr_links tr_seen tr_fields_are tr_none_of); PY='$PY' OTLP='$OTLP' SPANS='$SPANS' trw='$trw'
    [ '$code' = 200 ] && [ '$tr_T' = $B3SINGLE ] && tr_links tr-d $CALLER && tr_fields_are tr-d b3 '$B3SINGLE-$tr_S-1-$tr_C' &&
    tr_none_of tr-d traceparent tracestate x-b3-traceid x-b3-spanid x-b3-sampled"
# A 64-bit B3 trace id: OTLP's 16 bytes, zeros first; the app gets it as it came, 16 digits.
SHORT=a3ce929d0e0e4736
code=$(tr_get tr-e /headers -H "b3: $SHORT-$CALLER-1")
tr_wait 10 tr_have tr-e 2 || true
tr_ids tr-e
check "tracing: B3 single in with a 64-bit trace id ($code): spans in trace ${tr_T:-none}, the app got b3 $SHORT-${tr_S:-?}-1-${tr_C:-?}" \
  bash -c "$(declare -f tr_links tr_seen tr_fields_are); PY='$PY' OTLP='$OTLP' SPANS='$SPANS' trw='$trw'
    [ '$code' = 200 ] && [ '$tr_T' = 0000000000000000$SHORT ] && tr_links tr-e $CALLER && tr_fields_are tr-e b3 '$SHORT-$tr_S-1-$tr_C'"

# ---------------------------------------------------------------- (d) the two exporters
# Every sampled request above left one span on each side: 6 requests (tr-a, tr-err, tr-b, tr-c,
# tr-d, tr-e). The unsampled tr-b0 came before the last four, whose spans are in: had it left a
# span, that span would have been handed over first.
tr_received() { # service → its spans in the file
  "$PY" "$OTLP" spans "$SPANS" --service "$1" --field span_id 2>/dev/null | wc -l
}
tr_exported_match() { # metrics-port service → the proxy's exported count = the spans received from it
  local n
  n=$(tr_metric "$1" ringmesh_tracing_spans_exported_total)
  [ -n "$n" ] && [ "$n" = "$(tr_received "$2")" ]
}
tr_wait 10 tr_exported_match 26290 client.default || true
tr_wait 10 tr_exported_match 26190 reviews.shop || true
c_n=$(tr_received client.default)
s_n=$(tr_received reviews.shop)
c_exp=$(tr_metric 26290 ringmesh_tracing_spans_exported_total || true)
s_exp=$(tr_metric 26190 ringmesh_tracing_spans_exported_total || true)
check "tracing: the client proxy's $c_n spans all came over OTLP/gRPC, as many as it counts exported (${c_exp:-nothing})" \
  bash -c "[ '$c_n' = 6 ] && [ '$c_exp' = 6 ] &&
    [ \"\$('$PY' '$OTLP' spans '$SPANS' --service client.default --field transport | sort -u)\" = grpc ]"
check "tracing: the server proxy's $s_n spans all came over OTLP/HTTP (POST /v1/traces, application/x-protobuf), as many as it counts exported (${s_exp:-nothing})" \
  bash -c "[ '$s_n' = 6 ] && [ '$s_exp' = 6 ] &&
    [ \"\$('$PY' '$OTLP' spans '$SPANS' --service reviews.shop --field transport | sort -u)\" = http ] &&
    [ \"\$('$PY' '$OTLP' spans '$SPANS' --service reviews.shop --field content_type | sort -u)\" = application/x-protobuf ]"
check "tracing: the unsampled request (tr-b0) exported no span; the receiver refused nothing" \
  bash -c "[ \"\$('$PY' '$OTLP' spans '$SPANS' --rid tr-b0 | wc -l)\" = 0 ] && [ -z \"\$('$PY' '$OTLP' refused '$SPANS')\" ] &&
    [ \"\$('$PY' '$OTLP' spans '$SPANS' --field trace_id | grep -c $UNSAMPLED)\" = 0 ]"
check "tracing: no export failed or dropped a span (both proxies' counters)" \
  bash -c "$(declare -f tr_metric); for port in 26190 26290; do
    [ \"\$(tr_metric \$port ringmesh_tracing_export_failures_total)\" = 0 ] || exit 1
    curl -fsS --max-time 2 http://127.0.0.1:\$port/stats/prometheus | grep '^ringmesh_tracing_spans_dropped_total' | grep -qv ' 0\$' && exit 1
  done; exit 0"

# ---------------------------------------------------------------- the checks can fail
# The link check on a copy of the spans whose server span hangs under another parent; an
# attribute check with a wrong status; a JSON body the receiver must refuse (415).
"$PY" - "$SPANS" "$trw/doctored.jsonl" <<'PY' || true
import json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for line in src:
        s = json.loads(line)
        if s.get("attributes", {}).get("guid:x-request-id") == "tr-a" and s.get("kind") == "SERVER":
            s["parent_span_id"] = "1" * 16
        out.write(json.dumps(s) + "\n")
PY
check "tracing: the link check refuses a doctored copy (the server span under another parent)" \
  bash -c "! '$PY' '$OTLP' links '$trw/doctored.jsonl' tr-a client.default reviews.shop >/dev/null"
check "tracing: the attribute check refuses a wrong value (http.status_code 201)" \
  bash -c "! '$PY' '$OTLP' expect '$SPANS' --rid tr-a --service client.default --kind CLIENT attr:http.status_code=201 >/dev/null"
bad=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary '{"resourceSpans":[]}' http://127.0.0.1:26318/v1/traces || true)
check "tracing: the receiver refuses an OTLP/JSON body ($bad) and writes it down" \
  bash -c "[ '$bad' = 415 ] && '$PY' '$OTLP' refused '$SPANS' | grep -q '^/v1/traces: content type .application/json. is not application/x-protobuf'"

echo "tracing: the part took $((SECONDS - tr_start)) s"
if [ -n "${tracing_standalone:-}" ]; then
  echo "tracing: $pass passed, $fail failed"
  [ "$fail" = 0 ]
fi
