#!/usr/bin/env python3
"""SAM 2.1 image models to the ONNX pair + manifest.json that samserve serves.

  # an official checkpoint (sam2 package configs; see sam_model.py for the download)
  sam2_export.py --model sam2.1_hiera_tiny --checkpoint sam2.1_hiera_tiny.pt --out models/sam2.1-hiera-tiny
  # the real architecture with random weights (benchmarks, make model-check-sam2)
  sam2_export.py --model sam2.1_hiera_tiny --random-init --out target/sam2-tiny-random
  # the reduced-width test architecture (tests/fixtures/models/sam2-mini; make sam2-fixtures)
  sam2_export.py --model mini --checkpoint ckpt.pt --out tests/fixtures/models/sam2-mini

The model is built by the official `sam2` package (PyPI sam2==1.1.0) from its own
configs (`configs/sam2.1/*.yaml`), with build_sam2's image post-processing settings
(dynamic_multimask_via_stability, delta 0.05, threshold 0.98). The graphs wrap the
package's own modules, so they compute what SAM2ImagePredictor computes:

encoder.onnx  input  `image` f32 [B, 3, 1024, 1024]: the image resized to 1024 x 1024
              (aspect not kept, no padding), /255, ImageNet mean/std (SAM2Transforms);
              outputs `image_embed` [B, C, 64, 64] (no_mem_embed added, as set_image
              does), `high_res_feats_0` [B, C/8, 256, 256], `high_res_feats_1`
              [B, C/4, 128, 128] (conv_s0 / conv_s1 applied).
decoder.onnx  inputs the three tensors above ([1, ...]), `point_coords` f32 [P, N, 2] in
              the 1024 frame (x * 1024 / W, y * 1024 / H; box corners first, labels 2
              and 3), `point_labels` f32 [P, N], `mask_input` f32 [P, 1, 256, 256],
              `has_mask_input` f32 [P]; the graph adds the 0.5 pixel-centre shift and the
              padding point itself (PromptEncoder._embed_points with pad=True, which the
              predictor always uses); outputs `iou_predictions` [P, 4] and
              `low_res_masks` [P, 4, 256, 256] (unclamped) for ALL FOUR mask tokens, so
              the server applies the official single-mask selection
              (_dynamic_multimask_via_stability) itself; P is a dynamic prompt batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name -> config inside the sam2 package
CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    # sam2.1_hiera_t with reduced widths: the committed test model (a few MB). Same code
    # paths (Hiera trunk, FPN neck, high-res features, 4 mask tokens), smaller numbers.
    "mini": "configs/sam2.1/sam2.1_hiera_t.yaml",
}

MINI_HIDDEN = 32
MINI_EMBED = 16
MINI_OVERRIDES = {
    "model": {
        "image_encoder": {
            "trunk": {"embed_dim": MINI_EMBED, "num_heads": 1, "stages": [1, 1, 2, 1],
                      "global_att_blocks": [3]},
            "neck": {"d_model": MINI_HIDDEN,
                     "backbone_channel_list": [MINI_EMBED * 8, MINI_EMBED * 4, MINI_EMBED * 2, MINI_EMBED],
                     "position_encoding": {"num_pos_feats": MINI_HIDDEN}},
        },
        "memory_attention": {
            "d_model": MINI_HIDDEN, "num_layers": 1,
            "layer": {"d_model": MINI_HIDDEN, "dim_feedforward": 64,
                      "self_attention": {"embedding_dim": MINI_HIDDEN},
                      "cross_attention": {"embedding_dim": MINI_HIDDEN, "kv_in_dim": 16}},
        },
        "memory_encoder": {"out_dim": 16, "in_dim": MINI_HIDDEN,
                           "position_encoding": {"num_pos_feats": 16},
                           "fuser": {"layer": {"dim": MINI_HIDDEN}, "num_layers": 1}},
    }
}

# What build_sam2 adds for image use (apply_postprocessing=True).
POSTPROCESSING = {
    "model": {
        "sam_mask_decoder_extra_args": {
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        }
    }
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
OPSET = 17


def build(model: str, checkpoint: str | None = None, image_size: int | None = None):
    """The SAM2Base of `model` from the sam2 package's config, with a checkpoint's weights
    (a dict with "model", as Meta publishes them) or random ones (seeded)."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(os.path.dirname(sam2.__file__), CONFIGS[model]))
    if model == "mini":
        cfg = OmegaConf.merge(cfg, OmegaConf.create(MINI_OVERRIDES))
    cfg = OmegaConf.merge(cfg, OmegaConf.create(POSTPROCESSING))
    if image_size:
        cfg.model.image_size = image_size
        # The memory attention's RoPE grid follows the image (unused by image models).
        for att in ("self_attention", "cross_attention"):
            cfg.model.memory_attention.layer[att].feat_sizes = [image_size // 16] * 2
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    m = instantiate(cfg.model, _recursive_=True)
    if checkpoint:
        sd = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
        missing, unexpected = m.load_state_dict(sd)
        if missing or unexpected:
            sys.exit(f"{checkpoint}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
    return m.eval()


def structure_mini(m) -> None:
    """Two deterministic edits of the random mini weights that make a parity test of them
    discriminating: random weights answer masks that barely depend on the prompt and a
    single-mask token that is never stable. The positional encoding's Gaussian matrix x16
    makes the predicted IoU move by ~5e-4 for a half-pixel move of a click (the server
    matches the reference to ~5e-7), and token 0's hypernetwork output x60 gives its logits
    a magnitude at which the stability rule keeps token 0 for some prompts and falls back to
    a multimask token for others."""
    with torch.no_grad():
        m.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(16.0)
        last = m.sam_mask_decoder.output_hypernetworks_mlps[0].layers[-1]
        last.weight.mul_(60.0)
        last.bias.mul_(60.0)


def save_checkpoint(m, path: str) -> None:
    """A checkpoint in Meta's layout ({"model": state_dict}), loadable by build_sam2."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": m.state_dict()}, path)


class Encoder(nn.Module):
    """SAM2ImagePredictor.set_image after the transforms: backbone, conv_s0/conv_s1,
    no_mem_embed on the lowest-resolution level, back to [B, C, H, W]."""

    def __init__(self, m) -> None:
        super().__init__()
        self.m = m

    def forward(self, image):
        out = self.m.forward_image(image)
        _, feats, _, sizes = self.m._prepare_backbone_features(out)
        if self.m.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.m.no_mem_embed
        b = image.shape[0]
        maps = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        return maps[-1], maps[0], maps[1]


class Decoder(nn.Module):
    """SAM2ImagePredictor._predict for a batch of prompts on one image, all four tokens."""

    def __init__(self, m) -> None:
        super().__init__()
        self.m = m

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
                mask_input, has_mask_input):
        pe = self.m.sam_prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels, pad=True)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1.0 - has) * no_mask
        masks, iou, _, _ = self.m.sam_mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=True,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return iou, masks


class DecoderSam2OnnxSignature(nn.Module):
    """A decoder with sam2-onnx 0.3.12's signature, written here (that package needs Python
    3.12): inputs `image_embed`, `high_res_feat_0`, `high_res_feat_1`, `point_coords`
    [1, N, 2], `point_labels` int64 [1, N], `mask_input` [1, 1, 256, 256], `has_mask_input`
    [1, 1]; outputs `low_res_masks` [1, 3, 256, 256] (multimask tokens 1-3, unclamped) and
    `iou_predictions` [1, 3]; one prompt per call. For the server's test of that layout."""

    def __init__(self, m) -> None:
        super().__init__()
        self.inner = Decoder(m)

    def forward(self, image_embed, high_res_feat_0, high_res_feat_1, point_coords, point_labels, mask_input,
                has_mask_input):
        iou, masks = self.inner(image_embed, high_res_feat_0, high_res_feat_1, point_coords,
                                point_labels.to(torch.float32), mask_input, has_mask_input.reshape(-1))
        return masks[:, 1:], iou[:, 1:]


def export_decoder_sam2_onnx_signature(m, path: str) -> None:
    L = m.image_size
    g = L // m.backbone_stride
    C = m.hidden_dim
    gen = torch.Generator().manual_seed(0)
    args = (
        torch.randn(1, C, g, g, generator=gen),
        torch.randn(1, C // 8, 4 * g, 4 * g, generator=gen),
        torch.randn(1, C // 4, 2 * g, 2 * g, generator=gen),
        torch.rand(1, 3, 2, generator=gen) * L,
        torch.tensor([[1, 0, 1]], dtype=torch.int64),
        torch.randn(1, 1, 4 * g, 4 * g, generator=gen),
        torch.zeros(1, 1),
    )
    with torch.no_grad():
        torch.onnx.export(
            DecoderSam2OnnxSignature(m).eval(), args, path,
            input_names=["image_embed", "high_res_feat_0", "high_res_feat_1", "point_coords", "point_labels",
                         "mask_input", "has_mask_input"],
            output_names=["low_res_masks", "iou_predictions"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def export_encoder(m, path: str) -> None:
    L = m.image_size
    with torch.no_grad():
        torch.onnx.export(
            Encoder(m).eval(), (torch.randn(1, 3, L, L, generator=torch.Generator().manual_seed(0)),), path,
            input_names=["image"], output_names=["image_embed", "high_res_feats_0", "high_res_feats_1"],
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def export_decoder(m, path: str) -> None:
    L = m.image_size
    g = L // m.backbone_stride
    C = m.hidden_dim
    gen = torch.Generator().manual_seed(0)
    args = (
        torch.randn(1, C, g, g, generator=gen),
        torch.randn(1, C // 8, 4 * g, 4 * g, generator=gen),
        torch.randn(1, C // 4, 2 * g, 2 * g, generator=gen),
        torch.rand(2, 3, 2, generator=gen) * L,
        torch.tensor([[1.0, 0.0, 1.0], [2.0, 3.0, 1.0]]),
        torch.randn(2, 1, 4 * g, 4 * g, generator=gen),
        torch.tensor([0.0, 1.0]),
    )
    with torch.no_grad():
        torch.onnx.export(
            Decoder(m).eval(), args, path,
            input_names=["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                         "mask_input", "has_mask_input"],
            output_names=["iou_predictions", "low_res_masks"],
            dynamic_axes={
                "point_coords": {0: "prompts", 1: "points"},
                "point_labels": {0: "prompts", 1: "points"},
                "mask_input": {0: "prompts"},
                "has_mask_input": {0: "prompts"},
                "iou_predictions": {0: "prompts"},
                "low_res_masks": {0: "prompts"},
            },
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def manifest_for(m, name: str, description: str) -> dict:
    dec = m.sam_mask_decoder
    return {
        "name": name,
        "family": "sam2",
        "encoder": "encoder.onnx",
        "decoder": "decoder.onnx",
        "input_size": int(m.image_size),
        "pixel_mean": [round(v * 255, 6) for v in IMAGENET_MEAN],
        "pixel_std": [round(v * 255, 6) for v in IMAGENET_STD],
        "description": description,
        # The official single-mask rule (MaskDecoder._dynamic_multimask_via_stability).
        "single_mask": {
            "rule": "stability",
            "stability_delta": float(dec.dynamic_multimask_stability_delta),
            "stability_thresh": float(dec.dynamic_multimask_stability_thresh),
        },
        "generated_by": "tools/sam2_export.py",
    }


def smoke_test(out: str, m) -> None:
    """The pair through onnxruntime against the torch modules: a batch of three prompts
    (one refining a mask) in one call equals each prompt alone and torch."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    enc = ort.InferenceSession(os.path.join(out, "encoder.onnx"), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(os.path.join(out, "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    L = m.image_size
    img = torch.randn(1, 3, L, L, generator=torch.Generator().manual_seed(1))
    feats = enc.run(None, {"image": img.numpy()})
    with torch.no_grad():
        ref = Encoder(m)(img)
    for a, b, n in zip(feats, ref, ("image_embed", "high_res_feats_0", "high_res_feats_1")):
        d = float(np.abs(a - b.numpy()).max())
        assert d < 1e-3 * max(1.0, float(np.abs(b.numpy()).max())), (n, d)
    g = feats[0].shape[-1]
    coords = np.array([[[100, 200], [0, 0]], [[50, 60], [800, 700]], [[512, 512], [600, 300]]], np.float32)
    labels = np.array([[1, 0], [2, 3], [1, 1]], np.float32)
    mask_in = np.zeros((3, 1, 4 * g, 4 * g), np.float32)
    mask_in[2] = np.random.default_rng(0).normal(size=(1, 4 * g, 4 * g)) * 3
    has = np.array([0, 0, 1], np.float32)
    base = dict(zip(("image_embed", "high_res_feats_0", "high_res_feats_1"), feats))
    iou, low = dec.run(None, {**base, "point_coords": coords, "point_labels": labels, "mask_input": mask_in,
                              "has_mask_input": has})
    assert iou.shape == (3, 4) and low.shape == (3, 4, 4 * g, 4 * g), (iou.shape, low.shape)
    for i in range(3):
        i1, l1 = dec.run(None, {**base, "point_coords": coords[i:i + 1], "point_labels": labels[i:i + 1],
                                "mask_input": mask_in[i:i + 1], "has_mask_input": has[i:i + 1]})
        assert np.abs(i1 - iou[i:i + 1]).max() < 1e-4 and np.abs(l1 - low[i:i + 1]).max() < 1e-3, i
    with torch.no_grad():
        t_iou, t_low = Decoder(m)(*[torch.from_numpy(x) for x in feats], torch.from_numpy(coords),
                                  torch.from_numpy(labels), torch.from_numpy(mask_in), torch.from_numpy(has))
    assert np.abs(t_iou.numpy() - iou).max() < 1e-3, np.abs(t_iou.numpy() - iou).max()
    print(f"  onnxruntime smoke test ok: features {[list(f.shape) for f in feats]}, "
          f"3 prompts in one call = alone = torch")


def export_model(m, out: str, name: str, description: str) -> None:
    os.makedirs(out, exist_ok=True)
    print(f"exporting {name}: encoder")
    export_encoder(m, os.path.join(out, "encoder.onnx"))
    print("exporting decoder (4 mask tokens, dynamic prompt batch)")
    export_decoder(m, os.path.join(out, "decoder.onnx"))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest_for(m, name, description), f, indent=2)
        f.write("\n")
    smoke_test(out, m)
    for fn in sorted(os.listdir(out)):
        print(f"  {os.path.join(out, fn)}: {os.path.getsize(os.path.join(out, fn))} bytes")


class OnnxSam2:
    """The server's pipeline in onnxruntime, for agreement checks between two exports:
    SAM2Transforms' preprocessing (torch), prompts in the 1024 frame, all four tokens."""

    def __init__(self, model_dir: str, threads: int = 0) -> None:
        import onnxruntime as ort

        man = json.load(open(os.path.join(model_dir, "manifest.json")))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        prov = ["CPUExecutionProvider"]
        self.L = int(man["input_size"])
        self.enc = ort.InferenceSession(os.path.join(model_dir, man["encoder"]), so, providers=prov)
        self.dec = ort.InferenceSession(os.path.join(model_dir, man["decoder"]), so, providers=prov)
        self.feats = None

    def set_image(self, rgb: np.ndarray) -> None:
        from torch.nn import functional as F

        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
        x = F.interpolate(x[None], (self.L, self.L), mode="bilinear", align_corners=False, antialias=True)[0]
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.feats = dict(zip(("image_embed", "high_res_feats_0", "high_res_feats_1"),
                              self.enc.run(None, {"image": x[None].numpy()})))
        self.hw = rgb.shape[:2]

    def decode(self, coords: np.ndarray, labels: np.ndarray):
        """coords [P, N, 2] in original pixels -> (masks [P, 4, H, W] logits, scores [P, 4])."""
        from torch.nn import functional as F

        H, W = self.hw
        c = coords.astype(np.float32).copy()
        c[..., 0] = c[..., 0] / W * self.L
        c[..., 1] = c[..., 1] / H * self.L
        p = c.shape[0]
        g = self.feats["high_res_feats_0"].shape[-1]
        iou, low = self.dec.run(None, {**self.feats, "point_coords": c, "point_labels": labels.astype(np.float32),
                                       "mask_input": np.zeros((p, 1, g, g), np.float32),
                                       "has_mask_input": np.zeros(p, np.float32)})
        masks = F.interpolate(torch.from_numpy(low), (H, W), mode="bilinear", align_corners=False).numpy()
        return masks, iou


def agreement(a_dir: str, b_dir: str, scenes: int, long_side: int = 1024) -> dict:
    """Mask IoU of every token and predicted-IoU deltas between two exports on held-out
    data_engine scenes: a centre click and a box per object of >= 100 pixels. One model in
    memory at a time."""
    import gc

    from data_engine import HELDOUT_START, centre_point, make_scene

    outs = {}
    for key, d in (("a", a_dir), ("b", b_dir)):
        m = OnnxSam2(d)
        outs[key] = []
        for i in range(scenes):
            sc = make_scene(HELDOUT_START + i, long_side=long_side)
            objs = [g for g in (sc.mask(o.id) for o in sc.objects) if g.sum() >= 100]
            if not objs:
                continue
            m.set_image(sc.image)
            for g in objs:
                x, y = centre_point(g)
                ys, xs = np.nonzero(g)
                for coords, labels in (([[x + 0.5, y + 0.5]], [1]),
                                       ([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]], [2, 3])):
                    masks, iou = m.decode(np.array([coords], np.float32), np.array([labels], np.float32))
                    outs[key].append((np.packbits(masks[0] > 0), masks.shape[1:], iou[0]))
        del m
        gc.collect()
    ious, dscore = [], []
    for (pa, shape, sa), (pb, _, sb) in zip(outs["a"], outs["b"]):
        n = int(np.prod(shape))
        ma = np.unpackbits(pa, count=n).reshape(shape).astype(bool)
        mb = np.unpackbits(pb, count=n).reshape(shape).astype(bool)
        for t in range(shape[0]):
            u = np.logical_or(ma[t], mb[t]).sum()
            ious.append(1.0 if u == 0 else float(np.logical_and(ma[t], mb[t]).sum() / u))
        dscore.append(np.abs(sa - sb))
    d = np.concatenate(dscore)
    return {"scenes": scenes, "prompts": len(outs["a"]), "masks_compared": len(ious),
            "mean_mask_iou": float(np.mean(ious)), "min_mask_iou": float(np.min(ious)),
            "pred_iou_abs_delta_mean": float(d.mean()), "pred_iou_abs_delta_max": float(d.max())}


def write_int8(src: str, dst: str, check_scenes: int, min_agreement: float = 0.97) -> bool:
    """The int8 variant of a SAM 2 folder (encoder and decoder MatMul weights dynamic int8,
    the decoder's positional-encoding MatMuls fp32), kept only when its masks agree with
    fp32 on held-out scenes (mean IoU >= min_agreement); the agreement goes into its
    manifest. Returns whether the variant was kept."""
    import shutil

    import quantize

    man = json.load(open(os.path.join(src, "manifest.json")))
    keep = quantize.positional_encoding_nodes(os.path.join(src, man["decoder"]))
    print(f"int8 variant: {dst} (decoder nodes kept fp32: {keep})", flush=True)
    quantize.make_variant(src, dst, "dynamic", "dynamic", exclude=keep)
    if check_scenes <= 0:
        return True
    r = agreement(src, dst, check_scenes)
    print(f"int8 vs fp32: mean mask IoU {r['mean_mask_iou']:.4f} (min {r['min_mask_iou']:.3f}, "
          f"{r['masks_compared']} masks), predicted-IoU |delta| max {r['pred_iou_abs_delta_max']:.4f}")
    if r["mean_mask_iou"] < min_agreement:
        shutil.rmtree(dst)
        print(f"int8 variant NOT kept: mean mask IoU {r['mean_mask_iou']:.4f} < {min_agreement} "
              f"(the fp32 folder is the one to serve)")
        return False
    man_path = os.path.join(dst, "manifest.json")
    qman = json.load(open(man_path))
    qman["quantization"]["agreement"] = {**r, "measured_by": (
        f"tools/sam2_export.py agreement: {check_scenes} held-out data_engine scenes at 1024 px, a centre click "
        "and a box per object, all four tokens")}
    with open(man_path, "w") as f:
        json.dump(qman, f, indent=2)
        f.write("\n")
    print(f"done: the int8 variant:  samserve --model {dst}")
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--checkpoint", help="Meta's .pt (or one saved by --save-checkpoint)")
    ap.add_argument("--random-init", action="store_true", help="random weights (seeded)")
    ap.add_argument("--structured", action="store_true",
                    help="with --random-init --model mini: the test model's edits (structure_mini)")
    ap.add_argument("--save-checkpoint", help="also write the weights as a checkpoint in Meta's layout")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", help="manifest name (default: the --out folder's name)")
    ap.add_argument("--description", default="")
    ap.add_argument("--sam2-onnx-signature-decoder", metavar="PATH",
                    help="only write a decoder with sam2-onnx 0.3.12's signature to PATH")
    a = ap.parse_args(argv)
    if bool(a.checkpoint) == a.random_init:
        ap.error("give exactly one of --checkpoint and --random-init")
    m = build(a.model, a.checkpoint)
    if a.structured:
        if not (a.random_init and a.model == "mini"):
            ap.error("--structured goes with --random-init --model mini")
        structure_mini(m)
    if a.save_checkpoint:
        save_checkpoint(m, a.save_checkpoint)
    if a.sam2_onnx_signature_decoder:
        path = a.sam2_onnx_signature_decoder
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        export_decoder_sam2_onnx_signature(m, path)
        print(f"  {path}: {os.path.getsize(path)} bytes")
        # Beside it, a manifest pairing it with --out's encoder (same weights).
        name = os.path.basename(folder)
        manifest = {
            "name": name,
            "family": "sam2",
            "encoder": os.path.relpath(os.path.join(os.path.abspath(a.out), "encoder.onnx"), folder),
            "decoder": os.path.basename(path),
            "input_size": m.image_size,
            "description": f"{os.path.basename(os.path.normpath(a.out))}'s weights with a decoder in sam2-onnx "
                           "0.3.12's signature (high_res_feat_0/1, int64 point_labels, [1, 1] has_mask_input, "
                           "tokens 1-3 as low_res_masks, one prompt per call), written by tools/sam2_export.py "
                           "--sam2-onnx-signature-decoder: that package needs Python 3.12.",
            "generated_by": "tools/sam2_export.py",
        }
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        return
    name = a.name or os.path.basename(os.path.normpath(a.out))
    what = f"from {os.path.basename(a.checkpoint)}" if a.checkpoint else "with RANDOM weights (tests/benchmarks only)"
    desc = a.description or (f"SAM 2.1 {a.model} {what}. Encoder 'image' [1,3,{m.image_size},{m.image_size}] "
                             "(stretched, ImageNet-normalized); decoder with all four mask tokens and a dynamic "
                             "prompt batch.")
    export_model(m, a.out, name, desc)


if __name__ == "__main__":
    main()
