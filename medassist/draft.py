"""Typed, validated form of a report draft: the JSON that ``medassist report --json`` prints.

:meth:`ReportDraft.from_dict` checks every field and raises :class:`DraftError` naming the
path of the first bad one (``findings[2].evidence.z_mm``); :meth:`ReportDraft.to_dict` gives
the same JSON back. :func:`canonical_json` is the one byte form used for hashing
(:meth:`ReportDraft.content_hash`): sorted keys, no whitespace, UTF-8, no NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from medassist.errors import DraftError

STATUS_DRAFT = "DRAFT"
LATERALITIES: tuple[str, ...] = ("left", "right", "bilateral", "none")
SECTION_NAMES: tuple[str, ...] = ("indication", "technique", "findings", "impression")
Laterality = Literal["left", "right", "bilateral", "none"]


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, compact, UTF-8 kept, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- field readers: each names the path of the field in its error -----------------------


def _obj(data: Any, where: str, keys: Collection[str],
         optional: Collection[str] = ()) -> Mapping[str, Any]:
    """``data`` as a mapping with every key of ``keys``, those of ``optional`` allowed too."""
    if not isinstance(data, Mapping):
        raise DraftError(f"expected an object, got {type(data).__name__}", field=where)
    missing = [k for k in keys if k not in data]
    if missing:
        raise DraftError(f"missing key(s) {missing}", field=where)
    extra = sorted(set(data) - set(keys) - set(optional))
    if extra:
        raise DraftError(f"unknown key(s) {extra}; allowed: {sorted(keys)}", field=where)
    return data


def _str(v: Any, where: str, *, nonempty: bool = False) -> str:
    if not isinstance(v, str):
        raise DraftError(f"expected a string, got {type(v).__name__}", field=where)
    if nonempty and not v.strip():
        raise DraftError("must not be empty", field=where)
    return v


def _opt_str(v: Any, where: str) -> str | None:
    return None if v is None else _str(v, where)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise DraftError(f"expected true/false, got {type(v).__name__}", field=where)
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DraftError(f"expected a number, got {type(v).__name__}", field=where)
    f = float(v)
    if not math.isfinite(f):
        raise DraftError("must be a finite number", field=where)
    return f


def _opt_float(v: Any, where: str) -> float | None:
    return None if v is None else _float(v, where)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise DraftError(f"expected an integer, got {type(v).__name__}", field=where)
    return v


def _list(v: Any, where: str, n: int | None = None) -> Sequence[Any]:
    if not isinstance(v, list | tuple):
        raise DraftError(f"expected a list, got {type(v).__name__}", field=where)
    if n is not None and len(v) != n:
        raise DraftError(f"expected {n} values, got {len(v)}", field=where)
    return v


def _sha(v: Any, where: str) -> str:
    s = _str(v, where)
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise DraftError("expected 64 lower-case hex digits (SHA-256)", field=where)
    return s


def _prob(v: Any, where: str) -> float:
    f = _float(v, where)
    if not 0.0 <= f <= 1.0:
        raise DraftError(f"must lie in [0, 1], got {f}", field=where)
    return f


def _ratio(v: Any, where: str) -> float | None:
    f = _opt_float(v, where)
    if f is not None and not 0.0 < f < 1.0:
        raise DraftError(f"a cardiothoracic ratio lies in (0, 1), got {f}", field=where)
    return f


def _axes(v: Any, where: str, flags: Collection[str]) -> tuple[float, float, float] | None:
    """A measured lesion's [axial long axis, axial short axis, craniocaudal extent] in mm;
    only a size measured on the CT (flag ``size_measured``) has them."""
    if v is None:
        return None
    if "size_measured" not in flags:
        raise DraftError("axes are given only for a size measured on the CT (flag "
                         "size_measured)", field=where)
    vals = [_float(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where, 3))]
    if not all(0.0 < x <= 1000.0 for x in vals) or vals[0] < vals[1]:
        raise DraftError("expected [long axis, short axis, craniocaudal] in (0, 1000] mm with "
                         f"long >= short, got {vals}", field=where)
    return vals[0], vals[1], vals[2]


def _side_evidence(v: Any, where: str, laterality: str | None) -> tuple[float, float] | None:
    """The pooled presence of a finding's left and right patches ({"left": p, "right": p}),
    the evidence its side was read from; only a sided finding has it."""
    if v is None:
        return None
    if laterality is None:
        raise DraftError("side evidence is given only for a finding with a laterality",
                         field=where)
    d = _obj(v, where, ("left", "right"))
    return _prob(d["left"], f"{where}.left"), _prob(d["right"], f"{where}.right")


# --- the dataclasses ------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Where a finding is seen: slice indices, z range, boxes, and EMR character spans."""

    slices: tuple[int, ...]
    z_mm: tuple[float, float] | None
    box_voxels: tuple[int, int, int, int, int, int] | None
    box_mm: tuple[float, float, float, float, float, float] | None
    emr_spans: tuple[tuple[int, int], ...]

    @classmethod
    def from_dict(cls, data: Any, where: str = "evidence") -> Evidence:
        d = _obj(data, where, ("slices", "z_mm", "box_voxels", "box_mm", "emr_spans"))
        slices = tuple(_int(v, f"{where}.slices[{i}]")
                       for i, v in enumerate(_list(d["slices"], f"{where}.slices")))
        if any(s < 0 for s in slices):
            raise DraftError("slice indices must be >= 0", field=f"{where}.slices")
        z: tuple[float, float] | None = None
        if d["z_mm"] is not None:
            zl = _list(d["z_mm"], f"{where}.z_mm", 2)
            z = (_float(zl[0], f"{where}.z_mm[0]"), _float(zl[1], f"{where}.z_mm[1]"))
        bv: tuple[int, int, int, int, int, int] | None = None
        if d["box_voxels"] is not None:
            bl = _list(d["box_voxels"], f"{where}.box_voxels", 6)
            vals = [_int(v, f"{where}.box_voxels[{i}]") for i, v in enumerate(bl)]
            if any(vals[i] > vals[i + 3] for i in range(3)):
                raise DraftError("expected [k0,i0,j0,k1,i1,j1] with each start <= end",
                                 field=f"{where}.box_voxels")
            bv = cast(tuple[int, int, int, int, int, int], tuple(vals))
        bm: tuple[float, float, float, float, float, float] | None = None
        if d["box_mm"] is not None:
            ml = _list(d["box_mm"], f"{where}.box_mm", 6)
            fv = [_float(v, f"{where}.box_mm[{i}]") for i, v in enumerate(ml)]
            bm = cast(tuple[float, float, float, float, float, float], tuple(fv))
        spans: list[tuple[int, int]] = []
        for i, sp in enumerate(_list(d["emr_spans"], f"{where}.emr_spans")):
            w = f"{where}.emr_spans[{i}]"
            pair = _list(sp, w, 2)
            a, b = _int(pair[0], f"{w}[0]"), _int(pair[1], f"{w}[1]")
            if not 0 <= a <= b:
                raise DraftError(f"expected 0 <= start <= end, got [{a}, {b}]", field=w)
            spans.append((a, b))
        return cls(slices=slices, z_mm=z, box_voxels=bv, box_mm=bm, emr_spans=tuple(spans))

    def to_dict(self) -> dict[str, Any]:
        return {
            "slices": list(self.slices),
            "z_mm": None if self.z_mm is None else list(self.z_mm),
            "box_voxels": None if self.box_voxels is None else list(self.box_voxels),
            "box_mm": None if self.box_mm is None else list(self.box_mm),
            "emr_spans": [list(s) for s in self.emr_spans],
        }


