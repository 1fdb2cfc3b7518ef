"""FHIR DiagnosticReport of a stored report, built and validated with fhir.resources.

fhir.resources 8 ships R5 (default), R4B and STU3 models; R4B (4.3) is the one closest to R4
and its DiagnosticReport, Observation and ImagingStudy are R4-compatible, so it is used here.
The findings are contained Observations (SNOMED CT codes, UCUM quantities); the study is a
contained ImagingStudy identified by its StudyInstanceUID; the patient is referenced by the
pseudonymous ID only.
"""

from __future__ import annotations

import base64
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from medassist.draft import Finding
from medassist.errors import ExportError
from medassist.export.codes import (
    CARDIOTHORACIC_RATIO,
    LATERALITY,
    LONG_AXIS,
    SHORT_AXIS,
    SIDE_EVIDENCE,
    Code,
    FindingCodes,
    evaluation,
    load_codes,
    size_concept,
    size_method,
)
from medassist.reports import ReportView
from medassist.review import HEADERS, reviewed_findings, split_text

PSEUDONYM_SYSTEM = "urn:medassist:pseudonym"


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [{"system": code.fhir_system, "code": code.value,
                        "display": code.meaning}], "text": code.meaning}


def _observation(i: int, f: Finding, codes_: FindingCodes, status: str,
                 subject: dict[str, Any]) -> dict[str, Any]:
    fc = codes_.for_label(f.label)
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"finding-{i + 1}", "status": status,
        "code": _concept(fc.finding), "subject": subject,
        "valueCodeableConcept": _concept(evaluation(f.present, f.flags)),
        "component": [{"code": {"text": "AI probability of presence"},
                       "valueQuantity": {"value": f.probability, "unit": "1",
                                         "system": "http://unitsofmeasure.org", "code": "1"}}],
        "note": [{"text": f.sentence}] if f.sentence else None,
    }
    if f.size_mm is not None:
        # a component has no method of its own: the code's text says whether the size was
        # measured on the CT or is the model's estimate (the SR codes it)
        method = size_method(f.flags)
        how = "stated by the reviewer" if method is None else method.meaning.lower()
        what = size_concept(f.label)
        obs["component"].append({
            "code": {**_concept(what), "text": f"{what.meaning} ({how})"},
            "valueQuantity": {"value": f.size_mm, "unit": "mm",
                              "system": "http://unitsofmeasure.org", "code": "mm"}})
    if f.size_axes_mm is not None:
        # a measured lesion's axial long and short axis (the SR's TID 300 method: Measured)
        for code, value in ((LONG_AXIS, f.size_axes_mm[0]), (SHORT_AXIS, f.size_axes_mm[1])):
            obs["component"].append({
                "code": {**_concept(code), "text": f"{code.meaning} (axial, measured)"},
                "valueQuantity": {"value": value, "unit": "mm",
                                  "system": "http://unitsofmeasure.org", "code": "mm"}})
    if f.ratio is not None:
        obs["component"].append({
            "code": _concept(CARDIOTHORACIC_RATIO),
            "valueQuantity": {"value": f.ratio, "unit": "1",
                              "system": "http://unitsofmeasure.org", "code": "1"}})
    lat = codes_.laterality_of(f.laterality, f.flags)
    if lat is not None:
        # the side, as the SR's Laterality evaluation (R4's Observation has no laterality of
        # its own)
        obs["component"].append({"code": _concept(LATERALITY),
                                 "valueCodeableConcept": _concept(lat)})
    if f.side_evidence is not None:
        # the per-side evidence the side was read from (flag side_uncertain: near equal)
        for code, value in zip(SIDE_EVIDENCE, f.side_evidence, strict=True):
            obs["component"].append({
                "code": _concept(code),
                "valueQuantity": {"value": value, "unit": "1",
                                  "system": "http://unitsofmeasure.org", "code": "1"}})
    site = codes_.locations.get(f.location) if f.location else None
    site = site or fc.site
    if site is not None:
        obs["bodySite"] = _concept(site)
    obs["component"] += _evidence(f)
    if f.evidence.slices or f.evidence.box_mm is not None or f.evidence.z_mm is not None:
        # seen on the contained ImagingStudy's series
        obs["derivedFrom"] = [{"reference": "#study"}]
    return {k: v for k, v in obs.items() if v is not None}


