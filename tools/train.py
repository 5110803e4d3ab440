#!/usr/bin/env python3
"""Train the default samserve model (see samtiny.DEFAULT_ARCH) on data_engine scenes.

Recipe after the SAM paper (appendix A), scaled down:
* each target object gets a first prompt: a uniform foreground point or its box
  jittered with noise of std 10 % of the side (at most 20 px), 50/50;
* then --clicks iterative points, each sampled uniformly from the error region of
  the previous prediction (label 1 on a false negative, 0 on a false positive),
  with the previous low-res logits fed back as mask_input; plus two mask-only
  passes (no new point), one at a random place and one at the end. The paper uses
  8 clicks (11 passes); the default here is 4 (7 passes) to fit a short GPU run.
* loss 20 * focal + dice on the masks, MSE between predicted and actual IoU;
  a single point without a box uses the three ambiguity tokens and only the best
  of them takes the mask loss; every other prompt uses token 0;
* AdamW (0.9, 0.999), weight decay 0.1, linear warm-up, then x0.1 step decays at
  70 % and 90 % of the budget. The budget is wall time (--minutes), counted across
  resumes, so the schedule is a function of elapsed training time.

Resumable: --out holds train_state.pt (model + optimizer + progress), written
every --save-every seconds and at the end, and checkpoint.pth (model only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_engine import HELDOUT_START, make_scene  # noqa: E402
from samtiny import ARCHES, DEFAULT_ARCH, PIXEL_MEAN, PIXEL_STD, PromptDecoder, build_sam  # noqa: E402
from train_state import Ema, cpu_has_bf16, grow_state_dict, load_compact, read_compact, save_compact  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


class Scenes(torch.utils.data.IterableDataset):
    """Endless stream of training scenes (seeds below HELDOUT_START) with K
    target objects each and their first prompts, in the model frame (long side L,
    zero-padded to L x L)."""

    def __init__(self, L: int, k: int, seed0: int, min_area: int = 16) -> None:
        self.L, self.k, self.seed0, self.min_area = L, k, seed0, min_area

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        i = 0
        while True:
            seed = (self.seed0 + i * nw + wid) % HELDOUT_START
            i += 1
            item = self.sample(seed)
            if item is not None:
                yield item

    def sample(self, seed: int):
        L, K = self.L, self.k
        sc = make_scene(seed, long_side=L)
        rng = np.random.default_rng(seed + 7919)
        h, w = sc.height, sc.width
        ids = [o.id for o in sc.objects]
        masks = {}
        for oid in ids:
            m = sc.mask(oid)
            if m.sum() >= self.min_area:
                masks[oid] = m
        if not masks:
            return None
        keys = list(masks)
        pick = rng.choice(len(keys), size=K, replace=len(keys) < K)
        img = np.zeros((L, L, 3), np.uint8)
        img[:h, :w] = sc.image
        tm = np.zeros((K, L, L), np.uint8)
        pts = np.zeros((K, 2), np.float32)
        boxes = np.zeros((K, 4), np.float32)
        use_box = rng.random(K) < 0.5
        for j, p in enumerate(pick):
            m = masks[keys[int(p)]]
            tm[j, :h, :w] = m
            ys, xs = np.nonzero(m)
            q = int(rng.integers(len(xs)))
            pts[j] = (xs[q] + 0.5, ys[q] + 0.5)
            b = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            side = np.array([b[2] - b[0], b[3] - b[1]] * 2, np.float32)
            noise = np.clip(rng.normal(0, 0.1, 4) * side, -20, 20)
            boxes[j] = np.clip(b + noise, 0, [w, h, w, h])
        return {
            "image": torch.from_numpy(img),
            "hw": torch.tensor([h, w]),
            "masks": torch.from_numpy(tm),
            "points": torch.from_numpy(pts),
            "boxes": torch.from_numpy(boxes),
            "use_box": torch.from_numpy(use_box),
            "seed": torch.tensor(seed),
        }


# ---------------------------------------------------------------------------
# Model pieces
# ---------------------------------------------------------------------------


def decode(sam, emb, dense_pe, sparse, dense):
    """MaskDecoder.predict_masks for prompts that each bring their own image
    embedding (emb [P,C,h,w]): the package method repeats one embedding per
    prompt, which would force one call per image. Same modules, same maths;
    checked against the package method in --self-test."""
    md = sam.mask_decoder
    out_tok = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
    tokens = torch.cat([out_tok.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], 1)
    src = emb + dense
    pos = dense_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos, tokens)
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [md.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(md.num_mask_tokens)], 1
    )
    bb, cc, hh, ww = up.shape
    masks = (hyper @ up.reshape(bb, cc, hh * ww)).reshape(bb, -1, hh, ww)
    return masks, md.iou_prediction_head(hs[:, 0])


def mask_losses(logits, target, alpha: float = 0.25, focal_weight: float = 20.0):
    """focal_weight * focal + dice per mask (SAM's 20:1); logits/target [P, K, H, W] -> [P, K].
    alpha weights the positive pixels' focal term (negatives 1 - alpha), as in RetinaNet."""
    logits = logits.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    focal = (ce * (1 - pt) ** 2 * (alpha * target + (1 - alpha) * (1 - target))).mean(dim=(2, 3))
    inter = (p * target).sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return focal_weight * focal + dice


_EAGER = {}


def use_compiled(on: bool) -> None:
    """Route the decoder passes (decode) and the mask losses (mask_losses) through
    torch.compile (inductor, dynamic prompt counts) or back to eager. They hold most of a
    CPU step's element-wise work (GELU on the upscaled maps, sigmoid/focal/dice on every
    pixel), which inductor fuses; the first steps pay the compilation (about a minute)."""
    global decode, mask_losses
    if not _EAGER:
        _EAGER.update(decode=decode, mask_losses=mask_losses)
    if on:
        if "decode_c" not in _EAGER:
            _EAGER["decode_c"] = torch.compile(_EAGER["decode"], dynamic=True)
            _EAGER["mask_losses_c"] = torch.compile(_EAGER["mask_losses"], dynamic=True)
        decode, mask_losses = _EAGER["decode_c"], _EAGER["mask_losses_c"]
    else:
        decode, mask_losses = _EAGER["decode"], _EAGER["mask_losses"]


def binary_iou(pred, target):
    inter = (pred & target).sum(dim=(-2, -1)).float()
    union = (pred | target).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def sample_error_points(pred, target, valid, scale):
    """One point per prompt, uniform over the error region (restricted to the
    unpadded image). pred/target/valid bool [P, h, w]; returns [P, 3] (x, y, label)
    in model-frame pixels."""
    err = (pred ^ target) & valid
    P, h, w = err.shape
    weight = err.reshape(P, -1).float()
    # No error at all: click anywhere in the object, which is then a no-op label-wise.
    none = weight.sum(1) == 0
    weight[none] = (target & valid).reshape(P, -1)[none].float() + 1e-6
    idx = torch.multinomial(weight, 1)[:, 0]
    y = torch.div(idx, w, rounding_mode="floor")
    x = idx % w
    lab = target.reshape(P, -1).gather(1, idx[:, None])[:, 0].float()
    jit = torch.rand(P, 2, device=pred.device)
    return torch.stack([(x.float() + jit[:, 0]) * scale, (y.float() + jit[:, 1]) * scale, lab], 1)


def run_prompts(sam, pdec, emb, dense_pe, target, valid, first, has_box, args, stats):
    """All passes for one group of prompts (all with a box, or all without).
    first: [P, 2] points or [P, 4] boxes. Returns the loss (mean over passes).

    Every prompt takes the first pass; only the first ceil(--interactive-frac * P) of
    them (the targets are drawn at random, so that is a random subset) go on through
    the interactive passes. On a CPU the decoder passes are most of a step's cost, and
    a first pass over a new object teaches the encoder more than a fifth click on an
    object it has already seen."""
    P = first.shape[0]
    dev = emb.device
    L = sam.image_encoder.img_size
    res = target.shape[-1]
    scale = L / res
    if has_box:
        tail = torch.stack(
            [
                torch.cat([first[:, :2], torch.full((P, 1), 2.0, device=dev)], 1),
                torch.cat([first[:, 2:], torch.full((P, 1), 3.0, device=dev)], 1),
            ],
            1,
        )
        clicks = torch.zeros(P, 0, 3, device=dev)
    else:
        tail = torch.tensor([0.0, 0.0, -1.0], device=dev).expand(P, 1, 3)
        clicks = torch.cat([first, torch.ones(P, 1, device=dev)], 1)[:, None]
    n = args.clicks
    kinds = ["first"] + ["click"] * n
    if n > 0:
        kinds.insert(random.randint(1, n + 1), "mask")
        kinds.append("mask")
    n_int = min(P, math.ceil(args.interactive_frac * P))
    mask_in = torch.zeros(P, 1, 4 * emb.shape[-2], 4 * emb.shape[-1], device=dev)
    has = torch.zeros(P, device=dev)
    total = 0.0
    passes = 0
    prev = None
    tgt_f = target.float()[:, None]
    for it, kind in enumerate(kinds):
        if it == 1:
            # Only the interactive subset goes on.
            if n_int == 0:
                break
            emb, target, valid, tgt_f = emb[:n_int], target[:n_int], valid[:n_int], tgt_f[:n_int]
            clicks, tail, mask_in, has, prev = clicks[:n_int], tail[:n_int], mask_in[:n_int], has[:n_int], prev[:n_int]
            P = n_int
        if kind == "click":
            pt = sample_error_points(prev, target, valid, scale)
            clicks = torch.cat([clicks, pt[:, None]], 1)
        pts = torch.cat([clicks, tail], 1)
        sparse = pdec.embed_points(pts[..., :2], pts[..., 2])
        dense = pdec.embed_masks(mask_in, has)
        low, iou_pred = decode(sam, emb, dense_pe, sparse, dense)
        up = F.interpolate(low.float(), size=(res, res), mode="bilinear", align_corners=False)
        multi = it == 0 and not has_box
        sel_tok = slice(1, 4) if multi else slice(0, 1)
        logits = up[:, sel_tok]
        losses = mask_losses(logits, tgt_f.expand_as(logits))
        with torch.no_grad():
            actual = binary_iou(logits > 0, target[:, None])
        best = losses.argmin(1)
        loss = losses.gather(1, best[:, None]).mean()
        loss = loss + F.mse_loss(iou_pred[:, sel_tok].float(), actual)
        total = total + loss
        passes += 1
        with torch.no_grad():
            ar = torch.arange(P, device=dev)
            chosen = best + sel_tok.start
            prev = up[ar, chosen] > 0
            mask_in = low[ar, chosen][:, None].detach().float()
            has = torch.ones(P, device=dev)
            if it == 0:
                key = "box" if has_box else "point"
                stats.setdefault(key, []).append(float(actual.max(1).values.mean()))
                if multi:
                    top = iou_pred[:, 1:4].argmax(1)
                    stats.setdefault("point_top", []).append(float(actual[ar, top].mean()))
            if it == len(kinds) - 1:
                stats.setdefault("last", []).append(float(actual[:, 0].mean()))
    return total / passes


# ---------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------


def lr_factor(frac: float, warm: float, schedule: str = "step") -> float:
    if frac < warm:
        return (frac + 1e-3) / warm
    if schedule == "cosine":
        t = min(1.0, (frac - warm) / max(1e-6, 1.0 - warm))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t))
    if frac < 0.7:
        return 1.0
    if frac < 0.9:
        return 0.1
    return 0.01