@dataclass(frozen=True)
class Finding:
    """One finding of the finding vocabulary, present or absent, with its evidence."""

    label: str
    present: bool
    probability: float
    laterality: Laterality | None
    location: str | None
    size_mm: float | None
    sentence: str
    evidence: Evidence
    flags: tuple[str, ...]
    #: the cardiothoracic ratio measured on the CT (a ratio label such as cardiomegaly, flag
    #: ``ratio_measured``); None otherwise.  Optional in the JSON (drafts before stop 29).
    ratio: float | None = None
    #: a nodule or mass measured on the CT (flag ``size_measured``): the long and short axis
    #: of its largest axial section and its craniocaudal extent, mm; None otherwise.
    #: Optional in the JSON (drafts before stop 31).
    size_axes_mm: tuple[float, float, float] | None = None
    #: the pooled presence of its left and right patches, from which its side was read
    #: (flag ``side_uncertain`` where they are near equal); None where the side was not read
    #: per side.  Optional in the JSON (drafts before stop 42).
    side_evidence: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _ratio(self.ratio, f"finding {self.label}.ratio")
        _axes(None if self.size_axes_mm is None else list(self.size_axes_mm),
              f"finding {self.label}.size_axes_mm", self.flags)
        _side_evidence(None if self.side_evidence is None else dict(
            zip(("left", "right"), self.side_evidence, strict=True)),
            f"finding {self.label}.side_evidence", self.laterality)

    @classmethod
    def from_dict(cls, data: Any, where: str = "finding",
                  labels: Collection[str] | None = None) -> Finding:
        d = _obj(data, where, ("label", "present", "probability", "laterality", "location",
                               "size_mm", "sentence", "evidence", "flags"),
                  optional=("ratio", "size_axes_mm", "side_evidence"))
        label = _str(d["label"], f"{where}.label", nonempty=True)
        if labels is not None and label not in labels:
            raise DraftError(f"unknown finding label {label!r}; known: {sorted(labels)}",
                             field=f"{where}.label")
        lat = d["laterality"]
        if lat is not None and lat not in LATERALITIES:
            raise DraftError(f"expected one of {list(LATERALITIES)} or null, got {lat!r}",
                             field=f"{where}.laterality")
        size = _opt_float(d["size_mm"], f"{where}.size_mm")
        if size is not None and size <= 0:
            raise DraftError(f"must be > 0 mm, got {size}", field=f"{where}.size_mm")
        flags = tuple(_str(v, f"{where}.flags[{i}]")
                      for i, v in enumerate(_list(d["flags"], f"{where}.flags")))
        ratio = _ratio(d.get("ratio"), f"{where}.ratio")
        axes = _axes(d.get("size_axes_mm"), f"{where}.size_axes_mm", flags)
        side_ev = _side_evidence(d.get("side_evidence"), f"{where}.side_evidence", lat)
        return cls(
            label=label,
            present=_bool(d["present"], f"{where}.present"),
            probability=_prob(d["probability"], f"{where}.probability"),
            laterality=cast("Laterality | None", lat),
            location=_opt_str(d["location"], f"{where}.location"),
            size_mm=size,
            sentence=_str(d["sentence"], f"{where}.sentence"),
            evidence=Evidence.from_dict(d["evidence"], f"{where}.evidence"),
            flags=flags, ratio=ratio, size_axes_mm=axes, side_evidence=side_ev,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label, "present": self.present, "probability": self.probability,
            "laterality": self.laterality, "location": self.location, "size_mm": self.size_mm,
            "sentence": self.sentence, "evidence": self.evidence.to_dict(),
            "flags": list(self.flags),
        }
        if self.ratio is not None:
            out["ratio"] = self.ratio
        if self.size_axes_mm is not None:
            out["size_axes_mm"] = list(self.size_axes_mm)
        if self.side_evidence is not None:
            out["side_evidence"] = {"left": self.side_evidence[0],
                                    "right": self.side_evidence[1]}
        return out


