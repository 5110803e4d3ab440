#!/usr/bin/env python3
"""Reference SAM pipeline and golden fixtures for samserve.

Subcommands
-----------
generate (default)
    Writes
      tests/fixtures/parity/images/*       test images (PNG, JPEG, WebP, BMP, TIFF, GIF,
                                            EXIF-rotated JPEGs, grayscale and RGBA PNG)
      tests/fixtures/parity/cases.json     prompts + expected masks (COCO RLE), scores
      tests/fixtures/rle/cases.json        small masks + pycocotools compressed RLE
      tests/fixtures/resize/cases.json     PIL bilinear resize cases (+ PNG images)
    The expected outputs come from the REFERENCE pipeline below, run with
    onnxruntime on models/<model>/encoder.onnx + decoder.onnx.

check-server --url http://127.0.0.1:8080
    Replays every parity case against a running samserve and compares the
    returned masks with the goldens (IoU, score). API: POST /v1/images (raw
    bytes) -> {image_id, width, height}; POST /v1/images/{id}/segment with
    {"prompts": [{"points": [{x, y, label}], "box": [..], "mask_input": handle,
    "multimask_output": b}], "output": "rle", "return_logits": true} ->
    {"results": [{"masks": [{score, rle: {size, counts}, logits_handle}]}]}.

Reference pipeline (what the server must reproduce)
---------------------------------------------------
 1. PIL.Image.open, ImageOps.exif_transpose, .convert("RGB") (alpha is DROPPED,
    not composited; grayscale replicated; palette looked up), uint8 HWC.
 2. ResizeLongestSide(L).apply_image: new_h = int(h*s + 0.5), new_w = int(w*s + 0.5),
    s = L / max(h, w); torchvision resize of a PIL image == PIL Image.resize((new_w,
    new_h), Image.BILINEAR) (antialiased triangle filter; checked bit-exactly here).
 3. float32 (x - mean) / std per channel, then zero-pad bottom/right to L x L
    (Sam.preprocess), NCHW [1, 3, L, L] -> encoder.onnx input "image".
 4. Points (x, y) in original upright pixels -> model frame: x * new_w / w,
    y * new_h / h (ResizeLongestSide.apply_coords, float64, then float32).
    Box XYXY -> two points labelled 2 and 3 appended after the clicks. With no box,
    a padding point (0, 0) label -1 is appended.
 5. mask_input: an earlier case's low-res logits [1, 1, L/4, L/4] with
    has_mask_input = 1, else zeros and 0. orig_im_size = (H, W) float32.
 6. decoder.onnx -> masks [1, 4, H, W] logits; multimask_output (default: true
    exactly when the prompt is one point and no box) keeps tokens 1..3, else token
    0. Masks are sorted by predicted IoU, descending (stable), and binarized at
    logit > 0.

Each case is screened: on +-1-perturbed pixels it must give the same masks
(IoU >= 0.99) in the same order, else its prompt is nudged (deterministically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIX = os.path.join(REPO, "tests", "fixtures")


def dump_json(obj, path: str) -> None:
    """Indented JSON with lists of scalars kept on one line."""

    def fmt(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f'{pad} {json.dumps(k)}: {fmt(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(v, (dict, list)) for v in o):
                return json.dumps(o)
            items = [pad + " " + fmt(v, ind + 1) for v in o]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        return json.dumps(o)

    text = fmt(obj, 0) + "\n"
    assert json.loads(text) == obj
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------
# Reference pipeline
# ---------------------------------------------------------------------------


def load_rgb(path: str) -> np.ndarray:
    """Decode + EXIF orientation + RGB uint8 HWC, as the reference does."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.array(im.convert("RGB"))


