#!/usr/bin/env python3
"""Start samserve on a model folder, wait for /readyz, upload an image, run one
segment call, expect 200s, stop the server. Used by `make export-check`; with --text,
also a text query (two phrases: the first builds the image's candidates, the second
reuses them), as `make clip-check` does."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, data=None, ctype=None, timeout=300):
    req = urllib.request.Request(url, data=data, headers={"content-type": ctype} if ctype else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/samserve")
    ap.add_argument("--model", required=True)
    ap.add_argument("--ort-lib", default=os.path.abspath(".ort/lib/libonnxruntime.so"))
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--image", help="image file to upload (default: random noise)")
    ap.add_argument("--text", action="append", default=[],
                    help="phrase for a text prompt (repeatable); each must answer 200 with text_score")
    args = ap.parse_args()
    port = free_port()
    env = dict(os.environ, ORT_DYLIB_PATH=args.ort_lib)
    # No request deadline: a ViT upload on a busy small machine can take past the 60 s default.
    proc = subprocess.Popen([args.binary, "--model", args.model, "--port", str(port),
                             "--request-timeout-ms", "0"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                sys.exit(f"server exited with {proc.returncode}")
            try:
                if call(base + "/readyz", timeout=5)[0] == 200:
                    break
            except Exception:
                pass
            if time.time() - t0 > args.ready_timeout:
                sys.exit("server not ready in time")
            time.sleep(0.5)
        print(f"ready after {time.time() - t0:.1f}s")
        if args.image:
            rgb = np.asarray(Image.open(args.image).convert("RGB"))
        else:
            rgb = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        t1 = time.time()
        st, body = call(base + "/v1/images", buf.getvalue(), "image/png", timeout=1800)
        assert st == 200, st
        up = json.loads(body)
        print(f"upload: {time.time() - t1:.1f}s", up)
        h, w = rgb.shape[:2]
        req = json.dumps({"prompts": [{"points": [{"x": w // 2, "y": h // 2, "label": 1}]},
                                      {"box": [w * 5 // 32, h * 5 // 24, w * 15 // 32, h * 5 // 6]}]}).encode()
        t1 = time.time()
        st, body = call(f"{base}/v1/images/{up['image_id']}/segment", req, "application/json")
        assert st == 200, st
        res = json.loads(body)
        print(f"segment: 200, {len(res['results'])} results in {(time.time() - t1) * 1e3:.0f} ms")
        for phrase in args.text:
            req = json.dumps({"prompts": [{"text": phrase, "max_masks": 3}]}).encode()
            t1 = time.time()
            st, body = call(f"{base}/v1/images/{up['image_id']}/segment", req, "application/json")
            assert st == 200, st
            masks = json.loads(body)["results"][0]["masks"]
            assert masks and all(isinstance(m.get("text_score"), float) for m in masks), masks
            scores = [round(m["text_score"], 4) for m in masks]
            print(f"text {phrase!r}: 200 in {(time.time() - t1) * 1000:.0f} ms, text_score {scores}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("serve check ok")


if __name__ == "__main__":
    main()