@dataclass(frozen=True)
class Sections:
    """The four free-text sections of the report."""

    indication: str
    technique: str
    findings: str
    impression: str

    @classmethod
    def from_dict(cls, data: Any, where: str = "sections") -> Sections:
        d = _obj(data, where, SECTION_NAMES)
        return cls(**{k: _str(d[k], f"{where}.{k}") for k in SECTION_NAMES})

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in SECTION_NAMES}


@dataclass(frozen=True)
class ModalityWeights:
    ct: float
    emr: float

    @classmethod
    def from_dict(cls, data: Any, where: str = "modality_weights") -> ModalityWeights:
        d = _obj(data, where, ("ct", "emr"))
        return cls(ct=_prob(d["ct"], f"{where}.ct"), emr=_prob(d["emr"], f"{where}.emr"))

    def to_dict(self) -> dict[str, float]:
        return {"ct": self.ct, "emr": self.emr}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    checkpoint_sha256: str

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelInfo:
        d = _obj(data, where, ("name", "version", "checkpoint_sha256"))
        return cls(name=_str(d["name"], f"{where}.name", nonempty=True),
                   version=_str(d["version"], f"{where}.version", nonempty=True),
                   checkpoint_sha256=_sha(d["checkpoint_sha256"], f"{where}.checkpoint_sha256"))

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version,
                "checkpoint_sha256": self.checkpoint_sha256}


@dataclass(frozen=True)
class InputsInfo:
    series_uid: str
    dicom_sha256: str
    emr_sha256: str

    @classmethod
    def from_dict(cls, data: Any, where: str = "inputs") -> InputsInfo:
        d = _obj(data, where, ("series_uid", "dicom_sha256", "emr_sha256"))
        uid = _str(d["series_uid"], f"{where}.series_uid", nonempty=True)
        if len(uid) > 64 or any(c not in "0123456789." for c in uid):
            raise DraftError("expected a DICOM UID (digits and dots, at most 64 characters)",
                             field=f"{where}.series_uid")
        return cls(series_uid=uid, dicom_sha256=_sha(d["dicom_sha256"], f"{where}.dicom_sha256"),
                   emr_sha256=_sha(d["emr_sha256"], f"{where}.emr_sha256"))

    def to_dict(self) -> dict[str, str]:
        return {"series_uid": self.series_uid, "dicom_sha256": self.dicom_sha256,
                "emr_sha256": self.emr_sha256}


