#!/usr/bin/env python3
"""The default model's learning curve on the held-out scenes.

  curve.py point [--checkpoint target/train-v2/checkpoint.pth] [--state tools/checkpoints/default-train-state.pt]
      export the checkpoint (tools/export_onnx.py --default) into a temporary folder, evaluate it
      through ONNX Runtime on the 10 held-out scenes of the model card (tools/evaluate.py, centre
      point, box, 5 clicks) and append one line to --out (JSON lines) with the training progress
      read from --state (objects seen, steps, CPU hours).
  curve.py plot [--png models/sam-tiny/curve.png] [--md -]
      held-out box / click mIoU against objects seen: a PNG and a Markdown table.

The first line of the curve (objects 0) is the committed model the run started from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(REPO, "tools", "checkpoints", "heldout.jsonl")


def progress_of(state_path: str) -> dict:
    import torch

    if not state_path or not os.path.exists(state_path):
        return {"step": 0, "objects": 0, "cpu_s": 0.0}
    blob = torch.load(state_path, map_location="cpu", weights_only=False)
    return blob.get("progress", {"step": blob.get("step", 0), "objects": 0, "cpu_s": 0.0})


def evaluate(checkpoint: str, scenes: int, clicks: int, threads: int) -> dict:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model")
        subprocess.run([py, os.path.join(HERE, "export_onnx.py"), "--default", "--checkpoint", checkpoint,
                        "--out", out], check=True, stdout=subprocess.DEVNULL)
        js = os.path.join(tmp, "eval.json")
        subprocess.run([py, os.path.join(HERE, "evaluate.py"), "--model", out, "--scenes", str(scenes),
                        "--clicks", str(clicks), "--threads", str(threads), "--json", js],
                       check=True, stdout=subprocess.DEVNULL)
        return json.load(open(js))


def cmd_point(a) -> None:
    prog = progress_of(a.state)
    s = evaluate(a.checkpoint, a.scenes, a.clicks, a.threads)
    row = {
        "label": a.label,
        "step": int(prog.get("step", 0)),
        "objects": int(prog.get("objects", 0)),
        "cpu_h": round(float(prog.get("cpu_s", 0.0)) / 3600, 3),
        "box": round(s["box_miou"], 4),
        "point_top": round(s["point_top_miou"], 4),
        "point_oracle": round(s["point_oracle_miou"], 4),
        "clicks5": round(s["clicks_miou"][min(4, len(s["clicks_miou"]) - 1)], 4),
        "eval_objects": s["objects"],
    }
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def load_rows(path: str) -> list:
    return [json.loads(line) for line in open(path) if line.strip()]


SERIES = (("box", "1 box", (31, 119, 180)), ("clicks5", "5 clicks", (44, 160, 44)),
          ("point_oracle", "centre point, oracle", (255, 127, 14)),
          ("point_top", "centre point, top-ranked", (214, 39, 40)))


def plot_png(rows: list, path: str, w: int = 720, h: int = 440) -> None:
    """Held-out mIoU against objects seen (PIL only, like evaluate.py's calibration plot)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 60, 20, w - 20, h - 60
    xmax = max([r["objects"] for r in rows] + [1])
    ylo, yhi = 0.4, 1.0

    def px(o, v):
        return x0 + (x1 - x0) * o / xmax, y1 - (y1 - y0) * (v - ylo) / (yhi - ylo)

    d.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    for k in range(7):
        v = ylo + k * 0.1
        _, y = px(0, v)
        d.line([x0, y, x1, y], fill=(225, 225, 225))
        d.text((x0 - 30, y - 6), f"{v:.1f}", fill=(0, 0, 0))
    for k in range(6):
        o = xmax * k / 5
        x, _ = px(o, ylo)
        d.text((x - 12, y1 + 6), f"{o / 1000:.0f}k", fill=(0, 0, 0))
    for v, name in ((0.88, "box target 0.88"), (0.75, "centre-top target 0.75")):
        _, y = px(0, v)
        for xs in range(x0, x1, 8):
            d.line([xs, y, xs + 4, y], fill=(128, 128, 128))
        d.text((x0 + 4, y - 12), name, fill=(128, 128, 128))
    for i, (key, name, col) in enumerate(SERIES):
        pts = [px(r["objects"], r[key]) for r in rows]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.text((x0 + 10 + 170 * i, h - 22), name, fill=col)
    d.text((x0, y1 + 22), "objects seen in the CPU run (first-pass prompts); held-out mIoU, 10 scenes",
           fill=(0, 0, 0))
    img.save(path)


def cmd_plot(a) -> None:
    rows = load_rows(a.out)
    if a.png:
        plot_png(rows, a.png)
        print(f"wrote {a.png}")
    lines = ["| objects seen | steps | CPU hours | box | 5 clicks | centre oracle | centre top | |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['objects']:,} | {r['step']:,} | {r['cpu_h']:.2f} | {r['box']:.3f} | {r['clicks5']:.3f} "
                     f"| {r['point_oracle']:.3f} | {r['point_top']:.3f} | {r.get('label', '')} |")
    text = "\n".join(lines) + "\n"
    if a.md and a.md != "-":
        open(a.md, "w").write(text)
    else:
        print(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("point")
    p.add_argument("--checkpoint", default=os.path.join(REPO, "target", "train-v2", "checkpoint.pth"))
    p.add_argument("--state", default=os.path.join(REPO, "tools", "checkpoints", "default-train-state.pt"))
    p.add_argument("--label", default="")
    p.add_argument("--scenes", type=int, default=10)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=DEFAULT_OUT)
    q = sub.add_parser("plot")
    q.add_argument("--out", default=DEFAULT_OUT)
    q.add_argument("--png")
    q.add_argument("--md", default="-")
    a = ap.parse_args(argv)
    {"point": cmd_point, "plot": cmd_plot}[a.cmd](a)


if __name__ == "__main__":
    main()
