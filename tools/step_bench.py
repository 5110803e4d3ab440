#!/usr/bin/env python3
"""Time one training step of tools/train.py, alternated in one process so that every
variant sees the same machine load. Prints seconds per step (best of --reps), objects per
second and decoder prompt-passes per second.

  step_bench.py recipes [--reps 2] [--batch 4]   # old recipe (8 targets, all 7 passes) vs the
                                                  # current default (24 targets, 1/3 through 5)
  step_bench.py precision [--reps 3]              # the default recipe in float32, float32 +
                                                  # channels_last, float32 + torch.compile
                                                  # (decoder passes and losses; and the
                                                  # encoder), bfloat16
                                                  # autocast, bfloat16 + channels_last
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


_ENCODERS = {}


def step(sam, pdec, opt, batch, args, amp=False, channels_last=False, compiled=False,
         compiled_encoder=False):
    T.use_compiled(compiled)
    if compiled_encoder and "c" not in _ENCODERS:
        _ENCODERS["c"] = torch.compile(sam.image_encoder)
    encoder = _ENCODERS["c"] if compiled_encoder else sam.image_encoder
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = _loss(sam, pdec, batch, args, channels_last, encoder)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _loss(sam, pdec, batch, args, channels_last, encoder):
    L = sam.image_encoder.img_size
    img = batch["image"].permute(0, 3, 1, 2).float()
    x = (img - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    masks = batch["masks"].float()
    N, K = masks.shape[:2]
    target = (F.avg_pool2d(masks, 2) > 0.5).reshape(N * K, L // 2, L // 2)
    valid = torch.ones_like(target)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    emb = encoder(x).repeat_interleave(K, 0)
    pe = sam.prompt_encoder.get_dense_pe()
    use_box = batch["use_box"].reshape(-1)
    loss = 0.0
    for has_box in (False, True):
        sel = use_box == has_box
        first = batch["boxes"].reshape(-1, 4)[sel] if has_box else batch["points"].reshape(-1, 2)[sel]
        loss = loss + T.run_prompts(sam, pdec, emb[sel], pe, target[sel], valid[sel], first, has_box, args, {})
    return loss


PRECISIONS = {
    "float32": dict(amp=False, channels_last=False),
    "float32 + channels_last": dict(amp=False, channels_last=True),
    "float32 + torch.compile": dict(amp=False, channels_last=False, compiled=True),
    "float32 + torch.compile + encoder": dict(amp=False, channels_last=False, compiled=True,
                                              compiled_encoder=True),
    "bfloat16 autocast": dict(amp=True, channels_last=False),
    "bfloat16 + channels_last": dict(amp=True, channels_last=True),
}


def batch_for(sam, targets, n):
    ds = T.Scenes(sam.image_encoder.img_size, targets, 0)
    items = [ds.sample(s) for s in range(n)]
    return {k: torch.stack([i[k] for i in items]) for k in items[0]}


def passes_per_step(batch, r):
    objs = batch * r["targets"]
    return objs, objs + math.ceil(r["interactive_frac"] * objs) * (r["clicks"] + 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["recipes", "precision"], nargs="?", default="precision")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", help="comma-separated variant names to run (default: all)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sam = build_sam(ARCHES["default"])
    pdec = PromptDecoder(sam)
    sam.train()
    opt = torch.optim.AdamW(sam.parameters(), lr=1e-5)
    default = list(RECIPES.values())[1]
    if a.what == "recipes":
        variants = {n: (r, {}) for n, r in RECIPES.items()}
    else:
        variants = {n: (default, p) for n, p in PRECISIONS.items()}
    if a.only:
        keep = [x.strip() for x in a.only.split(",")]
        variants = {n: v for n, v in variants.items() if n in keep}
    batches = {n: batch_for(sam, r["targets"], a.batch) for n, (r, _) in variants.items()}
    times = {n: [] for n in variants}
    for rep in range(a.reps + 1):
        for name, (r, p) in variants.items():
            if p.get("channels_last"):
                sam.image_encoder.to(memory_format=torch.channels_last)
            t = time.time()
            step(sam, pdec, opt, batches[name], argparse.Namespace(**r), **p)
            if rep:  # the first round warms up
                times[name].append(time.time() - t)
            if p.get("channels_last"):
                sam.image_encoder.to(memory_format=torch.contiguous_format)
    first = None
    for name, (r, _) in variants.items():
        s = min(times[name])
        first = first or s
        objs, passes = passes_per_step(a.batch, r)
        print(f"{name}: {s:.2f} s/step, {objs / s:.1f} objects/s, {passes / s:.1f} prompt-passes/s "
              f"({first / s:.2f}x the first row; {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