class Reference:
    def __init__(self, model_dir: str, threads: int = 2) -> None:
        import onnxruntime as ort
        from samtiny import load_manifest

        self.man = load_manifest(model_dir)
        self.L = int(self.man["input_size"])
        self.mean = np.array(self.man["pixel_mean"], np.float32).reshape(3, 1, 1)
        self.std = np.array(self.man["pixel_std"], np.float32).reshape(3, 1, 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        prov = ["CPUExecutionProvider"]
        self.enc = ort.InferenceSession(os.path.join(model_dir, self.man["encoder"]), so, providers=prov)
        self.dec = ort.InferenceSession(os.path.join(model_dir, self.man["decoder"]), so, providers=prov)
        from segment_anything.utils.transforms import ResizeLongestSide

        self.tr = ResizeLongestSide(self.L)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        small = self.tr.apply_image(rgb)  # PIL bilinear via torchvision
        x = small.transpose(2, 0, 1).astype(np.float32)
        x = (x - self.mean) / self.std
        h, w = small.shape[:2]
        out = np.zeros((1, 3, self.L, self.L), np.float32)
        out[0, :, :h, :w] = x
        return out

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        return self.enc.run(["image_embeddings"], {"image": self.preprocess(rgb)})[0]

    def decoder_feeds(self, emb, hw, points, box, mask_input):
        H, W = hw
        pts = np.array([[p[0], p[1]] for p in points], dtype=np.float64).reshape(-1, 2)
        labels = [float(p[2]) for p in points]
        coords = self.tr.apply_coords(pts, (H, W)) if len(pts) else np.zeros((0, 2))
        if box is not None:
            b = self.tr.apply_boxes(np.array(box, dtype=np.float64).reshape(1, 4), (H, W)).reshape(2, 2)
            coords = np.concatenate([coords, b], 0)
            labels += [2.0, 3.0]
        else:
            coords = np.concatenate([coords, np.zeros((1, 2))], 0)
            labels += [-1.0]
        g = emb.shape[-1] * 4
        if mask_input is None:
            mi = np.zeros((1, 1, emb.shape[-2] * 4, g), np.float32)
            has = np.zeros(1, np.float32)
        else:
            mi = mask_input.reshape(1, 1, emb.shape[-2] * 4, g).astype(np.float32)
            has = np.ones(1, np.float32)
        return {
            "image_embeddings": emb,
            "point_coords": coords[None].astype(np.float32),
            "point_labels": np.array(labels, np.float32)[None],
            "mask_input": mi,
            "has_mask_input": has,
            "orig_im_size": np.array([H, W], np.float32),
        }

    def predict(self, emb, hw, points, box, multimask: Optional[bool], mask_input=None):
        feeds = self.decoder_feeds(emb, hw, points, box, mask_input)
        masks, iou, low = self.dec.run(["masks", "iou_predictions", "low_res_masks"], feeds)
        mm = default_multimask(points, box) if multimask is None else bool(multimask)
        sl = slice(1, 4) if mm else slice(0, 1)
        masks, iou, low = masks[0, sl], iou[0, sl], low[0, sl]
        order = np.argsort(-iou, kind="stable")
        return masks[order], iou[order], low[order], mm


def default_multimask(points, box) -> bool:
    return box is None and len(points) == 1


# ---------------------------------------------------------------------------
# Test images
# ---------------------------------------------------------------------------


def interior_point(mask: np.ndarray, frac: float = 1.0):
    """A point well inside `mask` (max of the distance transform, scaled)."""
    import cv2

    d = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return float(x), float(y), float(d[y, x])


# name, width, height, format, seed, extra
IMAGE_SPECS = [
    # name, width, height, format, seed, extra
    ("shapes_333x517.png", 333, 517, "png", 11, {}),
    ("scene_640x480.jpg", 640, 480, "jpeg", 12, {}),
    ("small_97x211.webp", 97, 211, "webp", 13, {}),
    ("large_1200x777.jpg", 1200, 777, "jpeg", 14, {"noise": 2.0}),
    ("square_512x512.tiff", 512, 512, "tiff", 15, {"noise": 0.0}),
    ("bitmap_301x203.bmp", 301, 203, "bmp", 16, {}),
    ("palette_400x300.gif", 400, 300, "gif", 17, {"noise": 0.0}),
    ("exif6_300x450.jpg", 300, 450, "jpeg", 18, {"orientation": 6}),
    ("exif8_520x260.jpg", 520, 260, "jpeg", 19, {"orientation": 8}),
    ("gray_256x384.png", 256, 384, "png-gray", 20, {}),
    ("rgba_410x290.png", 410, 290, "png-rgba", 21, {}),
    ("wide_700x60.png", 700, 60, "png", 22, {"shapes": 3}),
]


def scene_masks(name: str):
    """The upright instance masks of one of the IMAGE_SPECS scenes, regenerated from its
    seed (the image files are committed; this gives other tools the objects in them)."""
    from samtiny import synth_scene

    _, w, h, _, seed, extra = next(s for s in IMAGE_SPECS if s[0] == name)
    rng = np.random.default_rng(seed)
    _, masks = synth_scene(rng, w, h, n_shapes=extra.get("shapes", 5), noise=extra.get("noise", 3.0))
    return masks


def make_images(out_dir: str):
    """Generate the test images. Returns {name: info} with the upright RGB
    array (as generated, before lossy coding) and instance masks."""
    from PIL import Image

    from samtiny import synth_scene

    os.makedirs(out_dir, exist_ok=True)
    specs = IMAGE_SPECS
    info = {}
    for name, w, h, fmt, seed, extra in specs:
        rng = np.random.default_rng(seed)
        rgb, masks = synth_scene(rng, w, h, n_shapes=extra.get("shapes", 5), noise=extra.get("noise", 3.0))
        path = os.path.join(out_dir, name)
        im = Image.fromarray(rgb, "RGB")
        if fmt == "png":
            im.save(path, optimize=True)
        elif fmt == "png-gray":
            im.convert("L").save(path, optimize=True)
        elif fmt == "png-rgba":
            yy, xx = np.mgrid[0:h, 0:w]
            alpha = (40 + 215 * (xx / max(w - 1, 1))).astype(np.uint8)  # varying alpha: must be dropped, not blended
            rgba = np.dstack([rgb, alpha])
            Image.fromarray(rgba, "RGBA").save(path, optimize=True)
        elif fmt == "jpeg":
            ori = extra.get("orientation")
            if ori is None:
                im.save(path, quality=95, subsampling=0)
            else:
                # Store the pixels rotated so that exif_transpose brings back the upright scene.
                inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
                stored = im.transpose(inverse[ori])
                exif = Image.Exif()
                exif[0x0112] = ori
                stored.save(path, quality=95, subsampling=0, exif=exif.tobytes())
        elif fmt == "webp":
            im.save(path, lossless=True, quality=100, method=6)
        elif fmt == "tiff":
            im.save(path, compression="tiff_lzw")
        elif fmt == "bmp":
            im.save(path)
        elif fmt == "gif":
            im.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path)
        else:
            raise ValueError(fmt)
        up = load_rgb(path)
        assert up.shape[:2] == (h, w), (name, up.shape)
        if "orientation" in extra:
            with Image.open(path) as raw:
                assert raw.size == (h, w), "stored pixels must be rotated"
            assert np.abs(up.astype(int) - rgb.astype(int)).mean() < 4, name
        info[name] = {"rgb": up, "masks": masks, "w": w, "h": h}
    return info


