#!/usr/bin/env bash
# Generated-input testing of the HTTP API: schemathesis (PyPI) against the served OpenAPI
# document, with the real server and its real default model on a loopback port.
#
#   make fuzz-api                     # defaults below
#   FUZZ_API_EXAMPLES=200 make fuzz-api
#
# Installs schemathesis into target/fuzz-api/venv on first use. Writes the JUnit and NDJSON
# reports and the server log to target/fuzz-api/. Exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=target/fuzz-api
VENV=$OUT/venv
PORT=${FUZZ_API_PORT:-18417}
EXAMPLES=${FUZZ_API_EXAMPLES:-100}
SEED=${FUZZ_API_SEED:-12}
# Optional time budget in seconds for the whole run (schemathesis --max-time).
MAX_TIME=${FUZZ_API_MAX_TIME:-}
BIN=target/release/samserve
PYTHON=${PYTHON:-python3}

mkdir -p "$OUT"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis>=4.32,<5"
fi

# Small limits keep generated uploads and segment-everything runs short; every limit still
# answers with its documented 4xx.
"$BIN" --host 127.0.0.1 --port "$PORT" --log-format json \
    --max-body-bytes 4194304 --max-image-pixels 4000000 \
    --everything-max-masks 50 --request-timeout-ms 120000 \
    >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null

set +e
"$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
    --checks all --exclude-checks ignored_auth,object_level_authorization \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$EXAMPLES" --seed "$SEED" --workers 2 \
    ${MAX_TIME:+--max-time "$MAX_TIME"} \
    --request-timeout 150 --generation-database none --suppress-health-check too_slow,filter_too_much \
    --report junit,ndjson --report-dir "$OUT" \
    --no-color 2>&1 | tee "$OUT/summary.txt"
status=${PIPESTATUS[0]}
set -e
# Requests after start-up (the /readyz polls above answer 503 while the model loads).
served=$(grep 'samserve::access' "$OUT/server.log" | grep -vc '"route":"/readyz"' || true)
fivexx=$(grep 'samserve::access' "$OUT/server.log" | grep -v '"route":"/readyz"' | grep -c '"status":5[0-9][0-9]' || true)
echo "server log: $served requests after start-up, $fivexx answered 5xx"
exit "$status"
