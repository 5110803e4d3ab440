#!/usr/bin/env bash
# Generated-input testing of the HTTP API: schemathesis (PyPI) against the served OpenAPI
# document, with the real server and its real default model on a loopback port.
#
#   make fuzz-api                     # defaults below
#   FUZZ_API_EXAMPLES=200 make fuzz-api
#   FUZZ_API_AUTH=0 make fuzz-api     # without API keys
#
# By default the server runs with API keys on (a fresh key in target/fuzz-api/keys.txt):
# every request carries it, and schemathesis' ignored_auth check also sends the guarded
# operations without a key and with a wrong one, expecting 401.
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
AUTH=${FUZZ_API_AUTH:-1}

mkdir -p "$OUT"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis>=4.32,<5"
fi

SERVER_AUTH=()
CLIENT_AUTH=()
EXCLUDE=ignored_auth,object_level_authorization
if [ "$AUTH" = 1 ]; then
    KEY="fuzz-api-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf 'fuzz:%s\n' "$KEY" > "$OUT/keys.txt"
    SERVER_AUTH=(--api-keys-file "$OUT/keys.txt")
    CLIENT_AUTH=(-H "Authorization: Bearer $KEY")
    # object_level_authorization needs two users with separate objects; keys here are not
    # users (any key reaches every image).
    EXCLUDE=object_level_authorization
fi

# The server's request deadline; schemathesis' max_response_time check is set to it, so a
# response slower than the deadline the server documents fails the run (a slower one would
# be a 504 anyway, which fails not_a_server_error).
DEADLINE_S=${FUZZ_API_DEADLINE_S:-60}
# Small limits keep generated uploads and segment-everything runs short; every limit still
# answers with its documented 4xx (413 for a grid over --everything-max-points / -crops).
"$BIN" --host 127.0.0.1 --port "$PORT" --log-format json \
    --max-body-bytes 4194304 --max-image-pixels 4000000 \
    --everything-max-masks 50 --everything-max-points 256 --everything-max-crops 5 \
    --request-timeout-ms $((DEADLINE_S * 1000)) "${SERVER_AUTH[@]}" \
    >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null

set +e
# hooks.py tells schemathesis what an image file is (see its docstring); schemathesis.toml
# holds the two documented exceptions to positive_data_acceptance (422 and 413 where the
# rule depends on the image or on server flags).
SCHEMATHESIS_HOOKS=tools/fuzz_api/hooks.py \
"$VENV/bin/schemathesis" --config-file tools/fuzz_api/schemathesis.toml \
    run "http://127.0.0.1:$PORT/openapi.json" \
    --checks all --exclude-checks "$EXCLUDE" "${CLIENT_AUTH[@]}" \
    --max-response-time "$DEADLINE_S" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$EXAMPLES" --seed "$SEED" --workers 2 \
    ${MAX_TIME:+--max-time "$MAX_TIME"} \
    --request-timeout $((DEADLINE_S + 30)) --generation-database none --suppress-health-check too_slow,filter_too_much \
    --report junit,ndjson --report-dir "$OUT" \
    --no-color 2>&1 | tee "$OUT/summary.txt"
status=${PIPESTATUS[0]}
set -e
# Requests after start-up (the /readyz polls above answer 503 while the model loads).
served=$(grep 'samserve::access' "$OUT/server.log" | grep -vc '"route":"/readyz"' || true)
fivexx=$(grep 'samserve::access' "$OUT/server.log" | grep -v '"route":"/readyz"' | grep -c '"status":5[0-9][0-9]' || true)
echo "server log: $served requests after start-up, $fivexx answered 5xx"
exit "$status"
