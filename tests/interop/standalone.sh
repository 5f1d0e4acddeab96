# Sourced by a part of the interop suite run on its own rather than through run.sh: the work
# folder, the process list and the pass/fail count with `check`, as run.sh defines them. The
# part prints its own total and exits with it.
work=$(mktemp -d)
pids=()
pass=0
fail=0
check() { # name, condition-command...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}
