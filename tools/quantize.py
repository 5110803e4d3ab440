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
# `search` tunes on training-split scenes from here (compare judges on HELDOUT_START+).
TUNE_START = 5000


def quantize_file(src: str, dst: str, mode: str, op_types, calib=None, external_data: bool = False,
                  per_channel: bool = False, exclude=()) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "none":
        shutil.copyfile(src, dst)
        return
    if mode == "dynamic":
        # The quantizer rewrites a Gemm as MatMul + Add named "<gemm>_MatMul" before it
        # matches node names: keep a Gemm in float under both names.
        exclude = [m for n in exclude for m in (n, n + "_MatMul")]
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                         per_channel=per_channel, nodes_to_exclude=list(exclude),
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


def make_variant(src_dir: str, out: str, encoder: str, decoder: str, *, name=None, op_types=None,
                 calib_images: int = 16, per_channel: bool = False, exclude=(), share: bool = False) -> None:
    """Writes the int8 variant of a model folder (what `make` does). `exclude`: decoder nodes
    kept in float. `share`: a part left at `none` is named by a relative path to the source
    folder's file instead of copied."""
    src_man = json.load(open(os.path.join(src_dir, "manifest.json")))
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    man = dict(src_man)
    used, said = {}, []
    for part, mode in (("encoder", encoder), ("decoder", decoder)):
        src = os.path.join(src_dir, src_man[part])
        if part == "decoder" and mode == "static":
            sys.exit("static quantization of the decoder is not offered: its inputs are prompts, and one "
                     "calibration set of prompts does not cover clicks, boxes and mask inputs alike")
        if mode == "none":
            used[part] = {"mode": "none"}
            said.append(f"{part} fp32" + (" (the source folder's file)" if share else ""))
            if share:
                man[part] = os.path.relpath(src, out)
                continue
        man[part] = f"{part}.onnx"
        calib = EncoderCalibration(src_dir, calib_images) if mode == "static" else None
        ext = os.path.getsize(src) > 1_500_000_000
        print(f"{part}: {mode}", flush=True)
        ops = op_types.split(",") if op_types else OP_TYPES.get(mode, [])
        kept = list(exclude) if part == "decoder" and mode != "none" else []
        if mode != "none":
            used[part] = {"mode": mode, "op_types": ops}
            if mode == "dynamic" and per_channel:
                used[part]["per_channel"] = True
            if kept:
                used[part]["kept_fp32"] = kept
            said.append(f"{part} {mode} int8 {'/'.join(ops)}" + (f", {len(kept)} nodes kept fp32" if kept else ""))
        quantize_file(src, os.path.join(out, man[part]), mode, ops, calib, external_data=ext,
                      per_channel=per_channel, exclude=kept)
    man["name"] = name or os.path.basename(os.path.normpath(out))
    # "int8" when any part is: "quantization" says which.
    quantized = (encoder, decoder) != ("none", "none")
    man["precision"] = "int8" if quantized else src_man.get("precision", "fp32")
    man["quantization"] = {**used, "tool": "onnxruntime.quantization", "from": src_man["name"]}
    man["description"] = (f"{src_man['name']} quantized ({', '.join(said)}; ONNX Runtime). "
                          + src_man.get("description", ""))
    for k in ("checkpoint", "architecture", "text"):
        man.pop(k, None)
    man["generated_by"] = "tools/quantize.py"
    if src_man.get("text"):
        # Keep the text prompts of the source folder: a path relative to the new folder.
        man["text"] = os.path.relpath(os.path.join(src_dir, src_man["text"]), out)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(man, f, indent=2)
        f.write("\n")
    for part in ("encoder", "decoder"):
        print(f"  {part}: {os.path.getsize(os.path.join(src_dir, src_man[part]))} -> "
              f"{os.path.getsize(os.path.join(out, man[part]))} bytes ({man[part]})")
    print(f"wrote {out} in {time.time() - t0:.0f} s")


def cmd_make(a) -> None:
    make_variant(a.src, a.out, a.encoder, a.decoder, name=a.name, op_types=a.op_types,
                 calib_images=a.calib_images, per_channel=a.per_channel, exclude=read_exclude(a.exclude),
                 share=a.share)


