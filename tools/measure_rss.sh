#!/usr/bin/env bash
# Memory of a model as a server holds it: time to /readyz, then RSS (VmRSS) and peak RSS
# (VmHWM) of the process after each of three cold uploads of different images.
#   tools/measure_rss.sh PORT [samserve flags...]     e.g. tools/measure_rss.sh 18931 --model models/sam-vit-b
# Uses target/release/samserve (make build) and the repository's test images; prints one line
# per step. docs/deployment.md ("Memory per model") records the results.
set -euo pipefail
port=$1; shift
bin=${SAMSERVE_BIN:-target/release/samserve}
log=$(mktemp)
"$bin" --host 127.0.0.1 --port "$port" "$@" > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
mem() { grep -E 'VmRSS|VmHWM' /proc/$pid/status | awk '{printf "%s %.2f GiB  ", $1, $2 / 1048576}'; }
t0=$(date +%s.%N)
until curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; do
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
echo "ready after $(echo "$(date +%s.%N) - $t0" | bc) s; $(mem)"
for f in tests/fixtures/parity/images/scene_640x480.jpg tests/fixtures/heldout/scene_1500000.png \
         tests/fixtures/heldout/scene_1500001.png; do
  s=$(date +%s.%N)
  curl -sf --data-binary @"$f" "http://127.0.0.1:$port/v1/images" > /dev/null
  echo "upload $(basename "$f"): $(echo "$(date +%s.%N) - $s" | bc) s; $(mem)"
done
