"""Shared helpers for the samserve model tooling.

Builds a reduced-size Segment Anything model out of the classes of the
`segment_anything` package, and defines the torch wrappers that are exported
to ONNX:

* ``EncoderNCHW``: normalized, padded ``image`` [1, 3, L, L] -> ``image_embeddings``.
* ``EncoderHWC``: samexporter-style ``input_image`` [h, w, 3] (0-255, long side
  already resized to L) -> normalize + pad inside the graph -> ``image_embeddings``.
* ``PromptDecoder``: the official SAM ONNX decoder signature, with a dynamic
  prompt-batch axis B (one image embedding shared by all B prompts).

Nothing in here is copied from the segment-anything repository; the package is
imported and its modules are used at run time.
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any, Dict

import torch
from torch import nn
from torch.nn import functional as F

from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

# Hyper-parameters of the tiny model. Stored verbatim in manifest.json under
# "architecture" so that the reference pipeline can rebuild the torch model.
TINY_ARCH: Dict[str, Any] = {
    "image_size": 512,
    "patch_size": 16,
    "encoder_embed_dim": 96,
    "encoder_depth": 2,
    "encoder_num_heads": 4,
    "encoder_mlp_ratio": 4.0,
    "encoder_window_size": 8,
    "encoder_global_attn_indexes": [1],
    "encoder_use_rel_pos": True,
    "encoder_qkv_bias": True,
    "encoder_layernorm_eps": 1e-6,
    "prompt_embed_dim": 64,
    "mask_in_chans": 16,
    "decoder_transformer_depth": 2,
    "decoder_transformer_mlp_dim": 256,
    "decoder_transformer_num_heads": 4,
    "decoder_num_multimask_outputs": 3,
    "decoder_iou_head_depth": 3,
    "decoder_iou_head_hidden_dim": 64,
}


# The default model: a small convolutional image encoder in place of the ViT, so
# that it trains in minutes and runs in tens of milliseconds on a CPU. The prompt
# encoder and mask decoder are the package's classes. Stored in manifest.json.
DEFAULT_ARCH: Dict[str, Any] = {
    "encoder_type": "conv",
    "image_size": 512,
    "patch_size": 16,
    "encoder_widths": [32, 48, 96, 160],
    "encoder_depths": [1, 1, 2, 4],
    "encoder_dilations": [1, 2, 4, 8],
    "prompt_embed_dim": 128,
    "mask_in_chans": 16,
    "decoder_transformer_depth": 2,
    "decoder_transformer_mlp_dim": 512,
    "decoder_transformer_num_heads": 4,
    "decoder_num_multimask_outputs": 3,
    "decoder_iou_head_depth": 3,
    "decoder_iou_head_hidden_dim": 128,
}


# Named architectures for tools/train.py --arch and tools/export_onnx.py --arch.
# "grid64": the default model on a 64x64 embedding grid (stride-8 encoder), low-res masks
# 256x256. Not needed for the held-out targets (tools/resolution_ceiling.py: fitted logits on
# the 32x32 grid reach 0.977 box mIoU); kept for finer masks. The decoder attends over 4x the
# image tokens.
# "deep16": four more dilated residual blocks at 1/16 (8 instead of 4), for grouping large,
# textured and occluded objects. Grown from a trained default model with the new blocks'
# residual branches zeroed (train_state.grow_state_dict), so it starts as the same function.
ARCHES: Dict[str, Dict[str, Any]] = {
    "default": DEFAULT_ARCH,
    "grid64": {**DEFAULT_ARCH, "patch_size": 8},
    "deep16": {**DEFAULT_ARCH, "encoder_depths": [1, 1, 2, 8]},
}


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, act: bool = True) -> None:
        layers = [
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _ResBlock(nn.Module):
    def __init__(self, c: int, dilation: int = 1) -> None:
        super().__init__()
        self.a = _ConvBN(c, c, dilation=dilation)
        self.b = _ConvBN(c, c, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)))


class ConvImageEncoder(nn.Module):
    """image [N,3,L,L] -> [N,C,L/s,L/s] (s = stride, 16 or 8), a drop-in for ImageEncoderViT.

    SAM's mask decoder has no skip connections: everything it knows about a
    boundary inside a cell must be in that cell's embedding. So the finer feature
    maps are folded into the output grid with pixel_unshuffle (space to depth)
    rather than pooled away. Dilated blocks at 1/16 give large objects a
    receptive field of about 30 cells without attention; at stride 8 their output
    is upsampled onto the 1/8 grid.
    """

    def __init__(self, img_size: int, out_chans: int, widths, depths, dilations, stride: int = 16) -> None:
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"conv encoder stride must be 8 or 16, got {stride}")
        self.img_size = img_size
        self.stride = stride
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(_ConvBN(3, w0, stride=2), *[_ResBlock(w0) for _ in range(depths[0])])
        self.s4 = nn.Sequential(_ConvBN(w0, w1, stride=2), *[_ResBlock(w1) for _ in range(depths[1])])
        self.s8 = nn.Sequential(_ConvBN(w1, w2, stride=2), *[_ResBlock(w2) for _ in range(depths[2])])
        self.s16 = nn.Sequential(
            _ConvBN(w2, w3, stride=2),
            *[_ResBlock(w3, dilations[i % len(dilations)]) for i in range(depths[3])],
        )
        k = stride // 4  # space-to-depth factor from 1/4 to the output grid
        self.fold4 = nn.Conv2d(w1 * k * k, out_chans, 1)
        self.fold8 = nn.Conv2d(w2 * (stride // 8) ** 2, out_chans, 1)
        self.proj16 = nn.Conv2d(w3, out_chans, 1)
        self.neck = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        if self.stride == 16:
            y = self.proj16(f16) + self.fold8(F.pixel_unshuffle(f8, 2)) + self.fold4(F.pixel_unshuffle(f4, 4))
        else:
            up = F.interpolate(self.proj16(f16), scale_factor=2, mode="bilinear", align_corners=False)
            y = up + self.fold8(f8) + self.fold4(F.pixel_unshuffle(f4, 2))
        return self.neck(y)


def build_sam(arch: Dict[str, Any]) -> Sam:
    """Instantiate a Sam model (random init) from an architecture dict."""
    L = int(arch["image_size"])
    p = int(arch["patch_size"])
    grid = L // p
    C = int(arch["prompt_embed_dim"])
    if arch.get("encoder_type", "vit") == "conv":
        encoder = ConvImageEncoder(
            L, C, arch["encoder_widths"], arch["encoder_depths"], arch["encoder_dilations"], stride=p
        )
    else:
        encoder = _vit_encoder(arch, L, p, C)
    return _build_rest(arch, encoder, L, grid, C)


def _vit_encoder(arch, L, p, C):
    return ImageEncoderViT(
        img_size=L,
        patch_size=p,
        in_chans=3,
        embed_dim=int(arch["encoder_embed_dim"]),
        depth=int(arch["encoder_depth"]),
        num_heads=int(arch["encoder_num_heads"]),
        mlp_ratio=float(arch["encoder_mlp_ratio"]),
        out_chans=C,
        qkv_bias=bool(arch["encoder_qkv_bias"]),
        norm_layer=partial(nn.LayerNorm, eps=float(arch["encoder_layernorm_eps"])),
        use_rel_pos=bool(arch["encoder_use_rel_pos"]),
        window_size=int(arch["encoder_window_size"]),
        global_attn_indexes=tuple(arch["encoder_global_attn_indexes"]),
    )


def _build_rest(arch, encoder, L, grid, C) -> Sam:
    prompt = PromptEncoder(
        embed_dim=C,
        image_embedding_size=(grid, grid),
        input_image_size=(L, L),
        mask_in_chans=int(arch["mask_in_chans"]),
    )
    decoder = MaskDecoder(
        transformer_dim=C,
        transformer=TwoWayTransformer(
            depth=int(arch["decoder_transformer_depth"]),
            embedding_dim=C,
            mlp_dim=int(arch["decoder_transformer_mlp_dim"]),
            num_heads=int(arch["decoder_transformer_num_heads"]),
        ),
        num_multimask_outputs=int(arch["decoder_num_multimask_outputs"]),
        iou_head_depth=int(arch["decoder_iou_head_depth"]),
        iou_head_hidden_dim=int(arch["decoder_iou_head_hidden_dim"]),
    )
    sam = Sam(encoder, prompt, decoder, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    sam.eval()
    return sam


def load_manifest(model_dir: str) -> Dict[str, Any]:
    with open(os.path.join(model_dir, "manifest.json")) as f:
        return json.load(f)


def load_sam(model_dir: str) -> Sam:
    """Rebuild the torch model from manifest.json + checkpoint.pth."""
    man = load_manifest(model_dir)
    sam = build_sam(man["architecture"])
    sd = torch.load(os.path.join(model_dir, man["checkpoint"]), map_location="cpu")
    sam.load_state_dict(sd)
    sam.eval()
    return sam


class EncoderNCHW(nn.Module):
    """image [1,3,L,L] (normalized + padded) -> image_embeddings [1,C,L/16,L/16]."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class EncoderHWC(nn.Module):
    """samexporter-style encoder.

    input_image: float32 [h, w, 3], RGB 0-255, already resized so that the long
    side is L. Normalizes with mean/std and zero-pads bottom/right to L x L
    (zeros in normalized space, like Sam.preprocess) inside the graph.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.img_size = sam.image_encoder.img_size
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        x = input_image.permute(2, 0, 1).unsqueeze(0)
        x = (x - self.mean) / self.std
        h = x.shape[2]
        w = x.shape[3]
        x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
        return self.image_encoder(x)


class PromptDecoder(nn.Module):
    """Official SAM ONNX decoder signature with a dynamic prompt batch B.

    Inputs (float32):
      image_embeddings [1, C, h, w]
      point_coords     [B, N, 2]   model frame (already scaled to the resized image)
      point_labels     [B, N]      -1 pad, 0 bg, 1 fg, 2 box top-left, 3 box bottom-right
      mask_input       [B, 1, 4h, 4w]
      has_mask_input   [B]
      orig_im_size     [2]         (H, W) as float
    Outputs:
      masks            [B, 4, H, W] logits at the original image size
      iou_predictions  [B, 4]
      low_res_masks    [B, 4, 4h, 4w]
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam
        self.img_size = sam.image_encoder.img_size

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.sam.prompt_encoder
        # Same as PromptEncoder._embed_points: shift to pixel centres, normalize.
        norm = (coords + 0.5) / self.img_size
        emb = pe.pe_layer._pe_encoding(norm)  # [B, N, C]
        lab = labels.unsqueeze(-1)
        emb = emb * (lab != -1).to(emb.dtype)
        emb = emb + pe.not_a_point_embed.weight * (lab == -1).to(emb.dtype)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i).to(emb.dtype)
        return emb

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.sam.prompt_encoder
        has = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input)
        dense = dense + (1.0 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return dense

    def upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        L = self.img_size
        masks = F.interpolate(masks, size=(L, L), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        scale = L / torch.max(size)
        resized = torch.floor(size * scale + 0.5).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]
        hw = orig_im_size.to(torch.int64)
        masks = F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        return masks

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ):
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        low_res, iou = self.sam.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        masks = self.upscale(low_res, orig_im_size)
        return masks, iou, low_res