def token_ious(ma: np.ndarray, mb: np.ndarray) -> list[float]:
    """IoU of the same token's mask, for every prompt and token of two [P, T, H, W] answers."""
    return [iou(ma[p, t], mb[p, t]) for p in range(ma.shape[0]) for t in range(ma.shape[1])]


def scene_prompts(seed: int, long_side: int):
    """A data_engine scene and its prompts: one centre click and one box per object of at
    least 100 pixels, as [P, 2, 3] (x, y, label; a click is padded with label -1)."""
    sc = make_scene(seed, long_side=long_side)
    objs = [sc.mask(o.id) for o in sc.objects]
    objs = [g for g in objs if g.sum() >= 100]
    if not objs:
        return sc, None
    pts = []
    for g in objs:
        x, y = centre_point(g)
        pts.append([[x + 0.5, y + 0.5, 1], [0, 0, -1]])
        ys, xs = np.nonzero(g)
        pts.append([[xs.min(), ys.min(), 2], [xs.max() + 1, ys.max() + 1, 3]])
    return sc, np.array(pts, np.float32)


def agreement_sequential(a_dir: str, b_dir: str, scenes: int, long_side: int) -> dict:
    """`compare`'s agreement numbers without its timings, holding one model at a time: two
    ViT-L/H sessions with their working memory do not fit beside each other on a 24 GB
    machine (ViT-L fp32 + int8 together peaked at 22.3 GB)."""
    import gc

    outs = {}
    for key, d in (("a", a_dir), ("b", b_dir)):
        m = OnnxSam(d, 0)
        outs[key] = []
        for i in range(scenes):
            sc, pts = scene_prompts(HELDOUT_START + i, long_side)
            if pts is None:
                continue
            m.set_image(sc.image)
            res = [m.decode(p[None]) for p in pts]
            masks = np.concatenate([r[0] for r in res]) > 0
            outs[key].append((masks.shape, np.packbits(masks), np.concatenate([r[1] for r in res])))
        del m
        gc.collect()
    ious, dscore = [], []
    for (shape, pa, sa), (_, pb, sb) in zip(outs["a"], outs["b"]):
        n = int(np.prod(shape))
        ma = np.unpackbits(pa, count=n).reshape(shape).astype(bool)
        mb = np.unpackbits(pb, count=n).reshape(shape).astype(bool)
        ious += token_ious(ma, mb)
        dscore.append(np.abs(sa - sb).ravel())
    d = np.concatenate(dscore)
    return {"scenes": scenes, "prompts": sum(o[0][0] for o in outs["a"]), "masks_compared": len(ious),
            "mean_mask_iou": float(np.mean(ious)), "min_mask_iou": float(np.min(ious)),
            "pred_iou_abs_delta_mean": float(d.mean()), "pred_iou_abs_delta_max": float(d.max())}


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
    # One untimed encode and decode each first: a session's first run allocates its arena and
    # (int8) pre-packs weights, which would otherwise land in the first scene's times.
    warm = make_scene(HELDOUT_START, long_side=a.long_side).image
    for m in (A, B):
        m.set_image(warm)
        m.decode(np.array([[[8.0, 8.0, 1], [0, 0, -1]]], np.float32))
    enc_t = {"a": [], "b": []}
    dec_t = {"a": [], "b": []}
    ious, dscore, prompts = [], [], 0
    for i in range(a.scenes):
        sc, pts = scene_prompts(HELDOUT_START + i, a.long_side)
        if pts is None:
            continue
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
        ious += token_ious(ma > 0, mb > 0)
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


