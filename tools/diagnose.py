#!/usr/bin/env python3
"""Training diagnostics for the default model: can it overfit a few scenes, and where
does a training step's time go?

  diagnose.py overfit --scenes 1 --steps 300      # box / point IoU on the training scenes
  diagnose.py overfit --scenes 10 --steps 600
  diagnose.py profile                              # seconds per part of one train.py step

`overfit` trains on a fixed set of training-split scenes (every object of visible area
>= --min-area, tight boxes and centre points, one pass, no interactive clicks) and
evaluates the same prompts in eval mode every --eval-every steps. It writes a contact
sheet PNG (image with prompts | prediction | ground truth per object) to --sheet. If a
model cannot reach box IoU >= 0.95 on one scene within a few hundred steps, something in
the recipe (loss, targets, prompt frame, encoder) is broken.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_engine import centre_point, make_scene  # noqa: E402
from samtiny import ARCHES, PIXEL_MEAN, PIXEL_STD, PromptDecoder, build_sam  # noqa: E402
import train as T  # noqa: E402


def fixed_scenes(n, L, min_area, seed0=123):
    """Image tensors [n,3,L,L] (normalized, zero padded) and per-object prompts/targets."""
    mean = np.array(PIXEL_MEAN, np.float32)
    std = np.array(PIXEL_STD, np.float32)
    imgs, objs, raw, owners = [], [], [], []
    for i in range(n):
        sc = make_scene(seed0 + i, long_side=L)
        h, w = sc.height, sc.width
        own = np.zeros((L, L), np.int16)
        own[:h, :w] = sc.owner
        owners.append(own)
        x = np.zeros((L, L, 3), np.float32)
        x[:h, :w] = (sc.image.astype(np.float32) - mean) / std
        imgs.append(x.transpose(2, 0, 1))
        pad_img = np.zeros((L, L, 3), np.uint8)
        pad_img[:h, :w] = sc.image
        raw.append(pad_img)
        for o in sc.objects:
            m = sc.mask(o.id)
            if m.sum() < min_area:
                continue
            full = np.zeros((L, L), bool)
            full[:h, :w] = m
            ys, xs = np.nonzero(m)
            cx, cy = centre_point(m)
            objs.append({
                "scene": i,
                "mask": full,
                "box": np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32),
                "point": np.array([cx + 0.5, cy + 0.5], np.float32),
            })
    return torch.from_numpy(np.stack(imgs)), objs, raw, torch.from_numpy(np.stack(owners))


def prompts_for(objs, idx, kind, dev):
    if kind == "box":
        b = torch.from_numpy(np.stack([objs[i]["box"] for i in idx])).to(dev)
        pts = torch.stack([b[:, :2], b[:, 2:]], 1)
        lab = torch.tensor([2.0, 3.0], device=dev).expand(len(idx), 2)
    else:
        p = torch.from_numpy(np.stack([objs[i]["point"] for i in idx])).to(dev)
        pts = torch.stack([p, torch.zeros_like(p)], 1)
        lab = torch.tensor([1.0, -1.0], device=dev).expand(len(idx), 2)
    return pts, lab


def forward(sam, pdec, emb_all, objs, idx, kind, res):
    scene = torch.tensor([objs[i]["scene"] for i in idx])
    emb = emb_all[scene]
    pts, lab = prompts_for(objs, idx, kind, emb.device)
    sparse = pdec.embed_points(pts, lab)
    g = emb.shape[-1]
    dense = pdec.embed_masks(torch.zeros(len(idx), 1, 4 * g, 4 * g, device=emb.device),
                             torch.zeros(len(idx), device=emb.device))
    low, iou = T.decode(sam, emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    up = F.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    return up, iou


def targets(objs, idx, res):
    m = torch.from_numpy(np.stack([objs[i]["mask"] for i in idx])).float()[:, None]
    return F.adaptive_avg_pool2d(m, res)[:, 0] > 0.5


def evaluate(sam, pdec, imgs, objs, res):
    sam.eval()
    out = {}
    with torch.no_grad():
        emb = sam.image_encoder(imgs)
        idx = list(range(len(objs)))
        tgt = targets(objs, idx, res)
        up, _ = forward(sam, pdec, emb, objs, idx, "box", res)
        out["box"] = T.binary_iou(up[:, 0] > 0, tgt)
        upp, iou_p = forward(sam, pdec, emb, objs, idx, "point", res)
        ious = T.binary_iou(upp[:, 1:4] > 0, tgt[:, None])
        out["point_oracle"] = ious.max(1).values
        out["point_top"] = ious[torch.arange(len(idx)), iou_p[:, 1:4].argmax(1)]
        out["box_masks"] = up[:, 0] > 0
    sam.train()
    return out


def align_prompt_attention(sam):
    """Initialise every token-to-image attention with k_proj = q_proj (zero biases), so that
    q.k contains (prompt token + its positional encoding) . (image + image positional
    encoding) through W^T W ~ c I: the prompt's random-Fourier encoding meets the image's at
    the prompt's position from the first step, instead of the decoder having to learn that
    alignment while it predicts background everywhere."""
    t = sam.mask_decoder.transformer
    attns = [layer.cross_attn_token_to_image for layer in t.layers] + [t.final_attn_token_to_image]
    with torch.no_grad():
        for a in attns:
            a.k_proj.weight.copy_(a.q_proj.weight)
            a.q_proj.bias.zero_()
            a.k_proj.bias.zero_()


def param_groups(sam):
    """Parameters by part of the model, for gradient norms."""
    md = sam.mask_decoder
    return {
        "encoder": list(sam.image_encoder.parameters()),
        "prompt_enc": list(sam.prompt_encoder.parameters()),
        "transformer": list(md.transformer.parameters()),
        "tokens": [md.iou_token.weight, md.mask_tokens.weight],
        "upscaling": list(md.output_upscaling.parameters()),
        "hypernets": list(md.output_hypernetworks_mlps.parameters()),
        "iou_head": list(md.iou_prediction_head.parameters()),
    }


def grad_norm(ps):
    g = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
    return float(torch.stack(g).norm()) if g else 0.0


def boundary_map(owner, res):
    """1 where the instance map (owner ids, parts as their own ids) changes between 4-neighbours,
    max-pooled to res x res."""
    o = owner.long()
    edge = torch.zeros_like(o, dtype=torch.bool)
    dy = o[:, 1:, :] != o[:, :-1, :]
    dx = o[:, :, 1:] != o[:, :, :-1]
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    return F.adaptive_max_pool2d(edge[:, None].float(), res)[:, 0]


class DenseAux(torch.nn.Module):
    """Dense auxiliary losses on the image embedding from the scene's instance map, so every
    pixel of every image teaches the encoder (the prompt losses reach it only through the
    decoder). Training only: not part of the exported model. The embedding [N,C,g,g] goes
    through a 1x1 head and pixel_shuffle to 4g x 4g (so each cell must say what happens
    inside it):
    * boundary: a balanced BCE on instance boundaries;
    * embed: a discriminative pixel-embedding loss (De Brabandere et al. 2017): pixels pulled
      to their instance's mean within delta_v, instance means pushed apart beyond 2 delta_d."""

    def __init__(self, c: int, mode: str = "boundary", up: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.up, self.mode, self.dim = up, mode, dim
        out = (1 if mode in ("boundary", "both") else 0) + (dim if mode in ("embed", "both") else 0)
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(c, c, 1), torch.nn.GELU(), torch.nn.Conv2d(c, out * up * up, 1))

    def loss(self, emb, owner):
        y = F.pixel_shuffle(self.head(emb), self.up).float()  # [N, out, 4g, 4g]
        res = y.shape[-1]
        total = 0.0
        k = 0
        if self.mode in ("boundary", "both"):
            tgt = boundary_map(owner, res)
            pos = tgt.mean().clamp(min=1e-3)
            w = torch.where(tgt > 0, 0.5 / pos, 0.5 / (1 - pos))
            total = total + (F.binary_cross_entropy_with_logits(y[:, 0], tgt, reduction="none") * w).mean()
            k = 1
        if self.mode in ("embed", "both"):
            own = F.interpolate(owner[:, None].float(), size=(res, res), mode="nearest")[:, 0].long()
            total = total + discriminative_loss(y[:, k:k + self.dim], own)
        return total


