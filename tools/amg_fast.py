#!/usr/bin/env python3
"""Segment everything's fast mode (`skip_covered_points`) against the full grid, through the
real server on the held-out scenes: decoder prompts run (from /metrics), seconds, masks, and
recall (the fraction of ground-truth objects with visible area >= --min-area that some mask
covers with IoU >= --iou). Both modes run on the same server, alternating per scene.

  amg_fast.py [--bin target/release/samserve] [--scenes 10] [--params '{"pred_iou_thresh": 0.88}']
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from data_engine import HELDOUT_START, make_scene  # noqa: E402
from evaluate_amg import mask_ious  # noqa: E402
from evaluate_text import _post, _rle_decode, start_server  # noqa: E402


def decoded_prompts(base: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("samserve_decoder_prompts_total{"))


def png_b64(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run_mode(base, image_id, params):
    before = decoded_prompts(base)
    t = time.time()
    out = _post(f"{base}/v1/images/{image_id}/everything", params)
    secs = time.time() - t
    masks = [_rle_decode(m["segmentation"]) for m in out["masks"]]
    return secs, decoded_prompts(base) - before, masks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/samserve")
    ap.add_argument("--model", help="model folder (default: the embedded default model)")
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--long-side", type=int, default=640)
    ap.add_argument("--min-area", type=int, default=100)
    ap.add_argument("--iou", type=float, default=0.75)
    ap.add_argument("--params", default="{}", help="segment-everything parameters (JSON) of both modes")
    ap.add_argument("--json", help="write the summary here")
    a = ap.parse_args(argv)
    params = json.loads(a.params)
    proc, base = start_server(a.bin, a.model)
    modes = {"full grid": dict(params), "fast (skip_covered_points)": dict(params, skip_covered_points=True)}
    acc = {m: {"secs": 0.0, "prompts": 0.0, "masks": 0, "found": 0} for m in modes}
    total = 0
    try:
        for i in range(a.scenes):
            sc = make_scene(HELDOUT_START + i, long_side=a.long_side)
            gts = [g for g in (sc.mask(o.id) for o in sc.objects) if g.sum() >= a.min_area]
            total += len(gts)
            up = _post(base + "/v1/images", {"image": png_b64(sc.image)})
            for name, p in modes.items():
                secs, prompts, masks = run_mode(base, up["image_id"], p)
                r = acc[name]
                r["secs"] += secs
                r["prompts"] += prompts
                r["masks"] += len(masks)
                if gts and masks:
                    r["found"] += int((mask_ious(np.stack(masks), np.stack(gts)).max(1) >= a.iou).sum())
            print(f"scene {i + 1}/{a.scenes}: " + ", ".join(
                f"{n}: {acc[n]['prompts']:.0f} prompts, {acc[n]['found']} found" for n in modes), flush=True)
    finally:
        proc.terminate()
    print(f"\n{a.scenes} held-out scenes (long side {a.long_side}), {total} objects, params {json.dumps(params)}\n")
    print("| mode | decoder prompts | seconds | masks | recall @ IoU %.2f |" % a.iou)
    print("|---|---:|---:|---:|---:|")
    for name, r in acc.items():
        print(f"| {name} | {r['prompts']:.0f} | {r['secs']:.1f} | {r['masks']} | {r['found'] / max(total, 1):.3f} |")
    if a.json:
        json.dump({"objects": total, "params": params, "modes": acc}, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