def cmd_throughput(a) -> None:
    """Decoder prompts/s of two folders through the server's own decoder path
    (`samserve-loadtest baseline`: in-process, one single-threaded session, as a decoder
    worker runs), rounds alternating between the folders; medians per batch size."""
    import subprocess
    import tempfile

    runs = {"a": [], "b": []}
    for r in range(a.rounds):
        for key in (("a", "b") if r % 2 == 0 else ("b", "a")):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run([a.loadtest, "baseline", "--model", getattr(a, key), "--batch-sizes", a.batch_sizes,
                                "--duration", str(a.duration), "--json", f.name], check=True,
                               stdout=subprocess.DEVNULL)
                runs[key].append({x["batch"]: x["prompts_per_s"] for x in json.load(open(f.name))["results"]})
        print(f"  round {r + 1}/{a.rounds}: " + "; ".join(
            f"{k} " + " ".join(f"B={b}:{v:.0f}" for b, v in runs[k][-1].items()) for k in ("a", "b")), flush=True)
    title = a.title or f"{os.path.basename(os.path.normpath(a.a))} vs {os.path.basename(os.path.normpath(a.b))}"
    parts = []
    for b in runs["a"][0]:
        ma = float(np.median([x[b] for x in runs["a"]]))
        mb = float(np.median([x[b] for x in runs["b"]]))
        parts.append(f"B={b} {ma:.0f} vs {mb:.0f} prompts/s ({mb / ma:.2f}x)")
    line = (f"{title}, decoder throughput (samserve-loadtest baseline, 1 session x 1 thread, median of "
            f"{a.rounds} alternating rounds, load average {os.getloadavg()[0]:.1f}): " + "; ".join(parts))
    print(line)
    if a.md:
        with open(a.md, "a") as f:
            f.write(line + "\n")


def read_exclude(spec):
    if not spec:
        return []
    if spec.startswith("@"):
        return [ln.strip() for ln in open(spec[1:]) if ln.strip() and not ln.startswith("#")]
    return [n for n in spec.split(",") if n]


class DecoderBench:
    """Fixed embeddings and prompts of training-split scenes with the fp32 decoder's masks,
    so that a candidate decoder is scored on the decoder alone (the encoder is untouched)."""

    def __init__(self, src: str, scenes: int, long_side: int):
        self.sam = OnnxSam(src, 0)
        self.items = []
        for i in range(scenes):
            sc, pts = scene_prompts(TUNE_START + i, long_side)
            if pts is None:
                continue
            self.sam.set_image(sc.image)
            ref = self.sam.decode(pts)[0] > 0
            self.items.append((self.sam.emb, (self.sam.h, self.sam.w), (self.sam.sx, self.sam.sy), pts, ref))
        self.masks = sum(it[4].shape[0] * it[4].shape[1] for it in self.items)

    def score(self, decoder_path: str) -> float:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sam.dec = ort.InferenceSession(decoder_path, so, providers=["CPUExecutionProvider"])
        ious = []
        for emb, (h, w), (sx, sy), pts, ref in self.items:
            self.sam.emb, self.sam.h, self.sam.w, self.sam.sx, self.sam.sy = emb, h, w, sx, sy
            got = self.sam.decode(pts)[0] > 0
            ious += token_ious(got, ref)
        return float(np.mean(ious))


def quantizable_nodes(path: str, op_types) -> list[str]:
    """Nodes of these types whose second input is a weight (an initializer): the ones
    dynamic quantization turns into integer kernels."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type in op_types and len(n.input) > 1 and n.input[1] in inits:
            if not n.name:
                sys.exit(f"{path}: a {n.op_type} node has no name; nodes_to_exclude needs names")
            out.append(n.name)
    return out


def positional_encoding_nodes(path: str) -> list[str]:
    """The MatMuls by SAM's random-Fourier positional-encoding matrix (prompt points and image
    grid). `search` found them the decoder's most int8-sensitive nodes by far (each alone
    costs ~0.03 mean IoU on the default model; no other node more than 0.013), and they are
    2 x C/2 matrices, so keeping them in float costs no time."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    return [n.name for n in m.graph.node
            if n.op_type == "MatMul" and any(i.endswith("positional_encoding_gaussian_matrix") for i in n.input)]


