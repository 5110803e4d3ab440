#!/usr/bin/env python3
"""A SAM 2.1 checkpoint exported by samexporter (PyPI samexporter==0.5.0, the format
AnyLabeling / X-AnyLabeling load): two files, `<stem>.encoder.onnx` and
`<stem>.decoder.onnx`, and no manifest. Runs in samexporter's own environment
(`make samexporter-venv`: its pinned torch 2.10 / onnx 1.20.1, plus sam2==1.1.0).

  # an official architecture: samexporter's own command line, unchanged
  samexporter_sam2.py --model sam2.1_hiera_tiny --checkpoint ckpt.pt --out DIR
  # the reduced-width test model: samexporter's SAM2ImageEncoder / SAM2ImageDecoder
  # modules around it, exported with the arguments samexporter's command line uses
  samexporter_sam2.py --model mini --checkpoint ckpt.pt --out DIR

samexporter's layout (samexporter/export_sam2.py): encoder input `image` [1,3,1024,1024];
outputs `high_res_feats_0`, `high_res_feats_1`, `image_embed`. Decoder inputs
`image_embed`, `high_res_feats_0`, `high_res_feats_1`, `point_coords` [L,P,2],
`point_labels` [L,P], `mask_input` [L,1,256,256], `has_mask_input` [L]; outputs `masks`
[L,3,256,256] (multimask tokens 1-3 only, clamped to +-32) and `iou_predictions` [L,3].
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--checkpoint", required=True, help="weights in Meta's layout ({'model': state_dict})")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stem", help="file name stem (default: the model name)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    stem = a.stem or a.model
    enc = os.path.join(a.out, f"{stem}.encoder.onnx")
    dec = os.path.join(a.out, f"{stem}.decoder.onnx")
    if a.model != "mini":
        # samexporter's command line as its README gives it.
        subprocess.run([sys.executable, "-m", "samexporter.export_sam2", "--checkpoint", a.checkpoint,
                        "--output_encoder", enc, "--output_decoder", dec, "--model_type", a.model], check=True)
        return
    import torch
    from samexporter.export_sam2 import SAM2ImageDecoder, SAM2ImageEncoder

    import sam2_export

    m = sam2_export.build("mini", a.checkpoint)
    L = m.image_size
    img = torch.randn(1, 3, L, L)
    encoder = SAM2ImageEncoder(m).cpu()
    hr0, hr1, emb = encoder(img)
    torch.onnx.utils.export(encoder, img, enc, export_params=True, opset_version=18, do_constant_folding=True,
                            input_names=["image"], output_names=["high_res_feats_0", "high_res_feats_1", "image_embed"])
    decoder = SAM2ImageDecoder(m, multimask_output=True).cpu()
    g = L // m.backbone_stride
    args = (emb, hr0, hr1, torch.randint(0, L, (1, 5, 2), dtype=torch.float), torch.zeros(1, 5),
            torch.randn(1, 1, 4 * g, 4 * g), torch.tensor([1.0]))
    decoder(*args)
    torch.onnx.utils.export(
        decoder, args, dec, export_params=True, opset_version=18, do_constant_folding=True,
        input_names=["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                     "mask_input", "has_mask_input"],
        output_names=["masks", "iou_predictions"],
        dynamic_axes={"point_coords": {0: "num_labels", 1: "num_points"},
                      "point_labels": {0: "num_labels", 1: "num_points"},
                      "mask_input": {0: "num_labels"}, "has_mask_input": {0: "num_labels"}},
    )
    for p in (enc, dec):
        print(f"  {p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
