# Sourced by run.sh (uses its $BIN, $work, pids, check, $PY), or run on its own as root:
#   bash tests/interop/capture.sh   (builds the debug `ringmesh`; BIN=dir picks another build)
# `ringmesh iptables` in network namespaces this script creates and always deletes: two
# namespaces joined by a veth pair (10.77.0.0/24, fd77::/64), nothing leaves them. For each
# iptables back-end installed (nft, legacy): rules applied (twice: no duplicates), TCP from a
# non-proxy user redirected to 127.0.0.1:15001 with the original destination recoverable
# (SO_ORIGINAL_DST), the proxy's user (1337) not redirected, inbound TCP redirected to :15006,
# IPv4 and IPv6; then --cleanup leaves `iptables-save -t nat` (and ip6tables') exactly as before,
# other rules included, and a second --cleanup succeeds.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$(dirname "$0")/../.."
  if [ "$(id -u)" != 0 ]; then
    echo "capture: needs root (network namespaces, iptables)" >&2
    exit 1
  fi
  if ! command -v iptables-legacy-restore >/dev/null 2>&1 && ! command -v iptables-nft-restore >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iptables iproute2 >/dev/null
  fi
  if [ -z "${BIN:-}" ]; then
    cargo build -q -p ringmesh-control --bin ringmesh
    BIN=target/debug
  fi
  source tests/interop/standalone.sh
  capture_standalone=1
fi

cw="$work/capture"
mkdir -p "$cw"
cap_a=rmcap-a-$$
cap_b=rmcap-b-$$
cap_pids=()
cap_teardown() {
  for p in "${cap_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  cap_pids=()
  ip netns del "$cap_a" 2>/dev/null || true
  ip netns del "$cap_b" 2>/dev/null || true
}
if [ -n "${capture_standalone:-}" ]; then
  trap 'cap_teardown; rm -rf "$work"' EXIT
else
  # run.sh's trap cleans up its own; ours goes first.
  trap 'cap_teardown; cleanup' EXIT
fi
peer=$(realpath tests/interop/capture_peer.py)
# The system's Python when there is one: the connecting peer drops to other users, who must be
# able to read the interpreter's files (a pyenv or virtualenv under /root is not).
cap_py=/usr/bin/python3
[ -x "$cap_py" ] || cap_py=${PY:-python3}
ringmesh=$(realpath "$BIN/ringmesh")

cap_setup() {
  ip netns add "$cap_a"
  ip netns add "$cap_b"
  ip link add rmcap0 netns "$cap_a" type veth peer name rmcap1 netns "$cap_b"
  ip -n "$cap_a" link set lo up
  ip -n "$cap_b" link set lo up
  ip -n "$cap_a" addr add 10.77.0.1/24 dev rmcap0
  ip -n "$cap_b" addr add 10.77.0.2/24 dev rmcap1
  ip -n "$cap_a" addr add fd77::1/64 dev rmcap0 nodad
  ip -n "$cap_b" addr add fd77::2/64 dev rmcap1 nodad
  ip -n "$cap_a" link set rmcap0 up
  ip -n "$cap_b" link set rmcap1 up
}
in_a() { ip netns exec "$cap_a" "$@"; }
in_b() { ip netns exec "$cap_b" "$@"; }
# iptables-save -t nat without comments and counters.
nat_rules() { # save-program
  in_a "$1" -t nat | grep -v '^#' | sed -E 's/ \[[0-9]+:[0-9]+\]$//'
}
start_peer() { # ns log specs...
  local ns=$1 log=$2
  shift 2
  ip netns exec "$ns" "$cap_py" "$peer" serve "$@" >"$log" 2>&1 &
  cap_pids+=($!)
  for _ in $(seq 100); do
    grep -q ready "$log" && return 0
    sleep 0.05
  done
  echo "capture: peer in $ns did not start: $(cat "$log")" >&2
  return 1
}
# Connects as UID from namespace NS and prints the peer's line ("NAME ORIGINAL-DESTINATION").
reach() { # ns uid host port
  ip netns exec "$1" "$cap_py" "$peer" connect "$2" "$3" "$4" 2>&1 || true
}

