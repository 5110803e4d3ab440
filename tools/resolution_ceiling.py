"""How much mask IoU the low-res mask grid allows on the held-out scenes, whatever the
decoder's weights, at a given input length L and low-res mask size.

Each ground-truth mask goes through the geometry the server applies to decoder output: the
image is resized to the long side L and padded; low-res logits are upsampled exactly as
SAM's postprocess_masks does and thresholded at 0; the IoU is taken with the original mask.
Two sets of low-res logits are scored:

* ``naive``: the mask area-averaged onto the low-res grid, as 2p - 1. A blurred mask: its
  zero crossing sits wherever the average is 1/2, so thin parts and sharp corners vanish.
* ``fitted``: logits fitted to the mask by gradient descent through that same upsampling
  (starting from ``naive``). Bilinear upsampling places the zero crossing anywhere between
  two low-res samples, so a decoder that emits sharp logits resolves far finer detail than
  the grid spacing.

Both are masks some decoder could output, so both are lower bounds on the true ceiling;
``fitted`` is the tighter one. (An earlier version reported only ``naive`` and called it the
ceiling, which wrongly suggested the 32 x 32 embedding could not reach the box target.)

Usage: tools/.venv/bin/python tools/resolution_ceiling.py [--scenes 3] [--long-side 640]
       [--min-area 100] [--combo 512:128 --combo 512:256 ...] [--steps 60]
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


def _to_original(logits: torch.Tensor, L: int, rh: int, rw: int, h: int, w: int) -> torch.Tensor:
    up = F.interpolate(logits, (L, L), mode="bilinear", align_corners=False)[..., :rh, :rw]
    return F.interpolate(up, (h, w), mode="bilinear", align_corners=False)


def reachable(mask: np.ndarray, L: int, low: int, steps: int):
    """(naive IoU, fitted IoU) of one ground-truth mask at input length L, low-res size low."""
    h, w = mask.shape
    s = L / max(h, w)
    rh, rw = int(h * s + 0.5), int(w * s + 0.5)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    padded = torch.zeros(1, 1, L, L)
    padded[..., :rh, :rw] = F.interpolate(t, (rh, rw), mode="bilinear", align_corners=False)
    naive = F.interpolate(padded, (low, low), mode="area") * 2 - 1
    naive_iou = iou(_to_original(naive, L, rh, rw, h, w)[0, 0].numpy() > 0, mask)
    # The sharpness factor keeps the loss from rewarding ever larger logits far from edges.
    logits = (naive * 4).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.3)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(_to_original(logits, L, rh, rw, h, w) * 3, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fitted_iou = iou(_to_original(logits, L, rh, rw, h, w)[0, 0].numpy() > 0, mask)
    return naive_iou, max(naive_iou, fitted_iou)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--long-side", type=int, default=640)
    ap.add_argument("--min-area", type=int, default=100)
    ap.add_argument("--steps", type=int, default=60, help="gradient steps per fitted mask")
    ap.add_argument("--combo", action="append", default=None,
                    help="L:low_res, repeatable (default 512:128, 512:256)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    combos = [tuple(int(v) for v in c.split(":")) for c in (args.combo or ["512:128", "512:256"])]
    masks = []
    for i in range(args.scenes):
        sc = make_scene(HELDOUT_START + i, long_side=args.long_side)
        masks += [g for g in (sc.mask(o.id) for o in sc.objects) if g.sum() >= args.min_area]
    print(f"{len(masks)} held-out objects (area >= {args.min_area} px, long side {args.long_side})")
    print("| L | low-res | logits | all | " + " | ".join(b[2] for b in SIZE_BINS) + " |")
    print("|---:|---:|---|---:|" + "---:|" * len(SIZE_BINS))
    for L, low in combos:
        vals = [(m.sum(), *reachable(m, L, low, args.steps)) for m in masks]
        for col, name in ((1, "naive"), (2, "fitted")):
            cells = [f"{np.mean([v[col] for v in vals if lo <= v[0] < hi]):.3f}" for lo, hi, _ in SIZE_BINS]
            print(f"| {L} | {low} | {name} | {np.mean([v[col] for v in vals]):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
