# Sourced by run.sh (uses its check, $work and the virtualenv at $venv).
# The Kubernetes install against the Kubernetes API schemas with kubernetes-validate (pinned in
# requirements.txt), --strict so that a misspelt field is an error rather than ignored: the CRDs,
# and the base and every overlay as `kubectl kustomize` renders them. A manifest made wrong on
# purpose must fail, so a validator that accepts anything cannot read as a pass.
if ! command -v kubectl >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq --no-install-recommends kubectl >/dev/null || true
fi
kv="$venv/bin/kubernetes-validate"
check "manifest deploy/kubernetes/crds.yaml validates (kubernetes-validate --strict)" \
  "$kv" --strict --quiet deploy/kubernetes/crds.yaml
for k in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  k=${k%/}
  out="$work/rendered-$(basename "$k").yaml"
  check "kubectl kustomize renders $k" bash -c "kubectl kustomize '$k' >'$out'"
  check "$k rendered validates (kubernetes-validate --strict)" "$kv" --strict --quiet "$out"
done
check "the example overlay sets replicas, image and trust domain" bash -c "
  grep -q 'replicas: 3' '$work/rendered-example.yaml' &&
  grep -q 'image: registry.example.com/ringmesh/ringmesh-control:0.1.0' '$work/rendered-example.yaml' &&
  grep -q 'example.internal' '$work/rendered-example.yaml'"
sed 's/^  replicas: 2$/  replicaz: 2/' "$work/rendered-base.yaml" >"$work/broken.yaml"
check "a broken manifest fails validation" bash -c "! '$kv' --strict --quiet '$work/broken.yaml' >/dev/null 2>&1"