cap_backends=()
command -v iptables-nft-restore >/dev/null 2>&1 && cap_backends+=(nft)
command -v iptables-legacy-restore >/dev/null 2>&1 && cap_backends+=(legacy)
check "capture: an iptables back-end is installed" [ ${#cap_backends[@]} -gt 0 ]

for b in "${cap_backends[@]}"; do
  cap_setup
  v4=iptables-$b
  v6=ip6tables-$b
  # A namespace that never had a rule: apply and clean up leave `-save -t nat` as it was.
  nat_rules "$v4-save" >"$cw/$b-pristine4"
  nat_rules "$v6-save" >"$cw/$b-pristine6"
  in_a "$ringmesh" iptables --iptables-backend "$b" >"$cw/$b-pristine.log" 2>&1 &&
    in_a "$ringmesh" iptables --iptables-backend "$b" --cleanup >>"$cw/$b-pristine.log" 2>&1 && code=0 || code=$?
  nat_rules "$v4-save" >"$cw/$b-pristine4-after"
  nat_rules "$v6-save" >"$cw/$b-pristine6-after"
  check "capture($b): in a namespace without rules, apply then --cleanup leave iptables-save -t nat as it was" \
    bash -c "[ $code = 0 ] && diff -u '$cw/$b-pristine4' '$cw/$b-pristine4-after' && diff -u '$cw/$b-pristine6' '$cw/$b-pristine6-after'"
  # Someone else's rules, which must survive.
  in_a "$v4" -t nat -N OTHER
  in_a "$v4" -t nat -A OTHER -j RETURN
  in_a "$v4" -t nat -A OUTPUT -d 10.99.0.0/16 -j OTHER
  in_a "$v4" -t nat -A PREROUTING -p udp -j RETURN
  in_a "$v6" -t nat -A OUTPUT -d fd99::/64 -j RETURN
  nat_rules "$v4-save" >"$cw/$b-before4"
  nat_rules "$v6-save" >"$cw/$b-before6"

  in_a "$ringmesh" iptables --iptables-backend "$b" --dry-run >"$cw/$b-dry" 2>&1
  nat_rules "$v4-save" >"$cw/$b-dry4"
  check "capture($b): --dry-run prints both families and changes nothing" bash -c "
    [ \$(grep -c '^\*nat' '$cw/$b-dry') = 2 ] && grep -q '^# IPv6 ($v6-restore --noflush)' '$cw/$b-dry' &&
    diff -q '$cw/$b-before4' '$cw/$b-dry4'"

  in_a setpriv --reuid=65534 --regid=65534 --clear-groups "$ringmesh" iptables --iptables-backend "$b" \
    >"$cw/$b-nonroot" 2>&1 && code=0 || code=$?
  check "capture($b): without root: exit 1 with the tool's error" \
    bash -c "[ $code = 1 ] && grep -q '^ringmesh iptables: IPv4: $v4-save: .*' '$cw/$b-nonroot'"

  in_a "$ringmesh" iptables --iptables-backend "$b" >"$cw/$b-apply" 2>&1 && code=0 || code=$?
  check "capture($b): applied" [ "$code" = 0 ]
  nat_rules "$v4-save" >"$cw/$b-applied4"
  nat_rules "$v6-save" >"$cw/$b-applied6"
  check "capture($b): our chains and jumps exist (IPv4, IPv6)" bash -c "
    for f in '$cw/$b-applied4' '$cw/$b-applied6'; do
      for c in RINGMESH_OUTPUT RINGMESH_REDIRECT RINGMESH_INBOUND RINGMESH_IN_REDIRECT; do grep -q \"^:\$c\" \$f || exit 1; done
      grep -qx -- '-A OUTPUT -p tcp -j RINGMESH_OUTPUT' \$f && grep -qx -- '-A PREROUTING -p tcp -j RINGMESH_INBOUND' \$f || exit 1
    done"
  in_a "$ringmesh" iptables --iptables-backend "$b" >>"$cw/$b-apply" 2>&1 && code=0 || code=$?
  nat_rules "$v4-save" >"$cw/$b-twice4"
  nat_rules "$v6-save" >"$cw/$b-twice6"
  check "capture($b): applying twice leaves one copy of the rules" bash -c "
    [ $code = 0 ] && diff -q '$cw/$b-applied4' '$cw/$b-twice4' && diff -q '$cw/$b-applied6' '$cw/$b-twice6'"

  # The proxy's side stand-in in A, a real server in B.
  start_peer "$cap_a" "$cw/$b-proxy.log" out=127.0.0.1:15001 in=0.0.0.0:15006 out6=[::1]:15001 in6=[::]:15006
  start_peer "$cap_b" "$cw/$b-server.log" real=10.77.0.2:8080 real6=[fd77::2]:8080
  start_peer "$cap_a" "$cw/$b-app.log" app=10.77.0.1:15020

  r=$(reach "$cap_a" 1000 10.77.0.2 8080)
  check "capture($b): uid 1000 -> 10.77.0.2:8080 redirected to :15001, original destination intact ($r)" \
    [ "$r" = "out 10.77.0.2:8080" ]
  r=$(reach "$cap_a" 1337 10.77.0.2 8080)
  check "capture($b): uid 1337 -> 10.77.0.2:8080 not redirected ($r)" [ "$r" = "real 10.77.0.2:8080" ]
  r=$(reach "$cap_a" 1000 fd77::2 8080)
  check "capture($b): IPv6 uid 1000 -> [fd77::2]:8080 redirected to [::1]:15001 ($r)" \
    [ "$r" = "out6 [fd77::2]:8080" ]
  r=$(reach "$cap_a" 1337 fd77::2 8080)
  check "capture($b): IPv6 uid 1337 -> [fd77::2]:8080 not redirected ($r)" [ "$r" = "real6 [fd77::2]:8080" ]
  r=$(reach "$cap_b" 0 10.77.0.1 8080)
  check "capture($b): inbound -> 10.77.0.1:8080 redirected to :15006 ($r)" [ "$r" = "in 10.77.0.1:8080" ]
  r=$(reach "$cap_b" 0 fd77::1 8080)
  check "capture($b): IPv6 inbound -> [fd77::1]:8080 redirected to :15006 ($r)" [ "$r" = "in6 [fd77::1]:8080" ]
  r=$(reach "$cap_b" 0 10.77.0.1 15020)
  check "capture($b): inbound to the proxy's own port 15020 not redirected ($r)" [ "$r" = "app 10.77.0.1:15020" ]
  for p in "${cap_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  cap_pids=()

  in_a "$ringmesh" iptables --iptables-backend "$b" --cleanup >"$cw/$b-cleanup" 2>&1 && code=0 || code=$?
  check "capture($b): --cleanup exits 0" [ "$code" = 0 ]
  nat_rules "$v4-save" >"$cw/$b-after4"
  nat_rules "$v6-save" >"$cw/$b-after6"
  check "capture($b): after --cleanup iptables-save -t nat is as before" diff -u "$cw/$b-before4" "$cw/$b-after4"
  check "capture($b): after --cleanup ip6tables-save -t nat is as before" diff -u "$cw/$b-before6" "$cw/$b-after6"
  in_a "$ringmesh" iptables --iptables-backend "$b" --cleanup >>"$cw/$b-cleanup" 2>&1 && code=0 || code=$?
  nat_rules "$v4-save" >"$cw/$b-again4"
  nat_rules "$v6-save" >"$cw/$b-again6"
  check "capture($b): a second --cleanup succeeds and changes nothing" bash -c "
    [ $code = 0 ] && diff -q '$cw/$b-before4' '$cw/$b-again4' && diff -q '$cw/$b-before6' '$cw/$b-again6'"
  # --iptables-backend auto picks the back-end holding the other rules.
  in_a "$ringmesh" iptables >"$cw/$b-auto" 2>&1 && in_a "$ringmesh" iptables --cleanup >>"$cw/$b-auto" 2>&1 && code=0 || code=$?
  nat_rules "$v4-save" >"$cw/$b-auto4"
  check "capture($b): --iptables-backend auto picks $b where its rules are, and cleans up" bash -c "
    [ $code = 0 ] && grep -q 'IPv4: rules applied ($v4-restore)' '$cw/$b-auto' &&
    grep -q 'IPv4: rules removed ($v4-restore)' '$cw/$b-auto' && diff -q '$cw/$b-before4' '$cw/$b-auto4'"
  cap_teardown
done

if [ -n "${capture_standalone:-}" ]; then
  echo "capture: $pass passed, $fail failed"
  [ "$fail" = 0 ]
fi
