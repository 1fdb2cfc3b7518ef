"""The EMR note as a FHIR R4 ``collection`` Bundle of plain JSON dicts (no FHIR library).

Resources: Patient (synthetic identity, tagged SYNTHETIC), Condition (ICD-10), Observation
(labs with LOINC and UCUM units, effective dates; smoking status), MedicationStatement, and a
DocumentReference whose attachment is the note text in base64.  References use ``urn:uuid``
full URLs derived from the case seed.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import TYPE_CHECKING, Any

from medassist.synth.case import uuid_from

if TYPE_CHECKING:
    from medassist.synth.case import Case

SYNTH_TAG = {"system": "urn:medassist:synth", "code": "SYNTHETIC",
             "display": "Synthetic test data"}


def _iso(t: dt.datetime) -> str:
    """FHIR dateTime with seconds and a time zone (the synthetic clock is UTC)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"


def make_bundle(case: Case) -> dict[str, Any]:
    p, note = case.profile, case.emr
    key = (case.seed, case.split, int(case.shift), case.index)
    pid = uuid_from(*key, "patient")
    patient_ref = {"reference": f"urn:uuid:{pid}"}
    entries: list[dict[str, Any]] = []

    def add(rtype: str, name: str, body: dict[str, Any]) -> None:
        rid = pid if rtype == "Patient" else uuid_from(*key, rtype, name)
        res = {"resourceType": rtype, "id": rid, "meta": {"tag": [SYNTH_TAG]}, **body}
        entries.append({"fullUrl": f"urn:uuid:{rid}", "resource": res})

    add("Patient", "patient", {
        "identifier": [{"use": "usual", "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": f"urn:medassist:synth:{p.institution.replace(' ', '-').lower()}:mrn",
            "value": p.mrn}],
        "name": [{"family": p.family, "given": [p.given]}],
        "gender": "female" if p.sex == "F" else "male",
        "birthDate": p.birth_date.isoformat(),
    })
    for i, (text, icd) in enumerate(note.conditions):
        add("Condition", f"c{i}", {
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": icd,
                                 "display": text}], "text": text},
            "subject": patient_ref,
        })
    for i, lab in enumerate(note.labs):
        add("Observation", f"lab{i}", {
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": lab.loinc,
                                 "display": lab.name}], "text": lab.name},
            "subject": patient_ref,
            "effectiveDateTime": _iso(lab.time),
            "valueQuantity": {"value": lab.value, "unit": lab.unit,
                              "system": "http://unitsofmeasure.org", "code": lab.unit},
        })
    smoke_code = {"never": ("266919005", "Never smoked tobacco"),
                  "former": ("8517006", "Ex-smoker"),
                  "current": ("77176002", "Smoker")}[p.smoking]
    add("Observation", "smoking", {
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "social-history"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2",
                             "display": "Tobacco smoking status"}]},
        "subject": patient_ref,
        "effectiveDateTime": _iso(note.note_time),
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                             "code": smoke_code[0], "display": smoke_code[1]}],
                                 "text": f"{p.smoking}, {p.pack_years} pack-years"},
    })
    for i, med in enumerate(note.medications):
        add("MedicationStatement", f"m{i}", {
            "status": "completed" if "completed" in med else "active",
            "medicationCodeableConcept": {"text": med},
            "subject": patient_ref,
            "dateAsserted": _iso(note.note_time),
        })
    add("DocumentReference", "note", {
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2",
                             "display": "History and physical note"}]},
        "subject": patient_ref,
        "date": _iso(note.note_time),
        "description": note.indication,
        "content": [{"attachment": {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(note.text.encode("utf-8")).decode("ascii"),
            "title": "emr.txt"}}],
    })
    return {"resourceType": "Bundle", "id": uuid_from(*key, "bundle"), "type": "collection",
            "timestamp": _iso(note.note_time), "meta": {"tag": [SYNTH_TAG]}, "entry": entries}
