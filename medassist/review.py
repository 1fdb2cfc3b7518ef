"""The reviewer's decisions on the AI findings, as the report text records them.

A report's text has four sections; under FINDINGS a block headed ``Reviewed AI findings:``
holds one line per AI finding the reviewer decided::

    - lung_mass [edited] side=left size=42 mm: Left upper lobe mass, 42 mm.
    - consolidation [rejected]

The UI writes the block (``ui/report_text.py``); the text is versioned, diffed, hashed into
the audit trail and covered by the signature, so these lines are what the signer stands by.
:func:`reviewed_findings` applies them to the draft's findings for the structured exports
(DICOM SR, FHIR): a rejected finding is left out, a side or size the reviewer stated replaces
the model's, and a finding no one decided stays as the model drafted it (a report is signed
only once every AI finding is decided: :func:`undecided`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal, cast

from medassist.draft import Finding, Laterality, ReportDraft
from medassist.labeler import (
    MEASURED_SIZE_FACTOR,
    UNVERIFIED,
    label_text,
    side_clash,
    size_clash,
)

SECTIONS = ("indication", "technique", "findings", "impression")
HEADERS = {s: s.upper() + ":" for s in SECTIONS}
BLOCK = "Reviewed AI findings:"
DECISIONS = ("pending", "accepted", "rejected", "edited")
SIDES = ("", "left", "right", "bilateral", "midline")
_LINE = re.compile(r"^- (?P<label>[a-z0-9_]+) \[(?P<decision>accepted|rejected|edited)\]"
                   r"(?: side=(?P<side>[a-z]+))?(?: size=(?P<size>[0-9]+(?:\.[0-9]+)?) mm)?"
                   r"(?:: (?P<text>.*))?$")

#: flags :func:`reviewed_findings` adds: the side is the reviewer's (set or confirmed), the
#: size is the reviewer's (not the model's, measured or estimated)
REVIEWER_SIDE = "reviewer_side"
REVIEWER_SIZE = "reviewer_size"


@dataclass(frozen=True)
class Decision:
    """One line of the block: the reviewer's decision on an AI finding."""

    decision: Literal["accepted", "rejected", "edited"]
    #: the side the line states ("" for none; one of :data:`SIDES`)
    side: str
    size_mm: float | None
    text: str


def decision_line(label: str, decision: str, side: str, size_mm: float | None,
                  text: str) -> str:
    """The block's line for one decided finding (:func:`split_findings` reads it back); a
    rejected finding's line states nothing else."""
    parts = [f"- {label} [{decision}]"]
    if decision != "rejected":
        if side:
            parts.append(f" side={side}")
        if size_mm is not None:
            parts.append(f" size={size_mm:g} mm")
        if text.strip():
            parts.append(f": {' '.join(text.split())}")
    return "".join(parts)


def split_text(text: str) -> dict[str, str]:
    """Section name → body (stripped); text outside the known headers goes to ``findings``."""
    current = "findings"
    buf: dict[str, list[str]] = {s: [] for s in SECTIONS}
    for line in text.splitlines():
        key = next((s for s, h in HEADERS.items() if line.strip() == h), None)
        if key is not None:
            current = key
            continue
        buf[current].append(line)
    return {s: "\n".join(buf[s]).strip() for s in SECTIONS}


def split_findings(body: str) -> tuple[str, dict[str, Decision]]:
    """FINDINGS body → (narrative, {label: decision}); a line that is not a decision is
    ignored, and a label decided twice keeps its last line."""
    if BLOCK not in body:
        return body.strip(), {}
    narrative, _, block = body.partition(BLOCK)
    decided: dict[str, Decision] = {}
    for line in block.splitlines():
        m = _LINE.match(line.strip())
        if m:
            decided[m["label"]] = _decision(m)
    return narrative.strip(), decided


def _decision(m: re.Match[str]) -> Decision:
    """The decision of a line :data:`_LINE` matched."""
    return Decision(decision=cast("Literal['accepted', 'rejected', 'edited']", m["decision"]),
                    side=m["side"] or "", size_mm=float(m["size"]) if m["size"] else None,
                    text=m["text"] or "")


