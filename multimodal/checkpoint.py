"""Checkpoints: safetensors weights (+ optimizer state), JSON config, vocabulary, metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.config import ModelConfig, from_mapping
from multimodal.errors import CheckpointError
from multimodal.tokenizer import WordTokenizer

WEIGHTS, CONFIG, VOCAB, META = "model.safetensors", "config.json", "vocab.json", "meta.json"
OPTIM, OPTIM_META = "optim.safetensors", "optim.json"


def build_model(cfg: ModelConfig, kind: str) -> nn.Module:
    if kind == "fusion":
        from multimodal.model import FusionModel

        return FusionModel(cfg)
    if kind == "late":
        from multimodal.baseline import LateFusionModel

        return LateFusionModel(cfg)
    raise CheckpointError(f"unknown model kind {kind!r}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(folder: str | Path, model: nn.Module, cfg: ModelConfig, kind: str,
                    tokenizer: WordTokenizer, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write the checkpoint folder atomically enough (files replaced one by one)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({"kind": kind, "model": cfg.to_dict()}, indent=1,
                                         sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save(out / VOCAB)
    (out / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n",
                            encoding="utf-8")
    if optimizer is not None:
        sd = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{pid}.{k}"] = v.detach().contiguous().clone()
                else:
                    scalars[f"{pid}.{k}"] = v
        save_file(tensors, str(out / OPTIM))
        (out / OPTIM_META).write_text(json.dumps(
            {"param_groups": sd["param_groups"], "scalars": scalars}, indent=1) + "\n",
            encoding="utf-8")
    return out


def load_checkpoint(folder: str | Path) -> tuple[nn.Module, ModelConfig, str, WordTokenizer,
                                                 dict[str, Any]]:
    """(model in eval mode, config, kind, tokenizer, meta)."""
    from safetensors.torch import load_file

    src = Path(folder)
    for name in (WEIGHTS, CONFIG, VOCAB, META):
        if not (src / name).is_file():
            raise CheckpointError(f"checkpoint {src} lacks {name}")
    try:
        raw = json.loads((src / CONFIG).read_text(encoding="utf-8"))
        meta = json.loads((src / META).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {src}: bad JSON: {exc}") from exc
    cfg = from_mapping(ModelConfig, raw["model"])
    kind = str(raw.get("kind", "fusion"))
    tok = WordTokenizer.load(src / VOCAB)
    if len(tok) > cfg.emr.vocab_size:
        raise CheckpointError("vocabulary larger than the model's emr.vocab_size")
    model = build_model(cfg, kind)
    state = load_file(str(src / WEIGHTS))
    # checkpoints written before per-label thresholds existed decide at 0.5
    state.setdefault("findings.thresholds", torch.full((len(cfg.heads.labels),), 0.5))
    # ... and before the prior for cases without CT: the network's output is kept
    state.setdefault("findings.prior", torch.full((len(cfg.heads.labels),), -1.0))
    # ... and before the validation AUROC (no label is flagged unreliable)
    state.setdefault("findings.val_auroc", torch.full((len(cfg.heads.labels),), -1.0))
    # ... and before the fitted bilateral cut-offs (heads.bilateral_min_prob applies)
    state.setdefault("findings.bilateral_min", torch.full((len(cfg.heads.labels),), -1.0))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {src} does not match its config: {exc}") from exc
    model.eval()
    return model, cfg, kind, tok, meta


def load_optimizer(folder: str | Path, optimizer: torch.optim.Optimizer) -> None:
    from safetensors.torch import load_file

    src = Path(folder)
    if not (src / OPTIM).is_file() or not (src / OPTIM_META).is_file():
        raise CheckpointError(f"checkpoint {src} has no optimizer state")
    tensors = load_file(str(src / OPTIM))
    extra = json.loads((src / OPTIM_META).read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in extra["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": extra["param_groups"]})
