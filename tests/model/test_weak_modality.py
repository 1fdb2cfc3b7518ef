"""The weak-modality conditions of bench/weak_modality.py: what each does to a case."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from bench.weak_modality import conditions, first_words, noisier
from medassist.model_data import CaseRecord


def _rec(i: int, emr: str | None) -> CaseRecord:
    hu = np.full((4, 6, 6), -800.0, np.float32)
    return CaseRecord(f"c{i}", hu, None, [], emr, "FINDINGS: none. IMPRESSION: none.")


def test_first_words_counts_across_lines() -> None:
    r = _rec(0, "Pt: Smith MRN 1\nHx: known breast cancer, on tamoxifen.\nPlan: CT.")
    assert first_words(r, 3).emr == "Pt: Smith MRN"
    assert first_words(r, 6).emr == "Pt: Smith MRN 1\nHx: known"
    assert first_words(r, 100).emr == "Pt: Smith MRN 1\nHx: known breast cancer, on tamoxifen." \
        "\nPlan: CT."
    assert first_words(_rec(1, None), 3).emr is None
    assert r.emr is not None and r.emr.startswith("Pt: Smith MRN 1\nHx")  # input unchanged


def test_noise_is_seeded_and_leaves_the_case_alone() -> None:
    r = _rec(0, "note")
    a, b = noisier(r, 20.0, seed=3), noisier(r, 20.0, seed=3)
    assert a.hu is not None and b.hu is not None and r.hu is not None
    np.testing.assert_array_equal(a.hu, b.hu)
    assert float(np.std(a.hu - r.hu)) == pytest.approx(20.0, rel=0.25)
    assert float(r.hu.max()) == -800.0  # not modified in place
    with pytest.raises(ValueError, match="no CT"):
        noisier(CaseRecord("x", None, None, [], "n", "r"), 10.0, 0)


def test_conditions() -> None:
    recs = [_rec(i, f"note {i}") for i in range(3)]
    c = conditions(recs, [10.0], 1)
    assert list(c) == ["clean", "ct_noise_10", "emr_first_1", "emr_other_patient",
                       "emr_removed"]
    assert [r.emr for r in c["emr_other_patient"]] == ["note 1", "note 2", "note 0"]
    assert [r.emr for r in c["emr_first_1"]] == ["note"] * 3
    assert all(r.emr is None for r in c["emr_removed"])
    assert all(r.case_id == s.case_id for cond in c.values() for r, s in zip(cond, recs,
                                                                           strict=True))


def test_identity_refused_counts_the_wrong_notes(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Each generated case's own note passes the identity check; the next case's is refused,
    and still refused on the date of birth with its MRN field removed."""
    from bench.weak_modality import identity_refused
    from tests.core.test_pipeline import _write_cases

    cases = _write_cases(tmp_path, [0, 1, 2])
    notes = [(c / "emr.txt").read_text(encoding="utf-8") for c in cases]
    recs = [_rec(i, n) for i, n in enumerate(notes)]
    recs = [dataclasses.replace(r, case_id=c.name) for r, c in zip(recs, cases, strict=True)]
    own = identity_refused(tmp_path, recs, list(notes))
    assert (own["checked"], own["refused"], own["refused_without_mrn"]) == (3, 0, 0)
    other = identity_refused(tmp_path, recs, notes[1:] + notes[:1])
    assert (other["checked"], other["refused"], other["refused_without_mrn"]) == (3, 3, 3)
    assert all(k.startswith("patient ID (MRN)") for k in other["by_reason"])
    assert all(k.startswith("date of birth") for k in other["by_reason_without_mrn"])
    none = identity_refused(tmp_path, recs, [None, None, None])
    assert none["checked"] == 0
    from bench.weak_modality import main

    assert main(["--data", str(tmp_path), "--identity-only"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cases"] == 3
    assert (out["own_note"]["refused"], out["next_case_note"]["refused_without_mrn"]) == (0, 3)