# ---------------------------------------------------------------------------
# Synthetic scenes (used for the tiny model's short fit and for test images)
# ---------------------------------------------------------------------------


def synth_scene(rng, width: int, height: int, n_shapes: int = 5, noise: float = 4.0):
    """Deterministic synthetic RGB scene: smooth gradient background, a few
    filled shapes (ellipses, rectangles, triangles), a bit of Gaussian noise.

    Returns (rgb uint8 [H, W, 3], list of visible instance masks bool [H, W]).
    """
    import numpy as np
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = (np.cos(ang) * xx / max(width, 1) + np.sin(ang) * yy / max(height, 1))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    masks = []
    for _ in range(n_shapes):
        kind = int(rng.integers(0, 3))
        sw = float(rng.uniform(0.15, 0.5)) * width
        sh = float(rng.uniform(0.15, 0.5)) * height
        sw = max(sw, min(6.0, width))
        sh = max(sh, min(6.0, height))
        cx = float(rng.uniform(0, width))
        cy = float(rng.uniform(0, height))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        m = Image.new("L", (width, height), 0)
        md = ImageDraw.Draw(m)
        if kind == 0:
            box = [cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2]
            draw.ellipse(box, fill=color)
            md.ellipse(box, fill=255)
        elif kind == 1:
            box = [cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2]
            draw.rectangle(box, fill=color)
            md.rectangle(box, fill=255)
        else:
            pts = [
                (cx + float(rng.uniform(-1, 1)) * sw, cy + float(rng.uniform(-1, 1)) * sh)
                for _ in range(3)
            ]
            draw.polygon(pts, fill=color)
            md.polygon(pts, fill=255)
        new = np.array(m) > 0
        masks = [old & ~new for old in masks]
        masks.append(new)
    arr = np.array(img).astype(np.float32)
    if noise > 0:
        arr = arr + rng.normal(0.0, noise, arr.shape)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr, masks