def discriminative_loss(e, own, delta_v: float = 0.5, delta_d: float = 1.5, max_inst: int = 48):
    """e [N,D,h,w], own [N,h,w] instance ids (0 = background, treated as an instance too)."""
    losses = []
    for n in range(e.shape[0]):
        ids = torch.unique(own[n])
        if len(ids) > max_inst:
            ids = ids[torch.randperm(len(ids))[:max_inst]]
        x = e[n].flatten(1).t()  # [hw, D]
        lab = own[n].flatten()
        mus, pull = [], []
        for i in ids:
            m = lab == i
            xi = x[m]
            mu = xi.mean(0)
            mus.append(mu)
            pull.append(F.relu((xi - mu).norm(dim=1) - delta_v).pow(2).mean())
        mu = torch.stack(mus)
        d = torch.cdist(mu, mu)
        off = ~torch.eye(len(mus), dtype=torch.bool, device=e.device)
        push = F.relu(2 * delta_d - d[off]).pow(2).mean() if len(mus) > 1 else d.sum() * 0
        reg = mu.norm(dim=1).mean() * 1e-3
        losses.append(torch.stack(pull).mean() + push + reg)
    return torch.stack(losses).mean()


def contact_sheet(path, raw, objs, pred, res, L, n=24):
    from PIL import Image, ImageDraw

    cell = 160
    rows = min(n, len(objs))
    sheet = Image.new("RGB", (cell * 3, cell * rows), (255, 255, 255))
    for r in range(rows):
        o = objs[r]
        img = Image.fromarray(raw[o["scene"]]).resize((cell, cell))
        d = ImageDraw.Draw(img)
        s = cell / L
        b = o["box"] * s
        d.rectangle([b[0], b[1], b[2], b[3]], outline=(255, 0, 0), width=2)
        pm = Image.fromarray((pred[r].numpy() * 255).astype(np.uint8)).resize((cell, cell))
        gm = Image.fromarray((o["mask"] * 255).astype(np.uint8)).resize((cell, cell))
        sheet.paste(img, (0, r * cell))
        sheet.paste(pm.convert("RGB"), (cell, r * cell))
        sheet.paste(gm.convert("RGB"), (2 * cell, r * cell))
    sheet.save(path)


