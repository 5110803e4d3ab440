#!/usr/bin/env python3
"""Export a SAM model to the ONNX pair + manifest.json that samserve loads.

  # official checkpoints (segment_anything's registry builds the architecture)
  export_onnx.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth --out models/sam-vit-b
  # the real ViT-B architecture with random weights, for benchmarks (~350 MB, never commit)
  export_onnx.py --random-init vit_b --out target/vitb-random
  # the default model: samtiny.DEFAULT_ARCH + a checkpoint from tools/train.py
  export_onnx.py --default --checkpoint target/train/checkpoint.pth --out models/sam-tiny \
      --hwc-out tests/fixtures/models/sam-tiny-hwc

Writes encoder.onnx (input `image` f32 [1,3,L,L], normalized and zero-padded),
decoder.onnx (official SAM signature with a dynamic prompt batch on axis 0 of
point_coords / point_labels / mask_input / has_mask_input, one image embedding
shared by the batch) and manifest.json. --quantize-decoder replaces decoder.onnx
by a dynamic int8 quantization (onnxruntime.quantization.quantize_dynamic).

Encoders past protobuf's 2 GB limit (ViT-H; ViT-L with --external-data) are written with
ONNX external data: encoder.onnx holds the graph, encoder.onnx.data beside it the weights
(keep the two together; samserve loads such an encoder from its path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from samtiny import (  # noqa: E402
    ARCHES,
    DEFAULT_ARCH,
    PIXEL_MEAN,
    PIXEL_STD,
    build_sam,
    export_decoder,
    export_encoder_hwc,
    export_encoder_nchw,
)

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t")


def official_sam(model_type: str, checkpoint):
    if model_type == "vit_t":
        try:
            from mobile_sam import sam_model_registry as reg  # type: ignore
        except ImportError:
            sys.exit("vit_t (MobileSAM) needs the mobile_sam package, which is not installed; "
                     "pip install it into tools/.venv or export vit_b/vit_l/vit_h")
    else:
        from segment_anything import sam_model_registry as reg
    return reg[model_type](checkpoint=checkpoint)


def externalize(path: str) -> None:
    """Rewrite an ONNX file with all its weights in one `<file>.data` beside it, and remove
    any per-tensor files the exporter wrote for a model past 2 GB."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    folder = os.path.dirname(os.path.abspath(path))
    m = onnx.load(path, load_external_data=False)
    old = {ExternalDataInfo(t).location for t in m.graph.initializer if uses_external_data(t)}
    m = onnx.load(path)  # with the weights, wherever they are now
    data = os.path.basename(path) + ".data"
    if os.path.exists(os.path.join(folder, data)):
        os.remove(os.path.join(folder, data))
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    for loc in old - {data}:
        os.remove(os.path.join(folder, loc))
    onnx.checker.check_model(path)
    print(f"  encoder weights in {data} (ONNX external data): "
          f"{os.path.getsize(path)} + {os.path.getsize(os.path.join(folder, data))} bytes")


