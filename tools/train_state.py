"""Training state for tools/train.py: the weight EMA, the CPU bfloat16 check, and the
compact state file that a commit carries (under 25 MB for the default model).

Compact format (torch.save of a dict, "format": "samserve-train-compact/1"):
* model: the raw training weights and buffers, float16 (integer buffers as they are);
* ema:   the exponential moving average of the same tensors, float16 (absent without --ema);
* exp_avg_sq: AdamW's second moment per parameter name, bfloat16 (its range, not its last
  bits, is what matters: the update divides by its square root);
* adam_step: AdamW's step count per parameter name;
* progress: step, elapsed seconds, objects seen, CPU seconds, data position.
AdamW's first moment is not kept: it is rebuilt within ~10 steps (beta1 0.9), and keeping it
would put the file over 25 MB. Resuming from the compact file is therefore close to, not
bit-identical with, resuming from target/train/train_state.pt.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

import torch

FORMAT = "samserve-train-compact/1"


def cpu_has_bf16() -> bool:
    """True when the CPU has AMX bfloat16 tiles. AVX-512 bf16 alone is not enough: on such a
    machine (no AMX) a whole training step took 6x longer under autocast than in float32
    (tools/step_bench.py precision: 65.5 s vs 10.3 s), as matmuls and several element-wise
    ops fall back to slow bfloat16 paths."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "amx_bf16" in flags
    except OSError:
        pass
    return False


class Ema:
    """Exponential moving average of a model's floating-point tensors (parameters and
    BatchNorm running statistics); integer buffers are copied. The decay ramps up as
    (1 + n) / (10 + n) over the first updates, so a fresh EMA is not dominated by its start."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load(self, sd: Dict[str, torch.Tensor], updates: int) -> None:
        for k, v in sd.items():
            self.shadow[k].copy_(v.float() if v.dtype.is_floating_point else v)
        self.updates = updates


def _half(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: (v.detach().cpu().half() if v.dtype.is_floating_point else v.detach().cpu()) for k, v in sd.items()}


def save_compact(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: Optional[Ema],
                 progress: Dict[str, Any], arch: Dict[str, Any]) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    sq, steps = {}, {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "exp_avg_sq" in st:
                n = names[id(p)]
                sq[n] = st["exp_avg_sq"].detach().cpu().to(torch.bfloat16)
                steps[n] = float(st["step"])
    blob = {
        "format": FORMAT,
        "arch": arch,
        "model": _half(model.state_dict()),
        "exp_avg_sq": sq,
        "adam_step": steps,
        "progress": progress,
    }
    if ema is not None:
        blob["ema"] = _half(ema.shadow)
        blob["ema_updates"] = ema.updates
    tmp = path + ".tmp"
    torch.save(blob, tmp)
    os.replace(tmp, path)


def grow_state_dict(model: torch.nn.Module, sd: Dict[str, torch.Tensor]) -> list:
    """Loads a smaller model's weights into a model with extra residual blocks (an ARCHES entry
    with deeper encoder stages) so that it computes the same function: every tensor of `sd`
    must exist in `model` with its shape; a new block's second BatchNorm scale is zeroed, so the
    block adds nothing to its (non-negative, post-ReLU) input and relu(x + 0) = x. Returns the
    new tensors' names. Anything else missing is an error."""
    ref = model.state_dict()
    extra = [k for k in sd if k not in ref or ref[k].shape != sd[k].shape]
    if extra:
        raise ValueError(f"cannot grow: {len(extra)} tensors do not fit the model, e.g. {extra[:3]}")
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in sd.items()}, strict=False)
    new = [k for k in ref if k not in sd]
    blocks = set()
    for k in new:
        parts = re.split(r"\.[ab]\.", k, maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"cannot grow: {k} is not part of a new residual block")
        blocks.add(parts[0])
    with torch.no_grad():
        for b in blocks:
            model.get_submodule(b).b[1].weight.zero_()
    return new


def read_compact(path: str) -> Dict[str, Any]:
    blob = torch.load(path, map_location="cpu")
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    return blob


def load_compact(blob: Dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                 ema: Optional[Ema], grow: bool = False) -> Dict[str, Any]:
    """Resumes from a compact state (read_compact); with grow, into a deeper model
    (grow_state_dict): the new blocks start with a fresh AdamW state and an EMA equal to their
    initial weights."""
    ref = model.state_dict()
    new = []
    if grow:
        new = grow_state_dict(model, blob["model"])
    else:
        model.load_state_dict({k: v.to(ref[k].dtype) for k, v in blob["model"].items()})
    dev = next(model.parameters()).device
    for n, p in model.named_parameters():
        if n in blob["exp_avg_sq"]:
            opt.state[p] = {
                "step": torch.tensor(blob["adam_step"][n]),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": blob["exp_avg_sq"][n].to(dev, torch.float32),
            }
    if ema is not None and "ema" in blob:
        ema.load(blob["ema"], int(blob.get("ema_updates", 0)))
        cur = model.state_dict()
        for k in new:
            ema.shadow[k].copy_(cur[k].float() if cur[k].dtype.is_floating_point else cur[k])
    return blob["progress"]
