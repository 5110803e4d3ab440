#!/usr/bin/env bash
# `make fuzz`: builds the cargo-fuzz targets (nightly toolchain, `cargo install cargo-fuzz`)
# and runs each for FUZZ_SECONDS (600 by default), one after another, on one core.
#
#   make fuzz                                   # every target, 10 minutes each
#   make fuzz FUZZ_SECONDS=60 FUZZ_TARGETS=mask_codecs
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) plus what earlier runs
# kept (fuzz/corpus/<target>/, not committed). A crash stops the run and leaves its input in
# fuzz/artifacts/<target>/; logs go to target/fuzz/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER=${FUZZ_SECONDS:-600}
TARGETS=${FUZZ_TARGETS:-"image_decode request_json mask_codecs ids_and_store multipart store_value"}
LOGS=../target/fuzz
mkdir -p "$LOGS"

cargo +nightly fuzz build
for t in $TARGETS; do
    mkdir -p "corpus/$t" "seeds/$t"
    # -rss_limit_mb: a decode that allocates past its limits is a finding, not a slow run.
    # -max_len: room for small images and multipart bodies.
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER" -rss_limit_mb=2048 -max_len=65536 \
        -timeout=10 -print_final_stats=1 2>&1 | tee "$LOGS/$t.log"
    echo "$t: corpus $(ls "corpus/$t" | wc -l) files, $(du -sk "corpus/$t" | cut -f1) KiB" \
        | tee -a "$LOGS/summary.txt"
done