def smoke_test(out_dir: str, sam) -> None:
    """Run the exported pair once with onnxruntime, with a batch of two prompts
    of which one refines a mask, to catch a lost dynamic axis."""
    import onnxruntime as ort

    man = json.load(open(os.path.join(out_dir, "manifest.json")))
    L = man["input_size"]
    enc = ort.InferenceSession(os.path.join(out_dir, man["encoder"]), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(os.path.join(out_dir, man["decoder"]), providers=["CPUExecutionProvider"])
    emb = enc.run(None, {"image": np.zeros((1, 3, L, L), np.float32)})[0]
    g = emb.shape[-1]
    feeds = {
        "image_embeddings": emb,
        "point_coords": np.array([[[10, 20], [0, 0]], [[5, 5], [L / 2, L / 3]]], np.float32),
        "point_labels": np.array([[1, -1], [2, 3]], np.float32),
        "mask_input": np.zeros((2, 1, 4 * g, 4 * g), np.float32),
        "has_mask_input": np.array([0, 1], np.float32),
        "orig_im_size": np.array([300, 400], np.float32),
    }
    masks, iou, low = dec.run(None, feeds)
    assert masks.shape == (2, 4, 300, 400) and iou.shape == (2, 4) and low.shape == (2, 4, 4 * g, 4 * g)
    print(f"  onnxruntime smoke test ok: embeddings {list(emb.shape)}, masks {list(masks.shape)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-type", choices=MODEL_TYPES)
    src.add_argument("--random-init", choices=MODEL_TYPES, help="architecture with random weights (benchmarks)")
    src.add_argument("--default", action="store_true", help="samtiny.DEFAULT_ARCH (needs --checkpoint)")
    ap.add_argument("--checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", help="manifest name (default: the --out folder's name)")
    ap.add_argument("--hwc-out", help="also write the samexporter-style HWC encoder variant here")
    ap.add_argument("--quantize-decoder", action="store_true")
    ap.add_argument("--external-data", action="store_true",
                    help="encoder weights in encoder.onnx.data even below 2 GB (always above)")
    ap.add_argument("--description", default="")
    ap.add_argument("--arch", choices=sorted(ARCHES),
                    help="with --default: samtiny.ARCHES entry (default: arch.json beside the "
                         "checkpoint when present, else DEFAULT_ARCH)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    arch = None
    if args.default:
        if not args.checkpoint:
            ap.error("--default needs --checkpoint")
        arch_file = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "arch.json")
        if args.arch:
            arch = ARCHES[args.arch]
        elif os.path.exists(arch_file):
            with open(arch_file) as f:
                arch = json.load(f)
        else:
            arch = DEFAULT_ARCH
        sam = build_sam(arch)
        sam.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    elif args.model_type:
        if not args.checkpoint:
            ap.error("--model-type needs --checkpoint")
        sam = official_sam(args.model_type, args.checkpoint)
    else:
        sam = official_sam(args.random_init, None)
    sam.eval()
    os.makedirs(args.out, exist_ok=True)
    name = args.name or os.path.basename(os.path.normpath(args.out))
    L = sam.image_encoder.img_size

    print(f"exporting {name}: encoder (L={L})")
    enc_path = os.path.join(args.out, "encoder.onnx")
    export_encoder_nchw(sam, enc_path)
    params = sum(p.numel() * p.element_size() for p in sam.image_encoder.parameters())
    if args.external_data or params > 1_800_000_000:
        externalize(enc_path)
    print("exporting decoder")
    dec_path = os.path.join(args.out, "decoder.onnx")
    export_decoder(sam, dec_path)
    if args.quantize_decoder:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = dec_path + ".f32"
        shutil.move(dec_path, tmp)
        quantize_dynamic(tmp, dec_path, weight_type=QuantType.QInt8)
        os.remove(tmp)
        print("  decoder quantized (dynamic int8)")

    kind = "default model (samtiny.DEFAULT_ARCH)" if args.default else (
        f"{args.model_type} from {os.path.basename(args.checkpoint)}" if args.model_type
        else f"{args.random_init} with RANDOM weights (benchmarks only)")
    manifest = {
        "name": name,
        "family": "sam",
        "encoder": "encoder.onnx",
        "decoder": "decoder.onnx",
        "input_size": L,
        "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD,
        "description": args.description or (
            ("Demo model for synthetic scenes (trained on the procedural data engine), not for "
             "photographs: for those serve a real SAM checkpoint (make model MODEL=vit_b). "
             if args.default else "")
            + f"SAM {kind}. Encoder input 'image' float32 [1,3,{L},{L}] normalized+padded; decoder has the "
            "official SAM ONNX signature with dynamic prompt batch."
            + (" Decoder dynamically quantized to int8." if args.quantize_decoder else "")
        ),
    }
    if args.default:
        shutil.copyfile(args.checkpoint, os.path.join(args.out, "checkpoint.pth")) if os.path.abspath(
            args.checkpoint) != os.path.abspath(os.path.join(args.out, "checkpoint.pth")) else None
        manifest["checkpoint"] = "checkpoint.pth"
        manifest["architecture"] = arch
    manifest["generated_by"] = "tools/export_onnx.py"
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")

    if args.hwc_out:
        os.makedirs(args.hwc_out, exist_ok=True)
        print("exporting samexporter-style HWC encoder")
        export_encoder_hwc(sam, os.path.join(args.hwc_out, "encoder.onnx"))
        rel = os.path.relpath(dec_path, args.hwc_out)
        hwc = {
            "name": f"{name}-hwc",
            "family": "sam",
            "encoder": "encoder.onnx",
            "decoder": rel,
            "input_size": L,
            "pixel_mean": PIXEL_MEAN,
            "pixel_std": PIXEL_STD,
            "description": (
                f"samexporter-style encoder variant of {name}: input 'input_image' float32 [h,w,3] RGB 0-255, "
                "already resized so the long side is L; mean/std normalization and bottom/right zero padding "
                f"happen inside the graph. Shares {name}'s decoder."
            ),
            "generated_by": "tools/export_onnx.py",
        }
        with open(os.path.join(args.hwc_out, "manifest.json"), "w") as f:
            json.dump(hwc, f, indent=2)
            f.write("\n")
    smoke_test(args.out, sam)
    for fn in sorted(os.listdir(args.out)):
        print(f"  {os.path.join(args.out, fn)}: {os.path.getsize(os.path.join(args.out, fn))} bytes")


if __name__ == "__main__":
    main()