# ---------------------------------------------------------------------------
# ONNX export (shared by build_tiny_model.py and export_onnx.py)
# ---------------------------------------------------------------------------

OPSET = 17


def fix_output_shapes(path, shapes):
    """Replace the exporter's generated symbolic output dims with the real ones
    (ints for static axes, names for dynamic axes), so that readers of the model
    metadata see e.g. image_embeddings [1, 64, 32, 32]."""
    import onnx

    # Without the weights: an encoder past 2 GB keeps them in external files, which stay as
    # they are (only the graph's outputs change here).
    m = onnx.load(path, load_external_data=False)
    for out in m.graph.output:
        if out.name not in shapes:
            continue
        dims = out.type.tensor_type.shape.dim
        want = shapes[out.name]
        assert len(dims) == len(want), (out.name, len(dims), want)
        for d, v in zip(dims, want):
            if isinstance(v, int):
                d.ClearField("dim_param")
                d.dim_value = v
            else:
                d.ClearField("dim_value")
                d.dim_param = v
    # check_model by path: a ViT-H encoder exceeds the 2 GB in-memory protobuf limit.
    onnx.save(m, path)
    onnx.checker.check_model(path)


def export(model, args, path, input_names, output_names, dynamic_axes):
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            path,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(path)


def export_encoder_nchw(sam: Sam, path: str) -> None:
    L = sam.image_encoder.img_size
    C = sam.prompt_encoder.embed_dim
    g = sam.prompt_encoder.image_embedding_size[0]
    export(EncoderNCHW(sam).eval(), (torch.zeros(1, 3, L, L),), path, ["image"], ["image_embeddings"], None)
    fix_output_shapes(path, {"image_embeddings": [1, C, g, g]})


