"""Hybrid decoding parity: the embedding and decoder downloaded from a running samserve,
run in Python onnxruntime with the reference prompt mapping, must give the server's masks.

    tools/.venv/bin/python tools/hybrid_parity.py --url http://127.0.0.1:8080

(`make hybrid-parity` starts a server on a free loopback port and runs this.)

Reference mapping (segment_anything's SamPredictor / the ONNX example notebook):
points (x, y) in original pixels -> ResizeLongestSide(L).apply_coords (x * new_w / w,
y * new_h / h); a box's two corners labelled 2 and 3 after the clicks; with no box a
padding point (0, 0) labelled -1; mask_input zeros and has_mask_input 0; orig_im_size
(H, W). The decoder's full-resolution `masks` output, thresholded at 0, is compared with
the server's RLE masks (token by token): IoU >= 0.99 and predicted IoU within 0.01.
The float16 download is checked the same way, with its agreement reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.request

import numpy as np
import onnxruntime as ort
from pycocotools import mask as mask_utils
from segment_anything.utils.transforms import ResizeLongestSide

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
HELDOUT = os.path.join(REPO, "tests", "fixtures", "heldout")


def http(method, url, body=None, ctype=None):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read(), dict(r.headers)


def post_json(url, obj):
    return json.loads(http("POST", url, json.dumps(obj).encode(), "application/json")[0])


def prompts_for(scene):
    """Centre click, bounding box, and click + box per whole object of some size."""
    out = []
    for o in scene["objects"]:
        if o["parent"] != -1 or o["area"] < 300:
            continue
        m = mask_utils.decode({"size": o["rle"]["size"], "counts": o["rle"]["counts"].encode()})
        ys, xs = np.nonzero(m)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        cx, cy = o["centre"]
        out.append({"points": [{"x": cx, "y": cy, "label": 1}]})
        out.append({"box": box})
        out.append({"points": [{"x": cx, "y": cy, "label": 1}, {"x": max(0.0, box[0] - 3), "y": max(0.0, box[1] - 3), "label": 0}], "box": box})
    return out


def reference(sess, emb, hw, L, prompt, multimask):
    H, W = hw
    tr = ResizeLongestSide(L)
    pts = prompt.get("points", [])
    coords = np.array([[p["x"], p["y"]] for p in pts], np.float64).reshape(-1, 2)
    labels = [float(p["label"]) for p in pts]
    coords = tr.apply_coords(coords, (H, W)) if len(pts) else np.zeros((0, 2))
    if "box" in prompt:
        b = tr.apply_boxes(np.array(prompt["box"], np.float64).reshape(1, 4), (H, W)).reshape(2, 2)
        coords = np.concatenate([coords, b], 0)
        labels += [2.0, 3.0]
    else:
        coords = np.concatenate([coords, np.zeros((1, 2))], 0)
        labels += [-1.0]
    feeds = {
        "image_embeddings": emb.astype(np.float32),
        "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array(labels, np.float32)[None],
        "mask_input": np.zeros((1, 1, emb.shape[-2] * 4, emb.shape[-1] * 4), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([H, W], np.float32),
    }
    names = [o.name for o in sess.get_inputs()]
    feeds = {k: v for k, v in feeds.items() if k in names}
    masks, iou = sess.run(["masks", "iou_predictions"], feeds)
    tokens = [1, 2, 3] if multimask else [0]
    return {t: (masks[0, t] > 0.0, float(iou[0, t])) for t in tokens}


def mask_iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--min-iou", type=float, default=0.99)
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for /readyz")
    ap.add_argument("--out", default=os.path.join(REPO, "target", "hybrid-parity.json"))
    args = ap.parse_args(argv)
    base = args.url.rstrip("/")
    deadline = time.monotonic() + args.wait
    while True:
        try:
            http("GET", f"{base}/readyz")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

    models = json.loads(http("GET", f"{base}/v1/models")[0])["models"]
    model = next(m for m in models if m["default"])
    L = model["input_size"]
    dec_bytes, dec_headers = http("GET", f"{base}/v1/models/{model['name']}/decoder.onnx")
    sess = ort.InferenceSession(dec_bytes, providers=["CPUExecutionProvider"])
    doc = json.load(open(os.path.join(HELDOUT, "objects.json")))

    n, worst, worst16, failures, score_gap = 0, 1.0, 1.0, [], 0.0
    for scene in doc["scenes"]:
        img = open(os.path.join(HELDOUT, scene["image"]), "rb").read()
        image_id = json.loads(http("POST", f"{base}/v1/images", img, "application/octet-stream")[0])["image_id"]
        raw, hdr = http("GET", f"{base}/v1/images/{image_id}/embedding")
        hdr = {k.lower(): v for k, v in hdr.items()}
        emb = np.load(io.BytesIO(raw))
        emb16 = np.load(io.BytesIO(http("GET", f"{base}/v1/images/{image_id}/embedding?dtype=float16")[0]))
        H, W = int(hdr["x-samserve-original-height"]), int(hdr["x-samserve-original-width"])
        assert (W, H) == (scene["width"], scene["height"]), (W, H)
        assert int(hdr["x-samserve-input-size"]) == L
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(H, W, L)
        assert (int(hdr["x-samserve-resized-height"]), int(hdr["x-samserve-resized-width"])) == (new_h, new_w)
        prompts = prompts_for(scene)
        resp = post_json(f"{base}/v1/images/{image_id}/segment", {"prompts": prompts})
        for prompt, result in zip(prompts, resp["results"]):
            multimask = "box" not in prompt and len(prompt.get("points", [])) == 1
            ref = reference(sess, emb, (H, W), L, prompt, multimask)
            ref16 = reference(sess, emb16, (H, W), L, prompt, multimask)
            assert len(result["masks"]) == len(ref), (prompt, len(result["masks"]))
            for m in result["masks"]:
                server = mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()}).astype(bool)
                want, score = ref[m["token"]]
                v = mask_iou(server, want)
                v16 = mask_iou(server, ref16[m["token"]][0])
                gap = abs(score - m["score"])
                n += 1
                worst, worst16, score_gap = min(worst, v), min(worst16, v16), max(score_gap, gap)
                if v < args.min_iou or gap > 0.01:
                    failures.append({"scene": scene["image"], "prompt": prompt, "token": m["token"], "iou": v, "score_gap": gap})
    summary = {
        "model": model["name"], "decoder_etag": dec_headers.get("ETag") or dec_headers.get("etag"),
        "masks": n, "min_iou_float32": worst, "min_iou_float16": worst16,
        "max_score_gap": score_gap, "failures": failures[:20], "threshold": args.min_iou,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    json.dump(summary, open(args.out, "w"), indent=1)
    print(f"hybrid parity: {n} masks, min IoU {worst:.4f} (float32 download), {worst16:.4f} (float16), "
          f"max score gap {score_gap:.4f}; {len(failures)} below IoU {args.min_iou} -> {args.out}")
    return 1 if failures or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
