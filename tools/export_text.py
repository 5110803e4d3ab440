"""Export the all-MiniLM-L6-v2 text tower to ONNX for samserve's text prompts.

  tools/.venv/bin/python tools/export_text.py --out models/text-minilm \
      --fixtures tests/fixtures/text

Writes <out>/text.onnx (input_ids, attention_mask int64 [B, T] -> embedding float32
[B, 384], mean pooling + L2 normalisation inside the graph), int8 dynamically quantized
when its cosine to the fp32 graph stays >= --min-cosine on the fixture phrases, and
<out>/tokenizer.json (the package's file, unchanged). Fixtures: per phrase, the token ids
of the Python `tokenizers` library and the embedding of the exported graph run by
onnxruntime, for the server's parity tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm  # noqa: E402

# Unicode, punctuation, casing, accents, CJK, emoji, whitespace, and text past 128 tokens.
FIXTURE_PHRASES = [
    "the blue star",
    "The BLUE Star!",
    "a small red ring on the left",
    "crimson pentagram",
    "azure disc, near the top-right corner...",
    "  multiple   spaces\tand\ttabs\n",
    "naïve café résumé — déjà vu",
    "Ünïcödé ÅÉÎÕÜ straße",
    "东京 の 赤い 星",
    "emoji 🚀 star ⭐ and a 🍩",
    "punctuation: (brackets) [square] {curly} <angle> 'quotes' \"double\" - hyphen_under",
    "numbers 123 4.56 7,890 #42 @user 50%",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x",
    "the " + "very " * 150 + "long phrase that runs past the tokenizer's maximum length",
    " ".join(f"word{i}" for i in range(200)),
]


def export(model, path):
    ids = torch.tensor([[101, 1996, 2630, 2732, 102]], dtype=torch.int64)
    am = torch.ones_like(ids)
    torch.onnx.export(
        model, (ids, am), str(path), input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                      "embedding": {0: "batch"}},
        opset_version=17, dynamo=False,
    )


def weight_only_int8(src, dst, min_size=65536):
    """Weight-only int8: every large 2-D float initializer (embedding tables, MatMul weights)
    becomes int8 with a symmetric per-row (Gather tables) or per-column (MatMul weights)
    scale, behind a DequantizeLinear node. Activations stay float, so accuracy stays close
    to fp32 (onnxruntime's dynamic quantization also quantizes activations and loses more
    here). Sessions should set `session.disable_quant_qdq=1` so the dequantization is
    constant-folded once at load instead of running on every call."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    added, dq = [], []
    for init in list(g.initializer):
        a = numpy_helper.to_array(init)
        if a.dtype != np.float32 or a.ndim != 2 or a.size < min_size:
            continue
        gather = any(init.name in n.input and n.op_type == "Gather" for n in g.node)
        axis = 0 if gather else 1
        amax = np.abs(a).max(axis=1 - axis)
        scale = (np.maximum(amax, 1e-8) / 127.0).astype(np.float32)
        q = np.clip(np.round(a / (scale[:, None] if axis == 0 else scale[None, :])), -127, 127).astype(np.int8)
        g.initializer.remove(init)
        added += [numpy_helper.from_array(q, init.name + "_int8"), numpy_helper.from_array(scale, init.name + "_scale"),
                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), init.name + "_zero")]
        dq.append(helper.make_node("DequantizeLinear", [init.name + "_int8", init.name + "_scale", init.name + "_zero"],
                                   [init.name], axis=axis))
    g.initializer.extend(added)
    for n in reversed(dq):
        g.node.insert(0, n)
    onnx.save(m, str(dst))


def run(path, tok, phrases):
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = []
    for p in phrases:
        e = tok.encode(p)
        ids = np.array([e.ids], np.int64)
        out.append(s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0])
    return np.stack(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/text-minilm")
    ap.add_argument("--fixtures", default="tests/fixtures/text")
    ap.add_argument("--min-cosine", type=float, default=0.99)
    ap.add_argument("--no-quantize", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = minilm.load()
    tok = minilm.tokenizer()
    shutil.copy(minilm.package_dir() / "tokenizer.json", out / "tokenizer.json")

    fp32 = out / "text.fp32.onnx"
    export(model, fp32)
    # The torch model itself is the reference for the exported graph.
    ref = minilm.encode_texts(model, tok, FIXTURE_PHRASES, batch=1)
    e32 = run(fp32, tok, FIXTURE_PHRASES)
    cos32 = (ref * e32).sum(1)
    print(f"fp32 ONNX vs torch: min cosine {cos32.min():.6f}")
    final = out / "text.onnx"
    quant = "none"
    if not args.no_quantize:
        weight_only_int8(fp32, final)
        e8 = run(final, tok, FIXTURE_PHRASES)
        cos8 = (e32 * e8).sum(1)
        print(f"int8 vs fp32 ONNX: min cosine {cos8.min():.4f}, mean {cos8.mean():.4f}")
        if cos8.min() >= args.min_cosine:
            quant = "int8-weights"
            fp32.unlink()
        else:
            print("int8 cosine too low; keeping fp32")
    if quant == "none":
        fp32.replace(final)
    emb = run(final, tok, FIXTURE_PHRASES)
    print(f"{final}: {final.stat().st_size / 1e6:.1f} MB ({quant})")

    fx = Path(args.fixtures)
    fx.mkdir(parents=True, exist_ok=True)
    cases = []
    for p, e in zip(FIXTURE_PHRASES, emb):
        enc = tok.encode(p)
        cases.append({"text": p, "ids": enc.ids, "embedding": [round(float(v), 7) for v in e]})
    doc = {"model": str(final), "quantization": quant, "max_tokens": 128, "cases": cases}
    (fx / "minilm.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n")
    info = {"kind": "minilm-region", "text_encoder": "text.onnx", "tokenizer": "tokenizer.json",
            "quantization": quant, "dim": minilm.DIM, "max_tokens": 128}
    (out / "export.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