# ---------------------------------------------------------------------------
# Parity cases
# ---------------------------------------------------------------------------


def case_specs(info) -> List[Dict[str, Any]]:
    """Prompts for every case, derived deterministically from the scenes."""

    def big(name, k):
        ms = sorted(info[name]["masks"], key=lambda m: -int(m.sum()))
        return ms[min(k, len(ms) - 1)]

    def pt(name, k, label=1):
        x, y, _ = interior_point(big(name, k))
        return [x, y, label]

    def bg(name, k):
        # A background point far from shape k.
        m = big(name, k)
        x, y, _ = interior_point(~m)
        return [x, y, 0]

    def box(name, k, pad=3.0):
        m = big(name, k)
        ys, xs = np.nonzero(m)
        W, H = info[name]["w"], info[name]["h"]
        return [
            max(0.0, float(xs.min()) - pad),
            max(0.0, float(ys.min()) - pad),
            min(float(W), float(xs.max()) + pad),
            min(float(H), float(ys.max()) + pad),
        ]

    C: List[Dict[str, Any]] = []

    def add(name, image, points=(), box_=None, multimask=None, refine_from=None):
        C.append(
            {
                "name": name,
                "image": image,
                "points": [list(map(float, p[:2])) + [int(p[2])] for p in points],
                "box": None if box_ is None else [float(v) for v in box_],
                "multimask_output": multimask,
                "refine_from": refine_from,
            }
        )

    a = "shapes_333x517.png"
    add("png-point", a, [pt(a, 0)])
    add("png-point-single", a, [pt(a, 0)], multimask=False)
    add("png-fg-bg", a, [pt(a, 1), bg(a, 1)])
    add("png-box", a, box_=box(a, 0))
    b = "scene_640x480.jpg"
    add("jpeg-point", b, [pt(b, 0)])
    add("jpeg-box-points", b, [pt(b, 1), bg(b, 1)], box_=box(b, 1))
    add("jpeg-refine-base", b, [pt(b, 2)])
    p2 = pt(b, 2)
    add("jpeg-refine", b, [p2, [p2[0] + 0.5, p2[1] + 7.25, 1]],
        refine_from={"case": "jpeg-refine-base", "mask_index": 0})
    c = "small_97x211.webp"
    add("webp-upscaled-point", c, [pt(c, 0)])
    add("webp-upscaled-box", c, box_=box(c, 1, pad=1.5))
    d = "large_1200x777.jpg"
    add("large-point", d, [pt(d, 0)])
    add("large-fg-fg-bg", d, [pt(d, 0), pt(d, 1), bg(d, 0)])
    add("large-box-multimask", d, box_=box(d, 0), multimask=True)
    e = "square_512x512.tiff"
    add("tiff-point", e, [pt(e, 0)])
    add("tiff-box", e, box_=box(e, 1))
    f = "bitmap_301x203.bmp"
    add("bmp-point", f, [pt(f, 1)])
    add("bmp-fg-bg-single", f, [pt(f, 0), bg(f, 0)], multimask=False)
    g = "palette_400x300.gif"
    add("gif-point", g, [pt(g, 0)])
    add("gif-box-point", g, [pt(g, 0)], box_=box(g, 0))
    h6 = "exif6_300x450.jpg"
    add("exif6-point", h6, [pt(h6, 0)])
    add("exif6-box", h6, box_=box(h6, 1))
    h8 = "exif8_520x260.jpg"
    add("exif8-point", h8, [pt(h8, 0)])
    add("exif8-fg-bg", h8, [pt(h8, 1), bg(h8, 1)])
    gr = "gray_256x384.png"
    add("gray-point", gr, [pt(gr, 0)])
    add("gray-box", gr, box_=box(gr, 0))
    rg = "rgba_410x290.png"
    add("rgba-point", rg, [pt(rg, 0)])
    add("rgba-refine-base", rg, [pt(rg, 1), bg(rg, 1)])
    add("rgba-refine", rg, [pt(rg, 1), bg(rg, 1), bg(rg, 2)],
        refine_from={"case": "rgba-refine-base", "mask_index": 0})
    wd = "wide_700x60.png"
    add("wide-point", wd, [pt(wd, 0)])
    add("wide-box", wd, box_=box(wd, 0))
    # Edge coordinates and fractional positions.
    add("png-edge-point", a, [[332.5, 516.5, 1]])
    add("jpeg-fractional-points", b, [[100.25, 50.75, 1], [101.5, 300.125, 1]])
    return C


