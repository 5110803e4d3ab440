#!/bin/sh
# Continue training the default model on a lent GPU machine, inside one device `run` call,
# and bring back what the next steps need: the checkpoint, the exported ONNX pair and its
# held-out evaluation. Local test on the CPU (about 2 min):
#   DEVICE=cpu MINUTES=0.2 BATCH=1 WORKERS=0 PY=tools/.venv/bin/python OUT=/tmp/dt sh tools/device_train.sh
#
# Before the call, here (.whl/ is gitignored):
#   tools/.venv/bin/python -m pip download --no-deps --only-binary=:all: -d .whl segment-anything==1.0
# The call (about 11 of the 15 device minutes with MINUTES=7):
#   run(command="sh tools/device_train.sh", carry=[".whl"], timeout_s=600)
# Afterwards, here: cp <files_at>/train/checkpoint.pth target/train/ && make default-model ...
#
# The machine's own python3 holds torch, onnx, onnxruntime and opencv; only the
# segment_anything package has to travel (as a wheel in .whl/).
set -eu
MINUTES=${MINUTES:-7}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-32}
WORKERS=${WORKERS:-14}
INIT=${INIT:-models/sam-tiny/checkpoint.pth}
DEST=${OUT:-target/device-train}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ! $PY -c "import segment_anything" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/segment_anything-*.whl
  export PYTHONPATH=/tmp/site
fi
mkdir -p "$DEST"
$PY tools/train.py --device "$DEVICE" --out "$DEST/train" --init "$INIT" --minutes "$MINUTES" \
  --batch "$BATCH" --workers "$WORKERS" --lr "${LR:-4e-4}" --warmup 0.02 --save-every 60 2>&1 | tee "$DEST/train.log"
rm -f "$DEST/train/train_state.pt"  # optimizer state: 3x the model, not needed to continue with --init
$PY tools/export_onnx.py --default --checkpoint "$DEST/train/checkpoint.pth" --out "$DEST/sam-tiny"
$PY tools/evaluate.py --model "$DEST/sam-tiny" --scenes 3 --long-side 640 --min-area 100 --clicks 9 \
  --json "$DEST/eval.json" 2>&1 | tee "$DEST/eval.log"
