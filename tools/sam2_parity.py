#!/usr/bin/env python3
"""Parity goldens for SAM 2 models from the official predictor, and a checker that
replays them against a running samserve.

  # goldens of the committed test model (tests/fixtures/sam2/cases.json)
  sam2_parity.py generate --model mini --checkpoint tests/fixtures/models/sam2-mini/checkpoint.pt
  # compare a running server (any model folder holding the same weights) with them
  sam2_parity.py check-server --url http://127.0.0.1:8080 --model NAME [--multimask-only]
  # both at once for another architecture (e.g. samexporter's hiera-tiny files)
  sam2_parity.py generate --model sam2.1_hiera_tiny --checkpoint ckpt.pt --out target/x.json

The reference is `sam2.sam2_image_predictor.SAM2ImagePredictor` (PyPI sam2==1.1.0) on the
weights of the checkpoint: set_image on the image as PIL decodes it (EXIF orientation,
RGB), predict() with the case's clicks, box(es), mask_input and multimask_output. Each
expected mask records its token (for single-mask answers, the one
_dynamic_multimask_via_stability chose), its predicted IoU, and its COCO RLE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
IMAGES = os.path.join(REPO, "tests", "fixtures", "parity", "images")
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "sam2", "cases.json")


def predictor_for(model: str, checkpoint: str):
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    import sam2_export

    torch.set_grad_enabled(False)
    return SAM2ImagePredictor(sam2_export.build(model, checkpoint))


def chosen_token(pred, coords, labels, box, mask_input, low_single) -> int:
    """Which token a single-mask answer came from: one of the multimask tokens 1-3 when
    its logits are theirs (the stability fallback), else token 0. The comparison allows
    float noise: a batched call (several boxes) rounds differently from this one."""
    _, _, low_multi = pred.predict(point_coords=coords, point_labels=labels, box=box, mask_input=mask_input,
                                   multimask_output=True)
    diffs = [float(np.abs(low_multi[t] - low_single).max()) for t in range(3)]
    best = int(np.argmin(diffs))
    return best + 1 if diffs[best] < 1e-3 else 0


def run_prompt(pred, p: Dict[str, Any], mask_input=None):
    coords = np.array([q[:2] for q in p["points"]], np.float64) if p["points"] else None
    labels = np.array([q[2] for q in p["points"]], np.int64) if p["points"] else None
    box = None if p["box"] is None else np.array(p["box"], np.float64)
    mm = p["multimask_output"]
    if mm is None:
        mm = box is None and len(p["points"]) == 1  # samserve's default (the reference's advice)
    masks, scores, low = pred.predict(point_coords=coords, point_labels=labels, box=box, mask_input=mask_input,
                                      multimask_output=mm)
    if mm:
        tokens = [1, 2, 3]
    else:
        tokens = [chosen_token(pred, coords, labels, box, mask_input, low[0])]
    order = np.argsort(-scores, kind="stable")
    return [(masks[i], float(scores[i]), low[i], tokens[i]) for i in order]


def run_boxes(pred, boxes: List[List[float]]):
    """Several boxes in one predict() call (the batched path, repeat_image=True), single
    mask each."""
    masks, scores, low = pred.predict(box=np.array(boxes, np.float64), multimask_output=False)
    out = []
    for i, b in enumerate(boxes):
        t = chosen_token(pred, None, None, np.array(b, np.float64), None, low[i, 0])
        out.append([(masks[i, 0], float(scores[i, 0]), low[i, 0], t)])
    return out


def case_specs():
    """Varied scenes and prompts: sizes from 97 px to 1200 px wide, all image formats,
    EXIF rotation; clicks, boxes, several boxes in one request, refinement, single and
    multi-mask answers."""
    from parity import interior_point, scene_masks

    def obj(name, k):
        ms = sorted(scene_masks(name), key=lambda m: -int(m.sum()))
        return ms[min(k, len(ms) - 1)]

    def pt(name, k, label=1):
        x, y, _ = interior_point(obj(name, k))
        return [x, y, label]

    def bg(name, k):
        x, y, _ = interior_point(~obj(name, k))
        return [x, y, 0]

    def box(name, k, pad=3.0):
        m = obj(name, k)
        ys, xs = np.nonzero(m)
        h, w = m.shape
        return [max(0.0, xs.min() - pad), max(0.0, ys.min() - pad), min(float(w), xs.max() + pad),
                min(float(h), ys.max() + pad)]

    def prompt(points=(), box_=None, mm=None):
        return {"points": [[float(p[0]), float(p[1]), int(p[2])] for p in points],
                "box": None if box_ is None else [float(v) for v in box_], "multimask_output": mm}

    C: List[Dict[str, Any]] = []

    def add(name, image, prompts, refine_from=None):
        C.append({"name": name, "image": image, "prompts": prompts, "refine_from": refine_from})

    a = "shapes_333x517.png"
    add("png-point", a, [prompt([pt(a, 0)])])
    add("png-fg-bg-single", a, [prompt([pt(a, 1), bg(a, 1)], mm=False)])
    add("png-box", a, [prompt(box_=box(a, 0))])
    b = "scene_640x480.jpg"
    add("jpeg-point", b, [prompt([pt(b, 0)], mm=True)])
    add("jpeg-box-point-multimask", b, [prompt([pt(b, 1)], box(b, 1), mm=True)])
    add("jpeg-boxes", b, [prompt(box_=box(b, k)) for k in range(4)])
    add("jpeg-refine-base", b, [prompt([pt(b, 2)], mm=True)])
    p2 = pt(b, 2)
    add("jpeg-refine", b, [prompt([p2, [p2[0] + 0.5, p2[1] + 7.25, 1]], mm=False)],
        refine_from={"case": "jpeg-refine-base", "mask_index": 0})
    c = "small_97x211.webp"
    add("webp-upscaled-point", c, [prompt([pt(c, 0)])])
    add("webp-upscaled-box", c, [prompt(box_=box(c, 1, pad=1.5), mm=True)])
    d = "large_1200x777.jpg"
    add("large-point", d, [prompt([pt(d, 0)])])
    add("large-fg-fg-bg-single", d, [prompt([pt(d, 0), pt(d, 1), bg(d, 0)], mm=False)])
    add("large-boxes", d, [prompt(box_=box(d, k)) for k in range(3)])
    e = "exif6_300x450.jpg"
    add("exif6-point", e, [prompt([pt(e, 0)])])
    add("exif6-box", e, [prompt(box_=box(e, 1))])
    g = "palette_400x300.gif"
    add("gif-box-point-single", g, [prompt([pt(g, 0)], box(g, 0), mm=False)])
    gr = "gray_256x384.png"
    add("gray-point", gr, [prompt([pt(gr, 0)])])
    rg = "rgba_410x290.png"
    add("rgba-refine-base", rg, [prompt([pt(rg, 1), bg(rg, 1)], mm=True)])
    add("rgba-refine", rg, [prompt([pt(rg, 1), bg(rg, 1), bg(rg, 2)], mm=True)],
        refine_from={"case": "rgba-refine-base", "mask_index": 0})
    wd = "wide_700x60.png"
    add("wide-point", wd, [prompt([pt(wd, 0)])])
    add("wide-box", wd, [prompt(box_=box(wd, 0))])
    add("png-edge-point", a, [prompt([[332.5, 516.5, 1]])])
    return C


def generate(args):
    from parity import dump_json, load_rgb, rle_record

    pred = predictor_for(args.model, args.checkpoint)
    low_cache: Dict[str, List[np.ndarray]] = {}
    out_cases = []
    current = None
    for cs in case_specs():
        path = os.path.join(IMAGES, cs["image"])
        rgb = load_rgb(path)
        if current != cs["image"]:
            pred.set_image(rgb)
            current = cs["image"]
        H, W = rgb.shape[:2]
        boxes_only = len(cs["prompts"]) > 1
        if boxes_only:
            assert all(not p["points"] and p["box"] is not None for p in cs["prompts"])
            answers = run_boxes(pred, [p["box"] for p in cs["prompts"]])
        else:
            mask_input = None
            if cs["refine_from"] is not None:
                src = cs["refine_from"]
                mask_input = low_cache[src["case"]][src["mask_index"]][None]
            answers = [run_prompt(pred, cs["prompts"][0], mask_input)]
        low_cache[cs["name"]] = [m[2] for m in answers[0]]
        expected = []
        for masks in answers:
            recs = []
            for m, s, low, t in masks:
                rec = {"score": round(s, 6), "token": t}
                rec.update(rle_record(m > 0))
                recs.append(rec)
            expected.append(recs)
        out_cases.append({"name": cs["name"], "image": "parity/images/" + cs["image"], "width": W, "height": H,
                          "prompts": cs["prompts"], "refine_from": cs["refine_from"], "expected": expected})
        print(f"{cs['name']:28s} {H:>4d}x{W:<5d} " + " | ".join(
            "  ".join(f"t{e['token']}:{e['area']}/{e['score']:.3f}" for e in recs) for recs in expected))
    singles = [e["token"] for c in out_cases for recs in c["expected"] for e in recs
               if len(recs) == 1]
    print(f"{len(out_cases)} cases; single-mask answers chose tokens {sorted(set(singles))} "
          f"({sum(t != 0 for t in singles)} of {len(singles)} fell back to a multimask token)")
    doc = {
        "generated_by": "tools/sam2_parity.py",
        "reference": "sam2==1.1.0 SAM2ImagePredictor",
        "model": args.model,
        "schema": {
            "cases[].image": "path relative to tests/fixtures",
            "cases[].prompts": "the prompts of one request: points [[x, y, label]] in original upright pixels, "
                               "box [x0, y0, x1, y1] or null, multimask_output true/false/null (null: samserve's "
                               "default, true for one click without box)",
            "cases[].refine_from": "null, or {case, mask_index}: prompt 0's mask_input is that case's "
                                   "expected[0][mask_index] low-res logits (its logits_handle)",
            "cases[].expected": "per prompt, masks sorted by predicted IoU descending: token (0-3; for single-mask "
                                "answers the token _dynamic_multimask_via_stability chose), score, area, bbox, rle",
        },
        "cases": out_cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    dump_json(doc, args.out)
    print(f"wrote {args.out}")


# Segment everything: with random weights every mask spans the image (and touches every
# crop's edge, so crop layers would keep none), so the filters are off (pred_iou 0,
# stability 0, NMS 1.0 keeps all but identical boxes) and every decoded mask is compared.
EVERYTHING = [
    ("shapes_333x517.png", {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                            "box_nms_thresh": 1.0}),
    ("small_97x211.webp", {"points_per_side": 4, "points_per_batch": 5, "pred_iou_thresh": 0.0,
                           "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}),
]


def everything(args):
    """Goldens of SAM2AutomaticMaskGenerator (tests/fixtures/sam2/everything.json)."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    import sam2_export
    from amg_parity import record_of
    from parity import dump_json, load_rgb

    torch.set_grad_enabled(False)
    m = sam2_export.build(args.model, args.checkpoint)
    cases = []
    for name, params in EVERYTHING:
        rgb = load_rgb(os.path.join(IMAGES, name))
        anns = SAM2AutomaticMaskGenerator(m, output_mode="binary_mask", **params).generate(rgb)
        print(f"{name}: {len(anns)} masks with {params}")
        cases.append({"image": "parity/images/" + name, "width": rgb.shape[1], "height": rgb.shape[0],
                      "params": params, "records": [record_of(a) for a in anns]})
    dump_json({"generated_by": "tools/sam2_parity.py everything", "reference": "sam2==1.1.0 SAM2AutomaticMaskGenerator",
               "model": args.model, "cases": cases}, args.out)
    print(f"wrote {args.out}")


