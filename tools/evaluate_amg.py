#!/usr/bin/env python3
"""Segment-everything recall of a model on the held-out data_engine split, with the
reference ``segment_anything.SamAutomaticMaskGenerator`` and its default parameters
(32 x 32 points, pred_iou_thresh 0.88, stability_score_thresh 0.95, no crops).

Recall: the fraction of held-out objects (visible area >= --min-area) that some
generated mask covers with IoU >= --iou (0.75 by default).

  evaluate_amg.py --model models/sam-tiny --scenes 10 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_engine import HELDOUT_START, make_scene  # noqa: E402
from samtiny import load_sam  # noqa: E402


def mask_ious(pred: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """pred [M, H, W] bool, gts [G, H, W] bool -> IoU [G, M]."""
    p = pred.reshape(pred.shape[0], -1).astype(np.float32)
    g = gts.reshape(gts.shape[0], -1).astype(np.float32)
    inter = g @ p.T
    union = g.sum(1)[:, None] + p.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def evaluate(model_dir, n_scenes, long_side, min_area, iou_thr, params, log=print):
    from segment_anything import SamAutomaticMaskGenerator

    sam = load_sam(model_dir)
    gen = SamAutomaticMaskGenerator(sam, **params)
    found = total = masks_out = 0
    per_scene = []
    t0 = time.time()
    for i in range(n_scenes):
        sc = make_scene(HELDOUT_START + i, long_side=long_side)
        gts = [sc.mask(o.id) for o in sc.objects]
        gts = np.stack([g for g in gts if g.sum() >= min_area]) if gts else np.zeros((0,) + sc.image.shape[:2], bool)
        with torch.no_grad():
            anns = gen.generate(sc.image)
        masks_out += len(anns)
        if len(gts) == 0:
            continue
        if anns:
            pred = np.stack([a["segmentation"] for a in anns])
            best = mask_ious(pred, gts).max(1)
        else:
            best = np.zeros(len(gts))
        hit = int((best >= iou_thr).sum())
        found += hit
        total += len(gts)
        per_scene.append({"seed": HELDOUT_START + i, "objects": len(gts), "found": hit, "masks": len(anns)})
        log(f"  scene {i + 1}/{n_scenes}: {len(anns)} masks, {hit}/{len(gts)} objects found, {time.time() - t0:.0f}s")
    return {
        "objects": total,
        "found": found,
        "recall": found / max(total, 1),
        "masks": masks_out,
        "iou_threshold": iou_thr,
        "params": params,
        "scenes": per_scene,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/sam-tiny")
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--long-side", type=int, default=640)
    ap.add_argument("--min-area", type=int, default=100)
    ap.add_argument("--iou", type=float, default=0.75)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh}
    s = evaluate(args.model, args.scenes, args.long_side, args.min_area, args.iou, params)
    print(json.dumps({k: v for k, v in s.items() if k != "scenes"}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=2)


if __name__ == "__main__":
    main()
