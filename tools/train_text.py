"""Train the region tower of the `minilm-region` text model and export it to ONNX.

  tools/.venv/bin/python tools/train_text.py --out models/text-minilm   (make train-text)

A candidate mask's region features (text_data.region_features: colour statistics under
the mask, shape descriptors, position and size; nothing from the segmentation model, so
retraining the default SAM model does not invalidate this tower) go through a small MLP
into MiniLM's 384-d sentence space. Training is contrastive (InfoNCE with every caption
of the same colour and shape counted as a positive) against frozen MiniLM embeddings of
training-vocabulary captions of data_engine training scenes. Ground-truth masks, plus
eroded / dilated copies standing in for imperfect predicted masks, are the candidates.

Also writes tests/fixtures/text/features.json (region features of held-out fixture
masks, and the tower's output) for the Rust parity test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm  # noqa: E402
import text_data  # noqa: E402
from data_engine import HELDOUT_START, make_scene  # noqa: E402

TRAIN_SEED0 = 700_000  # far from train.py's early seeds; any seed < HELDOUT_START is training data
MIN_AREA = 64


def scene_regions(seed, rng, augment=True, long_side=512):
    """(features, colour, shape, area_frac, cx, cy) for the objects of one scene."""
    sc = make_scene(seed, long_side=long_side)
    out = []
    H, W = sc.height, sc.width
    for o in sc.objects:
        m = sc.mask(o.id)
        area = int(m.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(m)
        meta = (o.colour, o.shape, area / (W * H), (xs.mean() + 0.5) / W, (ys.mean() + 0.5) / H)
        out.append((text_data.region_features(sc.image, m),) + meta)
        if augment and rng.random() < 0.5:
            k = np.ones((3, 3), np.uint8)
            op = cv2.erode if rng.random() < 0.5 else cv2.dilate
            m2 = op(m.astype(np.uint8), k, iterations=int(rng.integers(1, 3))) > 0
            if m2.sum() >= MIN_AREA:
                out.append((text_data.region_features(sc.image, m2),) + meta)
    return out


class RegionTower(nn.Module):
    def __init__(self, mean, std, hidden=256):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(len(mean), hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, minilm.DIM),
        )

    def forward(self, features):
        y = self.net((features - self.mean) / self.std)
        return y / y.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def build_dataset(n_scenes, seed, workers):
    rng = np.random.default_rng(seed)
    rows = []
    t = time.time()
    for i in range(n_scenes):
        rows += scene_regions(TRAIN_SEED0 + seed * 10_000 + i, rng)
        if (i + 1) % 50 == 0:
            print(f"  scenes {i + 1}/{n_scenes}: {len(rows)} regions, {time.time() - t:.0f}s", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/text-minilm")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--captions", type=int, default=6, help="training captions per region")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="target/text/train_regions.npz")
    ap.add_argument("--fixtures", default="tests/fixtures/text")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny MLP: more threads only spin on a busy machine
    t0 = time.time()
    cache = Path(args.cache)
    if cache.exists() and json.loads(str(np.load(cache)["meta"])) == {"scenes": args.scenes, "seed": args.seed}:
        z = np.load(cache)
        feats, colours, shapes, geo = z["feats"], list(z["colours"]), list(z["shapes"]), z["geo"]
    else:
        print(f"region features of {args.scenes} training scenes ...", flush=True)
        rows = build_dataset(args.scenes, args.seed, 1)
        feats = np.stack([r[0] for r in rows])
        colours = [r[1] for r in rows]
        shapes = [r[2] for r in rows]
        geo = np.array([r[3:] for r in rows], np.float64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, feats=feats, colours=colours, shapes=shapes, geo=geo,
                 meta=json.dumps({"scenes": args.scenes, "seed": args.seed}))
    n = len(feats)
    print(f"{n} regions ({time.time() - t0:.0f}s)", flush=True)

    # Captions: several training-vocabulary phrasings per region, embedded once by MiniLM.
    rng = np.random.default_rng(args.seed + 1)
    caps = [text_data.phrasings(rng, c, s, *g, vocab="train", n=args.captions)
            for c, s, g in zip(colours, shapes, geo)]
    uniq = sorted({t for cs in caps for t in cs})
    t = time.time()
    lm = minilm.load()
    tok = minilm.tokenizer()
    emb = minilm.encode_texts(lm, tok, uniq)
    print(f"{len(uniq)} distinct captions embedded ({time.time() - t:.0f}s)", flush=True)
    index = {u: i for i, u in enumerate(uniq)}
    cap_idx = np.array([[index[c] for c in cs] for cs in caps])
    classes = sorted(set(zip(colours, shapes)))
    cls = np.array([classes.index(k) for k in zip(colours, shapes)])

    mean = feats.mean(0)
    std = feats.std(0) + 1e-3
    tower = RegionTower(mean, std)
    opt = torch.optim.AdamW(tower.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    X = torch.from_numpy(feats)
    E = torch.from_numpy(emb)
    C = torch.from_numpy(cls)
    tau = 0.05
    for step in range(args.steps):
        b = torch.from_numpy(rng.integers(0, n, args.batch))
        ci = torch.from_numpy(cap_idx[b.numpy(), rng.integers(0, args.captions, args.batch)])
        r = tower(X[b] + torch.randn(args.batch, X.shape[1]) * 0.02 * torch.from_numpy(std).float())
        tx = E[ci]
        logits = r @ tx.T / tau
        pos = (C[b][:, None] == C[b][None, :]).float()
        # Multi-positive InfoNCE, both directions.
        l1 = -(torch.logsumexp(logits + torch.log(pos + 1e-20), 1) - torch.logsumexp(logits, 1)).mean()
        l2 = -(torch.logsumexp(logits.T + torch.log(pos + 1e-20), 1) - torch.logsumexp(logits.T, 1)).mean()
        loss = (l1 + l2) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tower.eval()
    torch.onnx.export(
        tower, (torch.zeros(2, text_data.N_FEATURES),), str(out / "region.onnx"),
        input_names=["features"], output_names=["embedding"],
        dynamic_axes={"features": {0: "regions"}, "embedding": {0: "regions"}},
        opset_version=17, dynamo=False,
    )
    torch.save(tower.state_dict(), out / "region_tower.pth") if False else None
    write_fixtures(out / "region.onnx", Path(args.fixtures))
    print(f"wrote {out / 'region.onnx'} in {time.time() - t0:.0f}s")


def write_fixtures(region_onnx, fx: Path, n_scenes=2):
    """Features + tower output of masks of held-out scenes, for tests/text.rs parity."""
    import onnxruntime as ort
    from PIL import Image

    fx.mkdir(parents=True, exist_ok=True)
    s = ort.InferenceSession(str(region_onnx), providers=["CPUExecutionProvider"])
    from pycocotools import mask as mask_utils

    cases = []
    for k in range(n_scenes):
        seed = HELDOUT_START + 600_000 + k
        sc = make_scene(seed, long_side=256)
        name = f"features_{seed}.png"
        Image.fromarray(sc.image).save(fx / name, optimize=True)
        for o in sc.objects:
            m = sc.mask(o.id)
            if m.sum() < 16:
                continue
            f = text_data.region_features(sc.image, m)
            e = s.run(None, {"features": f[None]})[0][0]
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            cases.append({"image": name, "rle": {"size": [int(v) for v in rle["size"]],
                                                  "counts": rle["counts"].decode("ascii")},
                          "features": [float(v) for v in f], "embedding": [round(float(v), 6) for v in e]})
    doc = {"feature_names": text_data.FEATURE_NAMES, "cases": cases}
    (fx / "features.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
