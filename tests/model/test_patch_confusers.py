"""patch_confusers: a patch that another finding occupies weighs more as a negative of a
label in the per-patch (MIL) loss (a consolidation read as a mass)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from multimodal.config import ModelConfig
from multimodal.errors import ModelConfigError
from multimodal.losses import Targets, compute_losses
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput


def _mil(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, heads=dataclasses.replace(cfg.heads, mil=True))


def test_config_refusals(tiny_cfg: ModelConfig) -> None:
    cfg = _mil(tiny_cfg)
    ok = dataclasses.replace(cfg, patch_confusers=(("lung_mass", "consolidation", 5.0),))
    assert ok.patch_confusers[0][2] == 5.0
    for bad in ((("lung_mass", "lung_mass", 5.0),), (("mass", "consolidation", 5.0),),
                (("lung_mass", "consolidation", 0.5),)):
        with pytest.raises(ModelConfigError, match="patch_confusers"):
            dataclasses.replace(cfg, patch_confusers=bad)
    with pytest.raises(ModelConfigError, match=r"heads\.mil"):
        dataclasses.replace(tiny_cfg, patch_confusers=(("lung_mass", "consolidation", 5.0),))


def test_confuser_patches_weigh_more_as_negatives_of_the_label(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """The mass's patch logit where a consolidation lies (no mass) gets ``weight`` times the
    gradient; its other patches, the consolidation's own logits and a patch where the mass
    is present get the same gradient as without."""
    base = _mil(tiny_cfg)
    cfg = dataclasses.replace(base, patch_confusers=(("lung_mass", "consolidation", 5.0),))
    m, c = cfg.heads.labels.index("lung_mass"), cfg.heads.labels.index("consolidation")
    n_f = len(cfg.heads.labels)
    torch.manual_seed(0)
    out = FusionModel(cfg).train()(make_batch(b=2))
    loc = torch.zeros(2, n_f, cfg.ct.n_patches)
    loc[0, c, 3] = 1.0  # case 0: a consolidation in patch 3, no mass
    loc[1, c, 3] = 1.0  # case 1: a consolidation and a mass in patch 3
    loc[1, m, 3] = 1.0
    present = torch.zeros(2, n_f)
    present[0, c] = present[1, c] = present[1, m] = 1.0
    t = Targets(present=present, laterality=torch.full((2, n_f), -100),
                location=torch.full((2, n_f), -100), size_mm=torch.full((2, n_f), float("nan")),
                loc_map=loc)
    assert out.patch_logits is not None
    (g,) = torch.autograd.grad(compute_losses(out, t, cfg)["patch"], [out.patch_logits])
    (g0,) = torch.autograd.grad(compute_losses(out, t, base)["patch"], [out.patch_logits])
    torch.testing.assert_close(g[0, m, 3], 5.0 * g0[0, m, 3])
    assert float(g0[0, m, 3]) > 0  # a negative: pushed down
    keep = torch.ones_like(g, dtype=torch.bool)
    keep[0, m, 3] = False
    torch.testing.assert_close(g[keep], g0[keep])
