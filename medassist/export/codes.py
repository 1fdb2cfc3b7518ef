"""The coded vocabulary of findings (configs/finding_codes.yaml), as frozen dataclasses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_io.config import read_yaml
from dicom_io.errors import DicomIOError
from medassist.errors import ExportError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "configs" / "finding_codes.yaml"
SCHEMES = ("SCT", "RADLEX", "DCM", "LN", "UCUM", "99MEDASSIST")
FHIR_SYSTEMS = {"SCT": "http://snomed.info/sct", "LN": "http://loinc.org",
                "DCM": "http://dicom.nema.org/resources/ontology/DCM",
                "UCUM": "http://unitsofmeasure.org", "RADLEX": "http://radlex.org"}


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not self.value or not self.meaning:
            raise ExportError("a code needs a value and a meaning")
        if self.scheme not in SCHEMES:
            raise ExportError(f"unknown coding scheme {self.scheme!r}; use one of {SCHEMES}")

    @property
    def fhir_system(self) -> str:
        return FHIR_SYSTEMS.get(self.scheme, "urn:medassist:codes")


#: the concept a finding's side is coded under (the SR's qualitative evaluation and finding
#: site modifier, FHIR's component)
LATERALITY = Code("272741003", "SCT", "Laterality")

#: the qualitative evaluation of a finding (SNOMED CT qualifier values)
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
#: a finding the model does not assess (draft flag ``not_assessed``: its fitted threshold
#: never calls it), which "Absent" would misstate
NOT_EVALUATED = Code("373121007", "SCT", "Not Evaluated")


#: how a finding's size or ratio was obtained (SNOMED CT qualifier values, as in HL7's
#: measurement-method value sets; the SR codes it as the measurement's method): measured on
#: the CT (draft flags ``size_measured``, ``ratio_measured``), or the model's size head's
#: estimate
MEASURED = Code("258104002", "SCT", "Measured")
ESTIMATED = Code("414135002", "SCT", "Estimated")


def size_method(flags: Sequence[str]) -> Code | None:
    """The method of a finding's ``size_mm``: measured on the CT, or the model's estimate;
    None for a size the reviewer stated (flag ``reviewer_size``, :mod:`medassist.review`):
    the report says how they took it, if at all, not the export."""
    if "reviewer_size" in flags:
        return None
    return MEASURED if "size_measured" in flags else ESTIMATED


#: a measured nodule's or mass's long and short axis on its largest axial section (draft
#: ``Finding.size_axes_mm``; SNOMED CT, as in pydicom's concept dictionary)
LONG_AXIS = Code("103339001", "SCT", "Long axis")
SHORT_AXIS = Code("103340004", "SCT", "Short axis")


#: what a finding's ``size_mm`` measures, per label, as the DICOM CID 7470 "Linear
#: Measurement" concept for the size the reports state (the case generator's size kinds):
#: a diameter for a nodule, mass or liver lesion; a consolidation's extent is its length, a
#: pleural effusion's its depth, a pneumothorax's rim and a pericardial effusion's fluid band
#: their width, a lymph node's its short axis, a rib fracture's gap a distance
DIAMETER = Code("81827009", "SCT", "Diameter")
_SIZE_CONCEPTS = {
    "consolidation": Code("410668003", "SCT", "Length"),
    "pleural_effusion": Code("131197000", "SCT", "Depth"),
    "pneumothorax": Code("103355008", "SCT", "Width"),
    "pericardial_effusion": Code("103355008", "SCT", "Width"),
    "mediastinal_lymphadenopathy": SHORT_AXIS,
    "rib_fracture": Code("121206", "DCM", "Distance"),
}


def size_concept(label: str) -> Code:
    """The concept name of a finding's ``size_mm`` (a diameter unless :data:`_SIZE_CONCEPTS`
    says otherwise)."""
    return _SIZE_CONCEPTS.get(label, DIAMETER)


#: a cardiothoracic ratio measured on the CT (draft ``Finding.ratio``).  No SNOMED CT, LOINC or
#: DCM concept for it was found, so it is a code of this project's private scheme, as is the
#: AI probability's.
CARDIOTHORACIC_RATIO = Code("MA-CTR", "99MEDASSIST", "Cardiothoracic ratio")

#: the evidence a finding's side was read from (draft ``Finding.side_evidence``): the pooled
#: AI probability of presence of its left and of its right patches; private codes, as the
#: AI probability's.  Exported wherever the draft has them, so a side the draft flags
#: ``side_uncertain`` shows why.
SIDE_EVIDENCE = (Code("MA-PROB-L", "99MEDASSIST", "AI probability of presence, left side"),
                 Code("MA-PROB-R", "99MEDASSIST", "AI probability of presence, right side"))


def evaluation(present: bool, flags: Sequence[str]) -> Code:
    """Present, Absent, or Not Evaluated: a finding flagged ``not_assessed``, and one flagged
    ``small_not_assessed`` and not called (it was assessed only from a size on, so "Absent"
    would overstate what the model looked for)."""
    if "not_assessed" in flags or (not present and "small_not_assessed" in flags):
        return NOT_EVALUATED
    return PRESENT if present else ABSENT


@dataclass(frozen=True)
class FindingCode:
    finding: Code
    site: Code | None
    radlex: str | None


@dataclass(frozen=True)
class FindingCodes:
    findings: Mapping[str, FindingCode]
    locations: Mapping[str, Code]
    lateralities: Mapping[str, Code]

    def for_label(self, label: str) -> FindingCode:
        if label not in self.findings:
            raise ExportError(f"finding label {label!r} has no code in finding_codes.yaml; "
                              "add one (finding, site) there")
        return self.findings[label]

    def laterality_of(self, laterality: str | None, flags: Sequence[str]) -> Code | None:
        """The code of a finding's side as the exports state it: none for no side, for one
        the vocabulary has no code for ("none"), and for a side resting on near-equal
        evidence that no reviewer set or kept (flag ``side_uncertain``: the text marks it,
        the side evidence shows it)."""
        if not laterality or "side_uncertain" in flags:
            return None
        return self.lateralities.get(laterality)


def _code(d: Any, where: str) -> Code:
    if not isinstance(d, Mapping) or set(d) != {"value", "scheme", "meaning"}:
        raise ExportError(f"{where}: expected {{value, scheme, meaning}}")
    return Code(str(d["value"]), str(d["scheme"]), str(d["meaning"]))


def load_codes(path: str | Path | None = None) -> FindingCodes:
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = read_yaml(p)
    except DicomIOError as exc:
        raise ExportError(f"cannot read finding codes {p}: {exc}") from exc
    findings: dict[str, FindingCode] = {}
    for label, entry in (data.get("findings") or {}).items():
        if not isinstance(entry, Mapping) or "finding" not in entry:
            raise ExportError(f"{p}: findings.{label} needs a 'finding' code")
        site = entry.get("site")
        findings[str(label)] = FindingCode(
            finding=_code(entry["finding"], f"findings.{label}.finding"),
            site=None if site is None else _code(site, f"findings.{label}.site"),
            radlex=entry.get("radlex"))
    return FindingCodes(
        findings=findings,
        locations={str(k): _code(v, f"locations.{k}")
                   for k, v in (data.get("locations") or {}).items()},
        lateralities={str(k): _code(v, f"lateralities.{k}")
                      for k, v in (data.get("lateralities") or {}).items()})
