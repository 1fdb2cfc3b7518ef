"""The EMR note as text or as FHIR R4 JSON (medassist.emr.read_note)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from medassist.emr import read_note
from medassist.errors import InputError

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
