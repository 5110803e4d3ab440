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
    ap.add_argument("--candidates", help="folder of tools/text_candidates.py output (server candidates)")
    ap.add_argument("--hidden", type=int, default=256, help="width of the region tower's hidden layers")
    ap.add_argument("--cand-scenes", type=int, default=2, help="candidate scenes per batch")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny MLP: more threads only spin on a busy machine
    t0 = time.time()
    cache = Path(args.cache)
    if cache.exists() and json.loads(str(np.load(cache)["meta"])) == {"scenes": args.scenes, "seed": args.seed, "features": text_data.N_FEATURES}:
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
                 meta=json.dumps({"scenes": args.scenes, "seed": args.seed, "features": text_data.N_FEATURES}))
    n = len(feats)
    print(f"{n} regions ({time.time() - t0:.0f}s)", flush=True)

    # Candidate masks of the server's own search (tools/text_candidates.py), if given:
    # matched ones are extra positives, the rest in-scene negatives for the phrase.
    cand = load_candidates(args.candidates) if args.candidates else None
    if cand is not None:
        print(f"{len(cand['feats'])} server candidates of {cand['n_scenes']} scenes, "
              f"{int((cand['obj'] >= 0).sum())} matched to an object", flush=True)

    # Captions: several training-vocabulary phrasings per region, embedded once by MiniLM.
    rng = np.random.default_rng(args.seed + 1)
    caps = [text_data.phrasings(rng, c, s, *g, vocab="train", n=args.captions)
            for c, s, g in zip(colours, shapes, geo)]
    if cand is not None:
        ccaps = [text_data.phrasings(rng, c, s, *g, vocab="train", n=args.captions)
                 for c, s, g in zip(cand["colours"], cand["shapes"], cand["geo"])]
    else:
        ccaps = []
    uniq = sorted({t for cs in caps + ccaps for t in cs})
    t = time.time()
    lm = minilm.load()
    tok = minilm.tokenizer()
    emb = minilm.encode_texts(lm, tok, uniq)
    print(f"{len(uniq)} distinct captions embedded ({time.time() - t:.0f}s)", flush=True)
    index = {u: i for i, u in enumerate(uniq)}
    cap_idx = np.array([[index[c] for c in cs] for cs in caps])
    classes = sorted(set(zip(colours, shapes)))
    cls = np.array([classes.index(k) for k in zip(colours, shapes)])
    if cand is not None:
        # Per candidate: its class (-1: no object) and caption rows (those of its object).
        ocls = np.array([classes.index(k) if k in classes else -1
                         for k in zip(cand["colours"], cand["shapes"])], np.int64)
        ocap = np.array([[index[c] for c in cs] for cs in ccaps]).reshape(-1, args.captions)
        c_cls = np.where(cand["obj"] >= 0, ocls[np.maximum(cand["obj"], 0)], -1)
        c_cap = ocap[np.maximum(cand["obj"], 0)]
        scene_rows = [np.nonzero(cand["scene"] == k)[0] for k in range(cand["n_scenes"])]

    mean = feats.mean(0)
    std = feats.std(0) + 1e-3
    tower = RegionTower(mean, std, hidden=args.hidden)
    opt = torch.optim.AdamW(tower.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    X = torch.from_numpy(feats)
    E = torch.from_numpy(emb)
    C = torch.from_numpy(cls)
    noise = torch.from_numpy(std).float() * 0.02
    tau = 0.05
    for step in range(args.steps):
        b = rng.integers(0, n, args.batch)
        xb = X[torch.from_numpy(b)]
        cb = C[torch.from_numpy(b)]
        ci = torch.from_numpy(cap_idx[b, rng.integers(0, args.captions, args.batch)])
        if cand is not None:
            # Whole scenes of candidates, so that fragments and unions of the named object
            # compete with it as they do in the server's ranking.
            rows = np.concatenate([scene_rows[k] for k in rng.integers(0, cand["n_scenes"], args.cand_scenes)])
            xb = torch.cat([xb, torch.from_numpy(cand["feats"][rows])])
            cb = torch.cat([cb, torch.from_numpy(c_cls[rows])])
            ci = torch.cat([ci, torch.from_numpy(c_cap[rows, rng.integers(0, args.captions, len(rows))])])
        r = tower(xb + torch.randn(xb.shape) * noise)
        has = cb >= 0
        tx = E[ci[has]]
        pos = (cb[has][:, None] == cb[None, :]).float()  # captions x regions
        logits = tx @ r.T / tau
        # Multi-positive InfoNCE, both directions: phrase -> every region of the batch
        # (unmatched candidates only ever as negatives), region -> every caption.
        l_t = -(torch.logsumexp(logits + torch.log(pos + 1e-20), 1) - torch.logsumexp(logits, 1)).mean()
        lr_ = logits.T[has]
        pr = pos.T[has]
        l_r = -(torch.logsumexp(lr_ + torch.log(pr + 1e-20), 1) - torch.logsumexp(lr_, 1)).mean()
        loss = (l_t + l_r) / 2
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


def load_candidates(folder):
    """Concatenated server candidates of tools/text_candidates.py, features recomputed
    when the stored ones are of another feature version."""
    from pycocotools import mask as mask_utils

    feats, obj, scene, colours, shapes, geo = [], [], [], [], [], []
    files = sorted(Path(folder).glob("scene_*.npz"))
    n_obj = 0
    for k, f in enumerate(files):
        z = np.load(f)
        fe = z["feats"]
        if fe.shape[1] != text_data.N_FEATURES:
            seed = int(f.stem.split("_")[1])
            sc = make_scene(seed, long_side=512)
            H, W = (int(v) for v in z["size"])
            fe = np.stack([text_data.region_features(
                sc.image, mask_utils.decode({"size": [H, W], "counts": c.encode()}).astype(bool))
                for c in z["rles"]]) if len(z["rles"]) else np.zeros((0, text_data.N_FEATURES), np.float32)
            np.savez(f, **{**{key: z[key] for key in z.files}, "feats": fe})
        feats.append(fe)
        obj.append(np.where(z["match"] >= 0, z["match"] + n_obj, -1))
        scene.append(np.full(len(fe), k))
        colours += list(z["colours"])
        shapes += list(z["shapes"])
        geo.append(z["geo"])
        n_obj += len(z["colours"])
    return dict(feats=np.concatenate(feats).astype(np.float32), obj=np.concatenate(obj),
                scene=np.concatenate(scene), colours=colours, shapes=shapes,
                geo=np.concatenate(geo), n_scenes=len(files))


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
