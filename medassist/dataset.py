"""A hospital's own studies as training and evaluation cases, labelled from their reports.

``medassist train`` (``train.data_dir``, ``train.val_dir``) and ``medassist eval --data`` read
cases in the layout ``medassist synth`` writes: ``<case>/dicom/``, ``report.txt``, ``emr.txt``
and ``truth.json`` (the reference findings and impression codes).  A hospital has the first
three (the CT, the signed report, the note) but no ``truth.json``; :func:`import_cases` writes
one per study from the report's own text, by the project's rule-based labeler
(:mod:`medassist.labeler`, the lexicon and negation detection that score generated text):
"silver" labels, as CT-RATE's and CheXpert's are drawn from their reports.

Per finding label of ``configs/findings.yaml``:

* present when a sentence of the report's FINDINGS or IMPRESSION section affirms it; absent
  when the report negates it or does not mention it (a report that does not mention a finding
  is read as not showing it); a finding every affirming sentence of which hedges it
  ("possible", "cannot be excluded", :data:`HEDGE`) is present and marked ``uncertain``;
* its side (``left`` / ``right`` / ``bilateral``) and, for nodules, masses and consolidation,
  its lobe, where the sentences affirming it state exactly one; a lymph node's station where
  one is named ("station 4R");
* its size, the largest a sentence affirming that label alone states ("measuring 14 mm",
  "6.6 cm"), for the labels whose size the model reports.

What the report does not state is listed in the finding's ``unstated`` (``side``,
``location``, ``size``), and training and evaluation leave it out (no target, no error), rather
than reading silence as "none".  Impression codes (the context head's targets and the
EMR-dependent impressions of ``medassist eval``) come from the impression's wording: "metastatic"
or "metastasis", "pneumonia", "cardiogenic", "malignancy" (a nodule; a mass so described takes
the mass's own code).

The study's DICOM is not copied: ``<case>/dicom`` is a link to the study's folder (``dicom.zip``
to a study kept as a zip file), read by ``dicom_io`` when training (its diagnostic series
selected as ``medassist report`` selects it); the note (text or FHIR JSON) is written as
``emr.txt`` text.  Without a de-identification key the output holds what the input holds; with
one (:func:`import_cases`) the DICOM is written through ``dicom_io.deid`` and the texts have
the patient's known identifiers and dates redacted (:func:`redact`).  The reports may also be
kept apart from the images (``reports_dir``: by StudyInstanceUID, AccessionNumber or folder
name), and the clinicians' signed reports exported from the database (:func:`export_signed`)
as such an input.  A study without a report, without FINDINGS and IMPRESSION sections or
without a diagnostic CT series is recorded with its reason in ``import.json`` and the import
goes on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medassist.errors import DatasetImportError, InputError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dicom_io.deid import DeidKey
    from dicom_io.index import SeriesIndex
    from medassist.pacs.dicomweb import PacsClient

log = logging.getLogger(__name__)

SCHEMA = "medassist-import/1"
REPORT_NAME = "report.txt"
#: the note beside a study, first found (text, or FHIR R4 JSON read by medassist.emr)
NOTE_NAMES = ("emr.txt", "emr.json", "emr_fhir.json")
#: labels whose affirming sentence's stated size is the finding's size
SIZED = ("lung_nodule", "lung_mass", "mediastinal_lymphadenopathy", "liver_lesion")
#: labels located by lobe
LOBED = ("lung_nodule", "lung_mass", "consolidation")
#: the FINDINGS and IMPRESSION (or CONCLUSION) sections: a heading at the start of a line,
#: followed by a colon or alone on it ("FINDINGS\n..."), in any case (not "prior findings" in
#: an indication)
_SECTIONS = re.compile(r"^[ \t]*findings[ \t]*(?::|$)\s*(.*?)\s*"
                       r"^[ \t]*(?:impressions?|conclusions?)[ \t]*(?::|$)\s*(.*)",
                       re.S | re.I | re.M)
_BILATERAL = re.compile(r"\bbilateral(?:ly)?\b|\bboth\b", re.I)
_STATION = re.compile(r"\bstation\s*(\d{1,2}[RL]?)\b", re.I)
_CASE_ID = re.compile(r"[^A-Za-z0-9._-]+")
_UID = re.compile(r"[0-9.]{1,64}")
#: a line break inside a sentence: after a word or comma, before a lower-case word
_WRAPPED = re.compile(r"(?<=[A-Za-z0-9,])\n(?=[a-z])")
#: wording that hedges a mention ("possible consolidation", "pneumothorax cannot be
#: excluded"): the finding is taken as present (as CheXpert's "U-Ones") and marked uncertain
HEDGE = re.compile(r"\b(?:possibl[ey]|probabl[ey]|questionable|equivocal|indeterminate|"
                   r"may represent|might represent|cannot be (?:excluded|ruled out)|"
                   r"can ?not (?:exclude|rule out)|not (?:be )?excluded|versus|vs\.?|"
                   r"differential (?:diagnosis )?includes)\b", re.I)
#: impression wording -> code, with the labels the sentence must affirm (any of them); the first
#: code of each context slot (``configs/model``'s ``context.classes``) is the label's own
CONTEXT_WORDING: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = (
    ("metastatic_disease_suspected", re.compile(r"\bmetasta", re.I),
     ("lung_nodule", "lung_mass")),
    # a nodule suspicious for a primary malignancy (the generator's rests on a heavy smoker's
    # history: EMR-dependent); a mass so described is the image's own conclusion
    ("primary_lung_malignancy_suspected",
     re.compile(r"\bmalignan|\bheavy smoker\b|\bbronchogenic\b", re.I), ("lung_nodule",)),
    ("lung_mass_malignancy_suspected", re.compile(r"\bmalignan|\bbronchogenic\b", re.I),
     ("lung_mass",)),
    ("pneumonia", re.compile(r"\bpneumonia\b", re.I), ("consolidation",)),
    ("effusion_cardiogenic", re.compile(r"\bcardiogenic\b|\bheart failure\b", re.I),
     ("pleural_effusion",)),
    ("lymphadenopathy_metastasis_suspected", re.compile(r"\bmetasta", re.I),
     ("mediastinal_lymphadenopathy",)),
)
#: the code an affirmed finding of a context slot takes without a conclusion's wording
BASE_CODES = {"lung_nodule": "pulmonary_nodule", "consolidation": "consolidation_nonspecific",
              "pleural_effusion": "effusion_nonspecific",
              "mediastinal_lymphadenopathy": "lymphadenopathy"}
#: every code :func:`impression_codes` gives
CODES = frozenset({c for c, _, _ in CONTEXT_WORDING} | set(BASE_CODES.values()))


@dataclass(frozen=True)
class ImportResult:
    """One study: imported to ``case_dir`` or not (``reason``)."""

    source: Path
    case_id: str
    case_dir: Path | None
    reason: str | None = None
    n_findings: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "case_id": self.case_id,
                "case_dir": str(self.case_dir) if self.case_dir else None,
                "reason": self.reason, "n_findings": self.n_findings}


def report_sections(text: str) -> tuple[str, str] | None:
    """The FINDINGS and IMPRESSION sections (headings in any case), None where either lacks."""
    m = _SECTIONS.search(text)
    if m is None:
        return None
    return m.group(1).strip(), m.group(2).strip()


def _side(sentences: Sequence[str]) -> str | None:
    from medassist.labeler import stated_sides

    joined = " ".join(sentences)
    if _BILATERAL.search(joined):
        return "bilateral"
    said = stated_sides(joined)
    if said == {"left", "right"}:
        return "bilateral"
    return said.pop() if said else None


def _sections_or_raise(text: str) -> re.Match[str]:
    """The sections' match, or :class:`DatasetImportError` where either section lacks."""
    m = _SECTIONS.search(text)
    if m is None:
        raise DatasetImportError("the report has no FINDINGS: and IMPRESSION: sections (nor "
                                 "CONCLUSION:)", kind="ReportSections")
    return m