#: the scan's ends that can cut through the lungs
SCAN_ENDS = ("inferior", "superior")
#: the share of the lungs outside the model's grid below which no draft or view states a loss
#: (until stop 34 the air in the table's core read as lung and A0001's grid "left out" 0.03 %;
#: a table touching the patient, or air between the body's pieces, can still read so)
STATED_MIN_LOSS = 0.005


@dataclass(frozen=True)
class Coverage:
    """How much of the lungs the scan and the model saw: ``lung_in_model_grid`` is the share
    of the lung voxels inside the model's grid (its field along the body axis is fixed, so a
    longer chest loses a part), ``scan_cuts_lung`` the scan's own ends that run through the
    lungs (that part of the chest was not imaged)."""

    lung_in_model_grid: float
    scan_cuts_lung: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.lung_in_model_grid <= 1.0:
            raise DraftError(f"expected a share in [0, 1], got {self.lung_in_model_grid!r}",
                             field="coverage.lung_in_model_grid")
        bad = [e for e in self.scan_cuts_lung if e not in SCAN_ENDS]
        if bad or len(set(self.scan_cuts_lung)) != len(self.scan_cuts_lung):
            raise DraftError(f"expected distinct values of {list(SCAN_ENDS)}, got "
                             f"{list(self.scan_cuts_lung)}", field="coverage.scan_cuts_lung")

    @classmethod
    def from_dict(cls, data: Any, where: str = "coverage") -> Coverage:
        d = _obj(data, where, ("lung_in_model_grid", "scan_cuts_lung"))
        ends = _list(d["scan_cuts_lung"], f"{where}.scan_cuts_lung")
        return cls(lung_in_model_grid=_prob(d["lung_in_model_grid"],
                                            f"{where}.lung_in_model_grid"),
                   scan_cuts_lung=tuple(_str(e, f"{where}.scan_cuts_lung") for e in ends))

    def to_dict(self) -> dict[str, Any]:
        return {"lung_in_model_grid": self.lung_in_model_grid,
                "scan_cuts_lung": list(self.scan_cuts_lung)}


@dataclass(frozen=True)
class NoteCall:
    """One finding's presence probability and call with the note and without it."""

    label: str
    with_note: float
    without_note: float
    present_with_note: bool
    present_without_note: bool

    @classmethod
    def from_dict(cls, data: Any, where: str) -> NoteCall:
        d = _obj(data, where, ("label", "with_note", "without_note", "present_with_note",
                               "present_without_note"))
        return cls(label=_str(d["label"], f"{where}.label", nonempty=True),
                   with_note=_prob(d["with_note"], f"{where}.with_note"),
                   without_note=_prob(d["without_note"], f"{where}.without_note"),
                   present_with_note=_bool(d["present_with_note"],
                                           f"{where}.present_with_note"),
                   present_without_note=_bool(d["present_without_note"],
                                              f"{where}.present_without_note"))

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "with_note": self.with_note,
                "without_note": self.without_note, "present_with_note": self.present_with_note,
                "present_without_note": self.present_without_note}


@dataclass(frozen=True)
class NoteEffect:
    """What the EMR note changed in the findings head's calls: the same weights were also run
    without it (the pass the text is written from, ``decoder.image_pass``, or one more pass
    where that is off). ``changed`` the
    findings called differently without the note, ``largest`` the finding whose presence
    probability moved most. The modality weights say how much of fusion's attention each
    modality had; this says what the note did to the calls."""

    changed: tuple[NoteCall, ...]
    largest: NoteCall | None

    def __post_init__(self) -> None:
        for i, c in enumerate(self.changed):
            if c.present_with_note == c.present_without_note:
                raise DraftError("a changed call must differ with and without the note",
                                 field=f"note_effect.changed[{i}]")
        labels = [c.label for c in self.changed]
        if len(set(labels)) != len(labels):
            raise DraftError(f"a finding listed twice: {labels}", field="note_effect.changed")

    @classmethod
    def from_dict(cls, data: Any, where: str = "note_effect") -> NoteEffect:
        d = _obj(data, where, ("changed", "largest"))
        changed = tuple(NoteCall.from_dict(c, f"{where}.changed[{i}]")
                        for i, c in enumerate(_list(d["changed"], f"{where}.changed")))
        largest = (None if d["largest"] is None
                   else NoteCall.from_dict(d["largest"], f"{where}.largest"))
        return cls(changed=changed, largest=largest)

    def to_dict(self) -> dict[str, Any]:
        return {"changed": [c.to_dict() for c in self.changed],
                "largest": None if self.largest is None else self.largest.to_dict()}

    def summary(self) -> str:
        """One sentence for the reader (the UI states it beside the note)."""
        def name(label: str) -> str:
            return label.replace("_", " ")

        if self.changed:
            parts = [f"{name(c.label)} would "
                     f"{'be called' if c.present_without_note else 'not be called'} "
                     f"(probability {c.with_note:.2f} with the note, {c.without_note:.2f} "
                     f"without)" for c in self.changed]
            return "Without the note, " + "; ".join(parts) + "."
        if self.largest is None:
            return "Without the note, the model makes the same calls."
        lg = self.largest
        return (f"Without the note, the model makes the same calls; the largest change in a "
                f"presence probability is {abs(lg.with_note - lg.without_note):.4f} "
                f"({name(lg.label)}: {lg.with_note:.4f} with the note, {lg.without_note:.4f} "
                f"without).")