def mask_decisions(body: str) -> tuple[str, dict[str, Decision]]:
    """A FINDINGS body as a labeler should read it: the block's header and each decision
    line's prefix (``- label [decision] side=… size=… mm: ``) blanked, and a rejected line
    whole, so only the sentences the reviewer kept remain (the same length: character spans
    still index ``body``); with the decisions (:func:`split_findings`). Read whole, a line
    such as ``- consolidation [rejected]`` affirms a consolidation, and ``- pneumothorax
    [accepted]: No pneumothorax.`` names the finding before its negation."""
    at = body.find(BLOCK)
    if at < 0:
        return body, {}
    out = [body[:at], " " * len(BLOCK)]
    decided: dict[str, Decision] = {}
    for line in re.split(r"(\n)", body[at + len(BLOCK):]):
        m = _LINE.match(line.strip())
        if m is None:
            out.append(line)
            continue
        lead = len(line) - len(line.lstrip())
        keep = m.start("text") if m["text"] is not None and m["decision"] != "rejected" else \
            len(line.strip())
        out.append(" " * (lead + keep) + line[lead + keep:])
        decided[m["label"]] = _decision(m)
    return "".join(out), decided


def _laterality(side: str) -> Laterality | None:
    """A reviewer's side as a draft laterality: none stated → None; midline → "none" (a
    side-less finding: CID 244 has no midline)."""
    if not side:
        return None
    return cast("Laterality", "none" if side == "midline" else side)


def reviewed_finding(f: Finding, d: Decision | None) -> Finding | None:
    """``f`` as the reviewer decided it: None where rejected; the reviewer's side and size
    where the line states them (flags :data:`REVIEWER_SIDE`, :data:`REVIEWER_SIZE`; a side
    the reviewer set or kept is no longer ``side_uncertain``, a size they changed is no
    longer the CT's measurement), the line's text as the sentence; ``f`` itself where no
    one decided it."""
    if d is None:
        return f
    if d.decision == "rejected":
        return None
    flags = list(f.flags)
    lat = _laterality(d.side)
    side_evidence = f.side_evidence
    if lat != f.laterality or (lat is not None and "side_uncertain" in flags):
        flags = [x for x in flags if x != "side_uncertain"]
        flags.append(REVIEWER_SIDE)
        if lat is None:
            side_evidence = None  # evidence of a side no one states any more
    size, axes = f.size_mm, f.size_axes_mm
    if d.size_mm is not None and (f.size_mm is None or round(d.size_mm, 1) != round(f.size_mm,
                                                                                     1)):
        size, axes = d.size_mm, None
        flags = [x for x in flags if x != "size_measured"]
        flags.append(REVIEWER_SIZE)
    elif d.size_mm is None and f.size_mm is not None:
        size, axes = None, None  # the reviewer removed the size
        flags = [x for x in flags if x != "size_measured"]
    return replace(f, laterality=lat, size_mm=size, size_axes_mm=axes,
                   side_evidence=side_evidence, flags=tuple(flags),
                   sentence=d.text.strip() or f.sentence)


def reviewed_findings(draft: ReportDraft, text: str
                      ) -> tuple[tuple[int, Finding], ...]:
    """The draft's findings with the decisions recorded in the report ``text`` applied, each
    with its index in the draft (a rejected one is left out, so the indices show which)."""
    _, decided = split_findings(split_text(text)["findings"])
    out = []
    for i, f in enumerate(draft.findings):
        r = reviewed_finding(f, decided.get(f.label))
        if r is not None:
            out.append((i, r))
    return tuple(out)


def undecided(draft: ReportDraft, text: str) -> tuple[str, ...]:
    """The labels of the draft's AI findings, present or absent, on which the report ``text``
    records no decision (in the draft's order): what the exports would otherwise state as the
    model drafted it, under the signer's name (:func:`medassist.reports.sign_report` refuses
    to sign while any is left)."""
    _, decided = split_findings(split_text(text)["findings"])
    return tuple(f.label for f in draft.findings if f.label not in decided)


