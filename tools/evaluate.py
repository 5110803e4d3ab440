#!/usr/bin/env python3
"""Evaluate a samserve model folder on the held-out data_engine split, through the
exported ONNX pair with onnxruntime (the path the server takes), with the SAM
paper's single-object protocols:

* centre point: one click at the object's "centre" (max of the distance
  transform of its visible mask), three ambiguity masks; scored by the top-ranked
  mask (highest predicted IoU) and by the oracle (best of the three);
* box: the object's tight box, one mask (token 0);
* clicks 1..9: click 1 is the centre point (top-ranked mask kept), each later
  click is placed at the centre of the largest error (max of the distance
  transform of the error region; foreground if missed, background if spurious),
  with the previous low-res logits fed back as mask_input.

Masks are compared with the ground truth at the original image size. Objects
smaller than --min-area pixels are skipped (counted in the report).

  evaluate.py --model models/sam-tiny --scenes 40 --card models/sam-tiny/MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_engine import HELDOUT_START, centre_point, make_scene  # noqa: E402

CHUNK = 16


class OnnxSam:
    def __init__(self, model_dir: str, threads: int = 0) -> None:
        import onnxruntime as ort

        self.man = json.load(open(os.path.join(model_dir, "manifest.json")))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        p = ["CPUExecutionProvider"]
        self.enc = ort.InferenceSession(os.path.join(model_dir, self.man["encoder"]), so, providers=p)
        self.dec = ort.InferenceSession(os.path.join(model_dir, self.man["decoder"]), so, providers=p)
        self.L = int(self.man["input_size"])
        self.mean = np.array(self.man["pixel_mean"], np.float32)
        self.std = np.array(self.man["pixel_std"], np.float32)

    def set_image(self, rgb: np.ndarray) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.h, self.w = rgb.shape[:2]
        small = ResizeLongestSide(self.L).apply_image(rgb)
        self.sy, self.sx = small.shape[0] / self.h, small.shape[1] / self.w
        x = (small.astype(np.float32) - self.mean) / self.std
        pad = np.zeros((self.L, self.L, 3), np.float32)
        pad[: x.shape[0], : x.shape[1]] = x
        self.emb = self.enc.run(None, {"image": pad.transpose(2, 0, 1)[None].copy()})[0]
        g = self.emb.shape[-1]
        self.low_shape = (4 * g, 4 * g)

    def decode(self, pts: np.ndarray, mask_in=None):
        """pts [B, N, 3] (x, y, label) in original pixels -> masks, iou, low (chunked)."""
        B = pts.shape[0]
        outs = [], [], []
        for a in range(0, B, CHUNK):
            p = pts[a : a + CHUNK]
            b = p.shape[0]
            coords = p[..., :2] * np.array([self.sx, self.sy], np.float32)
            if mask_in is None:
                mi = np.zeros((b, 1) + self.low_shape, np.float32)
                has = np.zeros(b, np.float32)
            else:
                mi = mask_in[a : a + CHUNK]
                has = np.ones(b, np.float32)
            res = self.dec.run(None, {
                "image_embeddings": self.emb,
                "point_coords": coords.astype(np.float32),
                "point_labels": p[..., 2].astype(np.float32),
                "mask_input": mi.astype(np.float32),
                "has_mask_input": has,
                "orig_im_size": np.array([self.h, self.w], np.float32),
            })
            for o, r in zip(outs, res):
                o.append(r)
        return [np.concatenate(o) for o in outs]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def box_prompt(g: np.ndarray) -> list:
    """The tight box of a mask as decoder points: [[x0, y0, 2], [x1, y1, 3]] (x1, y1 exclusive)."""
    ys, xs = np.nonzero(g)
    return [[xs.min(), ys.min(), 2], [xs.max() + 1, ys.max() + 1, 3]]


def error_click(pred: np.ndarray, gt: np.ndarray):
    fn = gt & ~pred
    fp = pred & ~gt
    best = None
    for region, lab in ((fn, 1), (fp, 0)):
        if not region.any():
            continue
        d = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        if best is None or d[y, x] > best[0]:
            best = (d[y, x], x, y, lab)
    if best is None:  # perfect: a harmless click on the centre
        x, y = centre_point(gt)
        return [x + 0.5, y + 0.5, 1]
    return [best[1] + 0.5, best[2] + 0.5, best[3]]


def evaluate(model_dir, n_scenes, long_side, min_area, max_clicks, threads, log=print):
    m = OnnxSam(model_dir, threads)
    rec = {"point_top": [], "point_oracle": [], "box": [], "clicks": [[] for _ in range(max_clicks)]}
    calib = []  # (predicted IoU, actual IoU) of every point mask (3 per click) and every box mask
    skipped = 0
    t0 = time.time()
    for i in range(n_scenes):
        sc = make_scene(HELDOUT_START + i, long_side=long_side)
        m.set_image(sc.image)
        gts = []
        for o in sc.objects:
            g = sc.mask(o.id)
            if g.sum() < min_area:
                skipped += 1
                continue
            gts.append(g)
        if not gts:
            continue
        B = len(gts)
        centres = np.array([[*(np.array(centre_point(g)) + 0.5), 1] for g in gts], np.float32)
        pad = np.tile(np.array([[[0, 0, -1]]], np.float32), (B, 1, 1))
        masks, iou_p, low = m.decode(np.concatenate([centres[:, None], pad], 1))
        top = 1 + iou_p[:, 1:].argmax(1)
        chosen_low = np.empty((B, 1) + m.low_shape, np.float32)
        preds = []
        for b, g in enumerate(gts):
            ious = [iou(masks[b, k] > 0, g) for k in (1, 2, 3)]
            calib += [(float(iou_p[b, k]), ious[k - 1]) for k in (1, 2, 3)]
            rec["point_top"].append(ious[top[b] - 1])
            rec["point_oracle"].append(max(ious))
            rec["clicks"][0].append(ious[top[b] - 1])
            chosen_low[b, 0] = low[b, top[b]]
            preds.append(masks[b, top[b]] > 0)
        bm, biou, _ = m.decode(np.array([box_prompt(g) for g in gts], np.float32))
        rec["box"] += [iou(bm[b, 0] > 0, g) for b, g in enumerate(gts)]
        calib += [(float(biou[b, 0]), rec["box"][-B + b]) for b in range(B)]
        clicks = centres[:, None].copy()
        for c in range(1, max_clicks):
            new = np.array([error_click(p, g) for p, g in zip(preds, gts)], np.float32)
            clicks = np.concatenate([clicks, new[:, None]], 1)
            masks, _, low = m.decode(np.concatenate([clicks, pad], 1), chosen_low)
            preds = [masks[b, 0] > 0 for b in range(B)]
            chosen_low = low[:, :1].copy()
            rec["clicks"][c] += [iou(p, g) for p, g in zip(preds, gts)]
        log(f"  scene {i + 1}/{n_scenes}: {B} objects, {time.time() - t0:.0f}s")
    summary = {
        "objects": len(rec["box"]),
        "skipped_below_min_area": skipped,
        "point_top_miou": float(np.mean(rec["point_top"])),
        "point_oracle_miou": float(np.mean(rec["point_oracle"])),
        "box_miou": float(np.mean(rec["box"])),
        "clicks_miou": [float(np.mean(c)) for c in rec["clicks"]],
        "point_top_frac_iou_ge_0.8": float(np.mean(np.array(rec["point_top"]) >= 0.8)),
        "calibration": calibration_summary(calib),
    }
    summary["_calibration_pairs"] = calib
    return summary


def calibration_summary(pairs):
    """How well the IoU head predicts the real IoU (what segment-everything filters on)."""
    a = np.array(pairs, np.float64)
    pred, act = a[:, 0], a[:, 1]
    keep = pred >= 0.88
    return {
        "masks": int(len(a)),
        "mean_abs_error": float(np.abs(pred - act).mean()),
        "pearson_r": float(np.corrcoef(pred, act)[0, 1]) if len(a) > 1 else float("nan"),
        "frac_pred_ge_0.88": float(keep.mean()),
        "actual_iou_when_pred_ge_0.88": float(act[keep].mean()) if keep.any() else float("nan"),
        "bins": [
            {"pred_from": lo, "pred_to": lo + 0.1, "masks": int(((pred >= lo) & (pred < lo + 0.1)).sum()),
             "mean_actual": float(act[(pred >= lo) & (pred < lo + 0.1)].mean())
             if ((pred >= lo) & (pred < lo + 0.1)).any() else None}
            for lo in np.round(np.arange(0.0, 1.0, 0.1), 1)
        ],
    }


def calibration_plot(pairs, path, title):
    """Scatter of predicted vs actual IoU, with the diagonal and per-bin means (PIL only)."""
    from PIL import Image, ImageDraw

    S, M = 420, 50
    img = Image.new("RGB", (S + 2 * M, S + 2 * M), "white")
    d = ImageDraw.Draw(img)

    def xy(p, a):
        return M + p * S, M + (1 - a) * S

    d.rectangle([M, M, M + S, M + S], outline=(0, 0, 0))
    for t in np.arange(0, 1.01, 0.2):
        x, _ = xy(t, 0)
        _, y = xy(0, t)
        d.line([x, M + S, x, M + S + 5], fill=(0, 0, 0))
        d.text((x - 8, M + S + 8), f"{t:.1f}", fill=(0, 0, 0))
        d.line([M - 5, y, M, y], fill=(0, 0, 0))
        d.text((M - 30, y - 5), f"{t:.1f}", fill=(0, 0, 0))
    d.line([*xy(0, 0), *xy(1, 1)], fill=(160, 160, 160), width=1)
    x88, _ = xy(0.88, 0)
    d.line([x88, M, x88, M + S], fill=(200, 120, 120), width=1)
    for p, a in pairs:
        x, y = xy(min(max(p, 0), 1), a)
        d.point((x, y), fill=(60, 90, 200))
    a = np.array(pairs)
    prev = None
    for lo in np.arange(0, 1, 0.1):
        sel = (a[:, 0] >= lo) & (a[:, 0] < lo + 0.1)
        if sel.sum() >= 5:
            pt = xy(lo + 0.05, a[sel, 1].mean())
            d.ellipse([pt[0] - 4, pt[1] - 4, pt[0] + 4, pt[1] + 4], fill=(220, 60, 40))
            if prev:
                d.line([*prev, *pt], fill=(220, 60, 40), width=2)
            prev = pt
    d.text((M, 15), title, fill=(0, 0, 0))
    d.text((M + S // 2 - 40, M + S + 28), "predicted IoU", fill=(0, 0, 0))
    d.text((5, M - 20), "actual IoU", fill=(0, 0, 0))
    img.save(path)


def write_card(path, model_dir, summary, cmd, args):
    man = json.load(open(os.path.join(model_dir, "manifest.json")))
    s = summary
    # The training history and diagnostics are written by hand beside the card.
    notes_path = os.path.join(model_dir, "TRAINING.md")
    training_note = open(notes_path).read().strip() if os.path.exists(notes_path) else TRAINING_NOTE
    clicks = " | ".join(f"{v:.3f}" for v in s["clicks_miou"])
    head = " | ".join(str(i + 1) for i in range(len(s["clicks_miou"])))
    targets = [
        ("1 centre point, top-ranked mask", s["point_top_miou"], 0.75),
        ("1 centre point, oracle best of 3", s["point_oracle_miou"], 0.85),
        ("1 box", s["box_miou"], 0.88),
        ("5 clicks", s["clicks_miou"][4] if len(s["clicks_miou"]) >= 5 else float("nan"), 0.90),
    ]
    rows = "\n".join(f"| {n} | {v:.3f} | {t:.2f} | {'yes' if v >= t else '**no**'} |" for n, v, t in targets)
    text = f"""# {man['name']} — model card

