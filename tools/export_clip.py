"""Export a CLIP model as a samserve `clip` text model (text.onnx + image.onnx +
tokenizer.json + text.json).

  # a Hugging Face CLIP checkpoint you have on disk (e.g. a local copy of
  # openai/clip-vit-base-patch32: config.json, model.safetensors, tokenizer files,
  # preprocessor_config.json); nothing is downloaded
  tools/.venv/bin/python tools/export_clip.py --checkpoint /path/to/clip-vit-base-patch32 \
      --out models/clip-b32 --sam-model models/sam-tiny --model-out models/sam-tiny-clip

  # a small random CLIP with a BPE tokenizer trained offline (checks the path end to end)
  tools/.venv/bin/python tools/export_clip.py --random-init tiny --out target/clip-check/clip

Writes, under --out:
  text.onnx       input_ids, attention_mask int64 [B, T] -> embedding float32 [B, D]
                  (CLIP's text projection of the end-of-text token's state; unnormalised)
  image.onnx      pixel_values float32 [B, 3, S, S] -> embedding float32 [B, D]
  tokenizer.json  the checkpoint's tokenizer, truncating at the text model's
                  max_position_embeddings (77 for OpenAI CLIP), no padding
  text.json       the samserve text manifest (kind "clip", crop size/mean/std)
With --model-out, also a segmentation model folder whose manifest reuses --sam-model's
encoder and decoder and declares `"text": <relative path to --out>` (the manifest fragment
that gives any SAM model text prompts). With --fixtures, the parity fixtures of
tests/clip.rs: Python `tokenizers` ids, onnxruntime text embeddings, and the reference
crops (`crop_pixels` below, which the server's src/runtime/text/clip.rs reproduces) with
their image embeddings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

# CLIP's published normalisation (used when a checkpoint has no preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Casing, punctuation, accents, CJK, emoji, whitespace, and text past 77 tokens.
FIXTURE_PHRASES = [
    "the blue star",
    "The BLUE Star!",
    "a photo of a red ring on the left",
    "crimson pentagram",
    "azure disc, near the top-right corner...",
    "  multiple   spaces\tand\ttabs\n",
    "naïve café résumé — déjà vu",
    "东京 の 赤い 星",
    "emoji 🚀 star ⭐",
    "it's the object's edge; don't they'll we've",
    "numbers 123 4.56 #42 50%",
    "x",
    "the " + "very " * 100 + "long phrase past the maximum length",
]

# Words the random-init tokenizer is trained on: enough for BPE merges that split some
# words and not others, so the parity fixtures exercise merging.
WORDS = (
    "a an the of on in at to and or with near photo picture image object shape thing one "
    "red green blue yellow orange purple pink white black grey gray brown cyan magenta "
    "crimson azure scarlet navy teal violet golden silver dark light bright pale "
    "star ring disc circle square rectangle triangle pentagon hexagon ellipse cross heart "
    "blob stripe dot line moon diamond small big large tiny huge left right top bottom "
    "middle centre center corner edge upper lower first second third"
).split()


def crop_pixels(rgb: np.ndarray, mask: np.ndarray, size: int, mean, std, margin: float) -> np.ndarray:
    """The reference crop of a candidate mask: its box grown to a square of side
    max(w, h) + 2*floor(max(w, h)*margin) centred on the box, mask pixels kept, everything
    else (outside the mask or the image) the mean colour, Pillow bilinear resize to
    size x size, then (x/255 - mean)/std. Returns float32 [3, size, size]."""
    fill = np.array([min(255, max(0, round(m * 255))) for m in mean], np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        square = np.empty((1, 1, 3), np.uint8)
        square[:] = fill
    else:
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        bw, bh = x1 - x0, y1 - y0
        long = max(bw, bh)
        side = long + 2 * int(math.floor(long * margin))
        sx, sy = x0 - (side - bw) // 2, y0 - (side - bh) // 2
        square = np.empty((side, side, 3), np.uint8)
        square[:] = fill
        box = mask[y0:y1, x0:x1].astype(bool)
        region = square[y0 - sy:y1 - sy, x0 - sx:x1 - sx]
        region[box] = rgb[y0:y1, x0:x1][box]
    small = np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR), np.float32)
    a = (small / np.float32(255.0) - np.array(mean, np.float32)) / np.array(std, np.float32)
    return a.transpose(2, 0, 1).astype(np.float32)


class TextTower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        pooled = self.m.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.m.text_projection(pooled)


class ImageTower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m.visual_projection(self.m.vision_model(pixel_values=pixel_values).pooler_output)


def random_tokenizer():
    """A CLIP-format tokenizer built offline: a byte-level BPE trained by `tokenizers` on
    WORDS, with the vocabulary laid out as CLIP's is (256 bytes, the same with the </w>
    end-of-word suffix, one token per merge, then <|startoftext|> and <|endoftext|>), fed
    to transformers' CLIPTokenizer so normaliser, pre-tokenizer and post-processor are
    CLIP's own."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = {ch: i for i, ch in enumerate(alphabet)}
    base.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    specials = ["<|startoftext|>", "<|endoftext|>"]
    seed = dict(base, **{s: len(base) + i for i, s in enumerate(specials)})
    trainer_tok = CLIPTokenizer(vocab=seed, merges=[]).backend_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    trainer_tok.train_from_iterator(corpus, trainer=trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    vocab = dict(base)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for s in specials:
        vocab[s] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    return tok.backend_tokenizer, vocab


def random_model(arch: str, vocab: dict):
    from transformers import CLIPConfig, CLIPModel

    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    text = dict(vocab_size=len(vocab), max_position_embeddings=77, eos_token_id=eos,
                bos_token_id=bos, pad_token_id=eos)
    if arch == "tiny":
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=32, patch_size=8)
        proj = 16
    elif arch == "b32":
        # ViT-B/32's shapes (random weights): for latency measurements, not accuracy.
        vision = dict(image_size=224, patch_size=32)
        proj = 512
    else:
        sys.exit(f"unknown --random-init {arch!r} (tiny or b32)")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)
    return CLIPModel(cfg).eval(), {"mean": CLIP_MEAN, "std": CLIP_STD}


