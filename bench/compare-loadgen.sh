#!/usr/bin/env bash
# compare-loadgen.sh — how much does ringmesh-loadgen itself add to what it measures?
#
# Runs ringmesh-loadgen and wrk (and h2load, from Debian's nghttp2-client, when installed)
# against one ringmesh-echo on 127.0.0.1 and prints their median latencies side by side.
#
# wrk has no fixed rate, so the comparison is closed loop: the same number of keep-alive
# connections, one thread each, every tool measuring service time (send → response). If the
# loadgen's own overhead were large, its p50 would sit well above wrk's. With 1 connection
# the p50 is one bare round trip (the cleanest view of each tool's own cost); with 16 it is
# about connections / throughput (Little's law), so a tool that sends faster also queues
# more at the one-worker server. Rounds are interleaved (loadgen, wrk, h2load, loadgen, …)
# so machine drift hits all tools alike.
#
# Then one open-loop run at a fixed rate (default 10,000 rps) against the same zero-delay
# echo: the loadgen's p99 there is an upper bound on its own p99 overhead on this machine.
#
# Usage: bench/compare-loadgen.sh   (env: CONNS="1 16" DURATION=3 ROUNDS=3 RATE=10000 OPEN_CONNS=16)
# Needs: wrk (apt-get install wrk); optional: h2load (apt-get install nghttp2-client).
set -euo pipefail

CONNS=${CONNS:-"1 16"}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}

cd "$(dirname "$0")/.."
cargo build --release -q -p ringmesh-loadgen
BIN=target/release
OUT=$(mktemp -d /tmp/compare-loadgen.XXXXXX)

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
HAVE_H2LOAD=0
command -v h2load >/dev/null && HAVE_H2LOAD=1

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT/"
"$BIN/ringmesh-echo" --listen "127.0.0.1:$PORT" --workers 1 --body-size 64 >"$OUT/echo.log" 2>&1 &
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    curl -sf -o /dev/null "$URL" 2>/dev/null && break
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