def export_encoder_hwc(sam: Sam, path: str) -> None:
    L = sam.image_encoder.img_size
    C = sam.prompt_encoder.embed_dim
    g = sam.prompt_encoder.image_embedding_size[0]
    export(
        EncoderHWC(sam).eval(),
        (torch.rand(L * 3 // 4, L, 3) * 255,),
        path,
        ["input_image"],
        ["image_embeddings"],
        {"input_image": {0: "height", 1: "width"}},
    )
    fix_output_shapes(path, {"image_embeddings": [1, C, g, g]})


def export_decoder(sam: Sam, path: str) -> None:
    """Official decoder signature; prompt batch (axis 0) and point count dynamic."""
    L = sam.image_encoder.img_size
    C = sam.prompt_encoder.embed_dim
    g = sam.prompt_encoder.image_embedding_size[0]
    B = 2
    export(
        PromptDecoder(sam).eval(),
        (
            torch.randn(1, C, g, g),
            torch.rand(B, 3, 2) * L,
            torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
            torch.zeros(B, 1, 4 * g, 4 * g),
            torch.zeros(B),
            torch.tensor([480.0, 640.0]),
        ),
        path,
        ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
        ["masks", "iou_predictions", "low_res_masks"],
        {
            "point_coords": {0: "batch", 1: "num_points"},
            "point_labels": {0: "batch", 1: "num_points"},
            "mask_input": {0: "batch"},
            "has_mask_input": {0: "batch"},
            "masks": {0: "batch", 2: "height", 3: "width"},
            "iou_predictions": {0: "batch"},
            "low_res_masks": {0: "batch"},
        },
    )
    fix_output_shapes(
        path,
        {
            "masks": ["batch", 4, "height", "width"],
            "iou_predictions": ["batch", 4],
            "low_res_masks": ["batch", 4, 4 * g, 4 * g],
        },
    )
