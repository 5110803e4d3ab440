#!/usr/bin/env python3
"""A from-scratch description, in numpy, of what PIL's ``Image.resize(size,
Image.BILINEAR)`` computes for 8-bit RGB images, checked bit-exactly against
Pillow on the fixtures in tests/fixtures/resize (run this file to check).

It exists as an executable spec for the Rust port of the preprocessing
resize. The algorithm (separable, antialiased triangle filter in fixed point):

for each axis, input length n_in, output length n_out:
    scale   = n_in / n_out
    fscale  = max(scale, 1.0)             # widen the filter when shrinking
    support = 1.0 * fscale                # triangle filter radius
    for each output index i:
        center = (i + 0.5) * scale
        lo = trunc(center - support + 0.5), clamped to >= 0
        hi = trunc(center + support + 0.5), clamped to <= n_in
        w[j] = tri((lo + j - center + 0.5) / fscale), j in 0 .. hi-lo-1
               with tri(x) = 1 - |x| for |x| < 1 else 0
        w    = w / sum(w)                         (float64)
        k[j] = trunc(w[j] * 2^22 + 0.5)  (w >= 0)  or  trunc(w[j] * 2^22 - 0.5)  (w < 0)
pass: out = clamp((2^21 + sum_j in[lo + j] * k[j]) >> 22, 0, 255)   (int32 arithmetic)

The horizontal pass runs first (when the width changes) and its output is
stored as uint8, then the vertical pass (when the height changes).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

PRECISION_BITS = 32 - 8 - 2


def coeffs(n_in: int, n_out: int):
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 1.0 * fscale
    out = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = []
        for j in range(hi - lo):
            x = (lo + j - center + 0.5) / fscale
            w.append(max(0.0, 1.0 - abs(x)))
        total = sum(w)
        if total != 0:
            w = [v / total for v in w]
        k = [
            int(v * (1 << PRECISION_BITS) + 0.5) if v >= 0 else int(v * (1 << PRECISION_BITS) - 0.5)
            for v in w
        ]
        out.append((lo, np.array(k, dtype=np.int64)))
    return out


def resample_axis0(a: np.ndarray, n_out: int) -> np.ndarray:
    """Resample axis 0 of a uint8 array [n, m, c]."""
    res = np.empty((n_out,) + a.shape[1:], np.uint8)
    a64 = a.astype(np.int64)
    for i, (lo, k) in enumerate(coeffs(a.shape[0], n_out)):
        acc = (1 << (PRECISION_BITS - 1)) + np.tensordot(k, a64[lo : lo + len(k)], axes=(0, 0))
        res[i] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return res


def resize_bilinear(rgb: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    out = rgb
    if new_w != w:
        out = resample_axis0(out.transpose(1, 0, 2), new_w).transpose(1, 0, 2)
    if new_h != h:
        out = resample_axis0(out, new_h)
    return np.ascontiguousarray(out)


def main() -> int:
    from PIL import Image

    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "resize")
    with open(os.path.join(d, "cases.json")) as f:
        doc = json.load(f)
    bad = 0
    for c in doc["cases"]:
        src = np.array(Image.open(os.path.join(d, c["input"])).convert("RGB"))
        want = np.array(Image.open(os.path.join(d, c["expected"])).convert("RGB"))
        got = resize_bilinear(src, c["new_width"], c["new_height"])
        pil = np.array(Image.fromarray(src).resize((c["new_width"], c["new_height"]), Image.BILINEAR))
        same = np.array_equal(got, want) and np.array_equal(pil, want)
        diff = int(np.abs(got.astype(int) - want.astype(int)).max())
        print(f"{'ok  ' if same else 'FAIL'} {c['name']}: max diff {diff}")
        bad += 0 if same else 1
    # Also the parity images, resized as the reference pipeline does (long side 512).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from parity import load_rgb
    from segment_anything.utils.transforms import ResizeLongestSide

    pdir = os.path.join(d, "..", "parity", "images")
    for name in sorted(os.listdir(pdir)):
        rgb = load_rgb(os.path.join(pdir, name))
        want = ResizeLongestSide(512).apply_image(rgb)
        got = resize_bilinear(rgb, want.shape[1], want.shape[0])
        same = np.array_equal(got, want)
        print(f"{'ok  ' if same else 'FAIL'} parity image {name} -> {want.shape[1]}x{want.shape[0]}")
        bad += 0 if same else 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
