#!/usr/bin/env python3
"""Time one training step of tools/train.py for two recipes, alternated in one process so
that both see the same machine load: the old one (8 targets per scene, every target through
4 clicks + 2 mask-only passes) and the current default (24 targets per scene, one third of
them through 2 clicks + 2 mask-only passes). Prints seconds per step, objects per second and
decoder prompt-passes per second.

  step_bench.py [--reps 2] [--batch 4]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train as T  # noqa: E402
from samtiny import ARCHES, PIXEL_MEAN, PIXEL_STD, PromptDecoder, build_sam  # noqa: E402

RECIPES = {
    "old (8 targets, all 7 passes)": dict(targets=8, clicks=4, interactive_frac=1.0),
    "new (24 targets, 1/3 through 5 passes)": dict(targets=24, clicks=2, interactive_frac=0.34),
}


def step(sam, pdec, opt, batch, args):
    L = sam.image_encoder.img_size
    img = batch["image"].permute(0, 3, 1, 2).float()
    x = (img - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    masks = batch["masks"].float()
    N, K = masks.shape[:2]
    target = (F.avg_pool2d(masks, 2) > 0.5).reshape(N * K, L // 2, L // 2)
    valid = torch.ones_like(target)
    emb = sam.image_encoder(x).repeat_interleave(K, 0)
    pe = sam.prompt_encoder.get_dense_pe()
    use_box = batch["use_box"].reshape(-1)
    loss = 0.0
    for has_box in (False, True):
        sel = use_box == has_box
        first = batch["boxes"].reshape(-1, 4)[sel] if has_box else batch["points"].reshape(-1, 2)[sel]
        loss = loss + T.run_prompts(sam, pdec, emb[sel], pe, target[sel], valid[sel], first, has_box, args, {})
    opt.zero_grad()
    loss.backward()
    opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    sam = build_sam(ARCHES["default"])
    pdec = PromptDecoder(sam)
    sam.train()
    opt = torch.optim.AdamW(sam.parameters(), lr=1e-5)
    batches = {}
    for name, r in RECIPES.items():
        ds = T.Scenes(sam.image_encoder.img_size, r["targets"], 0)
        items = [ds.sample(s) for s in range(a.batch)]
        batches[name] = {k: torch.stack([i[k] for i in items]) for k in items[0]}
    times = {n: [] for n in RECIPES}
    for rep in range(a.reps + 1):
        for name, r in RECIPES.items():
            args = argparse.Namespace(**r)
            t = time.time()
            step(sam, pdec, opt, batches[name], args)
            if rep:  # the first round warms up
                times[name].append(time.time() - t)
    for name, r in RECIPES.items():
        s = min(times[name])
        objs = a.batch * r["targets"]
        passes = objs + math.ceil(r["interactive_frac"] * objs) * (r["clicks"] + 2)
        print(f"{name}: {s:.1f} s/step, {objs / s:.1f} objects/s, {passes / s:.1f} prompt-passes/s")


if __name__ == "__main__":
    main()
