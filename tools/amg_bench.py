"""Segment everything: samserve vs the reference Python generator, same weights, same machine.

Starts target/release/samserve on a free loopback port, then times, on one 1024x768 image,
end to end with the image encoder included, for two parameter sets: the reference defaults,
and "lenient" thresholds (pred_iou_thresh 0.5, stability_score_thresh 0.8) under which the
small default model keeps many masks, so that mask post-processing is part of the cost:
  - samserve: POST /v1/everything (image inline; the cached embedding is deleted first);
  - reference: segment_anything.SamAutomaticMaskGenerator(...).generate(image) on the
    default model's PyTorch checkpoint (torch using all cores).
Prints a Markdown table and the speed-up; writes JSON with --out.

The server runs with --decoder-workers=<cores> unless --server-arg says otherwise: a large
segment-everything batch is then spread over one decoder session per core, as the reference
uses every core through torch.

Then, on a 640x480 held-out scene at the reference defaults: samserve's default flags against
the defaults before work-conserving decoding (--decoder-workers=<cores/2> --decoder-lone-threads=1),
two servers, alternating runs, the embedding cached; checks that both return the same masks.

Usage: tools/.venv/bin/python tools/amg_bench.py [--runs 3] [--out target/bench/everything.json]
                                                 [--server-arg=--flag=value ...]
"""
import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import samtiny  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

IMAGE = os.path.join(ROOT, "tests/fixtures/amg/images/large_1024x768.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, data=None, method=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


PARAM_SETS = [
    ("reference defaults", {}),
    ("lenient thresholds", {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/sam-tiny"))
    ap.add_argument("--server-bin", default=os.path.join(ROOT, "target/release/samserve"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench/everything.json"))
    ap.add_argument("--server-arg", action="append", default=None,
                    help="samserve flag (repeatable), e.g. --server-arg=--decoder-threads=2; "
                         "default: --decoder-workers=<cores>, the setting for a server that "
                         "pre-labels datasets (the reference uses every core too)")
    args = ap.parse_args()
    if args.server_arg is None:
        args.server_arg = [f"--decoder-workers={os.cpu_count() or 1}"]

    raw = open(IMAGE, "rb").read()
    image = np.array(Image.open(IMAGE).convert("RGB"))

    port = free_port()
    proc = subprocess.Popen(
        [args.server_bin, "--port", str(port), "--model", args.model, "--request-timeout-ms", "0",
         *args.server_arg],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if request(base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        image_b64 = base64.b64encode(raw).decode()
        server = {}
        for label, params in PARAM_SETS:
            server[label] = time_server(base, raw, image_b64, params, args.runs)
    finally:
        proc.terminate()
        proc.wait()

    torch.set_num_threads(os.cpu_count() or 1)
    sam = samtiny.load_sam(args.model).eval()
    rows = []
    for label, params in PARAM_SETS:
        gen = SamAutomaticMaskGenerator(sam, **params)
        ref_times, ref_masks = [], None
        with torch.inference_mode():
            for i in range(args.runs + 1):
                t = time.perf_counter()
                ref_masks = len(gen.generate(image))
                dt = time.perf_counter() - t
                if i > 0:
                    ref_times.append(dt)
        s_times, s_masks = server[label]
        s, r = float(np.median(s_times)), float(np.median(ref_times))
        rows.append({"params": label, "settings": params, "runs": args.runs, "samserve_s": s,
                     "reference_s": r, "speedup": r / s, "samserve_masks": s_masks,
                     "reference_masks": ref_masks})
    defaults = compare_defaults(args.server_bin, args.model, args.runs)
    result = {"image": "1024x768", "server_args": args.server_arg, "results": rows, "defaults": defaults}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"samserve flags: {' '.join(args.server_arg) or '(defaults)'}; "
          f"reference: torch with {torch.get_num_threads()} threads\n")
    print("| segment everything, 1024x768 | samserve s | masks | reference s | masks | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['params']} | {row['samserve_s']:.2f} | {row['samserve_masks']} | "
              f"{row['reference_s']:.2f} | {row['reference_masks']} | {row['speedup']:.2f}x |")
    d = defaults
    print(f"\n| segment everything, {d['image']}, {d['params']}, cached | previous defaults s | "
          f"defaults s | speed-up | masks | same masks |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| median of {d['runs']} | {d['previous_defaults_s']:.2f} | {d['defaults_s']:.2f} | "
          f"{d['speedup']:.2f}x | {d['masks']} | {'yes' if d['same_masks'] else 'NO'} |")


def start(server_bin, model, flags):
    port = free_port()
    proc = subprocess.Popen(
        [server_bin, "--port", str(port), "--model", model, "--request-timeout-ms", "0", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if request(base + "/readyz")[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def compare_defaults(server_bin, model, runs):
    """Seconds of one cached-image segment everything ({}: the reference defaults) on a 640x480
    held-out scene, new defaults vs previous ones, alternating; and whether the masks agree."""
    import io

    from data_engine import HELDOUT_START, make_scene

    sc = make_scene(HELDOUT_START + 3, width=640, height=480)
    buf = io.BytesIO()
    Image.fromarray(sc.image).save(buf, format="PNG")
    cores = os.cpu_count() or 1
    servers = {
        "previous defaults": [f"--decoder-workers={max(cores // 2, 1)}", "--decoder-lone-threads=1"],
        "defaults": [],
    }
    procs, times, answers = {}, {k: [] for k in servers}, {}
    try:
        for name, flags in servers.items():
            proc, base = start(server_bin, model, flags)
            procs[name] = (proc, base)
            _, out = request(base + "/v1/images", data=buf.getvalue(), headers={"content-type": "image/png"})
            procs[name] = (proc, base, json.loads(out)["image_id"])
        for i in range(runs + 1):
            for name, (_, base, image_id) in procs.items():
                t = time.perf_counter()
                status, out = request(f"{base}/v1/images/{image_id}/everything", data=b"{}",
                                      headers={"content-type": "application/json"})
                dt = time.perf_counter() - t
                assert status == 200, out[:300]
                answers[name] = [m["segmentation"]["counts"] for m in json.loads(out)["masks"]]
                if i > 0:
                    times[name].append(dt)
    finally:
        for proc, *_ in procs.values():
            proc.terminate()
            proc.wait()
    prev, new = float(np.median(times["previous defaults"])), float(np.median(times["defaults"]))
    same = answers["previous defaults"] == answers["defaults"]
    return {"image": "640x480 held-out scene 1000003", "params": "{} (reference defaults)", "runs": runs,
            "previous_defaults_s": prev, "defaults_s": new, "speedup": prev / new,
            "masks": len(answers["defaults"]), "same_masks": same, "flags": servers}


def time_server(base, raw, image_b64, params, runs):
    """Times of /v1/everything (the cached embedding deleted before each) and the mask count."""
    body = json.dumps({"image": image_b64, **params}).encode()
    server_times, server_masks = [], None
    for i in range(runs + 1):
        status, out = request(base + "/v1/images", data=raw,
                              headers={"content-type": "image/png"})
        image_id = json.loads(out)["image_id"]
        request(f"{base}/v1/images/{image_id}", method="DELETE")
        t = time.perf_counter()
        status, out = request(base + "/v1/everything", data=body,
                              headers={"content-type": "application/json"})
        dt = time.perf_counter() - t
        assert status == 200, out[:300]
        server_masks = len(json.loads(out)["masks"])
        if i > 0:  # the first run warms up
            server_times.append(dt)
    return server_times, server_masks


if __name__ == "__main__":
    main()
