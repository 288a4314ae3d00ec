#!/usr/bin/env bash
# Contract fuzzing: start the service on a fresh embedded database, create an API key with
# every scope, run schemathesis against the service's own /v1/openapi.json, stop the service.
# Fails on a 5xx, an answer that does not match the document (status or body), a 405
# without Allow, or a 5xx or traceback in the service's log. Bounded: a few dozen examples
# per operation, killed after SCHEMATHESIS_LIMIT s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=.venv/bin/python
PORT=${SCHEMATHESIS_PORT:-$($PY -c 'from server.ops.embedded import free_port; print(free_port())')}
WORK=$(mktemp -d /tmp/schemathesis.XXXXXX)
BASE="http://127.0.0.1:$PORT"
SERVICE=""

stop_service() {
  if [[ -n "$SERVICE" ]] && kill -0 "$SERVICE" 2>/dev/null; then
    kill -TERM "$SERVICE"
    wait "$SERVICE" || echo "schemathesis: the service exited with $?" >&2
  fi
  SERVICE=""
}
trap 'stop_service; rm -rf "$WORK"' EXIT

export NOTIFY_LOG_LEVEL=WARNING
# Limits off, explicitly: schemathesis sends hundreds of requests with one key from one
# address, which the defaults refuse within a second (tests/test_limits.py covers the 429s).
export NOTIFY_RATE_REST_KEY=0 NOTIFY_RATE_REST_TOKEN=0 NOTIFY_RATE_REST_IP=0
$PY run.py --data-dir "$WORK/data" --port "$PORT" >"$WORK/service.log" 2>&1 &
SERVICE=$!
ready=0
for _ in $(seq 120); do
  if $PY -c "import urllib.request as u; u.urlopen('$BASE/readyz', timeout=1)" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$SERVICE" 2>/dev/null || break
  sleep 0.5
done
if [[ $ready -ne 1 ]]; then
  echo "schemathesis: the service did not become ready; its log:" >&2
  cat "$WORK/service.log" >&2
  exit 1
fi

KEY=$($PY run.py --data-dir "$WORK/data" create-api-key --name schemathesis \
  --scopes notify,broadcast,tokens,read,admin | tail -1)

# A fixed seed keeps CI repeatable (SCHEMATHESIS_SEED=random-number explores further).
# One worker: with two threads, hypothesis' lambda descriptions can hit CPython 3.11's
# thread-unsafe AST constructor ("AST constructor recursion depth mismatch").
# Run from the scratch folder: schemathesis keeps its example database in ./.schemathesis.
status=0
(cd "$WORK" && timeout "${SCHEMATHESIS_LIMIT:-180}" "$ROOT/.venv/bin/schemathesis" run \
  "$BASE/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,unsupported_method \
  --header "Authorization: Bearer $KEY" \
  --phases examples,coverage,fuzzing \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-7556}" \
  --workers 1 \
  --request-timeout 10 \
  --no-color) || status=$?

stop_service
# The checks above see answers; the log also shows what an answer can hide: any 5xx and any
# traceback (an error logged, then answered as something else) fails the run.
if grep -nE 'Traceback|"message": "5[0-9]{2} ' "$WORK/service.log" >&2; then
  echo "schemathesis: the service logged a 5xx or a traceback (above)" >&2
  status=1
fi
if [[ $status -ne 0 ]]; then
  echo "schemathesis failed ($status); the service's log:" >&2
  tail -n 50 "$WORK/service.log" >&2
fi
exit $status
