"""Generated-case cache of the trainer, text scores and the prompt-injection check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medassist.model_data import cached_synth_records, iter_cached_chunks, synth_records
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
        assert a.hu is not None and c.hu is not None
        assert a.label_map is not None and c.label_map is not None
        assert np.abs(a.hu - c.hu).max() <= 0.5  # HU stored as int16
        assert np.array_equal(a.label_map, c.label_map)
    # text-only records (the trainer's tokenizer pass): the same cases without volumes
    texts = cached_synth_records(tmp_path, SMALL, tiny_cfg, 3, 3, "val", images=False)
    assert [(t.case_id, t.emr, t.report_text, t.findings) for t in texts] == \
        [(c.case_id, c.emr, c.report_text, c.findings) for c in again]
    assert all(t.hu is None and t.label_map is None for t in texts)
    # chunk by chunk (the trainer builds samples one chunk of volumes at a time)
    chunks = list(iter_cached_chunks(tmp_path, SMALL, tiny_cfg, 3, 3, "val"))
    assert [len(c) for c in chunks] == [2, 1]
    assert [r.case_id for c in chunks for r in c] == [r.case_id for r in again]
    assert chunks[1][0].hu is not None and again[2].hu is not None
    assert np.array_equal(chunks[1][0].hu, again[2].hu)
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
