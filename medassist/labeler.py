"""Rule-based report labeler: a finding lexicon plus negation detection.

Used as the consistency guard of the drafts (a generated sentence that contradicts the findings
head is flagged, never shown as fact) and to score generated text (clinical-efficacy F1).
Each sentence gets, per finding label it mentions, ``True`` (affirmed) or ``False`` (negated
or stated normal); labels it does not mention are absent.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from medassist.history import SENTENCE, NoteHistory, unsupported

#: organs whose "mass" is not a lung mass (a hepatic mass is a liver lesion)
_OTHER_ORGAN = (r"(?<!hepatic )(?<!liver )(?<!adrenal )(?<!renal )(?<!kidney )"
                r"(?<!pancreatic )(?<!breast )(?<!thyroid )(?<!splenic )(?<!mediastinal )")
_LIVER_FINDING = r"(?:lesions?|mass(?:es)?|hypodensit(?:y|ies)|metastas[ie]s)"
LEXICON: dict[str, tuple[str, ...]] = {
    "lung_nodule": (r"\bnodules?\b",),
    "lung_mass": (_OTHER_ORGAN + r"\bmass(?:es)?\b",),
    "consolidation": (r"\bconsolidation\b", r"\bpneumonia\b", r"\bconsolidative\b",
                      r"\bairspace (?:disease|opacit(?:y|ies))\b"),
    # a bare "effusion(s)" is pleural (reports write "small left effusion"), a pericardial
    # one is not
    "pleural_effusion": (r"\bpleural effusions?\b", r"(?<!pericardial )\beffusions?\b"),
    "pneumothorax": (r"\bpneumothora(?:x|ces)\b",),
    "emphysema": (r"\bemphysema(?:tous)?\b",),
    "mediastinal_lymphadenopathy": (r"\blymphadenopathy\b", r"\badenopathy\b",
                                    r"\blymph nodes?\b"),
    "pericardial_effusion": (r"\bpericardial effusion\b",),
    "cardiomegaly": (r"\bcardiomegaly\b", r"\bheart is enlarged\b", r"\benlarged heart\b"),
    "liver_lesion": (r"\b(?:liver|hepatic)\b[^.]*\b" + _LIVER_FINDING + r"\b",
                     r"\blesions?\b[^.]*\b(?:liver|hepatic)\b"),
    # the only fractures a chest CT draft reports are rib fractures; a decoder sentence that
    # drops the word ("there is an acute fracture.") still states one
    "rib_fracture": (r"\brib fractures?\b", r"\bfracture of the\b[^.]*\brib\b",
                     r"\bfractur(?:es?|ed)\b",
                     # how a report may describe one without the word
                     r"\bcortical (?:break|disruption|step-?off)\b",
                     r"\blucen(?:t line|cy)\b[^.]*\bribs?\b"),
}
#: statements of normality that negate a label without a negation word
NORMAL: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (r"\bheart size is normal\b", r"\bheart is normal in size\b"),
    "liver_lesion": (r"\bupper abdomen is unremarkable\b",),
    "rib_fracture": (r"\bno acute osseous abnormality\b", r"\bno acute fracture\b"),
    "mediastinal_lymphadenopathy": (r"\bno enlarged mediastinal lymph nodes?\b",),
}
NEGATION = re.compile(r"\b(?:no|without|negative for|free of|not|absent|resolved)\b")
#: a negation right after the mention, as structured and real reports write it ("pleural
#: effusion: none", "pneumothorax is not seen", "nodules are not identified"); not "not seen
#: on the prior study" (a new finding)
NEGATION_AFTER = re.compile(
    r"^(?:es|s)?\s*(?::\s*(?:none|absent|negative|no)\b|(?:is|are|was|were)?\s*"
    r"(?:not (?:seen|identified|present|demonstrated|visualized|evident|appreciated)"
    r"(?! (?:on|in|at) (?:the )?(?:prior|previous|earlier|comparison))|absent)\b)")
#: the draft's own bracketed annotations ([UNVERIFIED: ...], [ADDED FROM THE FINDINGS LIST]):
#: not report content, so not read for findings or negation
ANNOTATION = re.compile(r"\[(?:UNVERIFIED|ADDED FROM THE FINDINGS LIST|SIZE MEASURED ON CT"
                        r"|RATIO MEASURED ON CT)[^\]]*\]")
#: the guard's warnings among them: a sentence the draft does not vouch for
UNVERIFIED = re.compile(r"\[UNVERIFIED: ?(?P<why>[^\]]*)\]")
#: the mark in front of a finding's own sentence that the draft adds where the decoder left the
#: finding out (:func:`complete`)
ADDED_MARK = "[ADDED FROM THE FINDINGS LIST]"
#: wording that states the patient's history (from the EMR): unsupported in a draft without one
HISTORY = re.compile(r"\b(?:in a patient with|history of|known)\b")
#: conclusions that rest on the history (a known primary, heart failure, fever): the reference
#: reports draw them only from the note
HISTORY_CONCLUSION = re.compile(r"\b(?:metastatic|cardiogenic|pneumonia)\b")
#: the guard's reason for a sentence resting on a history the note does not state
HISTORY_UNSTATED = "rests on history the note does not state"


@dataclass(frozen=True)
class SentenceLabels:
    text: str
    start: int
    labels: dict[str, bool]


def label_sentence(sentence: str) -> dict[str, bool]:
    """Label -> affirmed (True) / negated (False) for the labels a sentence mentions (the
    draft's bracketed annotations are ignored)."""
    s = ANNOTATION.sub(" ", sentence).lower()
    out: dict[str, bool] = {}
    for label, pats in NORMAL.items():
        if any(re.search(p, s) for p in pats):
            out[label] = False
    for label, pats in LEXICON.items():
        if label in out:
            continue
        for p in pats:
            m = re.search(p, s)
            if m:
                out[label] = NEGATION.search(s[: m.start()]) is None and \
                    NEGATION_AFTER.match(s[m.end():]) is None
                break
    # "lymph node" mentions affirm lymphadenopathy only when enlarged
    if out.get("mediastinal_lymphadenopathy") and "adenopathy" not in s \
            and "enlarged" not in s:
        del out["mediastinal_lymphadenopathy"]
    return out


#: a definite reference to an effusion named before ("The effusion is small.")
_THE_EFFUSION = re.compile(r"\b(?:the|this|that) effusion\b")


def _refers_to_pericardial(sentence: str, labels: Mapping[str, bool], last: str | None
                           ) -> bool:
    """A sentence whose only effusion is "the effusion", without a side or "pleural", after a
    pericardial effusion was the last one affirmed: it speaks of that one, not of a pleural
    one."""
    s = ANNOTATION.sub(" ", sentence).lower()
    return (last == "pericardial" and "pleural_effusion" in labels
            and "pericardial_effusion" not in labels and "pleural" not in s
            and not stated_sides(sentence) and _THE_EFFUSION.search(s) is not None)


def label_text(text: str) -> list[SentenceLabels]:
    """Each sentence of ``text`` with its labels (:func:`label_sentence`); "the effusion"
    after a pericardial effusion is that pericardial effusion."""
    res = []
    last: str | None = None  # the kind of effusion named last
    for m in SENTENCE.finditer(text):
        sent = m.group(0).strip()
        if not sent:
            continue
        labels = label_sentence(sent)
        if _refers_to_pericardial(sent, labels, last):
            labels["pericardial_effusion"] = labels.pop("pleural_effusion")
        if labels.get("pleural_effusion"):
            last = "pleural"
        elif labels.get("pericardial_effusion"):
            last = "pericardial"
        res.append(SentenceLabels(sent, m.start(), labels))
    return res


def text_findings(text: str, labels: Iterable[str]) -> dict[str, bool]:
    """Report-level presence: a label is present if any sentence affirms it."""
    found = {lab: False for lab in labels}
    for s in label_text(text):
        for lab, pos in s.labels.items():
            if pos and lab in found:
                found[lab] = True
    return found


def complete(text: str, head: Mapping[str, bool], sentences: Mapping[str, str]
             ) -> tuple[str, set[str]]:
    """Add what the text leaves out: each finding the head calls present that no sentence of
    ``text`` affirms gets its structured sentence (``sentences[label]``) appended, prefixed by
    ``[ADDED FROM THE FINDINGS LIST]``, so the narrative never omits a stated finding.
    Returns the text and the set of labels that were added."""
    said = text_findings(text, head)
    added = [lab for lab, pos in head.items() if pos and not said[lab] and lab in sentences]
    parts = [text.strip()] if text.strip() else []
    parts += [f"{ADDED_MARK} {sentences[lab]}" for lab in added]
    return " ".join(parts), set(added)


_SIDE_WORDS = {"left": re.compile(r"\bleft\b|\bL[UL]L\b", re.I),
               "right": re.compile(r"\bright\b|\bR[UML]L\b", re.I)}


def stated_sides(sentence: str) -> set[str]:
    """The sides (``left``, ``right``) a sentence names, by word or lobe code."""
    return {side for side, rx in _SIDE_WORDS.items() if rx.search(sentence)}


#: the mark in front of a sentence that states the side of a finding whose side rests on
#: near-equal image evidence on the left and the right (:func:`mark_uncertain_sides`)
SIDE_UNCERTAIN = "[UNVERIFIED: side uncertain on the CT]"


def mark_uncertain_sides(text: str, uncertain: Collection[str]) -> tuple[str, set[str]]:
    """Mark the sides the CT does not settle: a sentence that affirms a finding of
    ``uncertain`` (called, its side read off near-equal evidence on both sides) and names a
    side outside the draft's own annotations is prefixed :data:`SIDE_UNCERTAIN` (once).
    Returns the text (rebuilt sentence by sentence) and the labels marked."""
    out: list[str] = []
    marked: set[str] = set()
    for sent in label_text(text):
        hit = [lab for lab, pos in sent.labels.items() if pos and lab in uncertain]
        if hit and SIDE_UNCERTAIN not in sent.text \
                and stated_sides(ANNOTATION.sub(" ", sent.text)):
            out.append(f"{SIDE_UNCERTAIN} {sent.text}")
            marked.update(hit)
            continue
        out.append(sent.text)
    return " ".join(out), marked


def history_unstated_labels(text: str) -> set[str]:
    """The labels affirmed by sentences of a guarded text marked as resting on a history the
    note does not state (:func:`guard` with ``note_history``)."""
    return {lab for s in label_text(text) if HISTORY_UNSTATED in s.text
            for lab, pos in s.labels.items() if pos}


def side_clash(sentence: str, side: str | None) -> bool:
    """The sentence names only the other side than ``side`` (left / right)."""
    if side not in _SIDE_WORDS:
        return False
    other = "right" if side == "left" else "left"
    return bool(_SIDE_WORDS[other].search(sentence)) and not _SIDE_WORDS[side].search(sentence)


#: the five lobes, by the location codes of the findings head
_LOBES = {code: re.compile(rf"\b{side} {level} lobe\b|\b{code}\b", re.I)
          for code, side, level in (("RUL", "right", "upper"), ("RML", "right", "middle"),
                                    ("RLL", "right", "lower"), ("LUL", "left", "upper"),
                                    ("LLL", "left", "lower"))}


def stated_lobes(sentence: str) -> set[str]:
    """The lobes a sentence names ("left lower lobe", "RUL"), as location codes."""
    s = ANNOTATION.sub(" ", sentence)
    return {code for code, rx in _LOBES.items() if rx.search(s)}


def _lobe_clash(sentence: str, lobe: str | None) -> bool:
    """The sentence names lobes, and not the head's ``lobe`` (a location code)."""
    if lobe not in _LOBES:
        return False
    said = stated_lobes(sentence)
    return bool(said) and lobe not in said


#: a sentence's size is contradicted by one measured on the CT (multimodal.measure) when it is
#: more than this factor off it (the decoder states sizes to 0.1 cm; the seven measured masses
#: of the generated body test splits were within 0.6 mm of their reference, docs/model.md
#: "Sixteenth round")
MEASURED_SIZE_FACTOR = 1.2

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b")


def stated_sizes_mm(sentence: str) -> list[float]:
    """Every size a sentence states ("7 mm", "6.6 cm"), in mm, in order (the draft's own
    bracketed annotations left out)."""
    return [float(v) * (10.0 if unit == "cm" else 1.0)
            for v, unit in _SIZE.findall(ANNOTATION.sub(" ", sentence).lower())]


def stated_size_mm(sentence: str) -> float | None:
    """The largest size a sentence states ("7 mm", "6.6 cm"), in mm; None if it states none."""
    sizes = stated_sizes_mm(sentence)
    return max(sizes) if sizes else None


#: the mark in front of a sentence whose stated size the draft replaced by the one measured on
#: the CT (:func:`restate_sizes`)
MEASURED_MARK = "[SIZE MEASURED ON CT]"


#: the mark in front of a sentence whose cardiothoracic ratio the draft replaced by the one
#: measured on the CT, and in front of one whose ratio is the decoder's alone
#: (:func:`restate_ratios`)
RATIO_MARK = "[RATIO MEASURED ON CT]"
RATIO_UNMEASURED = "[UNVERIFIED: ratio not measured on the CT]"
_RATIO = re.compile(r"(?<![\d.])0\.\d{1,2}(?!\d|\.\d)")  # "0.58", also before a full stop


def _affirmed_and_stated(sent: SentenceLabels, pattern: re.Pattern[str]
                         ) -> tuple[list[str], list[re.Match[str]]]:
    """The labels a sentence affirms, and the matches of ``pattern`` (a size, a ratio) in it
    outside the draft's own bracketed annotations."""
    affirmed = [lab for lab, pos in sent.labels.items() if pos]
    notes = [m.span() for m in ANNOTATION.finditer(sent.text)]
    return affirmed, [m for m in pattern.finditer(sent.text)
                      if not any(a <= m.start() < b for a, b in notes)]


def restate_ratios(text: str, measured: Mapping[str, float], present: Collection[str]
                   ) -> tuple[str, set[str], set[str]]:
    """Put the cardiothoracic ratio measured on the CT into the text: a sentence that affirms
    exactly one label of ``present`` (called findings whose size is a ratio) and states
    exactly one ratio ("0.58") gets the measured one (``measured``: label -> ratio) instead,
    prefixed :data:`RATIO_MARK` where it differs; where that label was not measured, the
    sentence is prefixed :data:`RATIO_UNMEASURED`.  Returns the text (rebuilt sentence by
    sentence), the labels restated and the labels marked unmeasured."""
    out: list[str] = []
    restated: set[str] = set()
    unmeasured: set[str] = set()
    for sent in label_text(text):
        affirmed, ratios = _affirmed_and_stated(sent, _RATIO)
        if len(affirmed) == 1 and affirmed[0] in present and len(ratios) == 1:
            lab, m = affirmed[0], ratios[0]
            if lab not in measured:
                out.append(f"{RATIO_UNMEASURED} {sent.text}")
                unmeasured.add(lab)
                continue
            new = f"{measured[lab]:.2f}"
            if new != f"{float(m.group(0)):.2f}":
                out.append(f"{RATIO_MARK} {sent.text[:m.start()]}{new}{sent.text[m.end():]}")
                restated.add(lab)
                continue
        out.append(sent.text)
    return " ".join(out), restated, unmeasured


#: the mark in front of a sentence stating the size of a nodule or mass whose size the CT did
#: not give (:func:`mark_unmeasured_sizes`): the number is the decoder's own
SIZE_UNMEASURED = "[UNVERIFIED: size not measured on the CT]"


def mark_unmeasured_sizes(text: str, unmeasured: Collection[str]) -> tuple[str, set[str]]:
    """Mark the sizes the CT did not give: a sentence that affirms exactly one finding of
    ``unmeasured`` (called lesions whose size was not measured) and states a size is prefixed
    :data:`SIZE_UNMEASURED`; a sentence the draft added from the findings list
    (:data:`ADDED_MARK`) is not the decoder's and says itself that its size is an estimate.
    Returns the text (rebuilt sentence by sentence) and the labels marked."""
    out: list[str] = []
    marked: set[str] = set()
    for sent in label_text(text):
        affirmed, sizes = _affirmed_and_stated(sent, _SIZE)
        if len(affirmed) == 1 and affirmed[0] in unmeasured and sizes \
                and ADDED_MARK not in sent.text:
            out.append(f"{SIZE_UNMEASURED} {sent.text}")
            marked.add(affirmed[0])
            continue
        out.append(sent.text)
    return " ".join(out), marked


def _format_size(mm: float, unit: str) -> str:
    return f"{mm / 10:.1f} cm" if unit == "cm" else f"{mm:.0f} mm"


def _restate(text: str, sizes: Mapping[str, float], mark: str | None
             ) -> tuple[str, set[str]]:
    """A sentence that affirms exactly one finding of ``sizes`` (label -> mm) and states
    exactly one size that does not read as that size in its own unit (0.1 cm or 1 mm) gets
    it instead, prefixed ``mark`` (None: none); a sentence the draft added from the findings
    list is left as it is.  Returns the text (rebuilt sentence by sentence) and the labels
    restated."""
    out: list[str] = []
    done: set[str] = set()
    for sent in label_text(text):
        affirmed, said = _affirmed_and_stated(sent, _SIZE)
        if len(affirmed) == 1 and affirmed[0] in sizes and len(said) == 1 \
                and ADDED_MARK not in sent.text:
            m = said[0]
            new = _format_size(sizes[affirmed[0]], m.group(2))
            if new != _format_size(float(m.group(1)) * (10.0 if m.group(2) == "cm" else 1.0),
                                   m.group(2)):
                lead = f"{mark} " if mark else ""
                out.append(f"{lead}{sent.text[:m.start()]}{new}{sent.text[m.end():]}")
                done.add(affirmed[0])
                continue
        out.append(sent.text)
    return " ".join(out), done


def restate_sizes(text: str, measured: Mapping[str, float]) -> tuple[str, set[str]]:
    """Put the size measured on the CT into the text: a sentence that affirms exactly one
    finding of ``measured`` (label -> mm) and states exactly one size that does not read as
    the measurement in its own unit (0.1 cm or 1 mm) gets the measured size instead, and is
    prefixed ``[SIZE MEASURED ON CT]``.  Returns the text (rebuilt sentence by sentence) and
    the labels restated."""
    return _restate(text, measured, MEASURED_MARK)


def restate_estimates(text: str, estimates: Mapping[str, float]) -> tuple[str, set[str]]:
    """Put the findings list's estimate into the text where the CT gave no size: a sentence
    that affirms exactly one finding of ``estimates`` (label -> the size the draft's finding
    states, not measured) and states exactly one size that does not read as it gets the
    estimate instead, so the draft states one size for the finding; not marked here (its
    sentences are marked :data:`SIZE_UNMEASURED` by :func:`mark_unmeasured_sizes`).  The
    decoder's own numbers were further off the reference than the size head's for every
    label on the held-out splits (docs/model.md, "Thirty-ninth round").  Returns the text
    and the labels restated."""
    return _restate(text, estimates, None)


def size_clash(sentence: str, size_mm: float | None, factor: float = 2.0) -> bool:
    """The sentence states a size more than ``factor`` times off the head's ``size_mm``."""
    said = stated_size_mm(sentence)
    if said is None or size_mm is None or size_mm <= 0 or said <= 0:
        return False
    return max(said / size_mm, size_mm / said) > factor


def _named(labels: Sequence[str]) -> str:
    """Labels as a reader names them, for a mark's reason ("mediastinal lymphadenopathy",
    not the label's identifier)."""
    return ", ".join(lab.replace("_", " ") for lab in labels)


def guard(text: str, head: Mapping[str, bool],
          sides: Mapping[str, str | None] | None = None,
          unreliable: Collection[str] = (),
          sizes: Mapping[str, float | None] | None = None,
          has_emr: bool = True,
          lobes: Mapping[str, str | None] | None = None,
          measured: Collection[str] = (),
          min_mm: Mapping[str, float] | None = None,
          note_history: NoteHistory | None = None) -> tuple[str, set[str]]:
    """Flag sentences that contradict the findings head, or that rest on a detector the
    checkpoint does not have reliably, or on a history the note does not state.

    A sentence contradicts the head when it affirms a finding the head calls absent or
    negates one it calls present; with ``sides`` (label -> the stated laterality), also when
    it affirms exactly one finding that the head places on one side and names only the other
    side; with ``sizes`` (label -> the size head's mm), also when it affirms exactly one
    finding and states a size more than twice or less than half the head's (for a label in
    ``measured``, whose size was measured on the CT, more than ``MEASURED_SIZE_FACTOR`` off
    it); with ``lobes``
    (label -> the head's lobe code, e.g. "LUL"), also when it affirms exactly one finding and
    names lobes, none of them the head's.  A sentence
    that affirms or negates a label in ``unreliable`` is marked too: "no pneumothorax" from
    a detector at chance is not a finding.  Without an EMR (``has_emr`` False) a sentence that
    states the patient's history ("in a patient with known ...") is marked: nothing supports
    it; so is one drawing a conclusion that rests on it ("metastatic", "cardiogenic",
    "pneumonia").  With ``min_mm`` (label -> the smallest size its detector was trained on,
    ``presence_min_mm``), a sentence that negates such a label is marked: "no nodules" from
    a detector of nodules of 10 mm or more does not exclude a 6 mm one.  With
    ``note_history`` (what the EMR states, :func:`medassist.history.read_history`), a sentence
    that states a fact of the history or draws a conclusion from one ("in the setting of
    fever and leukocytosis consistent with pneumonia") that the note does not state is marked
    (:func:`medassist.history.unsupported`).  Returns the text
    with each such sentence prefixed by ``[UNVERIFIED: ...]`` (the reasons) and the set of
    labels that were contradicted."""
    out: list[str] = []
    bad: set[str] = set()
    for s in label_text(text):
        clash = sorted(lab for lab, pos in s.labels.items() if lab in head and pos != head[lab])
        affirmed = [lab for lab, pos in s.labels.items() if pos]
        side_wrong = []
        if sides is not None and len(affirmed) == 1 and affirmed[0] not in clash \
                and side_clash(s.text, sides.get(affirmed[0])):
            side_wrong = affirmed
        size_off = []
        if sizes is not None and len(affirmed) == 1 and affirmed[0] not in clash \
                and size_clash(s.text, sizes.get(affirmed[0]),
                               MEASURED_SIZE_FACTOR if affirmed[0] in measured else 2.0):
            size_off = affirmed
        lobe_clash = []
        if lobes is not None and len(affirmed) == 1 and affirmed[0] not in clash \
                and not side_wrong and _lobe_clash(s.text, lobes.get(affirmed[0])):
            lobe_clash = affirmed
        weak = sorted(lab for lab in s.labels if lab in unreliable)
        small = sorted(lab for lab, pos in s.labels.items()
                       if min_mm and lab in min_mm and not pos and lab not in weak)
        plain = ANNOTATION.sub(" ", s.text).lower()
        history = not has_emr and HISTORY.search(plain) is not None
        concluded = not has_emr and not history and HISTORY_CONCLUSION.search(plain) is not None
        unstated = unsupported(plain, note_history) \
            if has_emr and note_history is not None else []
        if clash or side_wrong or size_off or lobe_clash or weak or small or history \
                or concluded or unstated:
            bad.update(clash + side_wrong + size_off + lobe_clash)
            why = [f"contradicts the findings head ({_named(clash)})"] if clash else []
            why += [f"names the other side than the findings head ({_named(side_wrong)})"] \
                if side_wrong else []
            if size_off and sizes:
                whose = "the one measured on the CT" if size_off[0] in measured \
                    else "the findings head's"
                why += [f"states a size far from {whose} ({_named(size_off[:1])}: "
                        f"{sizes[size_off[0]]:.0f} mm)"]
            why += [f"names another lobe than the findings head ({_named(lobe_clash[:1])}: "
                    f"{lobes[lobe_clash[0]]})"] if lobe_clash and lobes else []
            why += [f"the model does not detect {_named(weak)} reliably"] if weak else []
            why += [f"the model does not assess {_named([lab])} below {min_mm[lab]:g} mm"
                    for lab in small] if min_mm else []
            why += ["states patient history, but no EMR was given"] if history else []
            why += ["draws a conclusion that rests on patient history, but no EMR was given"] \
                if concluded else []
            why += [f"{HISTORY_UNSTATED} ({', '.join(unstated)})"] if unstated else []
            # reasons joined by " / ": a ";" would end the sentence for the labeler
            out.append(f"[UNVERIFIED: {' / '.join(why)}] {s.text}")
        else:
            out.append(s.text)
    return " ".join(out), bad
