"""The report text that clinicians edit: four sections, and in FINDINGS a block with the
reviewer's decision on each AI finding (accepted / rejected / edited with side, size, text).

Everything a reviewer changes therefore lives in the versioned report text: it is diffed
against the AI draft, hashed into the audit trail and covered by the signature. The block's
format is the core's (:mod:`medassist.review`), which the exports read it with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from medassist.draft import Finding, ReportDraft
from medassist.review import (
    BLOCK,
    DECISIONS,
    HEADERS,
    SECTIONS,
    SIDES,
    decision_line,
    prose_issues,
    split_findings,
    split_text,
)

__all__ = ["BLOCK", "DECISIONS", "HEADERS", "SECTIONS", "SIDES", "FindingReview", "compose",
           "finding_line", "from_draft", "pending_note", "prose_note", "reviews_from_text",
           "split_findings", "split_text"]


@dataclass(frozen=True)
class FindingReview:
    """One AI finding as the reviewer sees and decides it."""

    index: int
    label: str
    present: bool
    probability: float
    flags: tuple[str, ...]
    slices: tuple[int, ...]
    decision: str
    side: str
    size_mm: float | None
    text: str
    #: the cardiothoracic ratio measured on the CT (draft ``Finding.ratio``)
    ratio: float | None = None
    #: the size the draft stated (``size_mm`` is the reviewer's once edited)
    model_size_mm: float | None = None
    #: a measured lesion's axial long and short axis and craniocaudal extent (draft
    #: ``Finding.size_axes_mm``)
    size_axes_mm: tuple[float, float, float] | None = None
    #: the side the draft stated (``side`` is the reviewer's once edited)
    model_side: str = ""

    @property
    def low_confidence(self) -> bool:
        return "low_confidence" in self.flags

    @property
    def side_uncertain(self) -> bool:
        """The draft's side, resting on near-equal evidence on the left and the right (flag
        ``side_uncertain``); a side the reviewer changed is theirs."""
        return "side_uncertain" in self.flags and bool(self.side) and \
            self.side == self.model_side

    @property
    def status(self) -> str:
        """What the model says: present, absent, or not assessed (a label its fitted
        threshold never calls: "absent" would be a finding it cannot make); present (found on
        the CT) where a measurement on the CT made the call (flag ``found_on_ct``), whatever
        the head's probability; absent (air bronchograms) where the CT took the head's call
        back (flag ``air_bronchograms``)."""
        if "not_assessed" in self.flags:
            return "not assessed"
        if "small_not_assessed" in self.flags and not self.present:
            # a detector trained only on findings of some size or more (the sentence says
            # which): absent means none that large
            return "absent (small ones not assessed)"
        if "found_on_ct" in self.flags and self.present:
            # called by a measurement on the CT, not by the probability shown beside it
            return "present (found on the CT)"
        if "air_bronchograms" in self.flags and not self.present:
            # the head's call taken back on the CT (multimodal.bronchogram)
            return "absent (air bronchograms: the consolidation)"
        return "present" if self.present else "absent"

    @property
    def size_edited(self) -> bool:
        """The reviewer changed (or gave) the size: it is no longer the draft's."""
        if self.size_mm is None:
            return False
        return self.model_size_mm is None or round(self.size_mm, 1) != round(
            self.model_size_mm, 1)

    @property
    def size_measured(self) -> bool:
        """The size is the draft's and measured on the CT, not the size head's estimate."""
        return "size_measured" in self.flags and not self.size_edited

    @property
    def consistency_flags(self) -> tuple[str, ...]:
        return tuple(f for f in self.flags
                     if f not in ("low_confidence", "size_measured", "ratio_measured"))


def from_draft(f: Finding, index: int) -> FindingReview:
    return FindingReview(index=index, label=f.label, present=f.present,
                         probability=f.probability, flags=f.flags,
                         slices=f.evidence.slices, decision="pending",
                         side=f.laterality or "", size_mm=f.size_mm, text=f.sentence,
                         ratio=f.ratio, model_size_mm=f.size_mm, size_axes_mm=f.size_axes_mm,
                         model_side=f.laterality or "")


def reviews_from_text(draft: ReportDraft, text: str) -> list[FindingReview]:
    """The findings of ``draft`` with the decisions recorded in ``text`` applied."""
    _, decided = split_findings(split_text(text)["findings"])
    out = []
    for i, f in enumerate(draft.findings):
        r = from_draft(f, i)
        if f.label in decided:
            d = decided[f.label]
            r = replace(r, decision=d.decision, side=d.side, size_mm=d.size_mm,
                        text=d.text or r.text)
        out.append(r)
    return out


def finding_line(r: FindingReview) -> str:
    return decision_line(r.label, r.decision, r.side, r.size_mm, r.text)


def compose(sections: dict[str, str], reviews: list[FindingReview]) -> str:
    """The report text: the sections, with the decided findings listed under FINDINGS."""
    narrative, _ = split_findings(sections.get("findings", ""))
    lines = [finding_line(r) for r in reviews if r.decision != "pending"]
    findings = narrative.strip()
    if lines:
        findings = (findings + "\n\n" if findings else "") + BLOCK + "\n" + "\n".join(lines)
    bodies = {s: (findings if s == "findings" else sections.get(s, "")).strip()
              for s in SECTIONS}
    # the layout of ReportDraft.render_text, so an untouched draft gives the same text
    return "\n\n".join(f"{HEADERS[s]}\n{bodies[s]}" for s in SECTIONS) + "\n"


def prose_note(text: str) -> str:
    """A warning for the editor's status line (plain text) where the report's prose
    contradicts the reviewer's decisions (a rejected finding still affirmed, an edited side
    or size stated otherwise) or still carries the draft's ``[UNVERIFIED]`` marks
    (:func:`medassist.review.prose_issues`); "" where it does neither. A decision does not
    edit the prose, and signing asks for these to be resolved or confirmed."""
    issues = prose_issues(text)
    if not issues:
        return ""
    said = [f"{i.describe()}: \"{i.sentence}\"" for i in issues if i.reason != "unverified"]
    marked = sum(i.reason == "unverified" for i in issues)
    parts = []
    if said:
        parts.append("the text says otherwise than your decisions (" + "; ".join(said) +
                     "); edit the narrative or impression, or the decision")
    if marked:
        parts.append(f"{marked} sentence(s) still carry the draft's [UNVERIFIED] mark; check "
                     "each and delete its mark, or edit or delete the sentence")
    return " Check before signing: " + "; ".join(parts) + "."


def pending_note(reviews: list[FindingReview], text: str = "") -> str:
    """The editor's status line on opening an unsigned report: how many AI findings still
    need a decision before it can be signed, and what its ``text`` (where given) says
    against the decisions or still marks unverified (:func:`prose_note`); "" when neither."""
    n = sum(r.decision == "pending" for r in reviews)
    head = "" if n == 0 else (f"{n} of {len(reviews)} AI findings still need a decision "
                              "before signing.")
    return (head + (prose_note(text) if text else "")).strip()
