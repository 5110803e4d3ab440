#!/usr/bin/env python3
"""Start samserve on a model folder, wait for /readyz, upload an image, run one
segment call, expect 200s, stop the server. Used by `make export-check`."""

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
        rgb = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        t1 = time.time()
        st, body = call(base + "/v1/images", buf.getvalue(), "image/png", timeout=1800)
        assert st == 200, st
        up = json.loads(body)
        print(f"upload: {time.time() - t1:.1f}s", up)
        req = json.dumps({"prompts": [{"points": [{"x": 320, "y": 240, "label": 1}]},
                                      {"box": [100, 100, 300, 400]}]}).encode()
        t1 = time.time()
        st, body = call(f"{base}/v1/images/{up['image_id']}/segment", req, "application/json")
        assert st == 200, st
        res = json.loads(body)
        print(f"segment: 200, {len(res['results'])} results in {(time.time() - t1) * 1e3:.0f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("export-check ok")


if __name__ == "__main__":
    main()