def self_test(sam, pdec):
    """The batched decode must equal the package's predict_masks per image."""
    torch.manual_seed(0)
    C = sam.prompt_encoder.embed_dim
    g = sam.prompt_encoder.image_embedding_size[0]
    emb = torch.randn(1, C, g, g)
    pts = torch.rand(3, 2, 2) * sam.image_encoder.img_size
    lab = torch.tensor([[1.0, -1.0], [1.0, 0.0], [2.0, 3.0]])
    sparse = pdec.embed_points(pts, lab)
    dense = pdec.embed_masks(torch.zeros(3, 1, 4 * g, 4 * g), torch.zeros(3))
    pe = sam.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        a = sam.mask_decoder.predict_masks(emb, pe, sparse, dense)
        b = decode(sam, emb.expand(3, -1, -1, -1), pe, sparse, dense)
    d = max(float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max()))
    assert d < 1e-4, d
    print(f"self-test: batched decode == MaskDecoder.predict_masks (max diff {d:.1e})")


def grow_self_test(sam, src_sd, src_arch) -> None:
    """After --grow: the deeper encoder must compute what the source model's encoder computes
    (its new blocks are identities until trained)."""
    src = build_sam(src_arch)
    src.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in src_sd.items()})
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(2)
        x = torch.randn(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size)
        src.eval()
        sam.eval()
        d = float((src.image_encoder(x) - sam.image_encoder(x.to(next(sam.parameters()).device)).cpu()).abs().max())
        sam.train()
    assert d < 1e-4, d
    print(f"self-test: grown encoder == source encoder (max diff {d:.1e})")