def rle_record(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "area": int(mu.area(r)),
        "bbox": [float(v) for v in mu.toBbox(r)],
        "rle": {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")},
    }


def torch_crosscheck(model_dir, rgb, points, box, multimask, mask_input):
    """Same prompt through segment_anything.SamPredictor on the rebuilt checkpoint."""
    import torch
    from segment_anything import SamPredictor

    from samtiny import load_sam

    global _PRED
    try:
        _PRED
    except NameError:
        _PRED = SamPredictor(load_sam(model_dir))
    _PRED.set_image(rgb)
    pc = np.array([p[:2] for p in points], np.float64) if points else None
    pl = np.array([p[2] for p in points]) if points else None
    with torch.no_grad():
        m, s, low = _PRED.predict(
            point_coords=pc,
            point_labels=pl,
            box=None if box is None else np.array(box),
            mask_input=None if mask_input is None else mask_input.reshape(1, *mask_input.shape[-2:]),
            multimask_output=multimask,
        )
    order = np.argsort(-s, kind="stable")
    return m[order], s[order]


ROBUST_IOU = 0.99
NUDGES = [(0, 0), (5, 3), (-5, 4), (4, -6), (-7, -5), (10, 0), (0, 10), (-10, 0), (0, -10), (14, 9), (-12, 13), (9, -14)]
NUDGES += [(20, 0), (0, 20), (-20, 0), (0, -20), (25, 25), (-25, 25), (25, -25), (-25, -25), (35, 0), (0, 35), (-35, 0), (0, -35)]


def perturb(rgb: np.ndarray, seed: int) -> np.ndarray:
    """+-1 on about 30 % of the samples (deterministic)."""
    rng = np.random.default_rng(1000 + seed)
    noise = rng.integers(-1, 2, rgb.shape) * (rng.random(rgb.shape) < 0.3)
    return np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def prompt_variants(cs, W, H):
    """The case itself, then small deterministic nudges of its prompt."""
    for i, (dx, dy) in enumerate(NUDGES):
        v = dict(cs)
        v["points"] = [
            [min(max(p[0] + dx, 0.0), W - 0.5), min(max(p[1] + dy, 0.0), H - 0.5), p[2]] for p in cs["points"]
        ]
        if cs["box"] is not None:
            g = float(i % 12)  # grow the box by a few px on every side, and shift it a little
            b = [cs["box"][0] + dx / 2, cs["box"][1] + dy / 2, cs["box"][2] + dx / 2, cs["box"][3] + dy / 2]
            v["box"] = [max(b[0] - g, 0.0), max(b[1] - g, 0.0), min(b[2] + g, float(W)), min(b[3] + g, float(H))]
        yield v


def robustness(runs) -> float:
    """Worst IoU between the golden run and the perturbed runs (mask by mask,
    in score order); 0 when the mask order or count changes."""
    masks0, scores0 = runs[0][0], runs[0][1]
    worst = 1.0
    for masks, scores, _, _ in runs[1:]:
        if len(masks) != len(masks0):
            return 0.0
        for a, b in zip(masks0, masks):
            a, b = a > 0, b > 0
            u = np.logical_or(a, b).sum()
            worst = min(worst, 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u))
        if len(scores0) > 1 and float(np.min(scores0[:-1] - scores0[1:])) < 0.01:
            worst = min(worst, 0.0)  # order could flip on a tiny difference
    return worst


