"""Dot-enhancement (determinant-of-Hessian) CT channels: spheres respond, tubes and plates
hardly do; the channels reach the model through ``make_sample`` and the pre-pooled stem."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from multimodal.batching import collate
from multimodal.checkpoint import build_model
from multimodal.config import CTStemConfig, ModelConfig
from multimodal.errors import ModalityError, ModelConfigError, ShapeError
from multimodal.transforms import BlobEnhance, BlobEnhanced, MultiWindow, ct_channels

SPACING = (5.0, 2.75, 2.75)
LUNG, SOFT = -850.0, 30.0


def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(np.arange(24) * SPACING[0], np.arange(48) * SPACING[1],
                          np.arange(48) * SPACING[2], indexing="ij")
    return z - 60.0, y - 66.0, x - 66.0  # mm from the centre voxel (12, 24, 24)


def phantom(kind: str, r: float = 5.0) -> np.ndarray:
    """Lung-density background with one soft-tissue object of radius ``r`` mm at the centre:
    a sphere (nodule), a tube along z or along x (vessel) or a plate (fissure-like)."""
    z, y, x = grid()
    d: np.ndarray = {"sphere": np.sqrt(z**2 + y**2 + x**2), "tube_z": np.sqrt(y**2 + x**2),
                     "tube_x": np.sqrt(z**2 + y**2), "plate": np.abs(y)}[kind]
    occ = np.clip(r + 0.5 - d, 0.0, 1.0)  # a one-voxel soft edge
    return (LUNG + (SOFT - LUNG) * occ).astype(np.float32)


def test_sphere_responds_and_tubes_and_plates_hardly_do() -> None:
    be = BlobEnhance(SPACING, (3.0,))
    peak = {k: float(be.response(phantom(k), 3.0).max())
            for k in ("sphere", "tube_z", "tube_x", "plate")}
    assert peak["sphere"] > 0.1
    for k in ("tube_z", "tube_x", "plate"):
        assert peak[k] < peak["sphere"] / 3, peak
    # the response sits on the sphere's centre, and a flat volume gives none
    r = be.response(phantom("sphere"), 3.0)
    assert tuple(int(i) for i in np.unravel_index(int(r.argmax()), r.shape)) == (12, 24, 24)
    assert float(be.response(np.full((8, 16, 16), LUNG, np.float32), 3.0).max()) == 0.0
    # a dark sphere (a cyst or a bulla in soft tissue) is not a bright blob
    dark = (SOFT + LUNG - phantom("sphere")).astype(np.float32)
    assert float(be.response(dark, 3.0).max()) < peak["sphere"] / 3


def test_channels_shape_range_and_bad_input() -> None:
    hu = phantom("sphere")
    out = BlobEnhance(SPACING, (2.0, 4.0), full_scale=0.05)(hu)
    assert out.shape == (2, *hu.shape) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() == 1.0  # clipped at full_scale
    ch = ct_channels(hu, ((-600.0, 1500.0), (40.0, 400.0)), SPACING, (3.0,))
    assert ch.shape == (3, *hu.shape)
    np.testing.assert_array_equal(ch[:2], MultiWindow(((-600.0, 1500.0), (40.0, 400.0)))(hu))
    assert ct_channels(hu, ((40.0, 400.0),), SPACING).shape == (1, *hu.shape)
    with pytest.raises(ShapeError, match="volume"):
        BlobEnhance(SPACING, (3.0,))(hu[0])
    with pytest.raises(ShapeError, match="scales_mm"):
        BlobEnhance(SPACING, ())
    with pytest.raises(ShapeError, match="spacing_mm"):
        BlobEnhance((5.0, 0.0, 2.75), (3.0,))
    with pytest.raises(ModelConfigError, match="blob_scales_mm"):
        CTStemConfig(grid_shape=(16, 32, 32), patch=(4, 8, 8), blob_scales_mm=(3.0, 3.0))
    with pytest.raises(ModelConfigError, match="blob_full_scale"):
        CTStemConfig(grid_shape=(16, 32, 32), patch=(4, 8, 8), blob_scales_mm=(3.0,),
                     blob_full_scale=0.0)


def test_dictionary_version_keeps_a_missing_ct_explicit() -> None:
    t = BlobEnhanced(["ct"], SPACING, (3.0,), allow_missing_keys=True)
    hu = phantom("sphere")
    data = {"ct": hu, "emr": "note"}
    out = t(data)
    assert set(out) == {"ct", "emr", "ct_blob"} and out["ct"] is hu and "ct_blob" not in data
    assert t({"emr": "note"}) == {"emr": "note"}  # no CT: nothing is made up
    with pytest.raises(ModalityError):
        BlobEnhanced(["ct"], SPACING, (3.0,))({"emr": "note"})


def test_model_takes_the_blob_channels_full_or_pre_pooled(tiny_cfg: ModelConfig) -> None:
    from multimodal.tokenizer import WordTokenizer
    from multimodal.training import make_sample
    from multimodal.transforms import BlockPool

    ct = dataclasses.replace(tiny_cfg.ct, pre_pool=(2, 2, 2), pool_stats=("mean", "max"),
                             conv_stem=(8,), blob_scales_mm=(3.0,))
    cfg = dataclasses.replace(tiny_cfg, ct=ct)
    assert ct.n_channels == len(ct.windows) + 1 and ct.in_channels == 2 * ct.n_channels
    tok = WordTokenizer.build(["a note"], max_size=min(tiny_cfg.emr.vocab_size, 300))
    hu = np.full(ct.grid_shape, LUNG, np.float32)
    z, y, x = (s // 2 for s in ct.grid_shape)
    hu[z - 1:z + 1, y - 2:y + 2, x - 2:x + 2] = SOFT
    s = make_sample(cfg, tok, hu=hu, emr="a note")
    assert s["ct"].shape == (ct.n_channels, *ct.grid_shape)
    assert s["ct"][-1].max() > 0  # the blob channel sees the small dense thing
    torch.manual_seed(0)
    model = build_model(cfg, "fusion").eval()
    full, _ = collate([s])
    pooled, _ = collate([{**s, "ct": BlockPool(ct.pre_pool, ct.pool_stats)(s["ct"])}])
    with torch.no_grad():
        a, b = model(full), model(pooled)
    torch.testing.assert_close(a.presence_logits, b.presence_logits, atol=1e-5, rtol=1e-5)
    assert full.ct is not None
    bad = dataclasses.replace(full, ct=full.ct[:, : len(ct.windows)])
    with pytest.raises(ShapeError):
        model(bad)