{man['description']}

## Architecture

SAM's `PromptEncoder` + `MaskDecoder` (classes of the `segment_anything` package) on a
small convolutional image encoder (`tools/samtiny.py: ConvImageEncoder`). Input length
L = {man['input_size']}, embedding {man['architecture']['prompt_embed_dim']} x {man['input_size'] // 16} x {man['input_size'] // 16},
low-res masks {man['input_size'] // 4} x {man['input_size'] // 4}. Hyper-parameters: `manifest.json` → `architecture`;
`checkpoint.pth` is the `Sam` state_dict (`samtiny.load_sam("models/{man['name']}")`).

## Training

`tools/train.py` on procedurally generated scenes (`tools/data_engine`, seeds < 1,000,000)
with the paper's interactive recipe, scaled down (first prompt a random foreground point or a
jittered box; error-region clicks and mask-only passes with the previous logits fed back;
focal:dice 20:1, IoU-head MSE, min-over-3 for a single point; AdamW, weight decay 0.1). The
runs behind this checkpoint and the diagnostics are below.

{training_note}

## Held-out evaluation

Held-out split: data_engine seeds {HELDOUT_START}..{HELDOUT_START + args.scenes - 1}, long side {args.long_side} px
(resized to {man['input_size']} by the server's pipeline), {s['objects']} objects with visible area >= {args.min_area} px
({s['skipped_below_min_area']} smaller ones skipped). Run through the exported ONNX pair with onnxruntime.

| protocol | mIoU | target | met |
| --- | --- | --- | --- |
{rows}

Clicks curve (click 1 = centre point, top-ranked mask; then error-centre clicks with the
previous logits fed back):

| clicks | {head} |
| {' | '.join(['---'] * (len(s['clicks_miou']) + 1))} |
| mIoU | {clicks} |

Fraction of objects whose top-ranked centre-click mask has IoU >= 0.8: {s['point_top_frac_iou_ge_0.8']:.3f}.

{calibration_section(s["calibration"])}
{amg_section(args.amg_json)}
Reproduce:

```sh
{cmd}
```
"""
    with open(path, "w") as f:
        f.write(text)


TRAINING_NOTE = os.environ.get("SAMSERVE_TRAINING_NOTE", "")


def calibration_section(c):
    bins = "\n".join(
        f"| {b['pred_from']:.1f}-{b['pred_to']:.1f} | {b['masks']} | "
        f"{'-' if b['mean_actual'] is None else format(b['mean_actual'], '.3f')} |"
        for b in c["bins"] if b["masks"]
    )
    return f"""## IoU head calibration

Predicted vs actual IoU of every centre-click mask (3 per object) and every box mask
({c['masks']} masks): mean absolute error {c['mean_abs_error']:.3f}, Pearson r {c['pearson_r']:.3f}.
{c['frac_pred_ge_0.88']:.1%} of the masks are predicted at >= 0.88 (segment-everything's default
`pred_iou_thresh`); their mean actual IoU is {c['actual_iou_when_pred_ge_0.88']:.3f}.

![calibration](calibration.png)

| predicted IoU | masks | mean actual IoU |
| --- | --- | --- |
{bins}
"""


def amg_section(path):
    if not path or not os.path.exists(path):
        return ""
    a = json.load(open(path))
    return f"""## Segment everything (reference defaults)

`tools/evaluate_amg.py` (the reference `SamAutomaticMaskGenerator`, 32 x 32 points,
pred_iou_thresh {a['params']['pred_iou_thresh']}, stability_score_thresh {a['params']['stability_score_thresh']}) on
{len(a['scenes'])} held-out scenes: {a['masks']} masks; {a['found']} of {a['objects']} objects found at IoU >=
{a['iou_threshold']}: recall **{a['recall']:.3f}** (target 0.70).
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/sam-tiny")
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--long-side", type=int, default=640)
    ap.add_argument("--min-area", type=int, default=100)
    ap.add_argument("--clicks", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--card", help="write a MODEL_CARD.md here")
    ap.add_argument("--calibration-png", help="write the predicted-vs-actual IoU plot here")
    ap.add_argument("--amg-json", help="evaluate_amg.py --json output to quote in the card")
    args = ap.parse_args(argv)
    s = evaluate(args.model, args.scenes, args.long_side, args.min_area, args.clicks, args.threads)
    pairs = s.pop("_calibration_pairs")
    if args.calibration_png:
        calibration_plot(pairs, args.calibration_png,
                         f"{os.path.basename(os.path.normpath(args.model))}: IoU head on {args.scenes} held-out scenes "
                         f"({len(pairs)} masks)")
    print(json.dumps(s, indent=2))
    if args.json:
        json.dump(s, open(args.json, "w"), indent=2)
    if args.card:
        cmd = (f"tools/.venv/bin/python tools/evaluate.py --model {args.model} --scenes {args.scenes} "
               f"--long-side {args.long_side} --min-area {args.min_area} --clicks {args.clicks} --card {args.card}")
        write_card(args.card, args.model, s, cmd, args)


if __name__ == "__main__":
    main()