# wrk prints "50%   63.00us" / "1.20ms" / "1.00s"; convert to microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v+0} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000000} else print v}'; }
json_p() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['latency_us'][sys.argv[2]])" "$1" "$2"; }
# p50 (µs) of an h2load --log-file (tab-separated: start, status, duration µs).
log_p50() { python3 -c "
import sys
d=sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
print(d[len(d)//2] if d else 'nan')" "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Median over rounds of (tool − loadgen) / loadgen, each round compared with itself: drift
# between rounds (a neighbour's build) cancels out of the ratio. $1, $2: array names.
paired() {
    local -n a=$1 b=$2
    local i
    for i in "${!a[@]}"; do echo "${a[$i]} ${b[$i]}" | awk '{print ($1-$2)/$2*100}'; done | median |
        awk '{printf "%+.1f%%", $1}'
}

HAVE_H2=0
H2_WHY=""
if [ "$HAVE_H2LOAD" = 0 ]; then
    H2_WHY="h2load not installed (apt-get install nghttp2-client): h2load and HTTP/2 not compared"
elif "$BIN/ringmesh-loadgen" --help | grep -q -- '--protocol'; then
    HAVE_H2=1
else
    H2_WHY="this ringmesh-loadgen has no --protocol flag yet: HTTP/2 not compared"
fi

compare() { # $1 = connections; prints one markdown table
    local C=$1 r extra
    local LG=() WRK=() H2=() H1=() LGH2=()
    for r in $(seq "$ROUNDS"); do
        "$BIN/ringmesh-loadgen" "$URL" --max -c "$C" -t 1 -d "${DURATION}s" --warmup 1s --no-progress \
            --json "$OUT/lg-c$C-$r.json" >"$OUT/lg-c$C-$r.txt" 2>/dev/null
        LG+=("$(json_p "$OUT/lg-c$C-$r.json" p50)")
        wrk -t1 -c"$C" -d"${DURATION}s" --latency "$URL" >"$OUT/wrk-c$C-$r.txt"
        WRK+=("$(awk '$1=="50%" {print $2}' "$OUT/wrk-c$C-$r.txt" | to_us)")
        extra=""
        if [ "$HAVE_H2LOAD" = 1 ]; then
            # HTTP/1.1 through h2load as a third opinion on the same protocol.
            h2load --h1 -t1 -c"$C" -m1 -D "$DURATION" --warm-up-time=1 --log-file="$OUT/h1load-c$C-$r.log" "$URL" \
                >"$OUT/h1load-c$C-$r.txt" 2>&1 || true
            H1+=("$(log_p50 "$OUT/h1load-c$C-$r.log")")
            extra=", h2load --h1 ${H1[-1]} µs"
        fi
        if [ "$HAVE_H2" = 1 ]; then
            if "$BIN/ringmesh-loadgen" "$URL" --protocol h2 --max -c "$C" -t 1 -d "${DURATION}s" --warmup 1s \
                --no-progress --json "$OUT/lg-h2-c$C-$r.json" >"$OUT/lg-h2-c$C-$r.txt" 2>&1; then
                LGH2+=("$(json_p "$OUT/lg-h2-c$C-$r.json" p50)")
                h2load -t1 -c"$C" -m1 -D "$DURATION" --warm-up-time=1 --log-file="$OUT/h2load-c$C-$r.log" "$URL" \
                    >"$OUT/h2load-c$C-$r.txt" 2>&1 || true
                H2+=("$(log_p50 "$OUT/h2load-c$C-$r.log")")
                extra="$extra, loadgen h2c ${LGH2[-1]} µs, h2load h2c ${H2[-1]} µs"
            else
                H2_WHY="ringmesh-loadgen --protocol h2 failed: $(tail -1 "$OUT/lg-h2-c$C-$r.txt")"
                HAVE_H2=0
            fi
        fi
        echo "c=$C round $r: loadgen ${LG[-1]} µs, wrk ${WRK[-1]} µs$extra" >&2
    done
    local lg wrk_ h1 h2 lgh2
    lg=$(printf '%s\n' "${LG[@]}" | median)
    wrk_=$(printf '%s\n' "${WRK[@]}" | median)
    echo
    echo "Closed loop, $C connection(s), 1 thread, ${DURATION}s after 1s warmup; p50, median of $ROUNDS interleaved rounds:"
    echo
    echo "| tool | protocol | p50 (µs), median of rounds | vs ringmesh-loadgen, median of per-round differences |"
    echo "|---|---|---:|---:|"
    echo "| ringmesh-loadgen | HTTP/1.1 | $lg | — |"
    echo "| wrk 4.1 | HTTP/1.1 | $wrk_ | $(paired WRK LG) |"
    if [ "${#H1[@]}" -gt 0 ]; then
        h1=$(printf '%s\n' "${H1[@]}" | median)
        echo "| h2load --h1 | HTTP/1.1 | $h1 | $(paired H1 LG) |"
    fi
    if [ "${#H2[@]}" -gt 0 ]; then
        lgh2=$(printf '%s\n' "${LGH2[@]}" | median)
        h2=$(printf '%s\n' "${H2[@]}" | median)
        echo "| ringmesh-loadgen | h2c | $lgh2 | — |"
        echo "| h2load | h2c | $h2 | $(paired H2 LGH2) (vs loadgen h2c) |"
    fi
    return 0
}

echo "ringmesh-loadgen vs wrk (vs h2load if installed) against ringmesh-echo (1 worker, 64-byte body) on 127.0.0.1"
echo "($(nproc) cores, $(uname -r); raw output in $OUT)"
for C in $CONNS; do
    compare "$C"
done
[ -n "$H2_WHY" ] && echo && echo "note: $H2_WHY"

# Open loop at a fixed rate against the zero-delay echo: the loadgen's own tail.
"$BIN/ringmesh-loadgen" "$URL" -R "$RATE" -c "${OPEN_CONNS:-16}" -t 1 -d "${DURATION}s" --warmup 1s --no-progress \
    --json "$OUT/open.json" >"$OUT/open.txt" 2>/dev/null || true
echo
echo "Open loop at $RATE rps, ${OPEN_CONNS:-16} connections, zero-delay echo, ${DURATION}s after 1s warmup (latency from due time):"
python3 -c "
import json; d=json.load(open('$OUT/open.json')); l=d['latency_us']
print(f\"  achieved {d['rate_rps']:.0f} rps; p50 {l['p50']} µs, p90 {l['p90']} µs, p99 {l['p99']} µs, p99.9 {l['p999']} µs, max {l['max']} µs\")"
