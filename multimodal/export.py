"""ONNX export of the modality encoders (CT stem + shared encoder; EMR stem + long-EMR
encoder), for serving them outside PyTorch.  Checked against PyTorch in tests/model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from multimodal.model import FusionModel


class CTEncoder(nn.Module):
    """(B, C, Z, Y, X) windowed CT -> (B, N, D) CT tokens of the shared encoder."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ct: Tensor) -> Tensor:
        return self.model.encode_ct(ct)


class EMREncoder(nn.Module):
    """(B, T) ids + (B, T) mask -> memory (B, M, D) and token states (B, T, D)."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        enc = m.long_emr(m.stems["emr"], m.encoder, ids, mask, mask.any(1))
        return enc.memory, enc.tokens


def export_encoders(model: FusionModel, folder: str | Path, emr_tokens: int = 512,
                    ) -> dict[str, Path]:
    """Write ``ct_encoder.onnx`` (dynamic batch) and ``emr_encoder.onnx`` (dynamic batch;
    traced for ``emr_tokens`` tokens: the segment loop is unrolled) into ``folder``."""
    cfg = model.cfg
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = {"ct": out / "ct_encoder.onnx", "emr": out / "emr_encoder.onnx"}
    ct = torch.zeros(1, cfg.ct.n_channels, *cfg.ct.grid_shape)
    ids = torch.full((1, emr_tokens), 5, dtype=torch.long)
    mask = torch.ones(1, emr_tokens, dtype=torch.bool)
    with torch.no_grad():
        torch.onnx.export(CTEncoder(model), (ct,), str(paths["ct"]), input_names=["ct"],
                          output_names=["tokens"], dynamic_axes={"ct": {0: "batch"}},
                          dynamo=False)
        torch.onnx.export(EMREncoder(model), (ids, mask), str(paths["emr"]),
                          input_names=["ids", "mask"], output_names=["memory", "tokens"],
                          dynamic_axes={"ids": {0: "batch"}, "mask": {0: "batch"}},
                          dynamo=False)
    return paths
