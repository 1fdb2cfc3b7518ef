"""Choose the diagnostic series by configurable rules, explaining every decision."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dicom_io.config import SelectionConfig
from dicom_io.errors import AmbiguousInputError, NoDiagnosticSeriesError
from dicom_io.index import DicomIndex, SeriesIndex, SeriesRole, StudyIndex


@dataclass(frozen=True)
class RuleResult:
    """One rule applied to one series."""

    rule: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class SeriesDecision:
    """All rule outcomes for one series, and its rank among the eligible ones."""

    series: SeriesIndex
    rules: tuple[RuleResult, ...]
    kernel_class: str
    rank: int | None

    @property
    def eligible(self) -> bool:
        return all(r.passed for r in self.rules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series.series_uid,
            "study_uid": self.series.study_uid,
            "description": self.series.description,
            "role": self.series.role.value,
            "eligible": self.eligible,
            "rank": self.rank,
            "kernel": self.series.kernel,
            "kernel_class": self.kernel_class,
            "slice_thickness_mm": self.series.slice_thickness,
            "images": self.series.n_images,
            "rules": [r.to_dict() for r in self.rules],
        }


@dataclass(frozen=True)
class Selection:
    """The chosen series of one study (if any) and the decision for each of its series."""

    study_uid: str
    selected: SeriesIndex | None
    decisions: tuple[SeriesDecision, ...]
    explanation: str

    def require(self) -> SeriesIndex:
        """The selected series, or :class:`NoDiagnosticSeriesError` with every reason."""
        if self.selected is None:
            raise NoDiagnosticSeriesError(self.explanation)
        return self.selected

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "selected_series_uid": self.selected.series_uid if self.selected else None,
            "explanation": self.explanation,
            "decisions": [d.to_dict() for d in self.decisions],
        }


def kernel_class(kernel: str, cfg: SelectionConfig) -> str:
    """``soft``, ``sharp`` or ``unknown`` for a ConvolutionKernel value."""
    k = kernel.strip().upper()
    if not k:
        return "unknown"
    if any(re.search(p, k, re.IGNORECASE) for p in cfg.sharp_kernels):
        return "sharp"
    if any(re.search(p, k, re.IGNORECASE) for p in cfg.soft_tissue_kernels):
        return "soft"
    return "unknown"


def _rules(s: SeriesIndex, cfg: SelectionConfig) -> list[RuleResult]:
    h = s.first
    out = [RuleResult("modality", s.modality == cfg.modality.upper(),
                      f"modality is {s.modality or 'missing'} (need {cfg.modality})")]
    if cfg.require_original_primary:
        types = {i.image_type[:2] for i in s.instances}
        ok = types == {("ORIGINAL", "PRIMARY")}
        shown = "/".join(sorted({"\\".join(t) or "missing" for t in types}))
        out.append(RuleResult("original_primary", ok, f"ImageType starts {shown}"))
    out.append(RuleResult("not_localizer", s.role != SeriesRole.LOCALIZER,
                          f"role {s.role.value}: {s.role_reason}"))
    out.append(RuleResult("diagnostic_role", s.role == SeriesRole.DIAGNOSTIC,
                          f"role {s.role.value}: {s.role_reason}"))
    out.append(RuleResult("enough_slices", s.n_images >= cfg.min_slices,
                          f"{s.n_images} image(s) (need at least {cfg.min_slices})"))
    del h
    return out


def _preference(s: SeriesIndex, kclass: str, cfg: SelectionConfig) -> tuple[float, ...]:
    kernel_rank = {"soft": 0.0, "unknown": 1.0, "sharp": 2.0}[kclass] \
        if cfg.prefer_soft_tissue_kernel else 0.0
    thick = s.slice_thickness if s.slice_thickness is not None else 99.0
    thick_rank = max(thick, cfg.thinnest_useful_mm) if cfg.prefer_thinner_slices else 0.0
    return (kernel_rank, thick_rank, -float(s.n_images), float(s.number or 0))


def select_study(study: StudyIndex, cfg: SelectionConfig | None = None) -> Selection:
    """Apply the rules to every series of one study and choose the best eligible one.

    Preference among eligible series: soft-tissue kernel, then thinner slices (down to
    ``thinnest_useful_mm``), then more images, then the lower series number.
    """
    conf = cfg or SelectionConfig()
    series = list(study.series)
    classes = {s.series_uid: kernel_class(s.kernel, conf) for s in series}
    prelim = [(s, tuple(_rules(s, conf))) for s in series]
    eligible = [s for s, rules in prelim if all(r.passed for r in rules)]
    ranked = sorted(eligible, key=lambda s: _preference(s, classes[s.series_uid], conf))
    rank = {s.series_uid: n + 1 for n, s in enumerate(ranked)}
    decisions = tuple(
        SeriesDecision(s, rules, classes[s.series_uid], rank.get(s.series_uid))
        for s, rules in prelim
    )
    if not series:
        explanation = "no image series found in the study"
    elif not ranked:
        reasons = "; ".join(
            f"series {d.series.series_uid} ({d.series.description or 'no description'}): "
            + ", ".join(f"{r.rule} failed ({r.detail})" for r in d.rules if not r.passed)
            for d in decisions
        )
        explanation = f"no series passes the diagnostic rules: {reasons}"
    else:
        best = ranked[0]
        explanation = (
            f"selected series {best.series_uid} ({best.description or 'no description'}): "
            f"kernel {best.kernel or 'unknown'} ({classes[best.series_uid]}), "
            f"slice thickness {best.slice_thickness} mm, {best.n_images} images; "
            f"{len(ranked)} of {len(series)} series eligible"
        )
    return Selection(study.study_uid, ranked[0] if ranked else None, decisions, explanation)


def select_series(index: DicomIndex, cfg: SelectionConfig | None = None) -> list[Selection]:
    """One :class:`Selection` per study in ``index``."""
    return [select_study(st, cfg) for st in index.studies]


def select_single(index: DicomIndex, cfg: SelectionConfig | None = None) -> SeriesIndex:
    """The diagnostic series of an input that holds exactly one study.

    Raises:
        NoDiagnosticSeriesError: there is no image series, or none passes the rules.
        AmbiguousInputError: the input holds several studies (possibly several patients).
    """
    if not index.studies:
        raise NoDiagnosticSeriesError("no DICOM image series found in the input",
                                      path=index.root)
    if len(index.studies) > 1:
        raise AmbiguousInputError(
            f"the input holds {len(index.studies)} studies; refusing to guess which one is "
            "meant: pass a series UID (--series) or a folder with one study",
            path=index.root,
        )
    return select_study(index.studies[0], cfg).require()