def generate(args):
    model_dir = os.path.join(REPO, "models", args.model)
    ref = Reference(model_dir)
    img_dir = os.path.join(FIX, "parity", "images")
    info = make_images(img_dir)
    specs = case_specs(info)
    emb_cache: Dict[str, List[np.ndarray]] = {}
    # low-res logits per case: [golden, perturbed 1, perturbed 2]
    low_cache: Dict[str, List[np.ndarray]] = {}
    out_cases = []
    nonempty = 0
    min_gap = float("inf")
    n_moved = 0
    fragile = []
    print(f"{'case':28s} {'HxW':>10s} mm  masks: area/score")
    for cs0 in specs:
        name = cs0["image"]
        rgb = info[name]["rgb"]
        H, W = rgb.shape[:2]
        if name not in emb_cache:
            emb_cache[name] = [ref.embed(rgb)] + [ref.embed(perturb(rgb, k)) for k in (1, 2)]
        # Robustness screening: the golden must not hinge on the last bit of the
        # input. The same prompt on +-1 perturbed pixels (a stand-in for a JPEG
        # decoder that rounds differently) must give the same masks (IoU >= 0.99)
        # in the same order; otherwise try the next small deterministic nudge of
        # the prompt.
        for vi, cs in enumerate(prompt_variants(cs0, W, H)):
            runs = []
            for k in range(3):
                mask_input = None
                if cs["refine_from"] is not None:
                    mask_input = low_cache[cs["refine_from"]["case"]][k][cs["refine_from"]["mask_index"]]
                runs.append(
                    ref.predict(emb_cache[name][k], (H, W), cs["points"], cs["box"], cs["multimask_output"], mask_input)
                )
            worst = robustness(runs)
            if worst >= ROBUST_IOU:
                break
        else:
            cs = cs0
            vi = 0
            runs = []
            for k in range(3):
                mask_input = None
                if cs["refine_from"] is not None:
                    mask_input = low_cache[cs["refine_from"]["case"]][k][cs["refine_from"]["mask_index"]]
                runs.append(
                    ref.predict(emb_cache[name][k], (H, W), cs["points"], cs["box"], cs["multimask_output"], mask_input)
                )
            worst = robustness(runs)
            fragile.append(cs["name"])
        n_moved += 1 if vi else 0
        masks, scores, low, mm = runs[0]
        mask_input = None
        if cs["refine_from"] is not None:
            mask_input = low_cache[cs["refine_from"]["case"]][0][cs["refine_from"]["mask_index"]]
        low_cache[cs["name"]] = [r[2] for r in runs]
        expected = []
        for m, s in zip(masks, scores):
            rec = {"score": round(float(s), 6)}
            rec.update(rle_record(m > 0))
            rec["near_threshold_pixels"] = int((np.abs(m) < 0.05).sum())
            expected.append(rec)
        # Cross-check the ONNX pipeline against segment_anything's own SamPredictor.
        tm, ts = torch_crosscheck(model_dir, rgb, cs["points"], cs["box"], mm, mask_input)
        for m, t in zip(masks, tm):
            a, bb = m > 0, t
            inter = np.logical_and(a, bb).sum()
            union = np.logical_or(a, bb).sum()
            iou = 1.0 if union == 0 else inter / union
            assert iou > 0.995, (cs["name"], iou)
        assert np.allclose(np.sort(ts)[::-1], scores, atol=1e-4), (cs["name"], ts, scores)
        if len(scores) > 1:
            gap = float(np.min(scores[:-1] - scores[1:]))
            min_gap = min(min_gap, gap)
        if any(e["area"] > 0 for e in expected):
            nonempty += 1
        print(
            f"{cs['name']:28s} {H:>4d}x{W:<5d} {'T' if mm else 'F'}   "
            + "  ".join(f"{e['area']}/{e['score']:.3f}" for e in expected)
            + f"   [perturbed IoU >= {worst:.4f}{', prompt nudge #%d' % vi if vi else ''}]"
        )
        out_cases.append(
            {
                "name": cs["name"],
                "image": "images/" + name,
                "width": W,
                "height": H,
                "prompt": {
                    "points": cs["points"],
                    "box": cs["box"],
                    "multimask_output": cs["multimask_output"],
                },
                "multimask_effective": mm,
                "refine_from": cs["refine_from"],
                "expected": expected,
            }
        )
    print(f"{len(out_cases)} cases, {nonempty} with non-empty masks; smallest score gap in a case {min_gap:.4f}")
    print(f"{n_moved} prompts nudged for robustness; fragile: {fragile or 'none'}")
    # A case no nudge makes robust would make the Rust test flaky on a decoder that
    # rounds differently: drop it (and any case refining from it) rather than the
    # whole set; the floors below keep the set meaningful.
    dropped = set(fragile)
    for c in out_cases:
        if c["refine_from"] is not None and c["refine_from"]["case"] in dropped:
            dropped.add(c["name"])
    if dropped:
        print(f"dropped fragile cases: {sorted(dropped)}")
    out_cases = [c for c in out_cases if c["name"] not in dropped]
    nonempty = sum(1 for c in out_cases if any(m["area"] > 0 for m in c["expected"]))
    assert min_gap > 1e-3, "mask order would be fragile"
    assert len(out_cases) >= 20, len(out_cases)
    assert nonempty >= 15, nonempty
    doc = {
        "model": args.model,
        "model_dir": f"models/{args.model}",
        "generated_by": "tools/parity.py",
        "input_size": ref.L,
        "schema": {
            "cases[].image": "path relative to this file",
            "cases[].width/height": "upright size (after EXIF orientation)",
            "cases[].prompt.points": "[[x, y, label], ...] original upright pixels, label 1 fg / 0 bg",
            "cases[].prompt.box": "[x0, y0, x1, y1] or null",
            "cases[].prompt.multimask_output": "true/false, or null = default (true iff exactly one point and no box)",
            "cases[].multimask_effective": "the value the reference used",
            "cases[].refine_from": "null, or {case, mask_index}: mask_input = low-res logits of that earlier case's "
            "expected[mask_index] (masks sorted by score), has_mask_input = 1",
            "cases[].expected": "masks sorted by predicted IoU descending: score (predicted IoU), area, "
            "bbox [x, y, w, h] (pycocotools toBbox), rle {size: [H, W], counts: COCO compressed string}, "
            "near_threshold_pixels (pixels with |logit| < 0.05: where tiny numeric differences may flip)",
        },
        "cases": out_cases,
    }
    dump_json(doc, os.path.join(FIX, "parity", "cases.json"))


