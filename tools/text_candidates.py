"""The server's own text-search candidates on training scenes, labelled by ground truth.

  tools/.venv/bin/python tools/text_candidates.py --scenes 120 [--out target/text/candidates]

Why: the region tower ranks the masks that the server's candidate search produces, not
ground-truth masks. Those include fragments of objects, unions of neighbours and pieces
of background, and a tower trained only on clean masks ranks such masks too high. This
starts the real server (release binary, default model), runs the candidate search of
models/text-minilm/text.json (segment everything with its `candidates` parameters) on
training scenes, and writes per scene: every candidate's region features, its predicted
IoU and stability score, and the ground-truth object it matches (IoU >= MATCH_IOU) or -1.
train_text.py --candidates uses them as extra positives (matched masks) and as in-scene
negatives (everything else). One .npz per scene, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_data  # noqa: E402
from data_engine import make_scene  # noqa: E402
from evaluate_text import _post, _rle_decode, iou, start_server  # noqa: E402

MATCH_IOU = 0.5
# Training scenes of the candidate set: disjoint from train_text.py's clean-mask scenes
# (700_000 + ...) and far below data_engine.HELDOUT_START.
CAND_SEED0 = 800_000


def candidate_params(text_json="models/text-minilm/text.json"):
    return json.loads(Path(text_json).read_text()).get("candidates", {})


def scene_candidates(base, seed, params, long_side=512):
    from PIL import Image

    sc = make_scene(seed, long_side=long_side)
    buf = io.BytesIO()
    Image.fromarray(sc.image).save(buf, format="PNG")
    iid = _post(base + "/v1/images", buf.getvalue(), "image/png")["image_id"]
    ev = _post(f"{base}/v1/images/{iid}/everything", params)
    urllib.request.urlopen(urllib.request.Request(f"{base}/v1/images/{iid}", method="DELETE"))
    H, W = sc.height, sc.width
    objs = [o for o in sc.objects if sc.mask(o.id).sum() >= 64]
    gt = [sc.mask(o.id) for o in objs]
    feats, match, q, rles = [], [], [], []
    for x in ev["masks"]:
        m = _rle_decode(x["segmentation"])
        ious = [iou(m, g) for g in gt]
        k = int(np.argmax(ious)) if ious else -1
        feats.append(text_data.region_features(sc.image, m))
        match.append(k if k >= 0 and ious[k] >= MATCH_IOU else -1)
        rles.append(x["segmentation"]["counts"])
        q.append((x["predicted_iou"], x.get("stability_score") or 0.0))
    geo = []
    for o, g in zip(objs, gt):
        ys, xs = np.nonzero(g)
        geo.append((g.sum() / (W * H), (xs.mean() + 0.5) / W, (ys.mean() + 0.5) / H))
    return dict(
        feats=np.array(feats, np.float32).reshape(-1, text_data.N_FEATURES),
        # The masks themselves (COCO RLE counts, image size below): features can be
        # recomputed when text_data's feature vector changes.
        rles=np.array(rles),
        size=np.array([H, W]),
        match=np.array(match, np.int64),
        quality=np.array(q, np.float32).reshape(-1, 2),
        colours=np.array([o.colour for o in objs]),
        shapes=np.array([o.shape for o in objs]),
        geo=np.array(geo, np.float64).reshape(-1, 3),
    )


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=120)
    ap.add_argument("--seed0", type=int, default=CAND_SEED0)
    ap.add_argument("--out", default="target/text/candidates")
    ap.add_argument("--server", default="target/release/samserve")
    ap.add_argument("--model", help="model folder (default: the embedded default)")
    ap.add_argument("--text-json", default="models/text-minilm/text.json")
    args = ap.parse_args(argv)
    params = dict(candidate_params(args.text_json))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(params))
    proc, base = start_server(args.server, args.model)
    t0 = time.time()
    try:
        for i in range(args.scenes):
            f = out / f"scene_{args.seed0 + i}.npz"
            if f.exists():
                continue
            d = scene_candidates(base, args.seed0 + i, params)
            np.savez(f, **d)
            pos = int((d["match"] >= 0).sum())
            print(f"scene {i + 1}/{args.scenes}: {len(d['match'])} candidates, {pos} matched "
                  f"({time.time() - t0:.0f}s)", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
