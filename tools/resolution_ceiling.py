"""Best mask IoU a SAM-style model can reach on the held-out scenes at a given input length
L and low-resolution mask size, whatever its weights.

Each ground-truth mask goes through the geometry the server applies to decoder output: the
image is resized to the long side L and padded, the mask is area-averaged to the low-res
grid (the best logits a decoder could emit there, as 2p - 1), then upsampled back exactly as
SAM's postprocess_masks does and thresholded at 0. The IoU with the original mask is an
upper bound for any decoder at that resolution, e.g. for the box protocol of evaluate.py.

Usage: tools/.venv/bin/python tools/resolution_ceiling.py [--scenes 3] [--long-side 640]
       [--min-area 100] [--combo 512:128 --combo 512:256 ...]
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from data_engine import make_scene  # noqa: E402
from evaluate import HELDOUT_START, iou  # noqa: E402

SIZE_BINS = [(0, 400, "<400"), (400, 2000, "400-2000"), (2000, 1 << 62, ">=2000")]


def ceiling(mask: np.ndarray, L: int, low: int) -> float:
    h, w = mask.shape
    s = L / max(h, w)
    rh, rw = int(h * s + 0.5), int(w * s + 0.5)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = F.interpolate(t, (rh, rw), mode="bilinear", align_corners=False)
    padded = torch.zeros(1, 1, L, L)
    padded[..., :rh, :rw] = t
    logits = F.interpolate(padded, (low, low), mode="area") * 2 - 1
    up = F.interpolate(logits, (L, L), mode="bilinear", align_corners=False)[..., :rh, :rw]
    up = F.interpolate(up, (h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    return iou(up > 0, mask)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--long-side", type=int, default=640)
    ap.add_argument("--min-area", type=int, default=100)
    ap.add_argument("--combo", action="append", default=None,
                    help="L:low_res, repeatable (default 512:128, 512:256, 1024:256)")
    args = ap.parse_args()
    combos = [tuple(int(v) for v in c.split(":")) for c in (args.combo or
                                                           ["512:128", "512:256", "1024:256"])]
    masks = []
    for i in range(args.scenes):
        sc = make_scene(HELDOUT_START + i, long_side=args.long_side)
        masks += [g for g in (sc.mask(o.id) for o in sc.objects) if g.sum() >= args.min_area]
    print(f"{len(masks)} held-out objects (area >= {args.min_area} px, long side {args.long_side})")
    print("| L | low-res | all | " + " | ".join(b[2] for b in SIZE_BINS) + " |")
    print("|---:|---:|---:|" + "---:|" * len(SIZE_BINS))
    for L, low in combos:
        vals = [(m.sum(), ceiling(m, L, low)) for m in masks]
        cells = [f"{np.mean([v for a, v in vals if lo <= a < hi]):.3f}" for lo, hi, _ in SIZE_BINS]
        print(f"| {L} | {low} | {np.mean([v for _, v in vals]):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