def check_server(args):
    """Replays the goldens against a running server (or one it starts with --serve) and
    prints per-mask IoU, mean and worst."""
    if args.serve:
        import socket
        import subprocess
        import time
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = dict(os.environ, ORT_DYLIB_PATH=os.path.join(REPO, ".ort", "lib", "libonnxruntime.so"))
        proc = subprocess.Popen([args.serve, "--model", args.model_dir, "--port", str(port),
                                 "--request-timeout-ms", "0"], env=env)
        args.url, args.serve = f"http://127.0.0.1:{port}", None
        try:
            t0 = time.time()
            while True:
                if proc.poll() is not None:
                    sys.exit(f"server exited with {proc.returncode}")
                try:
                    with urllib.request.urlopen(args.url + "/readyz", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.time() - t0 > 600:
                    sys.exit("server not ready in time")
                time.sleep(0.5)
            return check_server(args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    import urllib.request

    from pycocotools import mask as mu

    def call(method, url, body=None, ctype=None):
        req = urllib.request.Request(url, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    doc = json.load(open(args.cases))
    base = args.url.rstrip("/")
    q = f"?model={args.model}" if args.model else ""
    ids, handles, ious, failures = {}, {}, [], []
    for case in doc["cases"]:
        multimask = [bool(p["multimask_output"] if p["multimask_output"] is not None else
                          (p["box"] is None and len(p["points"]) == 1)) for p in case["prompts"]]
        if args.multimask_only and not all(multimask):
            continue
        if case["refine_from"] and case["refine_from"]["case"] not in handles:
            continue
        img = case["image"]
        if img not in ids:
            with open(os.path.join(REPO, "tests", "fixtures", img), "rb") as f:
                ids[img] = call("POST", f"{base}/v1/images{q}", f.read(), "application/octet-stream")["image_id"]
        prompts = []
        for i, p in enumerate(case["prompts"]):
            pr: Dict[str, Any] = {"points": [{"x": x, "y": y, "label": l} for x, y, l in p["points"]]}
            if p["box"] is not None:
                pr["box"] = p["box"]
            pr["multimask_output"] = multimask[i]
            if i == 0 and case["refine_from"]:
                pr["mask_input"] = handles[case["refine_from"]["case"]][case["refine_from"]["mask_index"]]
            prompts.append(pr)
        r = call("POST", f"{base}/v1/images/{ids[img]}/segment{q}",
                 json.dumps({"prompts": prompts, "return_logits": True}).encode(), "application/json")
        handles[case["name"]] = [m["logits_handle"] for m in r["results"][0]["masks"]]
        msg = []
        for res, exp in zip(r["results"], case["expected"]):
            if len(res["masks"]) != len(exp):
                failures.append(f"{case['name']}: {len(res['masks'])} masks, expected {len(exp)}")
                continue
            for m, e in zip(res["masks"], exp):
                got = mu.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()}).astype(bool)
                want = mu.decode({"size": e["rle"]["size"], "counts": e["rle"]["counts"].encode()}).astype(bool)
                u = np.logical_or(got, want).sum()
                iou = 1.0 if u == 0 else float(np.logical_and(got, want).sum() / u)
                ious.append(iou)
                msg.append(f"t{m['token']}/{e['token']} iou={iou:.4f} ds={abs(m['score'] - e['score']):.1e}")
                if m["token"] != e["token"] and not args.multimask_only:
                    failures.append(f"{case['name']}: token {m['token']}, reference {e['token']}")
        print(f"{case['name']:28s} " + "; ".join(msg))
    mean, worst = float(np.mean(ious)), float(np.min(ious))
    print(f"{len(ious)} masks: mean IoU {mean:.4f}, worst {worst:.4f}; {len(failures)} failure(s)")
    for f in failures:
        print("  " + f)
    ok = not failures and mean >= args.min_mean and worst >= args.min_worst
    print("parity ok" if ok else "parity FAILED")
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", default="mini")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--out", default=DEFAULT_OUT)
    e = sub.add_parser("everything", help="segment-everything goldens")
    e.add_argument("--model", default="mini")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "sam2", "everything.json"))
    c = sub.add_parser("check-server")
    c.add_argument("--url", default="http://127.0.0.1:8080")
    c.add_argument("--serve", metavar="BINARY", help="start this samserve on --model-dir instead of using --url")
    c.add_argument("--model-dir", help="the model folder --serve loads")
    c.add_argument("--model", help="?model= of the requests (default: the server's default model)")
    c.add_argument("--cases", default=DEFAULT_OUT)
    c.add_argument("--multimask-only", action="store_true",
                   help="only requests whose prompts all ask for 3 masks (a decoder exporting only tokens 1-3)")
    c.add_argument("--min-mean", type=float, default=0.99)
    c.add_argument("--min-worst", type=float, default=0.97)
    a = ap.parse_args(argv)
    return {"generate": generate, "everything": everything, "check-server": check_server}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main() or 0)
