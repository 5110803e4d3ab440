#!/usr/bin/env python3
"""One command from an official SAM checkpoint to a model folder samserve serves.

  # download (needs internet), verify, export encoder + batched decoder, smoke-check
  sam_model.py --model vit_b --out models/sam-vit-b
  # a checkpoint already on disk (verified when its name or size is a known one)
  sam_model.py --model vit_h --checkpoint ~/Downloads/sam_vit_h_4b8939.pth --out models/sam-vit-h
  # any URL urllib opens, e.g. a mirror or file:// (then pass its checksum)
  sam_model.py --model vit_b --url file:///tmp/ckpt.pth --sha256 <hex> --out target/x
  # only the int8 variant of a folder exported earlier
  sam_model.py --int8-from models/sam-vit-l

Beside the fp32 folder it writes <out>-int8 (encoder and decoder int8, the decoder's
positional-encoding MatMuls fp32; --int8 none skips it) and records that variant's
agreement with fp32 in its manifest.

Steps: fetch the checkpoint into --cache-dir (skipped when a verified copy is there), check
its size and SHA-256 (and the MD5 prefix in the official file name), then
tools/export_onnx.py: encoder.onnx (+ encoder.onnx.data, ONNX external data, for encoders
past 2 GB or with --external-data), decoder.onnx, manifest.json, and its onnxruntime smoke
check. Meta publishes the URLs; the file-name suffix is the first 6 hex digits of the
file's MD5. The sizes and SHA-256 digests below are those of the published files as
recorded by many independent download scripts; a mismatch stops the export.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything"
SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
# model type -> (file name, size in bytes, sha256). SAM 2.1's sizes and digests are those
# recorded for Meta's published files by several independent projects that pin them.
CHECKPOINTS = {
    "sam2.1_hiera_tiny": ("sam2.1_hiera_tiny.pt", 156_008_466,
                          "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    "sam2.1_hiera_small": ("sam2.1_hiera_small.pt", 184_416_285,
                           "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    "sam2.1_hiera_base_plus": ("sam2.1_hiera_base_plus.pt", 323_606_802,
                               "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    "sam2.1_hiera_large": ("sam2.1_hiera_large.pt", 898_083_611,
                           "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
    "vit_b": ("sam_vit_b_01ec64.pth", 375_042_383,
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": ("sam_vit_l_0b3195.pth", 1_249_524_607,
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": ("sam_vit_h_4b8939.pth", 2_564_550_879,
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}


def digests(path: str) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def verify(path: str, size: int | None, sha256: str | None, md5_prefix: str | None) -> None:
    got = os.path.getsize(path)
    if size is not None and got != size:
        sys.exit(f"{path}: {got} bytes, expected {size} (truncated or another file)")
    sha, md5 = digests(path)
    if sha256 and sha != sha256.lower():
        sys.exit(f"{path}: sha256 {sha}, expected {sha256}")
    if md5_prefix and not md5.startswith(md5_prefix.lower()):
        sys.exit(f"{path}: md5 {md5} does not start with {md5_prefix} (the official file name's suffix)")
    print(f"  verified {path}: {got} bytes, sha256 {sha}" + (f", md5 {md5[:6]}..." if md5_prefix else ""))


def fetch(url: str, dest: str) -> None:
    tmp = dest + ".part"
    t0 = time.time()
    print(f"  downloading {url} -> {dest}", flush=True)
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("content-length") or 0)
        done, last = 0, 0.0
        while chunk := r.read(1 << 22):
            f.write(chunk)
            done += len(chunk)
            if total and time.time() - last > 5:
                last = time.time()
                print(f"    {done / 1e6:.0f} / {total / 1e6:.0f} MB", flush=True)
    os.replace(tmp, dest)
    print(f"  downloaded {done} bytes in {time.time() - t0:.0f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(CHECKPOINTS), help="required unless --int8-from")
    ap.add_argument("--out", help="model folder (default: models/sam-vit-b etc.)")
    ap.add_argument("--checkpoint", help="a checkpoint file already on disk (no download)")
    ap.add_argument("--url", help=f"download from here instead of {BASE_URL}/<file>")
    ap.add_argument("--sha256", help="expected SHA-256 (default: the official file's; '' skips)")
    ap.add_argument("--size", type=int, help="expected size in bytes (default: the official file's; 0 skips)")
    ap.add_argument("--cache-dir", default="target/checkpoints")
    ap.add_argument("--name", help="manifest name (default: the --out folder's name)")
    ap.add_argument("--external-data", action="store_true",
                    help="write the encoder's weights to encoder.onnx.data even below 2 GB")
    ap.add_argument("--random-init", action="store_true",
                    help="export the architecture with random weights instead of the checkpoint's (tests)")
    ap.add_argument("--int8", choices=("both", "none"), default="both",
                    help="also write an int8 variant beside the fp32 folder: the MatMul weights of encoder and "
                         "decoder dynamically quantized, the decoder's positional encodings kept fp32 (default: "
                         "both)")
    ap.add_argument("--int8-out", help="folder of the int8 variant (default: <out>-int8)")
    ap.add_argument("--int8-from", metavar="DIR",
                    help="no download or export: write only the int8 variant of a folder exported before")
    ap.add_argument("--int8-check-scenes", type=int, default=2,
                    help="held-out synthetic scenes on which the int8 variant is compared with fp32 (mask IoU, "
                         "predicted-IoU deltas); written into its manifest; 0 skips")
    a = ap.parse_args(argv)
    if a.int8_from:
        write_int8(a.int8_from, a.int8_out or a.int8_from.rstrip("/") + "-int8", a.int8_check_scenes)
        return
    if not a.model:
        ap.error("--model is required (or --int8-from DIR)")

    fname, size, sha = CHECKPOINTS[a.model]
    size = None if a.size == 0 else (a.size or size)
    sha = None if a.sha256 == "" else (a.sha256 or sha)
    sam2 = a.model.startswith("sam2")
    out = a.out or (f"models/{a.model.replace('_', '-')}" if sam2 else f"models/sam-{a.model.replace('_', '-')}")
    # SAM's file names end in the first 6 hex digits of their MD5; SAM 2.1's do not.
    md5_prefix = None if sam2 else fname.rsplit("_", 1)[1][:6]
    if a.checkpoint:
        ckpt = a.checkpoint
        official = os.path.basename(ckpt) == fname
        # A renamed or fine-tuned file: verify only what was asked for explicitly.
        verify(ckpt, size if official or a.size else None, sha if official or a.sha256 else None,
               md5_prefix if official else None)
    else:
        url = a.url or f"{SAM2_BASE_URL if sam2 else BASE_URL}/{fname}"
        os.makedirs(a.cache_dir, exist_ok=True)
        ckpt = os.path.join(a.cache_dir, os.path.basename(url.split("?")[0]) or fname)
        downloaded = not os.path.exists(ckpt)
        if downloaded:
            try:
                fetch(url, ckpt)
            except OSError as e:
                sys.exit(f"download of {url} failed: {e}. Without internet, download {fname} elsewhere "
                         f"and pass --checkpoint PATH")
        official = os.path.basename(ckpt) == fname
        try:
            verify(ckpt, size, sha, md5_prefix if official else None)
        except SystemExit:
            if downloaded:
                os.remove(ckpt)  # a bad download is not kept for the next try
            raise

    if sam2:
        import sam2_export

        args = ["--model", a.model, "--out", out]
        args += ["--random-init"] if a.random_init else ["--checkpoint", ckpt]
        if a.name:
            args += ["--name", a.name]
        sam2_export.main(args)
        print(f"done: serve it with  samserve --model {out}")
        if a.int8 != "none":
            sam2_export.write_int8(out, a.int8_out or out.rstrip("/") + "-int8", a.int8_check_scenes)
        return

    import export_onnx

    args = ["--out", out]
    if a.random_init:
        args += ["--random-init", a.model]
    else:
        args += ["--model-type", a.model, "--checkpoint", ckpt]
    if a.name:
        args += ["--name", a.name]
    if a.external_data:
        args += ["--external-data"]
    export_onnx.main(args)
    print(f"done: serve it with  samserve --model {out}")
    if a.int8 != "none":
        write_int8(out, a.int8_out or out.rstrip("/") + "-int8", a.int8_check_scenes)


def write_int8(src: str, dst: str, check_scenes: int) -> None:
    """The int8 variant `make model` ships beside the fp32 folder: the encoder's MatMul
    weights int8 (where an upload's seconds go: a random-init ViT-B uploads in 2.7 s instead
    of 5.2 s on 2 cores), and the decoder's too except the positional-encoding MatMuls, which
    int8 hurts most (README "int8 variants"; random-init ViT-B: 1.5x decoder prompts/s at one
    prompt per call, which is how the server runs dynamic int8 decoders)."""
    import json

    import quantize

    man = json.load(open(os.path.join(src, "manifest.json")))
    if man.get("family", "sam").startswith("sam2"):
        import sam2_export

        sam2_export.write_int8(src, dst, check_scenes)
        return
    keep = quantize.positional_encoding_nodes(os.path.join(src, man["decoder"]))
    print(f"int8 variant: {dst} (decoder nodes kept fp32: {keep})", flush=True)
    quantize.make_variant(src, dst, "dynamic", "dynamic", exclude=keep)
    if check_scenes <= 0:
        return
    # Synthetic held-out scenes: they say how far int8 moves the masks of these weights, not
    # how well either segments photos. One model in memory at a time (ViT-H).
    r = quantize.agreement_sequential(src, dst, check_scenes, 1024)
    man_path = os.path.join(dst, "manifest.json")
    man = json.load(open(man_path))
    man["quantization"]["agreement"] = {
        k: r[k] for k in ("scenes", "masks_compared", "mean_mask_iou", "min_mask_iou",
                          "pred_iou_abs_delta_mean", "pred_iou_abs_delta_max")}
    man["quantization"]["agreement"]["measured_by"] = (
        f"tools/quantize.py agreement_sequential (compare's prompts), {check_scenes} held-out data-engine "
        "scenes at 1024 px")
    with open(man_path, "w") as f:
        json.dump(man, f, indent=2)
        f.write("\n")
    # No speed here: two scenes are too few samples to time. tools/upload_bench.py
    # measures uploads through the server (README "Threads and devices").
    print(f"int8 vs fp32: mean mask IoU {r['mean_mask_iou']:.4f} (min {r['min_mask_iou']:.3f}, "
          f"{r['masks_compared']} masks), predicted-IoU |delta| max {r['pred_iou_abs_delta_max']:.4f}")
    print(f"done: the int8 variant:  samserve --model {dst}")


if __name__ == "__main__":
    main()
