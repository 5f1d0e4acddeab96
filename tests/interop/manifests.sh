# Sourced by run.sh (uses its check, $work, $BIN, $pids and the virtualenv at $venv), or run
# alone: `bash tests/interop/manifests.sh` (debug binaries, the virtualenv run.sh makes).
# The Kubernetes install against the Kubernetes API schemas with kubernetes-validate (pinned in
# requirements.txt), --strict so that a misspelt field is an error rather than ignored: the CRDs,
# and the base and every overlay as `kubectl kustomize` renders them. A manifest made wrong on
# purpose must fail, so a validator that accepts anything cannot read as a pass.
if ! declare -F check >/dev/null; then
  set -euo pipefail
  cd "$(dirname "$0")/../.."
  venv=${venv:-target/interop-venv}
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt
  fi
  cargo build -q -p ringmesh-control --bins
  BIN=target/debug
  source tests/interop/standalone.sh
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
  standalone=1
fi
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

# Injection: `ringmesh inject` of the sample Deployment, and the pod the webhook's patch makes
# (the real ringmesh-control over HTTPS, a certificate from openssl, the recorded review of
# tests/fixtures), validate against the schemas too.
sample=deploy/kubernetes/examples/reviews.yaml
check "ringmesh inject of $sample validates (kubernetes-validate --strict)" bash -c "
  '$BIN/ringmesh' inject -f '$sample' -o '$work/injected.yaml' &&
  grep -q 'restartPolicy: Always' '$work/injected.yaml' &&
  '$kv' --strict --quiet '$work/injected.yaml'"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/injector.key" -out "$work/injector.crt" 2>/dev/null
mkdir -p "$work/cp-empty"
$BIN/ringmesh-control --config-dir "$work/cp-empty" --listen 127.0.0.1:25810 --listen-tls off \
  --injector-listen 127.0.0.1:25817 --injector-cert "$work/injector.crt" --injector-key "$work/injector.key" \
  >"$work/injector.log" 2>&1 & pids+=($!)
# Without --kubernetes no namespace enables injection: the pod opts in by its label.
python3 - "$work" <<'PY' || true
import json, sys
review = json.load(open("controlplane/tests/fixtures/admission-review-pod.json"))
review["request"]["object"]["metadata"]["labels"]["sidecar.istio.io/inject"] = "true"
json.dump(review, open(sys.argv[1] + "/review.json", "w"))
PY
check "the webhook answers the recorded AdmissionReview over HTTPS" bash -c "
  curl -sf --retry 30 --retry-delay 1 --retry-connrefused --cacert '$work/injector.crt' \
    -H 'Content-Type: application/json' --data-binary @'$work/review.json' \
    https://localhost:25817/inject -o '$work/answer.json'"
python3 - "$work" <<'PY' || true
import base64, json, sys
work = sys.argv[1]
review, answer = json.load(open(work + "/review.json")), json.load(open(work + "/answer.json"))
assert answer["response"]["uid"] == review["request"]["uid"] and answer["response"]["allowed"] is True
pod = review["request"]["object"]
def walk(doc, pointer):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]
for op in json.loads(base64.b64decode(answer["response"]["patch"])):
    parent, key = walk(pod, op["path"])
    if isinstance(parent, list):
        i = len(parent) if key == "-" else int(key)
        if op["op"] == "add": parent.insert(i, op["value"])
        elif op["op"] == "replace": parent[i] = op["value"]
        else: del parent[i]
    elif op["op"] in ("add", "replace"): parent[key] = op["value"]
    else: del parent[key]
json.dump(pod, open(work + "/patched-pod.json", "w"))
PY
check "the webhook's patched pod validates (kubernetes-validate --strict)" bash -c "
  grep -q ringmesh-proxy '$work/patched-pod.json' && '$kv' --strict --quiet '$work/patched-pod.json'"
if [ "${standalone:-0}" = 1 ]; then
  echo "$pass passed, $fail failed"
  [ "$fail" = 0 ]
fi
