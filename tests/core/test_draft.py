"""The draft contract: validation naming the field, round trip, canonical hash."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from medassist.draft import ReportDraft, canonical_json
from medassist.errors import DraftError

from .factories import DRAFT, draft_dict

LABELS = {"lung_nodule", "pleural_effusion", "pneumothorax"}


def test_round_trip_and_hash() -> None:
    d = ReportDraft.from_dict(DRAFT, labels=LABELS)
    assert d.to_dict() == DRAFT
    assert ReportDraft.from_json(json.dumps(DRAFT)).content_hash() == d.content_hash()
    assert len(d.content_hash()) == 64
    # key order and whitespace do not change the canonical form; content does
    shuffled = json.loads(json.dumps(DRAFT, indent=3, sort_keys=True))
    assert ReportDraft.from_dict(shuffled).canonical_json() == d.canonical_json()
    changed = draft_dict()
    changed["findings"][0]["probability"] = 0.9
    assert ReportDraft.from_dict(changed).content_hash() != d.content_hash()
    assert d.findings[0].evidence.box_voxels == (40, 100, 150, 42, 112, 162)
    assert "IMPRESSION:" in d.render_text()


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def _set(path: str, value: Any) -> dict[str, Any]:
    d = draft_dict()
    node: Any = d
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return d


@pytest.mark.parametrize(("path", "value", "field"), [
    ("status", "SIGNED", "status"),
    ("disclaimer", "", "disclaimer"),
    ("sections.impression", None, "sections.impression"),
    ("findings.0.probability", 1.5, "findings[0].probability"),
    ("findings.0.probability", "high", "findings[0].probability"),
    ("findings.1.laterality", "upper", "findings[1].laterality"),
    ("findings.0.size_mm", -3, "findings[0].size_mm"),
    ("findings.0.ratio", 1.2, "findings[0].ratio"),
    ("findings.0.ratio", "0.6", "findings[0].ratio"),
    ("findings.0.present", 1, "findings[0].present"),
    ("findings.0.evidence.z_mm", [1.0], "findings[0].evidence.z_mm"),
    ("findings.0.evidence.box_voxels", [5, 0, 0, 1, 1, 1], "findings[0].evidence.box_voxels"),
    ("findings.0.evidence.emr_spans", [[5, 2]], "findings[0].evidence.emr_spans[0]"),
    ("findings.0.evidence.slices", [1, 2.5], "findings[0].evidence.slices[1]"),
    ("findings.2.label", "unicorn", "findings[2].label"),
    ("modality_weights.ct", float("inf"), "modality_weights.ct"),
    ("model.checkpoint_sha256", "xyz", "model.checkpoint_sha256"),
    ("inputs.series_uid", "1.2.abc", "inputs.series_uid"),
])
def test_invalid_fields_are_named(path: str, value: Any, field: str) -> None:
    with pytest.raises(DraftError) as info:
        ReportDraft.from_dict(_set(path, value), labels=LABELS)
    assert info.value.field == field
    assert field in str(info.value)


def test_missing_and_unknown_keys() -> None:
    d = draft_dict()
    del d["findings"][0]["evidence"]
    with pytest.raises(DraftError, match="missing") as info:
        ReportDraft.from_dict(d)
    assert info.value.field == "findings[0]"
    with pytest.raises(DraftError, match="unknown key") as info:
        ReportDraft.from_dict(draft_dict(extra=1))
    assert info.value.field == "$"
    with pytest.raises(DraftError, match="not JSON"):
        ReportDraft.from_json("{")


def test_a_measured_ratio_is_optional_and_round_trips() -> None:
    """``ratio`` (a cardiothoracic ratio measured on the CT) may be left out, as drafts
    stored before it are; given, it survives the round trip and changes the hash."""
    base = ReportDraft.from_dict(DRAFT, labels=LABELS)
    assert all(f.ratio is None for f in base.findings)
    assert all("ratio" not in f for f in base.to_dict()["findings"])
    d = draft_dict()
    d["findings"][1]["ratio"] = 0.58
    with_ratio = ReportDraft.from_dict(d, labels=LABELS)
    assert with_ratio.findings[1].ratio == 0.58
    assert with_ratio.to_dict() == d
    assert with_ratio.content_hash() != base.content_hash()


def test_a_measured_lesions_axes_are_optional_and_round_trip() -> None:
    """``size_axes_mm`` (a measured nodule's or mass's axial long and short axis and
    craniocaudal extent) may be left out, as drafts stored before it are."""
    base = ReportDraft.from_dict(DRAFT, labels=LABELS)
    assert all(f.size_axes_mm is None for f in base.findings)
    assert all("size_axes_mm" not in f for f in base.to_dict()["findings"])
    d = draft_dict()
    d["findings"][0]["size_axes_mm"] = [52.0, 41.5, 48.0]
    with pytest.raises(DraftError, match="size_measured") as info:
        ReportDraft.from_dict(d, labels=LABELS)  # axes only for a size measured on the CT
    assert info.value.field == "findings[0].size_axes_mm"
    d["findings"][0]["flags"] = [*d["findings"][0]["flags"], "size_measured"]
    for bad, field in (([30.0, 40.0, 20.0], "findings[0].size_axes_mm"),  # long < short
                       ([30.0, 20.0], "findings[0].size_axes_mm"),
                       ([30.0, 20.0, "x"], "findings[0].size_axes_mm[2]"),
                       ([30.0, 20.0, 0.0], "findings[0].size_axes_mm")):
        wrong = copy.deepcopy(d)
        wrong["findings"][0]["size_axes_mm"] = bad
        with pytest.raises(DraftError) as info:
            ReportDraft.from_dict(wrong, labels=LABELS)
        assert info.value.field == field
    with_axes = ReportDraft.from_dict(d, labels=LABELS)
    assert with_axes.findings[0].size_axes_mm == (52.0, 41.5, 48.0)
    assert with_axes.to_dict() == d
    assert with_axes.content_hash() != base.content_hash()


def test_side_evidence_is_optional_validated_and_round_trips() -> None:
    """``side_evidence`` (the left and right evidence a finding's side was read from) may be
    left out, as drafts stored before it are; given, it needs a sided finding and two
    probabilities."""
    base = ReportDraft.from_dict(DRAFT, labels=LABELS)
    assert all(f.side_evidence is None for f in base.findings)
    assert all("side_evidence" not in f for f in base.to_dict()["findings"])
    d = draft_dict()
    d["findings"][0]["side_evidence"] = {"left": 0.143, "right": 0.163}
    d["findings"][0]["flags"] = [*d["findings"][0]["flags"], "side_uncertain"]
    with_sides = ReportDraft.from_dict(d, labels=LABELS)
    assert with_sides.findings[0].side_evidence == (0.143, 0.163)
    assert with_sides.to_dict() == d
    assert with_sides.content_hash() != base.content_hash()
    for i, bad, field in ((1, {"left": 0.1}, "findings[1].side_evidence"),
                          (1, {"left": 0.1, "right": 1.5}, "findings[1].side_evidence.right"),
                          (1, {"left": "x", "right": 0.1}, "findings[1].side_evidence.left"),
                          # absent, no laterality: no side to have evidence for
                          (2, {"left": 0.1, "right": 0.2}, "findings[2].side_evidence")):
        wrong = copy.deepcopy(d)
        wrong["findings"][i]["side_evidence"] = bad
        with pytest.raises(DraftError) as info:
            ReportDraft.from_dict(wrong, labels=LABELS)
        assert info.value.field == field, bad


def test_coverage_is_optional_validated_and_round_trips() -> None:
    """``coverage`` (how much of the lungs the scan and the model saw) may be left out, as
    drafts stored before it are (their hash unchanged); given, it is validated by field."""
    base = ReportDraft.from_dict(DRAFT, labels=LABELS)
    assert base.coverage is None and "coverage" not in base.to_dict()
    d = draft_dict()
    d["coverage"] = {"lung_in_model_grid": 0.93, "scan_cuts_lung": ["inferior"]}
    cov = ReportDraft.from_dict(d, labels=LABELS)
    assert cov.coverage is not None and cov.coverage.scan_cuts_lung == ("inferior",)
    assert cov.to_dict() == d and cov.content_hash() != base.content_hash()
    for bad, field in (({"lung_in_model_grid": 1.2, "scan_cuts_lung": []},
                        "coverage.lung_in_model_grid"),
                       ({"lung_in_model_grid": 0.9, "scan_cuts_lung": ["lateral"]},
                        "coverage.scan_cuts_lung"),
                       ({"lung_in_model_grid": 0.9, "scan_cuts_lung": ["inferior"] * 2},
                        "coverage.scan_cuts_lung"),
                       ({"lung_in_model_grid": 0.9}, "coverage")):
        wrong = copy.deepcopy(d)
        wrong["coverage"] = bad
        with pytest.raises(DraftError) as info:
            ReportDraft.from_dict(wrong, labels=LABELS)
        assert info.value.field == field


def test_note_effect_is_optional_validated_and_round_trips() -> None:
    """``note_effect`` (what the note changed in the findings head's calls, since stop 50) may
    be left out, as drafts without a note and drafts stored before it are; given, it is
    validated by field and stated in one sentence."""
    base = ReportDraft.from_dict(DRAFT, labels=LABELS)
    assert base.note_effect is None and "note_effect" not in base.to_dict()
    same = {"label": "pleural_effusion", "with_note": 0.2627, "without_note": 0.2626,
            "present_with_note": False, "present_without_note": False}
    d = draft_dict()
    d["note_effect"] = {"changed": [], "largest": same}
    eff = ReportDraft.from_dict(d, labels=LABELS)
    assert eff.to_dict() == d and eff.content_hash() != base.content_hash()
    assert eff.note_effect is not None and eff.note_effect.summary() == (
        "Without the note, the model makes the same calls; the largest change in a presence "
        "probability is 0.0001 (pleural effusion: 0.2627 with the note, 0.2626 without).")
    turned = {"label": "pneumothorax", "with_note": 0.55, "without_note": 0.31,
              "present_with_note": True, "present_without_note": False}
    d["note_effect"] = {"changed": [turned], "largest": turned}
    eff = ReportDraft.from_dict(d, labels=LABELS)
    assert eff.to_dict() == d and eff.note_effect is not None
    assert eff.note_effect.summary() == (
        "Without the note, pneumothorax would not be called (probability 0.55 with the note, "
        "0.31 without).")
    d["note_effect"] = {"changed": [], "largest": None}
    assert ReportDraft.from_dict(d).note_effect is not None
    for bad, field in (({"changed": [same], "largest": same}, "note_effect.changed[0]"),
                       ({"changed": [turned, turned], "largest": turned},
                        "note_effect.changed"),
                       ({"changed": [], "largest": {**same, "with_note": 1.5}},
                        "note_effect.largest.with_note"),
                       ({"changed": [], "largest": {**same, "present_with_note": 1}},
                        "note_effect.largest.present_with_note"),
                       ({"changed": [], "largest": {**same, "label": "rib_fracture"}},
                        "note_effect"),
                       ({"changed": []}, "note_effect")):
        wrong = copy.deepcopy(d)
        wrong["note_effect"] = bad
        with pytest.raises(DraftError) as info:
            ReportDraft.from_dict(wrong, labels=LABELS)
        assert info.value.field == field, bad
