#!/usr/bin/env python3
"""int8 variants of a samserve model folder, and how they compare with the original.

  # a folder of its own, manifest.json with "precision": "int8" and what was quantized
  quantize.py make --src models/sam-tiny --out target/sam-tiny-int8 --encoder dynamic --decoder none
  # agreement (same prompts, held-out scenes) and speed, fp32 vs int8, through onnxruntime
  quantize.py compare --a models/sam-tiny --b target/sam-tiny-int8 --scenes 10 --md target/bench/int8.md

Quantization is ONNX Runtime's: `dynamic` quantizes the weights of MatMul/Gemm nodes to
int8 and the activations on the fly (no calibration data); `static` (QDQ) also fixes the
activation scales from calibration images (training-split data_engine scenes, never the
held-out ones compared on). Encoder and decoder are chosen separately; `none` copies the
file. The comparison uses the held-out data_engine split (seeds >= HELDOUT_START): one
centre click (four mask tokens) and one box per object, and reports the mean IoU of the
same token's mask between the two folders, the predicted-IoU deltas, encoder time per image
and decoder time per prompt (runs alternate between the folders, so load from other
processes hits both alike).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_engine import HELDOUT_START, centre_point, make_scene  # noqa: E402
from evaluate import OnnxSam, iou  # noqa: E402

# Nodes quantized by default. Dynamic: MatMul/Gemm only, the weights of ViT encoders and of
# the decoder's transformer (ONNX Runtime's dynamic ConvInteger is slower than float
# convolution on CPUs). Static (QDQ): convolutions too, which become QLinearConv.
OP_TYPES = {"dynamic": ["MatMul", "Gemm"], "static": ["MatMul", "Gemm", "Conv"]}


def quantize_file(src: str, dst: str, mode: str, op_types, calib=None, external_data: bool = False) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "none":
        shutil.copyfile(src, dst)
        return
    if mode == "dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                         use_external_data_format=external_data)
    elif mode == "static":
        quantize_static(src, dst, calib, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=op_types, per_channel=True,
                        use_external_data_format=external_data)
    else:
        raise ValueError(mode)


class EncoderCalibration:
    """Training-split scenes, preprocessed as the server does, for static quantization."""

    def __init__(self, model_dir: str, n: int):
        self.sam = OnnxSam(model_dir)
        self.items = iter(range(n))

    def get_next(self):
        i = next(self.items, None)
        if i is None:
            return None
        from segment_anything.utils.transforms import ResizeLongestSide

        sc = make_scene(1000 + i, long_side=self.sam.L)
        small = ResizeLongestSide(self.sam.L).apply_image(sc.image)
        x = (small.astype(np.float32) - self.sam.mean) / self.sam.std
        pad = np.zeros((self.sam.L, self.sam.L, 3), np.float32)
        pad[: x.shape[0], : x.shape[1]] = x
        return {"image": pad.transpose(2, 0, 1)[None].copy()}


def cmd_make(a) -> None:
    src_man = json.load(open(os.path.join(a.src, "manifest.json")))
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    used = {}
    for part, mode in (("encoder", a.encoder), ("decoder", a.decoder)):
        src = os.path.join(a.src, src_man[part])
        dst = os.path.join(a.out, f"{part}.onnx")
        if part == "decoder" and mode == "static":
            sys.exit("static quantization of the decoder is not offered: its inputs are prompts, and one "
                     "calibration set of prompts does not cover clicks, boxes and mask inputs alike")
        calib = EncoderCalibration(a.src, a.calib_images) if mode == "static" else None
        ext = os.path.getsize(src) > 1_500_000_000
        print(f"{part}: {mode}", flush=True)
        ops = a.op_types.split(",") if a.op_types else OP_TYPES.get(mode, [])
        used[part] = {"mode": mode, "op_types": ops} if mode != "none" else {"mode": "none"}
        quantize_file(src, dst, mode, ops, calib, external_data=ext)
    man = dict(src_man)
    man["name"] = a.name or os.path.basename(os.path.normpath(a.out))
    man["encoder"], man["decoder"] = "encoder.onnx", "decoder.onnx"
    # "int8" when any part is: "quantization" says which.
    quantized = (a.encoder, a.decoder) != ("none", "none")
    man["precision"] = "int8" if quantized else src_man.get("precision", "fp32")
    man["quantization"] = {**used, "tool": "onnxruntime.quantization", "from": src_man["name"]}
    parts = ", ".join(f"{p}: {u['mode']}" + (f" int8 {'/'.join(u['op_types'])}" if u["mode"] != "none" else "")
                      for p, u in used.items())
    man["description"] = f"{src_man['name']} quantized ({parts}; ONNX Runtime). " + src_man.get("description", "")
    for k in ("checkpoint", "architecture", "text"):
        man.pop(k, None)
    if src_man.get("text"):
        # Keep the text prompts of the source folder: a path relative to the new folder.
        man["text"] = os.path.relpath(os.path.join(a.src, src_man["text"]), a.out)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(man, f, indent=2)
        f.write("\n")
    for fn in ("encoder.onnx", "decoder.onnx"):
        print(f"  {fn}: {os.path.getsize(os.path.join(a.src, src_man[fn.split('.')[0]]))} -> "
              f"{os.path.getsize(os.path.join(a.out, fn))} bytes")
    print(f"wrote {a.out} in {time.time() - t0:.0f} s")


def cmd_compare(a) -> dict:
    A, B = OnnxSam(a.a, a.encoder_threads), OnnxSam(a.b, a.encoder_threads)
    if a.decoder_threads:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = a.decoder_threads
        for m, d in ((A, a.a), (B, a.b)):
            m.dec = ort.InferenceSession(os.path.join(d, m.man["decoder"]), so, providers=["CPUExecutionProvider"])
    if A.L != B.L:
        sys.exit("the two folders have different input sizes")
    enc_t = {"a": [], "b": []}
    dec_t = {"a": [], "b": []}
    ious, dscore, prompts = [], [], 0
    for i in range(a.scenes):
        sc = make_scene(HELDOUT_START + i, long_side=a.long_side)
        objs = [sc.mask(o.id) for o in sc.objects]
        objs = [g for g in objs if g.sum() >= 100]
        if not objs:
            continue
        pts = []
        for g in objs:
            x, y = centre_point(g)
            pts.append([[x + 0.5, y + 0.5, 1], [0, 0, -1]])
            ys, xs = np.nonzero(g)
            pts.append([[xs.min(), ys.min(), 2], [xs.max() + 1, ys.max() + 1, 3]])
        pts = np.array(pts, np.float32)
        out = {}
        order = (("a", A), ("b", B)) if i % 2 == 0 else (("b", B), ("a", A))
        for key, m in order:
            t0 = time.perf_counter()
            m.set_image(sc.image)
            enc_t[key].append(time.perf_counter() - t0)
            # One prompt per call, as an interactive click is decoded.
            res = []
            t0 = time.perf_counter()
            for p in pts:
                res.append(m.decode(p[None]))
            dec_t[key].append((time.perf_counter() - t0) / len(pts))
            out[key] = [np.concatenate([r[k] for r in res]) for k in (0, 1)]
        (ma, sa), (mb, sb) = out["a"], out["b"]
        for p in range(len(pts)):
            for t in range(ma.shape[1]):
                ious.append(iou(ma[p, t] > 0, mb[p, t] > 0))
        dscore.append(np.abs(sa - sb).ravel())
        prompts += len(pts)
        print(f"  scene {i + 1}/{a.scenes}: {len(pts)} prompts, running mean IoU {np.mean(ious):.4f}", flush=True)
    d = np.concatenate(dscore)
    med = {k: float(np.median(v)) for k, v in enc_t.items()}
    dmed = {k: float(np.median(v)) for k, v in dec_t.items()}
    r = {
        "a": a.a, "b": a.b, "scenes": a.scenes, "prompts": prompts, "masks_compared": len(ious),
        "mean_mask_iou": float(np.mean(ious)), "min_mask_iou": float(np.min(ious)),
        "frac_mask_iou_ge_0.9": float(np.mean(np.array(ious) >= 0.9)),
        "pred_iou_abs_delta_mean": float(d.mean()), "pred_iou_abs_delta_max": float(d.max()),
        "encoder_s_per_image": med, "decoder_ms_per_prompt": {k: v * 1e3 for k, v in dmed.items()},
        "encoder_speedup": med["a"] / med["b"], "decoder_speedup": dmed["a"] / dmed["b"],
        "encoder_threads": a.encoder_threads or os.cpu_count(), "decoder_threads": a.decoder_threads,
        "cores": os.cpu_count(), "loadavg_end": os.getloadavg()[0],
    }
    title = a.title or f"{os.path.basename(os.path.normpath(a.a))} vs {os.path.basename(os.path.normpath(a.b))}"
    line = (f"{title}: mean mask IoU {r['mean_mask_iou']:.4f} (min {r['min_mask_iou']:.3f}; {len(ious)} masks, "
            f"{prompts} prompts on {a.scenes} held-out scenes), predicted-IoU |delta| mean "
            f"{r['pred_iou_abs_delta_mean']:.4f} max {r['pred_iou_abs_delta_max']:.4f}; encoder "
            f"{med['a']:.3f} vs {med['b']:.3f} s/image ({r['encoder_speedup']:.2f}x), decoder "
            f"{dmed['a'] * 1e3:.2f} vs {dmed['b'] * 1e3:.2f} ms/prompt ({r['decoder_speedup']:.2f}x); "
            f"median of alternating runs, {os.cpu_count()} cores, load average {r['loadavg_end']:.1f} at the end")
    print(line)
    if a.md:
        os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
        with open(a.md, "a") as f:
            f.write(line + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write an int8 variant of a model folder")
    mk.add_argument("--src", required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--name", help="manifest name (default: the --out folder's name)")
    mk.add_argument("--encoder", choices=("none", "dynamic", "static"), default="dynamic")
    mk.add_argument("--decoder", choices=("none", "dynamic"), default="none")
    mk.add_argument("--op-types", help="comma-separated node types to quantize (default: per mode, see OP_TYPES)")
    mk.add_argument("--calib-images", type=int, default=16, help="static: training-split calibration scenes")
    cp = sub.add_parser("compare", help="agreement and speed of two model folders")
    cp.add_argument("--a", required=True, help="reference folder (fp32)")
    cp.add_argument("--b", required=True, help="compared folder (int8)")
    cp.add_argument("--scenes", type=int, default=10)
    cp.add_argument("--long-side", type=int, default=512)
    cp.add_argument("--encoder-threads", type=int, default=0, help="0 = all cores (the server's default)")
    cp.add_argument("--decoder-threads", type=int, default=1, help="the server's default")
    cp.add_argument("--title")
    cp.add_argument("--md", help="append the result line here")
    cp.add_argument("--json")
    a = ap.parse_args(argv)
    {"make": cmd_make, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    main()