# ---------------------------------------------------------------------------
# RLE and resize fixtures
# ---------------------------------------------------------------------------


def generate_rle():
    from pycocotools import mask as mu

    rng = np.random.default_rng(3)
    cases = []

    def add(name, m):
        m = np.asarray(m, dtype=np.uint8)
        r = mu.encode(np.asfortranarray(m))
        # Round-trip check.
        assert np.array_equal(mu.decode(r), m)
        cases.append(
            {
                "name": name,
                "height": int(m.shape[0]),
                "width": int(m.shape[1]),
                "mask": ["".join("1" if v else "0" for v in row) for row in m],
                "counts": r["counts"].decode("ascii"),
                "area": int(mu.area(r)),
                "bbox": [float(v) for v in mu.toBbox(r)],
            }
        )

    add("1x1-zero", np.zeros((1, 1)))
    add("1x1-one", np.ones((1, 1)))
    add("5x7-zero", np.zeros((5, 7)))
    add("5x7-one", np.ones((5, 7)))
    first = np.zeros((5, 7))
    first[0, 0] = 1
    add("5x7-first-pixel", first)
    last = np.zeros((5, 7))
    last[-1, -1] = 1
    add("5x7-last-pixel", last)
    add("5x7-checker", (np.indices((5, 7)).sum(0) % 2) == 0)
    add("37x53-random", rng.random((37, 53)) < 0.5)
    yy, xx = np.mgrid[0:64, 0:64]
    add("64x64-disc", (xx - 30.5) ** 2 + (yy - 20) ** 2 < 18**2)
    add("64x64-checker-8", ((xx // 8 + yy // 8) % 2) == 1)
    add("64x64-sparse-random", rng.random((64, 64)) < 0.03)
    add("3x200-stripes", (np.indices((3, 200))[1] // 7) % 2 == 0)
    big = np.zeros((120, 90), np.uint8)
    big[10:100, 5:80] = 1  # long runs (multi-byte counts)
    add("120x90-rect", big)
    out = os.path.join(FIX, "rle")
    os.makedirs(out, exist_ok=True)
    dump_json(
            {
                "generated_by": "tools/parity.py",
                "schema": "mask: H strings of W '0'/'1' chars (row-major); counts: pycocotools compressed RLE "
                "of the column-major (Fortran) mask; area and bbox [x, y, w, h] from pycocotools",
                "cases": cases,
            },
            os.path.join(out, "cases.json"),
        )
    print(f"rle: {len(cases)} cases")


def generate_resize():
    from PIL import Image
    from torchvision.transforms.functional import resize, to_pil_image
    from segment_anything.utils.transforms import ResizeLongestSide

    from samtiny import synth_scene

    out = os.path.join(FIX, "resize")
    os.makedirs(out, exist_ok=True)
    pairs = [
        (1200, 777, 512),  # downscale, antialias
        (97, 211, 512),  # upscale
        (333, 517, 512),  # odd sizes
        (1536, 1001, 512),  # factor 3 downscale
        (640, 480, 512),
        (53, 41, None, (17, 13)),  # odd small, target not derived from L
        (700, 60, 512),  # extreme aspect
    ]
    cases = []
    for i, p in enumerate(pairs):
        w, h = p[0], p[1]
        rng = np.random.default_rng(100 + i)
        rgb, _ = synth_scene(rng, w, h, n_shapes=4, noise=0.0)
        # High-frequency content (stripes, a noise patch) so the filter taps matter.
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = ((xx // 2 + yy // 3) % 2 == 0)
        band = (xx > w // 3) & (xx < w // 2)
        rgb[band & stripes] = 255 - rgb[band & stripes]
        ph, pw = min(24, h), min(24, w)
        rgb[:ph, -pw:] = rng.integers(0, 256, (ph, pw, 3))
        if p[2] is not None:
            new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, p[2])
        else:
            new_w, new_h = p[3]
        via_tv = np.array(resize(to_pil_image(rgb), (new_h, new_w)))
        via_pil = np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
        assert np.array_equal(via_tv, via_pil), "torchvision resize on PIL != PIL BILINEAR"
        if p[2] is not None:
            assert np.array_equal(ResizeLongestSide(p[2]).apply_image(rgb), via_pil)
        name = f"{w}x{h}_to_{new_w}x{new_h}"
        Image.fromarray(rgb).save(os.path.join(out, name + "_in.png"), optimize=True)
        Image.fromarray(via_pil).save(os.path.join(out, name + "_out.png"), optimize=True)
        cases.append(
            {
                "name": name,
                "input": name + "_in.png",
                "expected": name + "_out.png",
                "width": w,
                "height": h,
                "new_width": new_w,
                "new_height": new_h,
            }
        )
    dump_json(
            {
                "generated_by": "tools/parity.py",
                "function": "PIL.Image.resize((new_width, new_height), Image.BILINEAR) on an RGB uint8 image "
                "(== torchvision.transforms.functional.resize on a PIL image, as used by "
                "segment_anything ResizeLongestSide.apply_image; verified identical)",
                "cases": cases,
            },
            os.path.join(out, "cases.json"),
        )
    print(f"resize: {len(cases)} cases")


# ---------------------------------------------------------------------------
# check-server
# ---------------------------------------------------------------------------


def _http(method, url, body=None, ctype=None, timeout=120):
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def _find(obj, keys):
    for k in keys:
        if isinstance(obj, dict) and k in obj:
            return obj[k]
    return None


def _masks_of(resp):
    """Extract the mask list of the first prompt from a segment response."""
    res = _find(resp, ["results", "prompts", "outputs"])
    if isinstance(res, list) and res:
        res = res[0]
    else:
        res = resp
    masks = _find(res, ["masks"])
    if masks is None:
        raise ValueError(f"no masks in response: {str(resp)[:300]}")
    return masks


def check_server(args):
    from pycocotools import mask as mu

    base = args.url.rstrip("/")
    pdir = os.path.join(FIX, "parity")
    with open(os.path.join(pdir, "cases.json")) as f:
        doc = json.load(f)
    image_ids: Dict[str, str] = {}
    handles: Dict[str, List[Any]] = {}
    failures = 0
    worst = 1.0
    for case in doc["cases"]:
        if args.case and case["name"] not in args.case:
            continue
        img = case["image"]
        if img not in image_ids:
            with open(os.path.join(pdir, img), "rb") as f:
                body = f.read()
            r = _http("POST", base + "/v1/images", body, "application/octet-stream")
            image_ids[img] = _find(r, ["image_id", "id"])
            w, h = _find(r, ["width"]), _find(r, ["height"])
            if w is not None and (w, h) != (case["width"], case["height"]):
                print(f"  ! {img}: server size {w}x{h} != {case['width']}x{case['height']}")
                failures += 1
        pr = case["prompt"]
        prompt: Dict[str, Any] = {"points": [{"x": p[0], "y": p[1], "label": p[2]} for p in pr["points"]]}
        if pr["box"] is not None:
            prompt["box"] = pr["box"]
        if case["refine_from"] is not None:
            src = case["refine_from"]
            prompt["mask_input"] = handles[src["case"]][src["mask_index"]]
        if pr["multimask_output"] is not None:
            prompt["multimask_output"] = pr["multimask_output"]
        req = {"prompts": [prompt], "output": "rle", "return_logits": True}
        try:
            resp = _http(
                "POST",
                f"{base}/v1/images/{image_ids[img]}/segment",
                json.dumps(req).encode(),
                "application/json",
            )
            masks = _masks_of(resp)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {case['name']}: {e}")
            failures += 1
            continue
        handles[case["name"]] = [
            _find(m, ["logits_handle", "mask_input", "handle"]) for m in masks
        ]
        exp = case["expected"]
        msgs = []
        ok = len(masks) == len(exp)
        if not ok:
            msgs.append(f"{len(masks)} masks, expected {len(exp)}")
        for i, (m, e) in enumerate(zip(masks, exp)):
            rle = m["rle"] if "rle" in m else m.get("segmentation", m)
            r = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            got = mu.decode(r).astype(bool)
            want = mu.decode({"size": e["rle"]["size"], "counts": e["rle"]["counts"].encode("ascii")}).astype(bool)
            if got.shape != want.shape:
                msgs.append(f"mask {i} shape {got.shape} != {want.shape}")
                ok = False
                continue
            union = np.logical_or(got, want).sum()
            iou = 1.0 if union == 0 else np.logical_and(got, want).sum() / union
            worst = min(worst, iou)
            score = _find(m, ["score", "predicted_iou", "iou"])
            ds = abs(score - e["score"]) if score is not None else float("nan")
            if iou < args.min_iou or (score is not None and ds > args.score_tol):
                ok = False
            msgs.append(f"m{i} iou={iou:.4f} dscore={ds:.1e}")
            if rle["counts"] != e["rle"]["counts"]:
                msgs[-1] += " (rle differs)"
        print(f"{'ok  ' if ok else 'FAIL'} {case['name']:28s} " + "; ".join(msgs))
        failures += 0 if ok else 1
    print(f"worst IoU {worst:.4f}; {failures} failure(s)")
    return 1 if failures else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("generate", help="write tests/fixtures/{parity,rle,resize}")
    g.add_argument("--model", default="sam-tiny")
    c = sub.add_parser("check-server", help="compare a running samserve with the parity goldens")
    c.add_argument("--url", default="http://127.0.0.1:8080")
    c.add_argument("--min-iou", type=float, default=0.98)
    c.add_argument("--score-tol", type=float, default=1e-3)
    c.add_argument("--case", action="append", help="only these case names (repeatable)")
    args = ap.parse_args(argv)
    if args.cmd in (None, "generate"):
        if args.cmd is None:
            args.model = "sam-tiny"
        generate_rle()
        generate_resize()
        generate(args)
        return 0
    if args.cmd == "check-server":
        return check_server(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
