"""Guards of the training data contract (see docs/model.md, "Why the first demo run learned
nothing"): the targets of a sample are the findings of the same case, the localisation target
is that case's label map, and the CT tensor fed to the model shows the finding."""

from __future__ import annotations

from typing import Any

import numpy as np

from medassist.model_data import build_tokenizer, record_sample
from multimodal.config import ModelConfig


def test_targets_and_loc_maps_belong_to_the_same_case(tiny_cfg: ModelConfig,
                                                      tiny_records: list[Any]) -> None:
    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    labels = list(tiny_cfg.heads.labels)
    n_present = 0
    for r in tiny_records:
        s = record_sample(r, tiny_cfg, tok, 256)
        kinds = {str(f["kind"]) for f in r.findings}
        assert {lab for lab, p in zip(labels, s["present"], strict=True) if p} == kinds
        n_present += len(kinds)
        assert s["loc_map"].shape == (len(labels), tiny_cfg.ct.n_patches)
        for li, lab in enumerate(labels):
            values = [int(f["label_value"]) for f in r.findings if f["kind"] == lab]
            voxels = int(np.isin(r.label_map, values).sum()) if values else 0
            # occupancy mass = finding voxels / patch volume, exactly
            vol = int(np.prod(tiny_cfg.ct.patch))
            assert np.isclose(float(s["loc_map"][li].sum()) * vol, voxels, atol=1e-3)
            if lab not in kinds:
                assert float(s["loc_map"][li].sum()) == 0.0
    assert n_present >= 4  # not all normal


def test_large_findings_are_visible_in_the_ct_tensor(tiny_cfg: ModelConfig,
                                                     tiny_records: list[Any]) -> None:
    """Fluid / consolidation is denser than the aerated lung it replaces: in the lung window
    channel the finding's voxels are brighter than the lung of the same case."""
    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    checked = 0
    for r in tiny_records:
        s = record_sample(r, tiny_cfg, tok, 256)
        lung_ch = s["ct"][0]
        aerated = (r.hu < -700) & (r.hu > -1000) & (r.label_map == 0)
        for f in r.findings:
            if f["kind"] not in ("pleural_effusion", "consolidation", "lung_mass"):
                continue
            m = r.label_map == int(f["label_value"])
            if m.sum() < 4 or not aerated.any():
                continue
            assert float(r.hu[m].mean()) > float(r.hu[aerated].mean()) + 300.0
            assert float(lung_ch[m].mean()) > float(lung_ch[aerated].mean()) + 0.2
            checked += 1
    if checked == 0:
        import pytest

        pytest.skip("no large finding among the generated cases")
