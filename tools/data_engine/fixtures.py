"""Write held-out scenes as test fixtures for tests/default_model.rs.

  python -m data_engine.fixtures --out tests/fixtures/heldout   (run from tools/)

Each scene: <name>.png plus an entry in objects.json with, per object of visible
area >= --min-area, its COCO compressed RLE (pycocotools), the centre click (max
of the distance transform) in pixel coordinates, its parent and caption.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .scene import HELDOUT_START, centre_point, make_scene


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--long-side", type=int, default=384)
    ap.add_argument("--min-area", type=int, default=100)
    # Far from the seeds evaluate.py uses, so the fixtures are not the card's scenes.
    ap.add_argument("--first-seed", type=int, default=HELDOUT_START + 500_000)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    doc = {"split": f"data_engine held-out seeds >= {HELDOUT_START}", "min_area": args.min_area, "scenes": []}
    for i in range(args.scenes):
        seed = args.first_seed + i
        sc = make_scene(seed, long_side=args.long_side)
        name = f"scene_{seed}.png"
        Image.fromarray(sc.image).save(os.path.join(args.out, name), optimize=True)
        objs = []
        for o in sc.objects:
            m = sc.mask(o.id)
            if m.sum() < args.min_area:
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y = centre_point(m)
            objs.append({
                "id": o.id,
                "parent": o.parent,
                "caption": o.caption,
                "area": int(m.sum()),
                "centre": [x, y],
                "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            })
        doc["scenes"].append({"seed": seed, "image": name, "width": sc.width, "height": sc.height,
                              "objects": objs})
    with open(os.path.join(args.out, "objects.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
