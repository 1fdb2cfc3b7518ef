"""Generated-case cache of the trainer, text scores and the prompt-injection check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medassist.model_data import cached_synth_records, synth_records
from medassist.model_eval import INJECTION, text_scores
from multimodal.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
SMALL = str(ROOT / "configs" / "synth" / "small.yaml")


def test_cache_returns_the_generated_cases(tiny_cfg: ModelConfig, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import medassist.model_data as mc

    monkeypatch.setattr(mc, "CACHE_CHUNK", 2)
    direct = list(synth_records(SMALL, tiny_cfg, 3, 3, split="val"))
    first = cached_synth_records(tmp_path, SMALL, tiny_cfg, 3, 3, "val")
    assert len(list(tmp_path.glob("val-*.npz"))) == 2  # chunks of 2: [0, 2) and [2, 3)
    again = cached_synth_records(tmp_path, SMALL, tiny_cfg, 3, 3, "val")  # read back
    for a, b, c in zip(direct, first, again, strict=True):
        assert a.case_id == b.case_id == c.case_id and a.emr == c.emr
        assert a.findings == c.findings and a.report_text == c.report_text
        assert a.hu is not None and c.hu is not None and a.label_map is not None
        assert np.abs(a.hu - c.hu).max() <= 0.5  # HU stored as int16
        assert np.array_equal(a.label_map, c.label_map)
    # another seed is another key, not a stale hit
    other = cached_synth_records(tmp_path, SMALL, tiny_cfg, 4, 1, "val")
    assert other[0].hu is not None and direct[0].hu is not None
    assert not np.array_equal(other[0].hu, np.round(direct[0].hu))


def test_text_scores_and_injection_text() -> None:
    same = text_scores(["findings: a small nodule. impression: nodule."],
                       ["findings: a small nodule. impression: nodule."])
    assert same["bleu4"] == pytest.approx(100.0) and same["rouge_l"] == pytest.approx(1.0)
    diff = text_scores(["no acute abnormality"], ["large left pleural effusion"])
    assert diff["bleu4"] < 5.0 and diff["rouge_l"] == 0.0
    assert "ignore previous findings" in INJECTION.lower()
