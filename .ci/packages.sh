#!/usr/bin/env bash
# The client packages as outside teams get them (docs/clients.md): their own tests, then the
# npm tarballs installed into an empty folder and the Python wheel into a fresh virtual
# environment (without the service's requirements), each run against a running service.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$ROOT/.venv/bin/python
PORT=$($PY -c 'from server.ops.embedded import free_port; print(free_port())')
WORK=$(mktemp -d /tmp/packages.XXXXXX)
BASE="http://127.0.0.1:$PORT"
SERVICE=""

stop_service() {
  if [[ -n "$SERVICE" ]] && kill -0 "$SERVICE" 2>/dev/null; then
    kill -TERM "$SERVICE"
    wait "$SERVICE" || echo "packages: the service exited with $?" >&2
  fi
  SERVICE=""
}
trap 'stop_service; rm -rf "$WORK"' EXIT
fail() {
  echo "packages: $*; the service's log:" >&2
  tail -n 40 "$WORK/service.log" >&2
  exit 1
}

# 1. The npm packages' own tests (node --test; each file starts its own service), and the
#    client's types. clients/ is an npm workspace: react/ resolves the client from js/.
(cd clients && npm ci --silent --no-audit --no-fund && NOTIFY_PYTHON=$PY npm test --silent \
  && npm run --silent typecheck)

# 2. A running service for the installed packages.
export NOTIFY_LOG_LEVEL=WARNING
$PY run.py --data-dir "$WORK/data" --port "$PORT" >"$WORK/service.log" 2>&1 &
SERVICE=$!
for _ in $(seq 120); do
  $PY -c "import urllib.request as u; u.urlopen('$BASE/readyz', timeout=1)" 2>/dev/null && break
  kill -0 "$SERVICE" 2>/dev/null || fail "the service did not start"
  sleep 0.5
done
KEY=$($PY run.py --data-dir "$WORK/data" create-api-key --name packages \
  --scopes notify,tokens,read | tail -1)

# 3. npm: pack both packages, install the tarballs side by side into an empty folder.
mkdir -p "$WORK/tarballs" "$WORK/app"
(cd clients/js && npm pack --silent --pack-destination "$WORK/tarballs" >/dev/null)
(cd clients/react && npm pack --silent --pack-destination "$WORK/tarballs" >/dev/null)
cp .ci/smoke-npm.mjs "$WORK/app/smoke.mjs"
(cd "$WORK/app" && echo '{"name": "smoke", "private": true, "type": "module"}' >package.json \
  && npm install --silent --no-audit --no-fund "$WORK"/tarballs/*.tgz \
       react@18.3.1 react-dom@18.3.1 ws@8.23.1 \
  && NOTIFY_URL=$BASE NOTIFY_API_KEY=$KEY node smoke.mjs) || fail "the npm smoke test failed"

# 4. Python: build the wheel, install it alone into a fresh venv, run the command.
$PY -m pip wheel -q --no-deps -w "$WORK/dist" clients/python
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$WORK"/dist/clinic_notify-*.whl
if "$WORK/venv/bin/python" -c 'import tornado' 2>/dev/null; then
  fail "the wheel's venv has the service's requirements"
fi
CLI="$WORK/venv/bin/clinic-notify"
export NOTIFY_URL=$BASE NOTIFY_API_KEY=$KEY
STATS=$($CLI stats) || fail "clinic-notify stats"
grep -q "status: active" <<<"$STATS" || fail "clinic-notify stats printed: $STATS"
NOTIFY_TOKEN=$($CLI token smoke-py --role patient --ttl 300)
export NOTIFY_TOKEN
$CLI listen --json --count 1 --timeout 30 >"$WORK/listen.out" 2>"$WORK/listen.err" &
LISTEN=$!
for _ in $(seq 100); do  # connected once it printed the welcome frame
  grep -q '"welcome"' "$WORK/listen.out" && break
  sleep 0.1
done
SENT=$($CLI send smoke-py --title "from the wheel" --json)
wait "$LISTEN" || { cat "$WORK/listen.err" >&2; fail "clinic-notify listen"; }
ID=$(echo "$SENT" | "$WORK/venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
grep -q "\"$ID\"" "$WORK/listen.out" || fail "the listener did not print $ID"
if $CLI send smoke-py --title t --api-key nk_wrong 2>"$WORK/refused.err"; then
  fail "a wrong key was not refused"
fi
grep -q "unauthorized" "$WORK/refused.err" || fail "no refusal message"
echo "packages: npm tarballs and the Python wheel installed and ran against the service"