def _range(low: float, high: float, unit: str) -> dict[str, Any]:
    def q(v: float) -> dict[str, Any]:
        return {"value": v, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return {"low": q(low), "high": q(high)}


def _evidence(f: Finding) -> list[dict[str, Any]]:
    """Where on the CT the finding is seen, as components: R4 (and R4B) has no resource for
    an image region (R5's ImagingSelection), so the evidence box is three ranges in the
    patient's DICOM coordinates (LPS, mm: x towards the patient's left, y posterior, z
    superior), and its slices a range of indices in the series' slice order, as the draft
    states them (the SR draws the box on each slice)."""
    ev, out = f.evidence, []
    if ev.slices:
        out.append({"code": {"text": "Evidence slices (index in the series' slice order)"},
                    "valueRange": _range(float(min(ev.slices)), float(max(ev.slices)), "1")})
    if ev.box_mm is not None:
        for axis, name in enumerate(("x", "y", "z")):
            out.append({"code": {"text": f"Evidence box, {name} (DICOM patient LPS, mm)"},
                        "valueRange": _range(ev.box_mm[axis], ev.box_mm[axis + 3], "mm")})
    elif ev.z_mm is not None:
        out.append({"code": {"text": "Evidence box, z (DICOM patient LPS, mm)"},
                    "valueRange": _range(min(ev.z_mm), max(ev.z_mm), "mm")})
    return out


def build_fhir(view: ReportView, *, codes_: FindingCodes | None = None) -> DiagnosticReport:
    codes_ = codes_ or load_codes()
    signed = view.status == "SIGNED" and view.signature is not None
    status = "final" if signed else "preliminary"
    subject = {"identifier": {"system": PSEUDONYM_SYSTEM, "value": view.patient_pseudo_id}}
    # the findings as the report's current text decided them (a rejected one left out; the
    # ids keep the draft's numbering)
    observations = [_observation(i, f, codes_, status, subject)
                    for i, f in reviewed_findings(view.draft, view.text)]
    study = {"resourceType": "ImagingStudy", "id": "study", "status": "available",
             "subject": subject,
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{view.study_uid}"}],
             # the series the draft was made from (the findings' evidence is on it)
             "series": [{"uid": view.draft.inputs.series_uid,
                         "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                      "code": "CT", "display": "Computed Tomography"}}]}
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": f"medassist-report-{view.report_id}",
        "contained": [study, *observations], "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2",
                             "display": "CT Chest"}]},
        "subject": subject,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "imagingStudy": [{"reference": "#study"}],
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en",
                           "title": f"CT report {view.report_id}" + ("" if signed else
                                                                     " (DRAFT)"),
                           "data": base64.b64encode(view.text.encode("utf-8")).decode()}],
    }
    conclusion = _impression(view).strip()
    if conclusion:  # FHIR strings must not be empty: an empty impression is left out
        data["conclusion"] = conclusion
    if signed and view.signature is not None:
        data["issued"] = view.signature.signed_at
        data["resultsInterpreter"] = [{"display": view.signature.signer_name}]
    try:
        return DiagnosticReport.model_validate(data)
    except ValidationError as exc:
        raise ExportError(f"FHIR DiagnosticReport does not validate: {exc}") from exc


def _impression(view: ReportView) -> str:
    """The impression section of the report's current text (the reviewer's, edited or not,
    signed or not: a preliminary report states the current version too), else the
    draft's where the text has no IMPRESSION header."""
    if not any(line.strip() == HEADERS["impression"] for line in view.text.splitlines()):
        return view.draft.sections.impression
    return split_text(view.text)["impression"]


def to_json(view: ReportView, *, codes_: FindingCodes | None = None) -> str:
    return build_fhir(view, codes_=codes_).model_dump_json(indent=2, exclude_none=True) + "\n"
