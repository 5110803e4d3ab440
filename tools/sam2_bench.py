#!/usr/bin/env python3
"""SAM 2.1 hiera-tiny against SAM ViT-B through samserve, measured in one run: encoder
seconds per 1024 px upload, decoder prompts/s, embedding bytes (fp32, fp16).

  sam2_bench.py --model target/model-check-sam2/sam2.1-hiera-tiny --model target/vitb-random \\
                --rounds 4 --md target/bench/sam2.md

One server per model folder, both running for the whole measurement; rounds alternate
between them so that load from other processes hits both alike. Each upload is a fresh
random 1024 x 768 image (a cold encoder run): the encoder time is the server's own
`samserve_encoder_seconds` of those runs. Decoder: requests of --prompts single clicks
(each prompt one decoder row; the server batches a request's prompts up to
--max-batch-prompts 8) on an uploaded image; prompts/s = prompts / wall time of the request,
so the figure includes mask upscaling and encoding (output "none": scores and boxes only).
Embedding bytes come from /v1/models. Medians over rounds.

The decoder graph alone is timed too, in ONNX Runtime in this process (1 intra-op thread,
as a server decoder worker; --batch single-click prompts per call on random embeddings of
the model's shapes; SAM's graph without its full-resolution `masks` tail, which the server
prunes at load), alternating between the models.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from upload_bench import Server, post  # noqa: E402


def metric_sum(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def png(seed: int, w: int = 1024, h: int = 768) -> bytes:
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


class DecoderTimer:
    """One model's decoder graph with fixed random inputs, timed call by call."""

    def __init__(self, model_dir: str, batch: int, work: str) -> None:
        import onnx
        import onnxruntime as ort

        man = json.load(open(os.path.join(model_dir, "manifest.json")))
        path = os.path.join(model_dir, man["decoder"])
        m = onnx.load(path)
        outs = [o.name for o in m.graph.output]
        if "low_res_masks" in outs and "masks" in outs:
            pruned = os.path.join(work, os.path.basename(os.path.normpath(model_dir)) + "-decoder-pruned.onnx")
            ins = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
            onnx.utils.extract_model(path, pruned, ins, ["iou_predictions", "low_res_masks"])
            path = pruned
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        sam2 = man.get("family", "sam").startswith("sam2")
        feeds = {}
        for i in self.sess.get_inputs():
            if i.name in ("point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"):
                continue
            feeds[i.name] = rng.normal(size=[d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
        n = 1 if sam2 else 2  # SAM's decoder takes the padding point as input
        coords = rng.random((batch, n, 2)).astype(np.float32) * 1000
        labels = np.ones((batch, n), np.float32)
        if not sam2:
            coords[:, 1] = 0
            labels[:, 1] = -1
        mi = next(i for i in self.sess.get_inputs() if i.name == "mask_input").shape
        feeds.update(point_coords=coords, point_labels=labels, has_mask_input=np.zeros(batch, np.float32),
                     mask_input=np.zeros((batch, 1, mi[2], mi[3]), np.float32))
        if any(i.name == "orig_im_size" for i in self.sess.get_inputs()):
            feeds["orig_im_size"] = np.array([768, 1024], np.float32)
        self.feeds, self.batch, self.times = feeds, batch, []
        for _ in range(3):
            self.sess.run(None, feeds)

    def call(self) -> None:
        t = time.perf_counter()
        self.sess.run(None, self.feeds)
        self.times.append(time.perf_counter() - t)

    def rate(self) -> float:
        return self.batch / statistics.median(self.times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="model folder (repeat)")
    ap.add_argument("--binary", default="target/release/samserve")
    ap.add_argument("--ort-lib", default=os.path.abspath(".ort/lib/libonnxruntime.so"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--md", help="append a Markdown table here")
    ap.add_argument("--batch", type=int, default=8, help="prompts per decoder call (graph timing)")
    ap.add_argument("--calls", type=int, default=30, help="decoder calls per model (graph timing)")
    a = ap.parse_args(argv)
    os.makedirs("target/bench", exist_ok=True)
    servers = []
    for i, d in enumerate(a.model):
        s = Server(a.binary, ["--model", d, "--request-timeout-ms", "0", "--decoder-workers", "1"], a.ort_lib,
                   f"target/bench/sam2-bench-{i}.log")
        servers.append(s)
    for s in servers:
        s.wait_ready(900)
    info = []
    for s in servers:
        with urllib.request.urlopen(s.base + "/v1/models", timeout=30) as r:
            m = json.loads(r.read())["models"][0]
        info.append(m)
        # Warm-up: one upload and one decoder request, not counted.
        up = json.loads(post(s.base + "/v1/images", png(999), "image/png"))
        s.image_id = up["image_id"]
        s.enc, s.dec = [], []
    clicks = [{"points": [{"x": float(x), "y": float(y), "label": 1}], "multimask_output": True}
              for x, y in zip(np.linspace(40, 980, a.prompts), np.linspace(30, 730, a.prompts)[::-1])]
    body = json.dumps({"prompts": clicks, "output": "none"}).encode()
    for r in range(a.rounds):
        for s in servers:
            before_sum = metric_sum(s.base, "samserve_encoder_seconds_sum")
            post(s.base + "/v1/images", png(1000 + r), "image/png")
            s.enc.append(metric_sum(s.base, "samserve_encoder_seconds_sum") - before_sum)
            t = time.perf_counter()
            post(f"{s.base}/v1/images/{s.image_id}/segment", body, "application/json")
            s.dec.append(a.prompts / (time.perf_counter() - t))
        print(f"round {r + 1}: " + "; ".join(f"{m['name']} enc {s.enc[-1]:.2f}s dec {s.dec[-1]:.0f} prompts/s"
                                            for s, m in zip(servers, info)), flush=True)
    for s in servers:
        s.stop()
    timers = [DecoderTimer(d, a.batch, "target/bench") for d in a.model]
    for _ in range(a.calls):
        for t in timers:
            t.call()
    rows = []
    for s, m, t in zip(servers, info, timers):
        b = m["embedding_bytes"]
        rows.append((m["name"], m["family"], statistics.median(s.enc), statistics.median(s.dec), t.rate(), b, b // 2,
                     ", ".join(f"{t['name']} {'x'.join(map(str, t['shape'][1:]))}" for t in m["tensors"])))
    ref = rows[-1]
    lines = [f"SAM 2.1 vs SAM, one run: {a.rounds} alternating rounds through samserve (cold 1024x768 uploads, "
             f"{a.prompts}-click requests with output none, 1 decoder worker), then {a.calls} alternating calls of "
             f"each decoder graph ({a.batch} prompts per call, 1 thread); {os.cpu_count()} shared cores",
             "",
             "| model | family | encoder s / image | prompts/s through the server | decoder graph prompts/s | "
             "embedding fp32 | fp16 | tensors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, fam, enc, dec, graph, b32, b16, tensors in rows:
        lines.append(f"| {name} | {fam} | {enc:.2f} | {dec:.1f} | {graph:.0f} | {b32 / 2**20:.0f} MiB | "
                     f"{b16 / 2**20:.0f} MiB | {tensors} |")
    if len(rows) > 1:
        r0 = rows[0]
        lines.append("")
        lines.append(f"{r0[0]} / {ref[0]}: encoder time x{r0[2] / ref[2]:.2f}, prompts/s through the server "
                     f"x{r0[3] / ref[3]:.2f}, decoder graph prompts/s x{r0[4] / ref[4]:.2f}, embedding bytes "
                     f"x{r0[5] / ref[5]:.1f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.md:
        with open(a.md, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