def _span(text: str, body: str, offset: int, sentence: str, at: int) -> dict[str, Any]:
    """A sentence of ``body`` (``text`` from ``offset``, wrapped lines joined) found at or
    after ``at`` -> its text in ``text`` and its character span there."""
    start = offset + body.index(sentence, at)
    end = start + len(sentence)
    return {"sentence": text[start:end], "start": start, "end": end}


def report_findings(text: str, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The findings a report states, in the layout of ``truth.json`` (one per label that a
    sentence of its FINDINGS or IMPRESSION section affirms; ``label_value`` 0: no voxel
    labels), with ``unstated`` listing what its sentences leave open and ``evidence`` the
    affirming sentences' character spans in ``text``."""
    from medassist.labeler import label_text, stated_lobes, stated_size_mm
    from medassist.review import mask_decisions

    body_at = _sections_or_raise(text)
    # a line wrapped inside a sentence ("... in the left upper\nlobe.") is one sentence: the
    # break becomes a space (same length, so the spans index ``text``)
    body = _WRAPPED.sub(" ", text[body_at.start(1):])
    # a medassist report's block of the reviewer's decisions (medassist.review): only the
    # sentences the reviewer kept are read, and a side or size a decision states is the
    # finding's (the same length, so the spans still index ``text``)
    read, decided = mask_decisions(body)
    offset = body_at.start(1)
    out: list[dict[str, Any]] = []
    sents = label_text(read)
    for lab in labels:
        aff = [s for s in sents if s.labels.get(lab)]
        if not aff:
            continue
        attrs: dict[str, Any] = {}
        unstated: list[str] = []
        side = _side([s.text for s in aff])
        if side is not None:
            attrs["side"] = side
        elif lab not in ("cardiomegaly", "pericardial_effusion"):
            unstated.append("side")
        else:
            attrs["side"] = "midline"
        if lab in LOBED:
            lobes = set().union(*(stated_lobes(s.text) for s in aff))
            if len(lobes) == 1:
                attrs["lobe"] = lobes.pop()
            else:
                unstated.append("location")
        elif lab == "mediastinal_lymphadenopathy":
            st = {m.group(1).upper() for s in aff for m in _STATION.finditer(s.text)}
            if len(st) == 1:
                attrs["station"] = st.pop()
                if "side" in unstated and attrs["station"][-1] in "RL":  # 4R, 10L
                    attrs["side"] = "right" if attrs["station"][-1] == "R" else "left"
                    unstated.remove("side")
            else:
                unstated.append("location")
        size = None
        if lab in SIZED:
            alone = [stated_size_mm(s.text) for s in aff
                     if [k for k, v in s.labels.items() if v] == [lab]]
            sizes = [v for v in alone if v is not None]
            size = max(sizes) if sizes else None
            if size is None:
                unstated.append("size")
        d = decided.get(lab)
        if d is not None and d.decision != "rejected":
            if d.side:
                attrs["side"] = d.side
                unstated = [u for u in unstated if u != "side"]
            if d.size_mm is not None and lab in SIZED:
                size = d.size_mm
                unstated = [u for u in unstated if u != "size"]
        found = {"index": len(out), "label_value": 0, "kind": lab, "attributes": attrs,
                 "size_mm": size, "unstated": unstated,
                 "uncertain": all(HEDGE.search(s.text) for s in aff),
                 "evidence": [_span(text, body, offset, s.text, s.start) for s in aff]}
        if d is not None and d.decision == "rejected":
            # the signed prose states it, the reviewer rejected the AI's finding (the review
            # app warns of this, medassist.review.rejected_but_stated): the text's word is
            # taken, and the disagreement kept for whoever curates the data
            found["rejected_by_reviewer"] = True
        out.append(found)
    return out


def impression_codes(text: str, findings: Sequence[Mapping[str, Any]]
                     ) -> list[dict[str, Any]]:
    """The impression's codes (``truth.json``'s ``report.impression``): per impression sentence
    that affirms a finding, a conclusion its wording draws (:data:`CONTEXT_WORDING`), and each
    affirmed context-slot finding's own code where no conclusion is drawn for it."""
    from medassist.labeler import label_text

    sections = report_sections(text)
    if sections is None:
        return []
    index = {str(f["kind"]): int(f["index"]) for f in findings}
    items: list[dict[str, Any]] = []
    concluded: set[str] = set()
    for s in label_text(sections[1]):
        affirmed = [k for k, v in s.labels.items() if v and k in index]
        for code, rx, needs in CONTEXT_WORDING:
            hit = [k for k in affirmed if k in needs]
            if hit and rx.search(s.text):
                items.append({"code": code, "text": s.text,
                              "finding_indices": [index[k] for k in hit]})
                concluded.update(hit)
    for lab, code in BASE_CODES.items():
        if lab in index and lab not in concluded:
            items.append({"code": code, "text": "", "finding_indices": [index[lab]]})
    return items


def case_id_of(folder: Path, root: Path) -> str:
    """A case id from the study folder's path under the input (path parts joined by ``_``,
    other characters than letters, digits, ``.``, ``_`` and ``-`` replaced)."""
    rel = folder.relative_to(root).as_posix() if folder != root else folder.name
    return _CASE_ID.sub("-", rel.replace("/", "_")) or "case"


def find_studies(root: Path) -> list[Path]:
    """The folders under ``root`` holding a ``report.txt`` (sorted; links followed, each real
    folder once)."""
    if not root.is_dir():
        raise InputError(f"dataset input {root} is not a folder", path=str(root))
    out: list[Path] = []
    seen: set[str] = set()
    for here, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if REPORT_NAME in files:
            out.append(Path(here))
            dirs[:] = []  # a study's own sub-folders hold its series, not further studies
    return sorted(out)


def _dicom_of(study: Path) -> Path:
    """The study's DICOM: its ``dicom/`` sub-folder where it has one; else its one ``*.zip``
    file where the folder holds no other file but the report and the note (a study kept as a
    zip file, read in place as ``medassist report study.zip`` reads it); else the folder."""
    if (study / "dicom").is_dir():
        return study / "dicom"
    files = [p for p in study.iterdir() if p.is_file() and p.name != REPORT_NAME
             and p.name not in NOTE_NAMES]
    if len(files) == 1 and files[0].suffix.lower() == ".zip":
        return files[0]
    return study


#: dates in a text (Safe Harbor: every element of a date but the year): 10/28/1941, 1941-10-28,
#: 28.10.1941, Oct 28, 1941, 28 October 1941
_DATES = re.compile(
    r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b|"
    r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?"
    r",? \d{4}\b|\b\d{1,2}(?:st|nd|rd|th)? (?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|"
    r"dec)[a-z]*\.?,? \d{4}\b", re.I)
#: identifiers by form: telephone numbers, e-mail addresses, runs of 7 or more digits (record,
#: account and accession numbers)
_FORMS = re.compile(r"\b\d{3}[-. ]\d{3}[-. ]\d{4}\b|[\w.+-]+@[\w-]+\.[\w.-]+|\b\d{7,}\b")
#: an age over 89 (Safe Harbor aggregates them as 90 or older)
_OLD_AGE = re.compile(r"\b(?:9\d|1[0-4]\d)(?=\s*(?:yo\b|y/o\b|y\.o\.|-?year-old\b|years? old\b))",
                      re.I)
REDACTED = "[REDACTED]"
#: a name part: a capitalised word or an initial ("Smith", "O'Neil", "SMITH", "J.")
_NAME = r"(?:[A-Z][A-Za-z'’-]+|[A-Z]\.)"
#: people named by a title ("Dr. Jane Smith", "Mrs Jones") or by their credentials ("Jane
#: Smith, MD"): the name is redacted, the title and credentials stay
#: (in capitals only with the dot: "MS WITH" is multiple sclerosis, "MS. JONES" a person)
_TITLED = re.compile(rf"\b((?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?|(?:DR|MR|MRS|MS|PROF)\.)\s+)"
                     rf"{_NAME}(?:\s+{_NAME}){{0,2}}")
_CREDENTIALED = re.compile(
    rf"\b{_NAME}(?:\s+{_NAME}){{0,2}}(,?\s+(?:MD|M\.D\.|D\.O\.|PhD|RN|NP|PA-C|MBBS|FRCR)\b)")
#: who dictated, read, signed or ordered: the rest of the line is a name (and perhaps a date)
_SIGNED = re.compile(
    r"(?im)^(\s*(?:electronically\s+)?(?:signed|dictated|transcribed|read|reported|verified|"
    r"approved|reviewed)\s+by\b:?|\s*(?:attending|radiologist|resident|referring physician|"
    r"ordering physician|referring provider|ordering provider)\s*:)[ \t]*\S[^\n]*$")


def patient_identifiers(source: str) -> list[str]:
    """The patient's identifiers a study's DICOM header states (``source``: a file or a zip
    member, :func:`dicom_io.volume.read_source`): the name's parts, the patient and other
    patient IDs, the accession number and the birth date as notes write it."""
    import io

    import pydicom

    from dicom_io.volume import read_source

    ds = pydicom.dcmread(io.BytesIO(read_source(source)), stop_before_pixels=True)
    out: list[str] = []
    name = str(ds.get("PatientName", "") or "")
    out += [p for p in re.split(r"[\^=, ]+", name) if len(p) >= 2]
    for kw in ("PatientID", "AccessionNumber", "OtherPatientIDs"):
        v = ds.get(kw)
        vals = v if isinstance(v, list | tuple | pydicom.multival.MultiValue) else [v]
        out += [str(x).strip() for x in vals if x is not None and len(str(x).strip()) >= 3]
    dob = str(ds.get("PatientBirthDate", "") or "")
    if re.fullmatch(r"\d{8}", dob):
        y, m, d = dob[:4], dob[4:6], dob[6:]
        out += [f"{m}/{d}/{y}", f"{int(m)}/{int(d)}/{y}", f"{d}/{m}/{y}", f"{d}.{m}.{y}",
                f"{y}-{m}-{d}", dob]
    return sorted(set(out), key=len, reverse=True)


def redact(text: str, identifiers: Iterable[str]) -> tuple[str, int]:
    """``text`` with the patient's ``identifiers`` (whole words, any case), the names of people
    named by a title ("Dr. Jane Smith"), by credentials ("Jane Smith, MD") or on a signature
    line ("Dictated by: ...", "Radiologist: ..."), dates, telephone numbers, e-mail addresses,
    runs of 7+ digits replaced by ``[REDACTED]`` and ages over 89 by ``90+``; and how many
    were replaced.  Other names (a relative named in passing: "daughter Anna") are not
    found: this redacts what is known and what a name's form gives away, it does not
    recognise names."""
    n = 0
    for ident in identifiers:
        rx = re.compile(rf"(?<![\w]){re.escape(ident)}(?![\w])", re.I)
        text, k = rx.subn(REDACTED, text)
        n += k
    # the keyword or title and the credentials stay, the name goes
    text, k1 = _SIGNED.subn(lambda m: f"{m.group(1)} {REDACTED}", text)
    text, k2 = _TITLED.subn(lambda m: f"{m.group(1)}{REDACTED}", text)
    text, k3 = _CREDENTIALED.subn(lambda m: f"{REDACTED}{m.group(1)}", text)
    n += k1 + k2 + k3
    for rx in (_DATES, _FORMS):
        text, k = rx.subn(REDACTED, text)
        n += k
    text, k = _OLD_AGE.subn("90+", text)
    return text, n + k


def _statements(report: str, note: str | None, labels: Sequence[str]) -> tuple[Any, ...]:
    """What a report and a note state, as training reads them: the report's findings (but
    their evidence spans) and impression codes, the note's history."""
    from medassist.history import read_history

    found = report_findings(report, labels)
    return (tuple(json.dumps({k: v for k, v in f.items() if k != "evidence"}, sort_keys=True)
                  for f in found),
            tuple(sorted(str(c["code"]) for c in impression_codes(report, found))),
            read_history(note) if note is not None else None)


@dataclass(frozen=True)
class StudyInput:
    """Where one study's parts are: its DICOM (a folder or a zip file), its report and its
    note (None: none), and its diagnostic series where already selected."""

    source: Path
    dicom: Path
    report: Path
    note: Path | None
    series: SeriesIndex | None = None


def import_case(study: Path | StudyInput, out: Path, case_id: str, labels: Sequence[str],
                key: DeidKey | None = None) -> ImportResult:
    """Import one study (a folder holding ``report.txt``, or a :class:`StudyInput`); raises
    :class:`DatasetImportError` or ``dicom_io`` errors; with ``key``, de-identified
    (:func:`import_cases`)."""
    from medassist.emr import read_note
    from medassist.pipeline import select_series

    if isinstance(study, Path):
        study = StudyInput(study, _dicom_of(study), study / REPORT_NAME,
                           next((study / n for n in NOTE_NAMES if (study / n).is_file()), None))
    try:
        text = study.report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetImportError(f"cannot read the report {study.report.name}: "
                                 f"{type(exc).__name__}", path=str(study.report),
                                 kind="Report") from exc
    _sections_or_raise(text)
    dicom, note = study.dicom, study.note
    # no diagnostic CT: NoDiagnosticSeriesError
    series = study.series if study.series is not None else select_series(dicom)
    emr = read_note(note) if note is not None else None
    uids = {"study_uid": series.study_uid, "series_uid": series.series_uid}
    redactions = None
    if key is not None:
        from dicom_io.deid import deidentify_path, remap_uid

        if not dicom.is_dir():
            raise DatasetImportError("a study kept in a zip file is not de-identified here; "
                                     "unzip it into its folder first", kind="DeidZip")
        idents = patient_identifiers(series.instances[0].source)
        before = _statements(text, emr, labels)
        text, redactions = redact(text, idents)
        if emr is not None:
            emr, k = redact(emr, idents)
            redactions += k
        if _statements(text, emr, labels) != before:
            # a name part that is also a word of the text ("No", "May") would change what it
            # states ("[REDACTED] pleural effusion"): never a label the report does not give
            raise DatasetImportError(
                "de-identification would change what the report or note states (a patient "
                "identifier is also a word of the text); import this study without "
                "--deid-key-file and de-identify its text by hand", kind="DeidChangesText")
        uids = {k: remap_uid(key, v) for k, v in uids.items()}
    findings = report_findings(text, labels)  # on the text written (the spans index it)
    case = out / case_id
    case.mkdir(parents=True, exist_ok=False)
    if key is not None:
        rep = deidentify_path(dicom, case / "dicom", key)
        if not rep.written:
            raise DatasetImportError("no DICOM file of the study could be de-identified",
                                     kind="Deid")
    elif dicom.is_dir():
        (case / "dicom").symlink_to(dicom.resolve(), target_is_directory=True)
    else:
        (case / "dicom.zip").symlink_to(dicom.resolve())
    (case / REPORT_NAME).write_text(text, encoding="utf-8")
    if emr is not None:
        (case / "emr.txt").write_text(emr, encoding="utf-8")
    truth = {"schema": SCHEMA, "case_id": case_id,
             "source": str(study.source.resolve()) if key is None else None,
             "deidentified": None if key is None else {
                 "dicom": "PS3.15 Annex E (dicom_io.deid)", "key": key.fingerprint,
                 "text_redactions": redactions},
             "labels": "silver: medassist.labeler on the report's FINDINGS and IMPRESSION",
             "study": uids,
             "findings": findings,
             "emr": {"kind": "imported" if emr is not None else "none",
                     "source": note.name if note is not None else None},
             "report": {"impression": impression_codes(text, findings)}}
    (case / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return ImportResult(study.source, case_id, case, None, len(findings))


def _case_name(study: Path) -> str:
    """A study's name as ``medassist batch`` and ``find_emr`` name it: a zip file's stem, a
    ``dicom/`` folder's (or ``dicom.zip``'s) parent folder, else the folder's own name."""
    if study.name == "dicom" or (study.suffix.lower() == ".zip" and study.stem == "dicom"):
        return study.parent.name
    return study.stem if study.suffix.lower() == ".zip" else study.name


def locate_report(study: Path, series: SeriesIndex, reports_dir: Path) -> Path:
    """The report of a study kept apart from it: ``reports_dir/<StudyInstanceUID>.txt``, else
    ``<AccessionNumber>.txt``, else ``<study name>.txt`` (:func:`_case_name`).  Raises
    :class:`DatasetImportError` naming what was looked for (not the values)."""
    accession = next((h.accession_number.strip() for h in series.instances
                      if h.accession_number.strip()), "")
    names = [series.study_uid, accession, _case_name(study)]
    for name in names:
        if name and "/" not in name and name not in (".", ".."):
            candidate = reports_dir / f"{name}.txt"
            if candidate.is_file():
                return candidate
    raise DatasetImportError(f"no report for the study in {reports_dir} (looked for "
                             "<StudyInstanceUID>.txt, <AccessionNumber>.txt and <study "
                             "folder or zip name>.txt)", kind="NoReport")


def import_cases(root: Path, out: Path, labels: Sequence[str] | None = None,
                 key: DeidKey | None = None, reports_dir: Path | None = None,
                 emr_dir: Path | None = None) -> list[ImportResult]:
    """Import every study under ``root`` into ``out`` (see the module); a study that fails
    is recorded with its reason and the import goes on.  Writes ``out/import.json``.

    Studies are the folders holding a ``report.txt``; with ``reports_dir``, the studies
    ``medassist batch`` finds (``dicom/`` folders, sub-folders, zip files), each with its
    report from ``reports_dir`` (:func:`locate_report`) and its note as batch finds it
    (:func:`medassist.pipeline.find_emr`, ``emr_dir`` first).

    With ``key`` (:class:`dicom_io.deid.DeidKey`) the cases are de-identified: each study's
    DICOM is written through ``dicom_io.deid`` (PS3.15 Annex E: UIDs remapped, the patient a
    pseudonym, dates shifted) instead of linked; the report and the note have the patient's
    identifiers their DICOM header states, dates, telephone numbers, e-mail addresses and runs
    of 7+ digits redacted (:func:`redact`); case ids are pseudonyms (HMAC of the study
    folder's path under ``root``) and neither ``truth.json`` nor ``import.json`` names a
    source path (the caller gets them in the results)."""
    from dicom_io.errors import DicomIOError
    from medassist.errors import MedAssistError
    from medassist.model_data import finding_labels

    labels = tuple(labels) if labels is not None else finding_labels()
    if reports_dir is not None and not reports_dir.is_dir():
        raise InputError(f"reports folder {reports_dir} is not a folder",
                         path=str(reports_dir))
    if reports_dir is None:
        studies = find_studies(root)
    else:
        from medassist.batch_cli import study_folders

        studies = study_folders(root)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"dataset output {out} exists and is not empty; give a new folder",
                         path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    results: list[ImportResult] = []
    ids: set[str] = set()
    for study in studies:
        cid = base = case_id_of(study, root) if key is None else "case-" + key.digest(
            "medassist-dataset-case", study.relative_to(root).as_posix()).hex()[:16]
        n = 1
        while cid in ids:
            n += 1
            cid = f"{base}-{n}"
        ids.add(cid)
        try:
            if reports_dir is None:
                results.append(import_case(study, out, cid, labels, key))
            else:
                from medassist.pipeline import find_emr, select_series

                series = select_series(study)  # no diagnostic CT: NoDiagnosticSeriesError
                item = StudyInput(study, study, locate_report(study, series, reports_dir),
                                  find_emr(study, series.study_uid, emr_dir), series)
                results.append(import_case(item, out, cid, labels, key))
        except (MedAssistError, DicomIOError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if key is not None:  # the study's path may name the patient: not in the output
                reason = reason.replace(str(study), f"<study {cid}>").replace(
                    str(root), "<input>")
            # the folder's name may carry a patient's name: it is in import.json, not the log
            log.warning("dataset import: a study not imported (%s)", type(exc).__name__)
            results.append(ImportResult(study, cid, None, reason))
    cases = [r.to_json() for r in results]
    if key is not None:  # the source paths may name the patients
        cases = [{k: v for k, v in c.items() if k != "source"} for c in cases]
    summary = {"schema": SCHEMA, "input": str(root.resolve()) if key is None else None,
               "deidentified": key is not None, "labels": list(labels),
               "imported": sum(r.case_dir is not None for r in results),
               "failed": sum(r.case_dir is None for r in results),
               "cases": cases}
    (out / "import.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return results


@dataclass(frozen=True)
class SignedStudy:
    """One study whose signed report :func:`export_signed` wrote to ``folder`` (or why not)."""

    study_uid: str
    report_id: int
    folder: Path | None
    reason: str | None = None


def export_signed(session: Session, actor: Any, out: Path, emr_dir: Path | None = None,
                  pacs: PacsClient | None = None) -> list[SignedStudy]:
    """The clinicians' signed reports as a folder :func:`import_cases` reads: per study, the
    latest signed report (an amendment's, where one was signed) as ``<study UID>/report.txt``,
    a link to the study's DICOM where the ingest queue knows its location (``dicom`` or
    ``study.zip``) and the note :func:`medassist.pipeline.find_emr` finds there (or in
    ``emr_dir``) as ``emr.txt``; a study drafted from the PACS (``pacs watch``: no local copy
    kept) is retrieved from ``pacs`` (WADO-RS, its CT series) into ``<study UID>/dicom``.
    Each report read is audited as an export (clinicians only,
    :func:`medassist.reports.read_report`); the caller owns the transaction.  A study whose
    DICOM is nowhere to be had (no location and no ``pacs``, a location gone, a retrieval
    that fails or finds no CT) is listed with its reason and left out."""
    from sqlalchemy import select

    from medassist.audit import AuditAction
    from medassist.emr import read_note
    from medassist.errors import PacsError
    from medassist.pacs.models import IngestItem
    from medassist.pipeline import find_emr
    from medassist.reports import read_report
    from medassist.storage.models import Report, ReportStatus, Study

    rows = session.execute(select(Report.id, Study.study_uid).join(Study)
                           .where(Report.status == ReportStatus.SIGNED.value)
                           .order_by(Study.study_uid, Report.created_at.desc(),
                                     Report.id.desc())).all()
    latest: dict[str, int] = {}
    for rid, uid in rows:
        latest.setdefault(str(uid), int(rid))
    done: list[SignedStudy] = []
    todo: list[tuple[str, int, Path | None, str, str | None]] = []
    for uid, rid in sorted(latest.items()):
        if not _UID.fullmatch(uid):  # never a path from an unchecked UID
            done.append(SignedStudy(uid[:64], rid, None, "not a valid DICOM UID"))
            continue
        item = session.scalar(select(IngestItem).where(IngestItem.study_uid == uid))
        where = Path(item.location) if item is not None and item.location else None
        if where is not None and not where.exists():
            done.append(SignedStudy(uid, rid, None, f"its DICOM location {where} is gone"))
            continue
        if where is None and pacs is None:
            done.append(SignedStudy(uid, rid, None, (
                "no local DICOM location for the study (drafted from the PACS, which keeps "
                "no local copy): give the PACS to retrieve it from (--orthanc URL)")))
            continue
        view = read_report(session, rid, actor, action=AuditAction.EXPORT,
                           detail="format=dataset")
        note = find_emr(where, uid, emr_dir) if where is not None else (
            find_emr(out / uid, uid, emr_dir) if emr_dir is not None else None)
        todo.append((uid, rid, where, view.text, read_note(note) if note else None))
    # every read first (a refusal writes nothing), then the files
    out.mkdir(parents=True, exist_ok=True)
    for uid, rid, where, text, emr in todo:
        folder = out / uid  # a validated UID ([0-9.]): a safe folder name
        folder.mkdir(exist_ok=False)
        if where is None and pacs is not None:
            try:
                _series, n = pacs.retrieve_study(uid, folder / "dicom")
            except (PacsError, OSError) as exc:
                n, why = 0, f"retrieving it from the PACS failed: {type(exc).__name__}: {exc}"
            else:
                why = "the PACS holds no CT image of the study"
            if n == 0:
                shutil.rmtree(folder, ignore_errors=True)
                done.append(SignedStudy(uid, rid, None, why))
                continue
        elif where is not None and where.is_dir():
            (folder / "dicom").symlink_to(where.resolve(), target_is_directory=True)
        elif where is not None:
            (folder / "study.zip").symlink_to(where.resolve())
        (folder / REPORT_NAME).write_text(text, encoding="utf-8")
        if emr is not None:
            (folder / "emr.txt").write_text(emr, encoding="utf-8")
        done.append(SignedStudy(uid, rid, folder))
    return sorted(done, key=lambda d: d.study_uid)


#: the columns of a hand-labelled agreement sample (:func:`read_hand_labels`)
HAND_COLUMNS = ("case", "label", "side", "lobe", "size_mm")


def read_hand_labels(path: Path, labels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """A radiologist's labels of a sample of reports, to measure the report-derived labels
    against (``medassist dataset agreement DIR --labels FILE``): a CSV with the header
    ``case,label,side,lobe,size_mm``, one row per finding present (``case``: the report's
    folder under DIR; ``side`` left / right / bilateral or empty; ``lobe`` RUL, RML, RLL, LUL,
    LLL or empty; ``size_mm`` a number or empty) and a row with the label ``none`` for a
    report that states no finding.  Raises :class:`DatasetImportError` naming the line."""
    import csv

    lobes = ("RUL", "RML", "RLL", "LUL", "LLL")
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetImportError(f"cannot read the labels: {type(exc).__name__}",
                                 path=str(path), kind="HandLabels") from exc
    if not rows or tuple(c.strip() for c in rows[0]) != HAND_COLUMNS:
        raise DatasetImportError(f"the first line must be {','.join(HAND_COLUMNS)}",
                                 path=str(path), kind="HandLabels")
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(HAND_COLUMNS):
            raise DatasetImportError(f"line {n}: {len(row)} columns, expected "
                                     f"{len(HAND_COLUMNS)}", path=str(path), kind="HandLabels")
        case, lab, side, lobe, size = (c.strip() for c in row)
        if not case:
            raise DatasetImportError(f"line {n}: no case", path=str(path), kind="HandLabels")
        found = out.setdefault(case, [])
        if lab == "none":
            continue
        if lab not in labels:
            raise DatasetImportError(f"line {n}: unknown label {lab!r}; one of "
                                     f"{', '.join(labels)} or none", path=str(path),
                                     kind="HandLabels")
        if side not in ("", "left", "right", "bilateral") or lobe not in ("", *lobes):
            raise DatasetImportError(f"line {n}: side must be left, right, bilateral or "
                                     f"empty and lobe one of {', '.join(lobes)} or empty",
                                     path=str(path), kind="HandLabels")
        try:
            mm = float(size) if size else None
        except ValueError:
            raise DatasetImportError(f"line {n}: size_mm {size!r} is not a number",
                                     path=str(path), kind="HandLabels") from None
        attrs = {k: v for k, v in (("side", side), ("lobe", lobe)) if v}
        found.append({"kind": lab, "attributes": attrs, "size_mm": mm})
    return out


def agreement(pairs: Iterable[tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]],
              labels: Sequence[str]) -> dict[str, Any]:
    """How report-derived findings agree with reference ones (``(silver, reference)`` per
    case): per label the presence confusion counts, and over labels present in both the
    side, lobe and size (within 10 % or 1 mm) agreement where the report states them."""
    per = {lab: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for lab in labels}
    side = [0, 0]
    lobe = [0, 0]
    size = [0, 0]
    for silver, ref in pairs:
        s = {str(f["kind"]): f for f in silver}
        r: dict[str, Mapping[str, Any]] = {}
        def mm(f: Mapping[str, Any]) -> float:
            return -1.0 if f.get("size_mm") is None else float(f["size_mm"])

        for f in ref:  # the largest of a type, as training takes it
            k = str(f["kind"])
            if k not in r or mm(f) > mm(r[k]):
                r[k] = f
        for lab in labels:
            key = ("tp" if lab in r else "fp") if lab in s else ("fn" if lab in r else "tn")
            per[lab][key] += 1
            if lab not in s or lab not in r:
                continue
            sa, ra = s[lab].get("attributes", {}), r[lab].get("attributes", {})
            # the reference's side over all its findings of the type, as training takes it
            sides = {str(f.get("attributes", {}).get("side")) for f in ref
                     if str(f["kind"]) == lab}
            ref_side = ("bilateral" if "bilateral" in sides or {"left", "right"} <= sides
                        else "left" if "left" in sides else "right" if "right" in sides
                        else None)
            if "side" in sa and ref_side is not None:
                side[0] += int(sa["side"] == ref_side)
                side[1] += 1
            if "lobe" in sa and "lobe" in ra:
                lobe[0] += int(sa["lobe"] == ra["lobe"])
                lobe[1] += 1
            if s[lab].get("size_mm") is not None and r[lab].get("size_mm") is not None:
                ref_mm = float(r[lab]["size_mm"])
                # a report rounds to the millimetre (4.5 mm is "5 mm")
                size[0] += int(abs(float(s[lab]["size_mm"]) - ref_mm)
                               <= max(0.1 * ref_mm, 1.0))
                size[1] += 1
    tot = {k: sum(v[k] for v in per.values()) for k in ("tp", "fp", "fn", "tn")}
    return {"per_label": per, "presence": tot,
            "presence_accuracy": (tot["tp"] + tot["tn"]) / max(sum(tot.values()), 1),
            "side": {"agree": side[0], "stated": side[1]},
            "lobe": {"agree": lobe[0], "stated": lobe[1]},
            "size_within_10pct_or_1mm": {"agree": size[0], "stated": size[1]}}


__all__ = [
    "ImportResult",
    "SignedStudy",
    "StudyInput",
    "agreement",
    "export_signed",
    "find_studies",
    "import_case",
    "import_cases",
    "impression_codes",
    "locate_report",
    "read_hand_labels",
    "report_findings",
    "report_sections",
]
