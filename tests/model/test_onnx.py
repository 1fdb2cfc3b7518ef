"""ONNX export of the encoders agrees with PyTorch (onnxruntime, CPU)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from multimodal.config import ModelConfig
from multimodal.export import CTEncoder, EMREncoder, export_encoders
from multimodal.model import FusionModel


def test_encoders_export_to_onnx_and_match_pytorch(tiny_cfg: ModelConfig,
                                                   tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    cfg = dataclasses.replace(tiny_cfg, ct=dataclasses.replace(tiny_cfg.ct, conv_stem=(4, 8)))
    torch.manual_seed(0)
    model = FusionModel(cfg).eval()
    t = 2 * cfg.long_emr.segment_len + 7  # three segments, the last one partial
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = export_encoders(model, tmp_path, emr_tokens=t)
    ct = torch.rand(3, 3, *cfg.ct.grid_shape)  # another batch size than traced
    ids = torch.randint(5, 300, (2, t))
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, t - 40:] = False  # padding
    ct_sess = ort.InferenceSession(str(paths["ct"]), providers=["CPUExecutionProvider"])
    emr_sess = ort.InferenceSession(str(paths["emr"]), providers=["CPUExecutionProvider"])
    (tok,) = ct_sess.run(None, {"ct": ct.numpy()})
    mem, etok = emr_sess.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        ref = CTEncoder(model)(ct).numpy()
        rmem, rtok = (x.numpy() for x in EMREncoder(model)(ids, mask))
    np.testing.assert_allclose(tok, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(mem, rmem, atol=1e-4, rtol=1e-4)
    valid = mask.numpy()
    np.testing.assert_allclose(etok[valid], rtok[valid], atol=1e-4, rtol=1e-4)
