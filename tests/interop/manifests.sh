# Sourced by run.sh (uses its check, $work and the virtualenv at $venv).
# Every Kubernetes manifest under deploy/kubernetes/ against the Kubernetes API schemas with
# kubernetes-validate (pinned in requirements.txt), --strict so that a misspelt field is an
# error rather than ignored. A manifest made wrong on purpose must fail, so a validator that
# accepts anything (or is missing) cannot read as a pass.
kv="$venv/bin/kubernetes-validate"
for m in deploy/kubernetes/*.yaml; do
  check "manifest $m validates (kubernetes-validate --strict)" "$kv" --strict --quiet "$m"
done
sed 's/containerPort: 15010/containerPort: "fifteen-thousand"/; s/^  replicas: 1$/  replicaz: 1/' \
  deploy/kubernetes/control-plane.yaml >"$work/broken-control-plane.yaml"
check "a broken manifest fails validation" bash -c "! '$kv' --strict --quiet '$work/broken-control-plane.yaml' >/dev/null 2>&1"