@dataclass(frozen=True)
class ReportDraft:
    """A model-generated report draft; ``status`` is always ``"DRAFT"``."""

    disclaimer: str
    sections: Sections
    findings: tuple[Finding, ...]
    modality_weights: ModalityWeights
    model: ModelInfo
    inputs: InputsInfo
    status: str = STATUS_DRAFT
    #: how much of the lungs the scan and the model saw (drafts before stop 33 have none)
    coverage: Coverage | None = None
    #: what the note changed in the findings head's calls (a draft with a note and a CT,
    #: since stop 50; None otherwise)
    note_effect: NoteEffect | None = None

    def __post_init__(self) -> None:
        if self.status != STATUS_DRAFT:
            raise DraftError(f"a model draft must have status 'DRAFT', got {self.status!r}",
                             field="status")

    @classmethod
    def from_dict(cls, data: Any, *, labels: Collection[str] | None = None) -> ReportDraft:
        """Validate and build; ``labels`` (the finding vocabulary) also checks finding labels."""
        d = _obj(data, "$", ("status", "disclaimer", "sections", "findings", "modality_weights",
                             "model", "inputs"), optional=("coverage", "note_effect"))
        if d["status"] != STATUS_DRAFT:
            raise DraftError(f"expected 'DRAFT', got {d['status']!r}", field="status")
        findings = tuple(Finding.from_dict(f, f"findings[{i}]", labels)
                         for i, f in enumerate(_list(d["findings"], "findings")))
        effect = NoteEffect.from_dict(d["note_effect"]) if "note_effect" in d else None
        if effect is not None and labels is not None:
            calls = [*effect.changed, *([effect.largest] if effect.largest else [])]
            bad = sorted({c.label for c in calls} - set(labels))
            if bad:
                raise DraftError(f"unknown finding label(s) {bad}", field="note_effect")
        return cls(
            disclaimer=_str(d["disclaimer"], "disclaimer", nonempty=True),
            sections=Sections.from_dict(d["sections"]),
            findings=findings,
            modality_weights=ModalityWeights.from_dict(d["modality_weights"]),
            model=ModelInfo.from_dict(d["model"]),
            inputs=InputsInfo.from_dict(d["inputs"]),
            coverage=Coverage.from_dict(d["coverage"]) if "coverage" in d else None,
            note_effect=effect,
        )

    @classmethod
    def from_json(cls, text: str, *, labels: Collection[str] | None = None) -> ReportDraft:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DraftError(f"not JSON: {exc}", field="$") from exc
        return cls.from_dict(data, labels=labels)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "status": self.status,
            "disclaimer": self.disclaimer,
            "sections": self.sections.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "modality_weights": self.modality_weights.to_dict(),
            "model": self.model.to_dict(),
            "inputs": self.inputs.to_dict(),
        }
        if self.coverage is not None:  # absent from older drafts: their hashes stay
            out["coverage"] = self.coverage.to_dict()
        if self.note_effect is not None:  # likewise
            out["note_effect"] = self.note_effect.to_dict()
        return out

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    def content_hash(self) -> str:
        """SHA-256 of :meth:`canonical_json` (hex)."""
        return sha256_text(self.canonical_json())

    def render_text(self) -> str:
        """The report as the plain text that clinicians edit (sections in fixed order)."""
        s = self.sections
        return (f"INDICATION:\n{s.indication.strip()}\n\n"
                f"TECHNIQUE:\n{s.technique.strip()}\n\n"
                f"FINDINGS:\n{s.findings.strip()}\n\n"
                f"IMPRESSION:\n{s.impression.strip()}\n")