def compiled_self_test(sam, pdec, dev):
    """With torch.compile in use, the compiled decoder passes and losses must give the eager
    numbers (on the model's device; the random draws do not touch the training RNG)."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(1)
        C = sam.prompt_encoder.embed_dim
        g = sam.prompt_encoder.image_embedding_size[0]
        emb = torch.randn(3, C, g, g, device=dev)
        pts = torch.rand(3, 2, 2, device=dev) * sam.image_encoder.img_size
        lab = torch.tensor([[1.0, -1.0], [1.0, 0.0], [2.0, 3.0]], device=dev)
        sparse = pdec.embed_points(pts, lab)
        dense = pdec.embed_masks(torch.zeros(3, 1, 4 * g, 4 * g, device=dev), torch.zeros(3, device=dev))
        pe = sam.prompt_encoder.get_dense_pe()
        a = _EAGER["decode"](sam, emb, pe, sparse, dense)
        c = decode(sam, emb, pe, sparse, dense)
        tgt = (torch.rand_like(a[0]) > 0.8).float()
        la, lc = _EAGER["mask_losses"](a[0], tgt), mask_losses(a[0], tgt)
    d = max(float((a[0] - c[0]).abs().max() / a[0].abs().max()), float((a[1] - c[1]).abs().max()),
            float((la - lc).abs().max() / la.abs().max()))
    assert d < 1e-3, d
    print(f"self-test: compiled decode and losses == eager (max relative diff {d:.1e})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "target", "train"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--minutes", type=float, default=30.0, help="total training budget, across resumes")
    ap.add_argument("--batch", type=int, default=4, help="scenes per step")
    ap.add_argument("--targets", type=int, default=24, help="objects prompted per scene (first pass)")
    ap.add_argument("--clicks", type=int, default=2, help="iterative error-region clicks (paper: 8)")
    ap.add_argument("--interactive-frac", type=float, default=0.34,
                    help="fraction of the prompts that go on through the click and mask-only passes")
    ap.add_argument("--schedule", choices=["step", "cosine", "constant"], default="cosine",
                    help="step/cosine: a function of the time budget (--minutes); constant: --lr after "
                         "--warmup-steps, for open-ended training (use --ema for the exported weights)")
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="linear warm-up in steps (constant schedule; a fresh AdamW state after --init)")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="keep an exponential moving average of the weights (e.g. 0.999) and write it as "
                         "checkpoint.pth; the raw weights stay in the training state")
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                    help="bfloat16 autocast (auto: on for CUDA and for CPUs with AMX; without AMX it is "
                         "slower than float32, see tools/step_bench.py precision); "
                         "losses, IoU targets and metrics stay float32")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile (inductor) the decoder passes, the mask losses and the image "
                         "encoder: 1.3x a CPU step in float32 (tools/step_bench.py precision); the first "
                         "steps pay about a minute of compilation")
    ap.add_argument("--compact", help="also write a compact training state here on every save "
                    "(fp16 weights + EMA, bf16 Adam second moment; the file a commit carries)")
    ap.add_argument("--curve", help="append one JSON line of training statistics per log interval here")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--warmup", type=float, default=0.03, help="fraction of the budget")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--save-every", type=float, default=60.0, help="seconds")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing train_state.pt")
    ap.add_argument("--init", help="start from this model state_dict (fresh optimizer and schedule)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--stop-step", type=int, default=0, help="save and stop at this step (A/B arms of equal length)")
    ap.add_argument("--grow", action="store_true",
                    help="--init / --compact hold a shallower model of the same family: load it into --arch "
                         "with the new residual blocks starting as identities (train_state.grow_state_dict)")
    ap.add_argument("--arch", choices=sorted(ARCHES), default="default",
                    help="samtiny.ARCHES entry (written to arch.json beside checkpoint.pth)")
    args = ap.parse_args(argv)
    arch = ARCHES[args.arch]

    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    state_path = os.path.join(args.out, "train_state.pt")
    torch.manual_seed(0)
    sam = build_sam(arch)
    pdec = PromptDecoder(sam)
    self_test(sam, pdec)
    if args.init:
        init_sd = torch.load(args.init, map_location="cpu")
        if args.grow:
            new = grow_state_dict(sam, init_sd)
            print(f"initialised from {args.init}, grown by {len(new)} tensors (new blocks start as identities)")
            arch_file = os.path.join(os.path.dirname(os.path.abspath(args.init)), "arch.json")
            src_arch = json.load(open(arch_file)) if os.path.exists(arch_file) else DEFAULT_ARCH
            grow_self_test(sam, init_sd, src_arch)
        else:
            sam.load_state_dict(init_sd)
            print(f"initialised from {args.init}")
    sam.to(dev)
    opt = torch.optim.AdamW(sam.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.1)
    ema = Ema(sam, args.ema) if args.ema > 0 else None
    # progress: step, elapsed (training wall seconds), objects (first-pass prompts seen),
    # cpu_s (this process's CPU seconds), data (the scene stream's next seed offset).
    prog = {"step": 0, "elapsed": 0.0, "objects": 0, "cpu_s": 0.0, "data": 0}
    if os.path.exists(state_path) and not args.fresh:
        st = torch.load(state_path, map_location=dev)
        sam.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        prog.update(st.get("progress", {"step": st["step"], "elapsed": st["elapsed"]}))
        if ema is not None and "ema" in st:
            ema.load(st["ema"], st.get("ema_updates", 0))
        print(f"resumed from {state_path}: step {prog['step']}, {prog['elapsed'] / 60:.1f} min trained")
    elif args.compact and os.path.exists(args.compact) and not args.fresh:
        blob = read_compact(args.compact)
        prog.update(load_compact(blob, sam, opt, ema, grow=args.grow))
        if args.grow:
            grow_self_test(sam, blob["model"], blob["arch"])
        del blob
        print(f"resumed from the compact state {args.compact}: step {prog['step']}, "
              f"{prog['objects']} objects, {prog['cpu_s'] / 3600:.2f} CPU hours")
    step, elapsed = prog["step"], prog["elapsed"]
    budget = args.minutes * 60.0
    if elapsed >= budget:
        print("budget already spent; raise --minutes to continue")
    L = sam.image_encoder.img_size
    # The scene stream goes on where the last run stopped (older states: a fresh part of
    # the seed space derived from the step).
    seed0 = prog["data"] if prog["data"] else (step * args.batch * 7) % HELDOUT_START
    ds = Scenes(L, args.targets, seed0=seed0)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=args.batch, num_workers=args.workers, pin_memory=dev.type == "cuda",
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None,
    )
    mean = torch.tensor(PIXEL_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=dev).view(1, 3, 1, 1)
    if args.amp == "auto":
        amp = dev.type == "cuda" or (dev.type == "cpu" and cpu_has_bf16())
    else:
        amp = args.amp == "bf16"
    print(f"bfloat16 autocast: {'on' if amp else 'off'}")
    use_compiled(args.compile)
    encoder = torch.compile(sam.image_encoder) if args.compile else sam.image_encoder
    print(f"torch.compile: {'on' if args.compile else 'off'}")
    if args.compile:
        compiled_self_test(sam, pdec, dev)
    res = L // 2  # loss resolution: low-res logits upsampled x2
    sam.train()

    def save():
        sam.eval()
        prog.update(step=step, elapsed=elapsed)
        tmp = state_path + ".tmp"
        blob = {"model": sam.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                "arch": arch, "progress": dict(prog)}
        if ema is not None:
            blob["ema"], blob["ema_updates"] = ema.state_dict(), ema.updates
        torch.save(blob, tmp)
        os.replace(tmp, state_path)
        weights = ema.state_dict() if ema is not None else sam.state_dict()
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, os.path.join(args.out, "checkpoint.pth"))
        with open(os.path.join(args.out, "arch.json"), "w") as f:
            json.dump(arch, f, indent=2)
        if args.compact:
            save_compact(args.compact, sam, opt, ema, dict(prog), arch)
        sam.train()

    # SIGTERM/SIGINT: finish the step, save, exit (so a stopped run resumes where it stopped).
    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stats: dict = {}
    t_last_save = time.time()
    t_start = time.time()
    e_start = elapsed
    it = iter(dl)
    cpu_last = time.process_time()
    timing = {"data": 0.0, "forward": 0.0, "backward": 0.0}
    while elapsed < budget and not stop["now"] and not (args.stop_step and step >= args.stop_step):
        t0 = time.time()
        batch = next(it)
        t1 = time.time()
        if args.schedule == "constant":
            factor = min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps else 1.0
        else:
            factor = lr_factor(elapsed / budget, args.warmup, args.schedule)
        for g in opt.param_groups:
            g["lr"] = args.lr * factor
        img = batch["image"].to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        hw = batch["hw"].to(dev)
        N = img.shape[0]
        ar = torch.arange(L, device=dev)
        valid_full = (ar[None, :, None] < hw[:, 0, None, None]) & (ar[None, None, :] < hw[:, 1, None, None])
        x = (img - mean) / std * valid_full[:, None]
        masks = batch["masks"].to(dev, non_blocking=True).float()  # [N, K, L, L]
        K = masks.shape[1]
        target = F.avg_pool2d(masks, 2) > 0.5
        target = target.reshape(N * K, res, res)
        valid = F.avg_pool2d(valid_full[:, None].float(), 2)[:, 0] > 0.5
        valid = valid[:, None].expand(N, K, res, res).reshape(N * K, res, res)
        use_box = batch["use_box"].to(dev).reshape(-1)
        pts = batch["points"].to(dev).reshape(-1, 2)
        boxes = batch["boxes"].to(dev).reshape(-1, 4)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            emb = encoder(x)
            emb_p = emb.repeat_interleave(K, 0)
            dense_pe = sam.prompt_encoder.get_dense_pe()
            loss = 0.0
            for has_box in (False, True):
                sel = use_box == has_box
                if int(sel.sum()) == 0:
                    continue
                first = boxes[sel] if has_box else pts[sel]
                lg = run_prompts(sam, pdec, emb_p[sel], dense_pe, target[sel], valid[sel], first, has_box, args, stats)
                loss = loss + lg * float(sel.float().mean())
        t2 = time.time()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(sam)
        t3 = time.time()
        timing["data"] += t1 - t0
        timing["forward"] += t2 - t1
        timing["backward"] += t3 - t2
        step += 1
        elapsed = e_start + (time.time() - t_start)
        prog["objects"] += N * K
        prog["data"] = (int(batch["seed"].max()) + 1) % HELDOUT_START
        cpu_now = time.process_time()
        prog["cpu_s"] += cpu_now - cpu_last
        cpu_last = cpu_now
        if step % args.log_every == 0:
            s = {k: np.mean(v) for k, v in stats.items()}
            tot = sum(timing.values())
            print(
                f"step {step} {elapsed / 60:.1f}/{args.minutes:.1f} min lr {opt.param_groups[0]['lr']:.1e} "
                f"loss {float(loss.detach()):.3f} IoU: point oracle {s.get('point', 0):.3f} top {s.get('point_top', 0):.3f} "
                f"box {s.get('box', 0):.3f} last pass {s.get('last', 0):.3f} | "
                f"{args.log_every / tot:.3f} steps/s, {args.log_every * args.batch * args.targets / tot:.1f} prompts/s "
                f"(data {timing['data'] / tot:.0%}, forward {timing['forward'] / tot:.0%}, "
                f"backward+step {timing['backward'] / tot:.0%})",
                flush=True,
            )
            if args.curve:
                with open(args.curve, "a") as f:
                    f.write(json.dumps({
                        "step": step, "objects": prog["objects"], "cpu_h": round(prog["cpu_s"] / 3600, 4),
                        "elapsed_min": round(elapsed / 60, 2), "lr": opt.param_groups[0]["lr"],
                        "loss": round(float(loss.detach()), 4),
                        **{k: round(float(v), 4) for k, v in s.items()},
                        "s_per_step": round(tot / args.log_every, 3),
                    }) + "\n")
            stats = {}
            timing = {k: 0.0 for k in timing}
        if time.time() - t_last_save > args.save_every:
            save()
            t_last_save = time.time()
    save()
    print(f"done: step {step}, {elapsed / 60:.1f} min; wrote {state_path} and checkpoint.pth")


if __name__ == "__main__":
    main()
