"""Held-out evaluation of text prompts (make evaluate-text).

  tools/.venv/bin/python tools/evaluate_text.py --scenes 40 [--server target/release/samserve]
      [--card models/text-minilm/MODEL_CARD.md]

Held-out data_engine scenes (seeds never used for training); a query is a phrase naming
exactly one object by colour + shape ("the red star"), for objects of visible area >= 400
px that are the only object of that colour and shape in the scene and whose own pixels
make up >= 60% of their visible mask. Top-1 is correct when the best-scoring mask has IoU
>= 0.5 with the named object. Two vocabularies: training words (canonical names) and
held-out synonyms that no training caption contains (text_data.HELDOUT_*).

Two candidate sets:
  gt      ground-truth masks of every object (area >= 64): measures the towers alone.
  server  the real samserve: text prompts through POST /v1/images/{id}/segment, so the
          candidates are the server's (segment everything with the text search
          parameters on the default model). The chance baseline picks a random mask of
          the same candidate search.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm  # noqa: E402
import text_data  # noqa: E402
from data_engine import HELDOUT_START, make_scene  # noqa: E402

EVAL_SEED0 = HELDOUT_START + 200_000


def queries(sc, rng, min_area=400):
    """(object, mask, train phrase, held-out phrase) per unambiguous object."""
    counts = Counter((o.colour, o.shape) for o in sc.objects)
    out = []
    for o in sc.objects:
        if counts[(o.colour, o.shape)] != 1:
            continue
        m = sc.mask(o.id)
        area = int(m.sum())
        if area < min_area or (sc.owner == o.id).sum() / area < 0.6:
            continue
        hc = text_data.HELDOUT_COLOURS[o.colour]
        hs = text_data.HELDOUT_SHAPES[o.shape]
        held = f"the {hc[rng.integers(len(hc))]} {hs[rng.integers(len(hs))]}"
        out.append((o, m, f"the {o.colour} {o.shape}", held))
    return out


def iou(a, b):
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


class Towers:
    def __init__(self, folder):
        folder = Path(folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.text = ort.InferenceSession(str(folder / "text.onnx"), opts, providers=["CPUExecutionProvider"])
        self.region = ort.InferenceSession(str(folder / "region.onnx"), opts, providers=["CPUExecutionProvider"])
        self.tok = minilm.tokenizer(folder / "tokenizer.json")
        self.cache = {}

    def phrase(self, t):
        if t not in self.cache:
            ids = np.array([self.tok.encode(t).ids], np.int64)
            self.cache[t] = self.text.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        return self.cache[t]

    def regions(self, feats):
        e = self.region.run(None, {"features": np.stack(feats).astype(np.float32)})[0]
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def eval_gt(args, towers):
    rng = np.random.default_rng(0)
    hits = {"train": [], "heldout": []}
    chance = []
    for i in range(args.scenes):
        sc = make_scene(EVAL_SEED0 + i, long_side=args.long_side)
        cands = [sc.mask(o.id) for o in sc.objects]
        cands = [m for m in cands if m.sum() >= 64]
        emb = towers.regions([text_data.region_features(sc.image, m) for m in cands])
        for o, m, tp, hp in queries(sc, rng):
            ious = np.array([iou(c, m) for c in cands])
            chance.append(float((ious >= 0.5).mean()))
            for vocab, p in (("train", tp), ("heldout", hp)):
                best = int(np.argmax(emb @ towers.phrase(p)))
                hits[vocab].append(ious[best] >= 0.5)
    return hits, chance


def lm_probe(towers):
    """What MiniLM alone knows of the held-out synonyms: each held-out phrase "the {colour}
    {shape}" against the centroids of the training phrasings of all colour x shape classes.
    A region tower trained on training words can at best put a region at its class's
    training centroid, so this bounds held-out-vocabulary accuracy from the language side."""
    classes = [(c, s) for c in text_data.TRAIN_COLOURS for s in text_data.TRAIN_SHAPES]
    cent = []
    for c, s in classes:
        e = np.mean([towers.phrase(f"the {a} {b}") for a in text_data.TRAIN_COLOURS[c]
                     for b in text_data.TRAIN_SHAPES[s]], 0)
        cent.append(e / np.linalg.norm(e))
    cent = np.stack(cent)
    joint, col, shp = [], [], []
    for k, (c, s) in enumerate(classes):
        for a in text_data.HELDOUT_COLOURS[c]:
            for b in text_data.HELDOUT_SHAPES[s]:
                p = int(np.argmax(cent @ towers.phrase(f"the {a} {b}")))
                joint.append(p == k)
                col.append(classes[p][0] == c)
                shp.append(classes[p][1] == s)
    return len(classes), float(np.mean(joint)), float(np.mean(col)), float(np.mean(shp)), len(joint)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_server(binary, model=None, ort_lib=".ort/lib/libonnxruntime.so"):
    """The real server on a free loopback port, once /readyz answers: (process, base URL)."""
    port = _free_port()
    env = dict(os.environ, SAMSERVE_ORT_LIB=os.path.abspath(ort_lib), RUST_LOG="warn")
    cmd = [binary, "--port", str(port)] + (["--model", model] if model else [])
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/readyz", timeout=2)
            return proc, base
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _post(url, body, ctype="application/json", timeout=600):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": ctype})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _rle_decode(rle):
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def eval_server(args):
    from PIL import Image

    proc, base = start_server(args.server, args.model, args.ort_lib)
    try:
        rng = np.random.default_rng(0)
        hits = {"train": [], "heldout": []}
        chance = []
        first, repeat = [], []
        for i in range(args.scenes):
            sc = make_scene(EVAL_SEED0 + i, long_side=args.long_side)
            buf = io.BytesIO()
            Image.fromarray(sc.image).save(buf, format="PNG")
            img = _post(base + "/v1/images", buf.getvalue(), "image/png")
            iid = img["image_id"]
            qs = queries(sc, rng)
            if not qs:
                continue
            for j, (o, m, tp, hp) in enumerate(qs):
                for vocab, p in (("train", tp), ("heldout", hp)):
                    t = time.perf_counter()
                    r = _post(f"{base}/v1/images/{iid}/segment", {"prompts": [{"text": p}]})
                    (first if (j == 0 and vocab == "train") else repeat).append(time.perf_counter() - t)
                    masks = r["results"][0]["masks"]
                    hits[vocab].append(bool(masks) and iou(_rle_decode(masks[0]["rle"]), m) >= 0.5)
            ev = _post(f"{base}/v1/images/{iid}/everything", text_search_params(args.text_model))
            cands = [_rle_decode(x["segmentation"]) for x in ev["masks"]]
            for o, m, _, _ in qs:
                chance.append(float(np.mean([iou(c, m) >= 0.5 for c in cands])) if cands else 0.0)
        return hits, chance, (first, repeat)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def text_search_params(text_model):
    """The candidate search of a text model (its text.json `candidates`), over the server's
    defaults (keep in step with default_candidate_params() in src/core/text_search.rs)."""
    p = {"points_per_side": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8,
         "box_nms_thresh": 0.7, "crop_n_layers": 0, "max_masks": 300}
    p.update(json.loads((Path(text_model) / "text.json").read_text()).get("candidates", {}))
    return p


def write_fixtures(out, n_scenes=4, long_side=384):
    """tests/fixtures/text/queries.json + scene PNGs for tests/text.rs (ground truth from the
    data engine; seeds far from the evaluation's)."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    doc = {"split": f"data_engine held-out seeds >= {HELDOUT_START}", "scenes": []}
    for i in range(n_scenes):
        seed = HELDOUT_START + 700_000 + i
        sc = make_scene(seed, long_side=long_side)
        name = f"scene_{seed}.png"
        Image.fromarray(sc.image).save(out / name, optimize=True)
        qs = []
        for o, m, tp, hp in queries(sc, rng):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            qs.append({"train": tp, "heldout": hp, "object": o.id,
                       "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}})
        doc["scenes"].append({"seed": seed, "image": name, "width": sc.width, "height": sc.height, "queries": qs})
    (out / "queries.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{sum(len(s['queries']) for s in doc['scenes'])} queries in {n_scenes} scenes -> {out}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--text-model", default="models/text-minilm")
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--server", help="samserve binary: evaluate through the real server")
    ap.add_argument("--model", help="model folder for the server (default: the embedded default)")
    ap.add_argument("--ort-lib", default=".ort/lib/libonnxruntime.so")
    ap.add_argument("--card", help="write the numbers into this model card (its text-evaluation section)")
    ap.add_argument("--write-fixtures", help="write the server test's queries into this folder and stop")
    args = ap.parse_args(argv)
    if args.write_fixtures:
        write_fixtures(args.write_fixtures)
        return
    rows = []
    towers = Towers(args.text_model)
    hits, chance = eval_gt(args, towers)
    rows.append(("ground-truth masks", hits, chance))
    lat = None
    if args.server:
        sh, sc, lat = eval_server(args)
        rows.append(("samserve (default model's candidates)", sh, sc))
    lines = [f"Held-out scenes: {args.scenes} (data_engine seeds {EVAL_SEED0}..{EVAL_SEED0 + args.scenes - 1}, "
             f"long side {args.long_side}); queries: {len(rows[0][1]['train'])}.", "",
             "| candidates | training vocabulary top-1 | held-out vocabulary top-1 | chance (random candidate) |",
             "|---|---|---|---|"]
    for name, h, c in rows:
        lines.append(f"| {name} | {np.mean(h['train']):.3f} (n={len(h['train'])}) | "
                     f"{np.mean(h['heldout']):.3f} (n={len(h['heldout'])}) | {np.mean(c):.3f} |")
    nc, pj, pc, ps, pn = lm_probe(towers)
    lines += ["", f"Language-side bound (MiniLM alone, {pn} held-out phrases against the training-phrasing "
              f"centroids of all {nc} colour x shape classes): nearest centroid is the right class "
              f"{pj:.3f}, the right colour {pc:.3f}, the right shape {ps:.3f}."]
    if lat:
        lines += ["", f"Server latency per text query: first query on an image (candidate search) p50 "
                  f"{np.median(lat[0]) * 1000:.0f} ms, later queries p50 {np.median(lat[1]) * 1000:.0f} ms."]
    text = "\n".join(lines)
    print(text)
    if args.card:
        cmd = "tools/.venv/bin/python tools/evaluate_text.py " + " ".join(argv if argv is not None else sys.argv[1:])
        card = Path(args.card)
        old = card.read_text() if card.exists() else ""
        head = "## Text-prompt evaluation"
        section = f"{head}\n\nReproduce: `{cmd}`\n\n{text}\n"
        if head in old:
            before = old.split(head)[0]
            rest = old.split(head, 1)[1]
            after = rest[rest.find("\n## "):] if "\n## " in rest else ""
            old = before + section + after
        else:
            old = old.rstrip() + "\n\n" + section
        card.write_text(old.lstrip())


if __name__ == "__main__":
    main()
