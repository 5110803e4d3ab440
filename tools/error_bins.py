#!/usr/bin/env python3
"""Where a model's box-prompt errors are on the held-out scenes: mean IoU, false positives and
false negatives (as fractions of the object's area) by object area and by how much of its box
the object fills. Same scenes, prompts and geometry as tools/evaluate.py (tight boxes, the
scene at --long-side, objects of area >= --min-area).

Usage: tools/.venv/bin/python tools/error_bins.py [--model models/sam-tiny] [--scenes 10]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data_engine import HELDOUT_START, make_scene  # noqa: E402
from evaluate import OnnxSam, box_prompt, iou  # noqa: E402

AREA_BINS = [(0, 400), (400, 2000), (2000, 10000), (10000, None)]
FILL_BINS = [(0.0, 0.5), (0.5, 0.7), (0.7, 0.85), (0.85, None)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/sam-tiny")
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--long-side", type=int, default=640)
    ap.add_argument("--min-area", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    m = OnnxSam(a.model, a.threads)
    rows = []  # area, fill of its box, IoU, false positives / area, false negatives / area
    for i in range(a.scenes):
        sc = make_scene(HELDOUT_START + i, long_side=a.long_side)
        m.set_image(sc.image)
        gts = [g for g in (sc.mask(o.id) for o in sc.objects) if g.sum() >= a.min_area]
        if not gts:
            continue
        boxes = [box_prompt(g) for g in gts]
        masks, _, _ = m.decode(np.array(boxes, np.float32))
        for b, g in enumerate(gts):
            p = masks[b, 0] > 0
            (x0, y0, _), (x1, y1, _) = boxes[b]
            area = float(g.sum())
            rows.append((area, area / ((x1 - x0) * (y1 - y0)), iou(p, g),
                         (p & ~g).sum() / area, (~p & g).sum() / area))
    r = np.array(rows)
    print(f"{len(r)} objects, box mIoU {r[:, 2].mean():.3f}")

    def report(col, bins, name):
        for lo, hi in bins:
            s = (r[:, col] >= lo) & ((r[:, col] < hi) if hi is not None else True)
            label = f"{name} {lo}-{hi}" if hi is not None else f"{name} >= {lo}"
            if s.any():
                print(f"{label:>22}: n={int(s.sum()):4d}  mIoU {r[s, 2].mean():.3f}  "
                      f"false pos / area {r[s, 3].mean():.3f}  false neg / area {r[s, 4].mean():.3f}")

    report(0, AREA_BINS, "area px")
    report(1, FILL_BINS, "box fill")


if __name__ == "__main__":
    main()
