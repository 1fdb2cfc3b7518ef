"""Image noise measured on the model grid and a scan noisier than the training cases smoothed
down to their level (multimodal.noise), as make_sample applies it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from multimodal.config import CTStemConfig, ModelConfig
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.noise import match_noise, noise_index
from multimodal.tokenizer import WordTokenizer
from multimodal.transforms import ct_channels
from tests.model.test_measure import chest


def noisy_chest(sd: float, seed: int = 0) -> np.ndarray:
    """The test chest (body 40 HU, lungs -850 HU) with white noise of ``sd`` HU."""
    rng = np.random.default_rng(seed)
    return (chest() + rng.normal(0.0, sd, chest().shape)).astype(np.float32)


@pytest.mark.parametrize("sd", [5.0, 12.0, 25.0])
def test_the_index_is_the_noise_of_the_air_around_the_body(sd: float) -> None:
    # white noise: a voxel minus the mean of 4 neighbours has sd * sqrt(1 + 1/4)
    idx = noise_index(noisy_chest(sd))
    assert idx is not None and idx == pytest.approx(sd * 1.25 ** 0.5, rel=0.05)
    # the body's texture does not count: a body of 40 HU texture in air of 5 HU noise reads 5
    rng = np.random.default_rng(3)
    base = chest()
    texture = np.where(base > -900, rng.normal(0, 40, base.shape), rng.normal(0, 5, base.shape))
    idx5 = noise_index((base + texture).astype(np.float32))
    assert idx5 is not None and idx5 == pytest.approx(5 * 1.25 ** 0.5, rel=0.1)
    # a constant fill (outside the reconstructed field) holds no noise
    assert noise_index(np.full((8, 32, 32), -1000.0, np.float32)) is None
    with pytest.raises(ShapeError, match="Z, Y, X"):
        noise_index(np.zeros((32, 32), np.float32))


def test_a_noisier_scan_is_smoothed_down_to_the_level_and_a_quieter_one_left() -> None:
    level = noise_index(noisy_chest(6.0))
    assert level is not None
    quiet = noisy_chest(4.0, seed=1)
    same, sigma = match_noise(quiet, level)
    assert sigma == 0.0 and np.array_equal(same, quiet)
    loud = noisy_chest(20.0, seed=2)
    before = loud.copy()
    out, sigma = match_noise(loud, level)
    assert np.array_equal(loud, before)  # the input is not modified
    got = noise_index(out)
    assert sigma > 0 and got is not None and got <= level
    # the smallest width that does it: the one before it leaves the scan above the level
    half = noise_index(match_noise(loud, level, sigmas=(sigma / 2,))[0])
    assert half is not None and half > level
    # the anatomy stays: the lungs are still lung, the body still soft tissue
    assert abs(float(out[32, 64, 100]) - float(chest()[32, 64, 100])) < 30.0
    # an index the caller measured is taken as it is (drafts measure it once, at load)
    given, given_sigma = match_noise(loud, level, index=noise_index(loud))
    assert given_sigma == sigma and np.array_equal(given, out)
    assert match_noise(loud, level, index=0.0)[1] == 0.0
    # 0 switches it off
    assert match_noise(loud, 0.0)[1] == 0.0


def test_make_sample_reads_a_noisy_scan_smoothed_where_configured(tiny_cfg: ModelConfig
                                                                   ) -> None:
    from multimodal.training import make_sample

    tok = WordTokenizer.build(["a note"], 300)
    shape = tiny_cfg.ct.grid_shape
    rng = np.random.default_rng(0)
    # a body beside air, both noisy
    hu = np.full(shape, 40.0, np.float32)
    hu[..., : shape[2] // 2] = -1000.0
    hu += rng.normal(0.0, 30.0, shape).astype(np.float32)
    raw = make_sample(tiny_cfg, tok, hu=hu, emr=None)["ct"]
    ct = tiny_cfg.ct
    assert np.array_equal(raw, ct_channels(hu, ct.windows, ct.spacing_mm, ct.blob_scales_mm,
                                           ct.blob_full_scale))
    cfg = dataclasses.replace(tiny_cfg, ct=dataclasses.replace(ct, noise_max_index=10.0))
    smoothed = make_sample(cfg, tok, hu=hu, emr=None)["ct"]
    assert np.array_equal(smoothed, ct_channels(match_noise(hu, 10.0)[0], ct.windows,
                                                ct.spacing_mm, ct.blob_scales_mm,
                                                ct.blob_full_scale))
    assert not np.array_equal(smoothed, raw)


def test_noise_max_index_is_validated() -> None:
    with pytest.raises(ModelConfigError, match="noise_max_index"):
        CTStemConfig(noise_max_index=-1.0)