def cmd_search(a) -> None:
    """Mixed precision for the decoder: the agreement lost by quantizing each weighted node
    on its own, then the most sensitive nodes kept in float, one more at a time, until the
    rest quantized together reaches --target + --margin on tuning scenes. The result is a
    folder like `make` writes (its kept nodes listed in the manifest and in kept_fp32.txt);
    judge it with `compare` on the held-out scenes."""
    import tempfile

    man = json.load(open(os.path.join(a.src, "manifest.json")))
    dec = os.path.join(a.src, man["decoder"])
    ops = a.op_types.split(",")
    nodes = quantizable_nodes(dec, ops)
    t0 = time.time()
    bench = DecoderBench(a.src, a.scenes, a.long_side)
    print(f"{len(nodes)} weighted {'/'.join(ops)} nodes; {bench.masks} masks on {len(bench.items)} tuning scenes "
          f"(seeds {TUNE_START}+)", flush=True)
    tmp = tempfile.mkdtemp(prefix="quant-search-")
    cand = os.path.join(tmp, "decoder.onnx")

    def score_excluding(exclude) -> float:
        quantize_file(dec, cand, "dynamic", ops, per_channel=a.per_channel, exclude=exclude)
        return bench.score(cand)

    report = {"nodes": nodes, "alone": {}, "path": []}
    full = score_excluding([])
    print(f"  all {len(nodes)} quantized: mean IoU {full:.4f}", flush=True)
    for n in nodes:
        report["alone"][n] = score_excluding([m for m in nodes if m != n])
        print(f"  only {n}: {report['alone'][n]:.4f}", flush=True)
    order = sorted(nodes, key=lambda n: report["alone"][n])
    goal = a.target + a.margin
    kept, score = [], full
    report["path"].append({"kept": 0, "mean_iou": full})
    while score < goal and len(kept) < len(nodes):
        kept.append(order[len(kept)])
        score = score_excluding(kept)
        report["path"].append({"kept": len(kept), "node": kept[-1], "mean_iou": score})
        print(f"  keep {len(kept)} in float (+{kept[-1]}): {score:.4f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    report.update({"kept_fp32": kept, "tuning_mean_iou": score, "seconds": time.time() - t0})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    if len(kept) == len(nodes):
        sys.exit(f"no subset of the {len(nodes)} nodes reaches {goal:.3f}: nothing written")
    os.makedirs(a.out, exist_ok=True)
    listing = os.path.join(a.out, "kept_fp32.txt")
    with open(listing, "w") as f:
        f.write(f"# decoder nodes kept in float by quantize.py search (tuning mean IoU {score:.4f})\n")
        f.writelines(n + "\n" for n in kept)
    make_variant(a.src, a.out, "none", "dynamic", name=a.name, op_types=a.op_types, per_channel=a.per_channel,
                 exclude=kept, share=a.share)
    print(f"{len(nodes) - len(kept)} of {len(nodes)} nodes int8, {len(kept)} kept in float; tuning mean IoU "
          f"{score:.4f} ({time.time() - t0:.0f} s). Judge it: quantize.py compare --a {a.src} --b {a.out}")


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
    mk.add_argument("--per-channel", action="store_true", help="dynamic: one weight scale per output channel")
    mk.add_argument("--share", action="store_true",
                    help="a part left at `none` is not copied: the manifest names the source folder's file by a "
                         "relative path (keep the two folders side by side)")
    mk.add_argument("--exclude", help="decoder nodes kept in float: comma-separated names, or @FILE (one per "
                    "line, as `search` writes)")
    tp = sub.add_parser("throughput", help="decoder prompts/s of two folders (samserve-loadtest baseline)")
    tp.add_argument("--a", required=True)
    tp.add_argument("--b", required=True)
    tp.add_argument("--loadtest", default="target/release/samserve-loadtest")
    tp.add_argument("--batch-sizes", default="1,8,32")
    tp.add_argument("--duration", type=float, default=3)
    tp.add_argument("--rounds", type=int, default=3)
    tp.add_argument("--title")
    tp.add_argument("--md", help="append the result line here")
    se = sub.add_parser("search", help="which decoder nodes to keep in float for an agreement target")
    se.add_argument("--src", required=True)
    se.add_argument("--out", required=True, help="folder for the mixed-precision variant that meets the target")
    se.add_argument("--target", type=float, default=0.97, help="mean mask IoU to reach on the tuning scenes")
    se.add_argument("--margin", type=float, default=0.005,
                    help="aim this much above --target on the tuning scenes (they are not the held-out ones)")
    se.add_argument("--scenes", type=int, default=6, help="training-split tuning scenes")
    se.add_argument("--long-side", type=int, default=512)
    se.add_argument("--per-channel", action="store_true")
    se.add_argument("--op-types", default="MatMul,Gemm")
    se.add_argument("--json", help="per-node sensitivities and the greedy path")
    se.add_argument("--share", action="store_true", help="as in `make`: point at the source folder's encoder")
    se.add_argument("--name", help="manifest name (default: the --out folder's name)")
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
    {"make": cmd_make, "compare": cmd_compare, "search": cmd_search, "throughput": cmd_throughput}[a.cmd](a)


if __name__ == "__main__":
    main()
