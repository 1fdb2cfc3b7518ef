"""The EMR note as text or as FHIR R4 JSON (medassist.emr.read_note)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from medassist.emr import read_emr, read_note
from medassist.errors import InputError
from medassist.history import FEVER, HEART_FAILURE, KNOWN_CANCER, LEUKOCYTOSIS

ROOT = Path(__file__).resolve().parents[2]


def _generated_case() -> Any:
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary

    cfg = load_config(ROOT / "configs/synth/small.yaml")
    return make_case(cfg, load_vocabulary(cfg.findings.vocabulary_path()), 11, 3, "test")


def _doc(text: str, **att: Any) -> dict[str, Any]:
    attachment = {"contentType": "text/plain; charset=utf-8",
                  "data": base64.b64encode(text.encode("utf-8")).decode("ascii"), **att}
    return {"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": attachment}]}


def _write(tmp_path: Path, name: str, obj: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


def test_a_generated_bundle_reads_as_its_note(tmp_path: Path) -> None:
    """The Bundle `medassist synth` writes (emr_fhir.json) gives the note text byte for byte;
    so does a DocumentReference alone, and a text file is read as it is."""
    from medassist.synth.fhir import make_bundle

    case = _generated_case()
    bundle = make_bundle(case)
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} > {"DocumentReference"}
    assert read_note(_write(tmp_path, "emr_fhir.json", bundle)) == case.emr.text
    assert read_note(_write(tmp_path, "doc.json", _doc("Fever, cough."))) == "Fever, cough."
    two = {"resourceType": "Bundle", "type": "collection",
           "entry": [{"resource": _doc("First note.")}, {"resource": {"resourceType":
                                                                        "Patient"}},
                     {"resource": _doc("Second note.")}]}
    assert read_note(_write(tmp_path, "two.json", two)) == "First note.\n\nSecond note."
    txt = tmp_path / "emr.txt"
    txt.write_text(case.emr.text, encoding="utf-8")
    assert read_note(txt) == case.emr.text
    braces = tmp_path / "braces.txt"
    braces.write_text("{draft} pt with fever\n", encoding="utf-8")
    assert read_note(braces) == "{draft} pt with fever\n"  # text that is not JSON


@pytest.mark.parametrize(("name", "content", "why"), [
    ("bad.json", "{not json", "not valid JSON"),
    ("plain.json", {"note": "fever"}, "not a FHIR resource"),
    ("patient.json", {"resourceType": "Patient"}, "a FHIR Patient, not a Bundle"),
    ("empty.json", {"resourceType": "Bundle", "entry": [{"resource": {
        "resourceType": "Observation"}}]}, "without a DocumentReference"),
    ("url.json", _doc("x") | {"content": [{"attachment": {
        "contentType": "text/plain", "url": "https://emr.example/doc/1"}}]},
     "only its URL, https://emr.example/doc/1"),
    ("pdf.json", _doc("x", contentType="application/pdf"), "application/pdf, not text/plain"),
    ("b64.json", _doc("x", data="%%%"), "not base64"),
    ("latin.json", _doc("x", data=base64.b64encode("fièvre".encode("latin-1")).decode()),
     "not UTF-8 text"),
    ("nocontent.json", {"resourceType": "DocumentReference", "content": []},
     "without content"),
])
def test_unusable_fhir_notes_are_input_errors(tmp_path: Path, name: str, content: Any,
                                              why: str) -> None:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content),
                 encoding="utf-8")
    with pytest.raises(InputError, match=why) as info:
        read_note(p)
    assert info.value.kind == "EMRInput" and info.value.path == str(p)
    assert str(p) in str(info.value)


def test_unreadable_text_notes_are_input_errors(tmp_path: Path) -> None:
    latin = tmp_path / "emr.txt"
    latin.write_bytes("Patient fébrile.".encode("latin-1"))
    with pytest.raises(InputError, match=r"not UTF-8 text .* save it as UTF-8"):
        read_note(latin)
    with pytest.raises(InputError, match="cannot read the EMR note"):
        read_note(tmp_path / "missing.txt")


def _obs(loinc: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "valueQuantity": {"value": value, "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}, **extra}


def _cond(icd: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": icd}]},
            **extra}


def test_a_bundles_structured_history(tmp_path: Path) -> None:
    """What a Bundle's Conditions and Observations state beside the note: the guard holds a
    conclusion to both (a white count in an Observation supports "leukocytosis" though the
    note's text does not state it); refuted or erroneous entries, other codes and a text note
    state nothing."""
    from medassist.drafting import Prepared, note_history
    from medassist.labeler import guard

    entries = [_doc("p/w fever to 39.1 C and cough."), _obs("6690-2", 14.2, "10*3/uL"),
               _obs("8310-5", 101.8, "[degF]"), _cond("I50.22"), _cond("C50.911"),
               _obs("6690-2", 30.0, "10*3/uL", status="entered-in-error"),
               _cond("C34.1", verificationStatus={"coding": [{"code": "refuted"}]}),
               _cond("D50.9"), _obs("2160-0", 1.4, "mg/dL")]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in entries]}
    emr = read_emr(_write(tmp_path, "b.json", bundle))
    assert emr.text == "p/w fever to 39.1 C and cough."
    assert emr.facts == {LEUKOCYTOSIS, FEVER, HEART_FAILURE, KNOWN_CANCER}
    only_void = {"resourceType": "Bundle", "entry": [{"resource": r} for r in (
        entries[0], entries[5], entries[6], entries[7], entries[8],
        _obs("6690-2", 7.1, "10*3/uL"), _obs("8310-5", 37.2, "Cel"))]}
    assert read_emr(_write(tmp_path, "v.json", only_void)).facts == frozenset()
    txt = tmp_path / "emr.txt"
    txt.write_text("WBC 14.2", encoding="utf-8")
    assert read_emr(txt).facts == frozenset()

    sentence = ("Consolidation in the left lower lobe, in the setting of fever and leukocytosis "
                "consistent with pneumonia.")
    with_facts = note_history(Prepared(study=None, emr=emr.text,  # type: ignore[arg-type]
                                       emr_facts=emr.facts))
    text_only = note_history(Prepared(study=None, emr=emr.text))  # type: ignore[arg-type]
    assert with_facts is not None and text_only is not None
    assert guard(sentence, {"consolidation": True}, note_history=with_facts)[0] == sentence
    assert "note does not state (leukocytosis)" in guard(
        sentence, {"consolidation": True}, note_history=text_only)[0]
    assert note_history(Prepared(study=None, emr=" ")) is None  # type: ignore[arg-type]


def test_find_emr_takes_text_then_fhir(tmp_path: Path) -> None:
    """Beside a study (or above its dicom/ folder) emr.txt comes first, then emr.json, then
    emr_fhir.json; in --emr-dir the study UID's or case's .txt, then .json."""
    from medassist.pipeline import find_emr

    case = tmp_path / "case_00007"
    (case / "dicom").mkdir(parents=True)
    assert find_emr(case / "dicom", "1.2.3") is None
    for name in ("emr_fhir.json", "emr.json", "emr.txt"):
        (case / name).write_text("{}", encoding="utf-8")
        assert find_emr(case / "dicom", "1.2.3") == case / name
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "case_00007.json").write_text("{}", encoding="utf-8")
    assert find_emr(case / "dicom", "1.2.3", notes) == notes / "case_00007.json"
    (notes / "1.2.3.txt").write_text("note", encoding="utf-8")
    assert find_emr(case / "dicom", "1.2.3", notes) == notes / "1.2.3.txt"