def load_checkpoint(path: Path):
    from tokenizers import Tokenizer
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
    if (path / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True).backend_tokenizer
    norm = {"mean": CLIP_MEAN, "std": CLIP_STD}
    pp = path / "preprocessor_config.json"
    if pp.exists():
        cfg = json.loads(pp.read_text())
        norm = {"mean": cfg.get("image_mean", CLIP_MEAN), "std": cfg.get("image_std", CLIP_STD)}
    return model, tok, norm


def export(model, out: Path, bos: int, eos: int):
    size = model.config.vision_config.image_size
    ids = torch.tensor([[bos, 10, 11, 12, eos]], dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            TextTower(model), (ids, torch.ones_like(ids)), str(out / "text.onnx"),
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        torch.onnx.export(
            ImageTower(model), (torch.zeros(2, 3, size, size),), str(out / "image.onnx"),
            input_names=["pixel_values"], output_names=["embedding"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17, dynamo=False,
        )


def check_against_torch(model, out: Path, tok, norm):
    """The exported graphs against the PyTorch model on a few inputs (max abs error)."""
    st = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    si = ort.InferenceSession(str(out / "image.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    for p in FIXTURE_PHRASES[:4] + FIXTURE_PHRASES[-1:]:
        ids = np.array([tok.encode(p).ids], np.int64)
        a = st.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        with torch.no_grad():
            b = TextTower(model)(torch.from_numpy(ids), torch.ones(ids.shape, dtype=torch.int64)).numpy()
        worst = max(worst, float(np.abs(a - b).max()))
    size = model.config.vision_config.image_size
    px = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    a = si.run(None, {"pixel_values": px})[0]
    with torch.no_grad():
        b = ImageTower(model)(torch.from_numpy(px)).numpy()
    worst = max(worst, float(np.abs(a - b).max()))
    print(f"onnx vs torch: max abs difference {worst:.2e}")
    if worst > 1e-3:
        sys.exit("exported graphs disagree with the PyTorch model")


def fixture_scene(w=96, h=72):
    """A small scene: grey background, a red disc, a blue square, a green bar that runs off
    the right edge (crop squares reaching outside the image)."""
    rgb = np.full((h, w, 3), 90, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb[:] += (xx[..., None] // 8 % 2 * 20).astype(np.uint8)  # texture, so resizing has work
    disc = (xx - 25) ** 2 + (yy - 30) ** 2 <= 14 ** 2
    square = (xx >= 50) & (xx < 70) & (yy >= 10) & (yy < 30)
    bar = (xx >= 60) & (yy >= 50) & (yy < 58)
    rgb[disc] = (220, 30, 40)
    rgb[square] = (30, 60, 220)
    rgb[bar] = (40, 200, 60)
    speck = np.zeros((h, w), bool)
    speck[5, 5] = True
    return rgb, {"disc": disc, "square": square, "bar": bar, "speck": speck}


def write_fixtures(out: Path, fixtures: Path, tok, crop: dict, name: str):
    fixtures.mkdir(parents=True, exist_ok=True)
    st = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    si = ort.InferenceSession(str(out / "image.onnx"), providers=["CPUExecutionProvider"])
    cases = []
    for p in FIXTURE_PHRASES:
        ids = tok.encode(p).ids
        arr = np.array([ids], np.int64)
        emb = st.run(None, {"input_ids": arr, "attention_mask": np.ones_like(arr)})[0][0]
        cases.append({"text": p, "ids": ids, "embedding": [float(x) for x in emb]})
    rgb, masks = fixture_scene()
    Image.fromarray(rgb).save(fixtures / "scene.png")
    crops = []
    for mname, m in masks.items():
        Image.fromarray((m * 255).astype(np.uint8)).save(fixtures / f"mask_{mname}.png")
        px = crop_pixels(rgb, m, crop["size"], crop["mean"], crop["std"], crop["margin"])
        emb = si.run(None, {"pixel_values": px[None]})[0][0]
        crops.append({"mask": f"mask_{mname}.png", "pixels": [round(float(x), 6) for x in px.ravel()],
                      "embedding": [float(x) for x in emb]})
    max_tokens = (tok.truncation or {}).get("max_length")
    doc = {"model": name, "generated_by": "tools/export_clip.py", "max_tokens": max_tokens,
           "cases": cases, "image": "scene.png", "crops": crops}
    (fixtures / "clip.json").write_text(json.dumps(doc))
    print(f"fixtures: {len(cases)} phrases, {len(crops)} crops -> {fixtures}")


def write_model_folder(sam: Path, model_out: Path, text_dir: Path, name: str):
    """A segmentation model folder: --sam-model's manifest with its encoder/decoder paths
    made relative to the new folder, a new name, and the text section."""
    m = json.loads((sam / "manifest.json").read_text())
    model_out.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(p, model_out)  # noqa: E731
    for key in ("encoder", "decoder"):
        m[key] = rel(sam / m[key])
    m.pop("checkpoint", None)
    m["name"] = name
    m["text"] = rel(text_dir)
    m["description"] = f"{m.get('description', '')} Text prompts: CLIP ({text_dir.name})".strip()
    (model_out / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    print(f"model folder: {model_out} (text: {m['text']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a local Hugging Face CLIP folder")
    src.add_argument("--random-init", choices=["tiny", "b32"], help="a random CLIP of these shapes")
    ap.add_argument("--out", type=Path, required=True, help="text model folder to write")
    ap.add_argument("--name", help="text model name (default: the folder's name)")
    ap.add_argument("--margin", type=float, default=0.1, help="crop context, fraction of the box's long side")
    ap.add_argument("--max-candidates", type=int, default=64,
                    help="candidate masks per image (each costs one image-encoder run)")
    ap.add_argument("--fixtures", type=Path, help="write parity fixtures here")
    ap.add_argument("--sam-model", type=Path, help="segmentation model folder to pair the text model with")
    ap.add_argument("--model-out", type=Path, help="write the paired model folder here (needs --sam-model)")
    ap.add_argument("--model-name", help="the paired model's name (default: the --model-out folder's name)")
    args = ap.parse_args()
    if bool(args.sam_model) != bool(args.model_out):
        sys.exit("--sam-model and --model-out go together")

    if args.random_init:
        tok, vocab = random_tokenizer()
        model, norm = random_model(args.random_init, vocab)
        bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
        source = f"random-init {args.random_init}"
    else:
        model, tok, norm = load_checkpoint(args.checkpoint)
        bos = tok.token_to_id("<|startoftext|>")
        eos = tok.token_to_id("<|endoftext|>")
        if bos is None or eos is None:
            sys.exit("the tokenizer has no <|startoftext|>/<|endoftext|> tokens: not a CLIP tokenizer")
        source = str(args.checkpoint)
    max_len = model.config.text_config.max_position_embeddings
    # The server tokenizes one phrase per run: no padding; truncate at the position table.
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    export(model, out, bos, eos)
    tok.save(str(out / "tokenizer.json"))
    check_against_torch(model, out, tok, norm)
    name = args.name or out.name
    crop = {"size": model.config.vision_config.image_size, "mean": [float(x) for x in norm["mean"]],
            "std": [float(x) for x in norm["std"]], "margin": args.margin}
    manifest = {
        "name": name,
        "kind": "clip",
        "text_encoder": "text.onnx",
        "tokenizer": "tokenizer.json",
        "image_encoder": "image.onnx",
        "crop": crop,
        "max_text_chars": 256,
        "candidates": {"points_per_side": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8,
                       "box_nms_thresh": 0.7, "crop_n_layers": 0, "max_masks": args.max_candidates},
        "description": f"CLIP text + image encoders from {source} (tools/export_clip.py); "
                       f"candidates scored by cosine of mask crops",
    }
    (out / "text.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sizes = {f: (out / f).stat().st_size for f in ("text.onnx", "image.onnx", "tokenizer.json")}
    print(f"wrote {out}: {sizes}")
    if args.fixtures:
        write_fixtures(out, args.fixtures, tok, crop, name)
    if args.model_out:
        write_model_folder(args.sam_model, args.model_out, out, args.model_name or args.model_out.name)
    else:
        print(f'manifest fragment for a SAM model folder: "text": "<path from it to {out}>"')


if __name__ == "__main__":
    main()
