#!/usr/bin/env python3
"""Upload (encoder) time of samserve under two or more server configurations, measured in
one run with alternating uploads so that load from other processes on the machine hits
every configuration alike.

  upload_bench.py --config "1 thread=--model target/vitb-random --encoder-threads 1" \\
                  --config "default=--model target/vitb-random" --rounds 5 \\
                  --title "vit-b upload, 1 thread vs default" --md target/bench/upload.md

Each configuration gets its own server (started here, stopped at the end). Every upload is
a fresh random image, so each one runs the encoder (a cold upload); one warm-up upload per
server is not counted. The first configuration is the reference of the printed ratios
(reference median / configuration median: above 1 means faster than the reference).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import socket
import statistics
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


def post(url: str, data: bytes, ctype: str, timeout: float = 600) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"content-type": ctype})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        return r.read()


class Server:
    def __init__(self, binary: str, args: list[str], ort_lib: str, log: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, ORT_DYLIB_PATH=ort_lib)
        self.log = open(log, "w")
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(self.port), *args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                sys.exit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.5)
        sys.exit(f"server not ready after {timeout} s; see {self.log.name}")

    def upload(self, png: bytes) -> float:
        t0 = time.perf_counter()
        body = json.loads(post(self.base + "/v1/images", png, "image/png"))
        dt = time.perf_counter() - t0
        if body.get("cached"):
            raise RuntimeError("upload answered from the cache; the images must be unique")
        return dt

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def random_png(rng: np.random.Generator, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True,
                    help="LABEL=SERVER ARGS (repeatable; the first is the reference)")
    ap.add_argument("--binary", default="target/release/samserve")
    ap.add_argument("--ort-lib", default=os.path.abspath(".ort/lib/libonnxruntime.so"))
    ap.add_argument("--rounds", type=int, default=5, help="uploads per configuration")
    ap.add_argument("--size", default="640x480", help="image WxH")
    ap.add_argument("--title", default="upload time")
    ap.add_argument("--md", help="append the result line here")
    ap.add_argument("--json", help="write the raw times here")
    ap.add_argument("--logs", default="target/bench")
    ap.add_argument("--ready-timeout", type=float, default=600)
    args = ap.parse_args(argv)

    configs = []
    for c in args.config:
        label, _, rest = c.partition("=")
        sargs = shlex.split(rest)
        if not any(x.startswith("--request-timeout-ms") for x in sargs):
            # A one-thread ViT-B upload on a busy 2-core machine passes the 60 s default.
            sargs += ["--request-timeout-ms", "0"]
        configs.append((label.strip(), sargs))
    w, h = (int(v) for v in args.size.split("x"))
    os.makedirs(args.logs, exist_ok=True)
    rng = np.random.default_rng(int(time.time()))
    servers = []
    try:
        for i, (label, sargs) in enumerate(configs):
            servers.append(Server(args.binary, sargs, args.ort_lib, os.path.join(args.logs, f"upload-bench-{i}.log")))
        for s in servers:
            s.wait_ready(args.ready_timeout)
            s.upload(random_png(rng, w, h))  # warm-up: first-run allocations, not counted
        times = [[] for _ in configs]
        for r in range(args.rounds):
            # Alternate the order every round so neither configuration always goes first.
            order = list(range(len(configs)))
            if r % 2:
                order.reverse()
            for i in order:
                times[i].append(servers[i].upload(random_png(rng, w, h)))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{configs[i][0]} {times[i][-1]:.2f} s" for i in range(len(configs))), flush=True)
    finally:
        for s in servers:
            s.stop()

    med = [statistics.median(t) for t in times]
    load = os.getloadavg()[0]
    parts = [f"{configs[i][0]} {med[i]:.2f} s" for i in range(len(configs))]
    ratios = [f"{configs[0][0]} / {configs[i][0]} = {med[0] / med[i]:.2f}x" for i in range(1, len(configs))]
    line = (f"{args.title}: median upload {' vs '.join(parts)} ({', '.join(ratios)}); "
            f"{args.rounds} alternating cold {w}x{h} uploads each, {os.cpu_count()} cores, "
            f"load average {load:.1f} at the end")
    print(line)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "a") as f:
            f.write(line + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": args.title, "configs": [c[0] for c in configs], "args": [c[1] for c in configs],
                       "times_s": times, "median_s": med, "cores": os.cpu_count(), "loadavg": load}, f, indent=1)


if __name__ == "__main__":
    main()
