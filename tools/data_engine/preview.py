"""Render a few data_engine scenes with coloured instance overlays and captions
(`make data-preview`), and time the generator."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from PIL import Image

from .scene import HELDOUT_START, make_scene


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--heldout", action="store_true")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    base = HELDOUT_START if args.heldout else 0
    t0 = time.time()
    for s in range(base, base + 50):
        make_scene(s)
    print(f"make_scene: {(time.time() - t0) / 50 * 1000:.1f} ms per scene (long side 512)")
    rng = np.random.default_rng(0)
    for s in range(base, base + args.n):
        sc = make_scene(s)
        over = sc.image.astype(np.float32)
        palette = rng.integers(0, 256, (len(sc.objects) + 1, 3))
        tint = palette[sc.owner]
        over = np.where(sc.owner[..., None] > 0, 0.5 * over + 0.5 * tint, over)
        Image.fromarray(np.concatenate([sc.image, over.astype(np.uint8)], 1)).save(
            os.path.join(args.out, f"scene_{s}.png"))
        with open(os.path.join(args.out, f"scene_{s}.json"), "w") as f:
            json.dump([{"id": o.id, "parent": o.parent, "caption": o.caption} for o in sc.objects], f, indent=1)
    print(f"wrote {args.n} previews to {args.out}")


if __name__ == "__main__":
    main()