def rejected_but_stated(text: str) -> tuple[tuple[str, str], ...]:
    """(label, sentence) for each sentence of the report's prose, the FINDINGS narrative and
    kept decision texts (:func:`mask_decisions`) and the IMPRESSION, that affirms a finding
    the reviewer rejected (the project's labeler, with its negation rules): a signed text
    that says so contradicts the exports, which leave the finding out. Rejecting a finding
    in the block does not edit the model's prose (:func:`prose_issues`, reason
    ``rejected``)."""
    return tuple((i.label, i.sentence) for i in prose_issues(text) if i.reason == "rejected")


IssueReason = Literal["rejected", "side", "size", "unverified"]
#: why a sentence of the prose stands against what the signer decided (:func:`prose_issues`)
ISSUE_REASONS: dict[IssueReason, str] = {
    "rejected": "affirms a finding you rejected",
    "side": "states the other side than the one you decided",
    "size": "states a size off the one you decided",
    "unverified": "still carries the draft's [UNVERIFIED] mark",
}


@dataclass(frozen=True)
class ProseIssue:
    """A sentence of the report's prose that the signed exports would contradict, or that
    the draft did not vouch for and nobody has resolved."""

    #: "findings" or "impression"
    section: str
    #: the sentence's number within its section's prose (1-based)
    number: int
    #: the finding it concerns ("" for an unverified sentence that affirms none)
    label: str
    #: a key of :data:`ISSUE_REASONS`
    reason: IssueReason
    sentence: str

    def describe(self) -> str:
        """"IMPRESSION sentence 2 (lung_mass): affirms a finding you rejected" (no text)."""
        about = f" ({self.label})" if self.label else ""
        return (f"{self.section.upper()} sentence {self.number}{about}: "
                f"{ISSUE_REASONS[self.reason]}")


def prose_issues(text: str) -> tuple[ProseIssue, ...]:
    """What the prose of a report (the FINDINGS narrative with the kept decision texts, and
    the IMPRESSION; :func:`mask_decisions`) says against the reviewer's decisions, read with
    the project's labeler: a sentence that affirms a rejected finding, one that affirms only
    an edited finding and names only the other side than the decided one, or states a size
    more than :data:`~medassist.labeler.MEASURED_SIZE_FACTOR` off the decided size; and every
    sentence still marked ``[UNVERIFIED: ...]`` by the draft's guard. The signed exports state
    the decisions, so a signed text that says otherwise contradicts them
    (:func:`medassist.reports.sign_report` asks the signer to resolve or confirm these)."""
    parts = split_text(text)
    body, decided = mask_decisions(parts["findings"])
    out: list[ProseIssue] = []
    for section, prose in (("findings", body), ("impression", parts["impression"])):
        # numbered as a reader counts them: a list item's "1." is no sentence
        worded = [s for s in label_text(prose) if re.search(r"[A-Za-z]", s.text)]
        for number, s in enumerate(worded, start=1):
            affirmed = [lab for lab, pos in s.labels.items() if pos]
            found: list[tuple[str, IssueReason]] = [(lab, "rejected") for lab in affirmed
                                             if lab in decided
                                             and decided[lab].decision == "rejected"]
            d = decided.get(affirmed[0]) if len(affirmed) == 1 else None
            if d is not None and d.decision == "edited":
                if side_clash(s.text, d.side or None):
                    found.append((affirmed[0], "side"))
                if size_clash(s.text, d.size_mm, MEASURED_SIZE_FACTOR):
                    found.append((affirmed[0], "size"))
            if UNVERIFIED.search(s.text):
                found.append((affirmed[0] if len(affirmed) == 1 else "", "unverified"))
            out += [ProseIssue(section, number, label, reason, s.text.strip())
                    for label, reason in found]
    return tuple(out)


__all__ = ["BLOCK", "DECISIONS", "HEADERS", "ISSUE_REASONS", "REVIEWER_SIDE", "REVIEWER_SIZE",
           "SECTIONS", "SIDES", "Decision", "IssueReason", "ProseIssue", "decision_line",
           "mask_decisions", "prose_issues", "rejected_but_stated", "reviewed_finding",
           "reviewed_findings", "split_findings", "split_text", "undecided"]