def overfit(args):
    torch.manual_seed(0)
    arch = ARCHES[args.arch]
    sam = build_sam(arch)
    pdec = PromptDecoder(sam)
    if args.init:
        sam.load_state_dict(torch.load(args.init, map_location="cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    L = sam.image_encoder.img_size
    res = L // 2
    if args.align_pe:
        align_prompt_attention(sam)
    imgs, objs, raw, owners = fixed_scenes(args.scenes, L, args.min_area)
    aux = DenseAux(sam.prompt_encoder.embed_dim, args.aux_mode) if args.aux > 0 else None
    print(f"{args.scenes} scenes, {len(objs)} objects (area >= {args.min_area})", flush=True)
    params = list(sam.parameters()) + (list(aux.parameters()) if aux is not None else [])
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, args.beta2), weight_decay=0.1)
    amp = args.amp == "bf16"
    sam.train()
    t0 = time.time()
    np.random.seed(args.seed)
    groups = param_groups(sam)
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * (min(1.0, step / args.warmup_steps) if args.warmup_steps else 1.0)
        si = np.random.choice(args.scenes, size=min(args.batch, args.scenes), replace=False)
        ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)
        ac.__enter__()
        emb = sam.image_encoder(imgs[torch.from_numpy(si)])
        remap = {int(s): j for j, s in enumerate(si)}
        cand = [i for i, o in enumerate(objs) if o["scene"] in remap]
        idx = list(np.random.choice(cand, size=min(args.prompts, len(cand)), replace=False))
        sub = [dict(objs[i], scene=remap[objs[i]["scene"]]) for i in idx]
        tgt = targets(sub, range(len(sub)), res)
        loss = 0.0
        for kind in ("box", "point"):
            up, iou_p = forward(sam, pdec, emb, sub, range(len(sub)), kind, res)
            sel = slice(0, 1) if kind == "box" else slice(1, 4)
            lg = up[:, sel]
            fw = 0.0 if step <= args.focal_from else args.focal_weight
            if args.focal_ramp:
                fw = args.focal_weight * min(1.0, step / args.focal_ramp)
            losses = T.mask_losses(lg, tgt[:, None].float().expand_as(lg), args.focal_alpha, fw)
            with torch.no_grad():
                actual = T.binary_iou(lg > 0, tgt[:, None])
            best = losses.argmin(1)
            loss = loss + losses.gather(1, best[:, None]).mean() + F.mse_loss(iou_p[:, sel].float(), actual)
        if aux is not None:
            loss = loss + args.aux * aux.loss(emb, owners[torch.from_numpy(si)])
        ac.__exit__(None, None, None)
        opt.zero_grad()
        loss.backward()
        if args.grad_every and (step % args.grad_every == 0 or step == 1):
            print(f"  grad norms step {step}: " + " ".join(
                f"{k} {grad_norm(v):.2e}" for k, v in groups.items()), flush=True)
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            ev = evaluate(sam, pdec, imgs, objs, res)
            print(f"step {step} ({time.time() - t0:.0f}s) loss {float(loss.detach()):.3f} box {float(ev['box'].mean()):.3f} "
                  f"point oracle {float(ev['point_oracle'].mean()):.3f} top {float(ev['point_top'].mean()):.3f}",
                  flush=True)
    if args.sheet:
        contact_sheet(args.sheet, raw, objs, ev["box_masks"], res, L)
        print(f"wrote {args.sheet}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overfit")
    o.add_argument("--scenes", type=int, default=1)
    o.add_argument("--steps", type=int, default=300)
    o.add_argument("--batch", type=int, default=4, help="scenes encoded per step")
    o.add_argument("--prompts", type=int, default=32, help="objects prompted per step")
    o.add_argument("--lr", type=float, default=8e-4)
    o.add_argument("--min-area", type=int, default=100)
    o.add_argument("--eval-every", type=int, default=25)
    o.add_argument("--arch", choices=sorted(ARCHES), default="default")
    o.add_argument("--sheet", help="contact sheet PNG")
    o.add_argument("--init", help="start from this state_dict instead of a random init")
    o.add_argument("--threads", type=int, default=0)
    o.add_argument("--focal-alpha", type=float, default=0.25)
    o.add_argument("--amp", choices=["bf16", "off"], default="bf16", help="bfloat16 autocast")
    o.add_argument("--warmup-steps", type=int, default=0)
    o.add_argument("--beta2", type=float, default=0.999, help="AdamW's second-moment decay")
    o.add_argument("--align-pe", action="store_true", help="k_proj = q_proj in token-to-image attention at init")
    o.add_argument("--aux", type=float, default=0.0, help="weight of the dense auxiliary loss (DenseAux)")
    o.add_argument("--aux-mode", choices=["boundary", "embed", "both"], default="boundary")
    o.add_argument("--focal-from", type=int, default=0,
                   help="dice alone (no focal term) up to this step, then focal (--focal-weight) + dice")
    o.add_argument("--focal-ramp", type=int, default=0,
                   help="ramp the focal weight linearly from 0 to --focal-weight over this many steps")
    o.add_argument("--focal-weight", type=float, default=20.0, help="weight of the focal term (SAM: 20)")
    o.add_argument("--grad-every", type=int, default=0, help="print gradient norms per part every N steps")
    o.add_argument("--seed", type=int, default=0, help="numpy seed of the batch draws")
    args = ap.parse_args(argv)
    if args.cmd == "overfit":
        overfit(args)


if __name__ == "__main__":
    main()
