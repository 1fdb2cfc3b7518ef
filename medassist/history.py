"""What the patient's note states: the history a draft's conclusions rest on.

The reports draw four conclusions from the note, not the image (``medassist.synth.report``):
consolidation "consistent with pneumonia" in the setting of fever and leukocytosis, an
effusion "likely cardiogenic" given heart failure, nodules "suspicious for metastatic disease"
in a patient with a known cancer, and a spiculated nodule in a heavy smoker (30 pack-years or
more).  The decoder writes them from the context head's reading of the note
(:mod:`multimodal.context`), which can be wrong: it reads "WBC 5.1" and "WBC 11.3" alike.
This module reads the note itself, by rule, so that the consistency guard
(:func:`medassist.labeler.guard`) marks a sentence stating a history the note does not.

The rules read each sentence (a line, or up to ".", ";"; a decimal point does not end one):

* fever: "fever" / "febrile" / "pyrexia" not negated, or a temperature of 38.0 C (100.4 F) or
  more, with its unit ("T 38.7 C", "fever to 39.3 C", "temperature of 101.2 F");
* leukocytosis: "leukocytosis" not negated, or a white count of 11.0 x 10^3/uL or more ("WBC
  14.6 10*3/uL"; a count of 1,000 or more is read per uL; a note prints 11.04 as "11");
* heart failure: "heart failure", "CHF", "HFrEF", "HFpEF" or "HFmrEF", the patient's;
* known cancer: a cancer word ("cancer", "carcinoma", "malignancy", "malignant neoplasm",
  "lymphoma", "melanoma", "sarcoma", "myeloma", "leukemia", "NSCLC", an organ's "ca": "breast
  ca", not the calcium "Ca 9.2"), the patient's;

  the patient's: not negated, not in a sentence on the family's history ("FHx: ..."), and
  not in a clause (up to a comma) naming a relative ("sister with breast ca"; but "CHF,
  daughter at bedside") or a screening ("lung cancer screening"; but "history of breast
  cancer, here for lung cancer screening");
* heavy smoking: 30 or more pack-years ("35 pk-yr", "40 pack-year smoking history").

A negation ("no", "denies", "without", "negative for", "not", "free of") covers what follows
it in its sentence up to a word that starts a new statement ("p/w", "presents", "reports",
"but", "with"): "no significant PMH p/w fever" states a fever.  The rules are deliberately
lenient where a note is ambiguous (any white count above the limit counts, an earlier
admission's too): a statement they cannot find is marked, one they find is not.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: the facts a conclusion can rest on
FEVER = "fever"
LEUKOCYTOSIS = "leukocytosis"
HEART_FAILURE = "heart failure"
KNOWN_CANCER = "a known cancer"
HEAVY_SMOKING = "30 or more pack-years"
FACTS = (FEVER, LEUKOCYTOSIS, HEART_FAILURE, KNOWN_CANCER, HEAVY_SMOKING)

FEVER_C = 38.0
WBC_LIMIT = 11.0  # x 10^3 per uL
HEAVY_PACK_YEARS = 30.0

#: a sentence ends at ".", ";" or a newline; a decimal point ("6.6 cm") does not end one (the
#: labeler's sentences too)
SENTENCE = re.compile(r"(?:[^.\n;]|\.(?=\d))+[.\n;]?")
_NEG = re.compile(r"\b(?:no|denies|denied|without|negative for|not|free of)\b")
#: words after which a negation no longer holds (a new statement begins)
_NEG_END = re.compile(r"\b(?:p/w|presents?|presenting|reports?|but|with|c/o)\b")
#: a sentence on the family's history
_FHX = re.compile(r"\b(?:fhx|family history|fh)\b")
#: a relative named in the mention's clause (up to a comma): "sister with breast ca", not
#: "CHF, daughter at bedside"
_RELATIVE = re.compile(r"\b(?:mother|father|sister|brother|aunt|uncle|grandmother|"
                       r"grandfather|son|daughter|sibling|parent|cousin)s?\b")
_SCREENING = re.compile(r"\bscreening\b")
_FEVER = re.compile(r"\b(?:fever|febrile|pyrexia)\b")
_TEMP = re.compile(r"\b(?:t|temp|temperature|tmax|fever)\s*(?::|of|to|was|at)?\s*"
                   r"(\d{2,3}(?:\.\d+)?)\s*(?:°\s*)?([cf])\b")
_LEUKO = re.compile(r"\bleukocytosis\b")
_WBC = re.compile(r"\b(?:wbc|white (?:blood )?(?:cell )?count)\b\D{0,12}?(\d+(?:,\d{3})*"
                  r"(?:\.\d+)?)")
_HF = re.compile(r"\b(?:heart failure|chf|hfref|hfpef|hfmref)\b")
_CANCER = re.compile(r"\b(?:cancer|carcinoma|adenocarcinoma|malignancy|malignant neoplasm|"
                     r"lymphoma|melanoma|sarcoma|myeloma|leukemia|nsclc|sclc|hcc|rcc|"
                     # "breast ca" (not "Ca 9.2 mg/dL", calcium)
                     r"(?:breast|lung|colon|colorectal|rectal|prostate|bladder|renal|"
                     r"pancreatic|gastric|ovarian|cervical|thyroid|esophageal) ca)\b")
_PACK = re.compile(r"(\d+(?:\.\d+)?)\s*-?\s*(?:pack[- ]?years?|pk[- ]?yrs?)\b")


@dataclass(frozen=True)
class NoteHistory:
    """The facts of :data:`FACTS` a note states."""

    stated: frozenset[str]

    def __post_init__(self) -> None:
        unknown = set(self.stated) - set(FACTS)
        if unknown:
            raise ValueError(f"unknown history facts {sorted(unknown)}; known: {FACTS}")

    def states(self, fact: str) -> bool:
        return fact in self.stated


def _negated(sentence: str, at: int) -> bool:
    """Is the mention at ``at`` of the (lower-case) sentence negated?"""
    before = sentence[:at]
    cues = list(_NEG.finditer(before))
    if not cues:
        return False
    return _NEG_END.search(before, cues[-1].end()) is None


def _clause(sentence: str, at: int) -> str:
    """The part of the sentence between the commas around position ``at``."""
    return sentence[sentence.rfind(",", 0, at) + 1:
                    (sentence.find(",", at) + 1 or len(sentence) + 1) - 1]


def _affirmed(pattern: re.Pattern[str], sentence: str, own: bool = False) -> bool:
    """A mention of ``pattern`` not negated; with ``own``, also the patient's own: not in a
    sentence on the family's history, nor in a clause naming a relative or a screening."""
    for m in pattern.finditer(sentence):
        if _negated(sentence, m.start()):
            continue
        if own and (_FHX.search(sentence) or _RELATIVE.search(_clause(sentence, m.start()))
                    or _SCREENING.search(_clause(sentence, m.start()))):
            continue
        return True
    return False


def _sentences(text: str) -> list[tuple[tuple[int, int], str]]:
    """The sentences of ``text``: their character span [start, end) in ``text`` (surrounding
    white space left out) and their lower-case text."""
    out = []
    for m in SENTENCE.finditer(text):
        raw = m.group(0)
        body = raw.strip()
        if body:
            a = m.start() + len(raw) - len(raw.lstrip())
            out.append(((a, a + len(body)), body.lower()))
    return out


def _facts_of(s: str) -> set[str]:
    """The facts of :data:`FACTS` that one (lower-case) sentence states."""
    stated: set[str] = set()
    if _affirmed(_FEVER, s):
        stated.add(FEVER)
    for m in _TEMP.finditer(s):
        value = float(m.group(1))
        if (m.group(2) == "c" and value >= FEVER_C) \
                or (m.group(2) == "f" and value >= FEVER_C * 9 / 5 + 32):
            stated.add(FEVER)
    if _affirmed(_LEUKO, s):
        stated.add(LEUKOCYTOSIS)
    for m in _WBC.finditer(s):
        value = float(m.group(1).replace(",", ""))
        if (value / 1000.0 if value >= 1000 else value) >= WBC_LIMIT:
            stated.add(LEUKOCYTOSIS)
    if _affirmed(_HF, s, own=True):
        stated.add(HEART_FAILURE)
    if _affirmed(_CANCER, s, own=True):
        stated.add(KNOWN_CANCER)
    if any(float(m.group(1)) >= HEAVY_PACK_YEARS for m in _PACK.finditer(s)):
        stated.add(HEAVY_SMOKING)
    return stated


def read_history(note: str) -> NoteHistory:
    """The facts of :data:`FACTS` that ``note`` states (the module's rules)."""
    stated: set[str] = set()
    for _span, s in _sentences(note):
        stated |= _facts_of(s)
    return NoteHistory(frozenset(stated))


def stated_where(note: str) -> dict[str, list[tuple[int, int]]]:
    """Per fact of :data:`FACTS` that ``note`` states, the character spans [start, end) of
    the sentences stating it, in the note's order (a draft's EMR evidence for a conclusion
    resting on it)."""
    where: dict[str, list[tuple[int, int]]] = {}
    for span, s in _sentences(note):
        for fact in _facts_of(s):
            where.setdefault(fact, []).append(span)
    return where


#: LOINC codes of the FHIR Observations read by :func:`facts_from_fhir`
WBC_LOINC = ("6690-2", "26464-8")  # leukocytes in blood, automated count / count
TEMP_LOINC = ("8310-5", "8331-1")  # body temperature / oral temperature
_VOID = ("refuted", "entered-in-error")


def _codes(concept: Any) -> list[tuple[str, str]]:
    """(system, code) of a CodeableConcept's codings."""
    if not isinstance(concept, dict):
        return []
    return [(str(c.get("system", "")), str(c.get("code", "")))
            for c in concept.get("coding") or [] if isinstance(c, dict)]


def _quantity(obs: dict[str, Any]) -> tuple[float, str] | None:
    q = obs.get("valueQuantity")
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float):
        return None
    return float(q["value"]), str(q.get("code") or q.get("unit") or "")


def facts_from_fhir(resources: Iterable[Any]) -> frozenset[str]:
    """The facts of :data:`FACTS` that structured FHIR R4 resources state: a Condition coded
    in ICD-10 I50 (heart failure) or C00-C97 (a cancer), not refuted nor entered in error; an
    Observation of the white count (LOINC 6690-2, 26464-8) of 11.0 x 10^3/uL or more, or of
    the body temperature (8310-5, 8331-1) of 38.0 Cel (100.4 [degF]) or more, not refuted nor
    entered in error.  A smoking history is read from its text (:func:`read_history`)."""
    stated: set[str] = set()
    for r in resources:
        if not isinstance(r, dict):
            continue
        rtype = r.get("resourceType")
        if rtype == "Condition":
            status = {c for _s, c in _codes(r.get("verificationStatus"))}
            if status & set(_VOID):
                continue
            for system, code in _codes(r.get("code")):
                if "icd-10" not in system.lower():
                    continue
                if code.upper().startswith("I50"):
                    stated.add(HEART_FAILURE)
                if re.fullmatch(r"C(?:[0-8]\d|9[0-7])(?:\..*)?", code.upper()):
                    stated.add(KNOWN_CANCER)
        elif rtype == "Observation" and r.get("status") not in _VOID:
            loinc = {c for system, c in _codes(r.get("code")) if "loinc" in system.lower()}
            q = _quantity(r)
            if q is None:
                continue
            value, unit = q
            if loinc & set(WBC_LOINC) and (value / 1000.0 if value >= 1000 else value) \
                    >= WBC_LIMIT:
                stated.add(LEUKOCYTOSIS)
            if loinc & set(TEMP_LOINC):
                fahrenheit = "f" in unit.lower() and "cel" not in unit.lower()
                if value >= (FEVER_C * 9 / 5 + 32 if fahrenheit else FEVER_C):
                    stated.add(FEVER)
    return frozenset(stated)


#: the EMR context classes (:mod:`multimodal.context`) that rest on the patient's history,
#: each with the facts it rests on, as the generator's reports (medassist.synth.report) and
#: a reader draw them: a called consolidation with fever and leukocytosis is a pneumonia, an
#: effusion with heart failure likely cardiogenic, nodules or enlarged nodes with a known
#: cancer suspicious for metastasis, spiculated nodules in a heavy smoker suspicious for a
#: primary lung cancer
CONTEXT_FACTS: dict[str, frozenset[str]] = {
    "metastatic_disease_suspected": frozenset({KNOWN_CANCER}),
    "primary_lung_malignancy_suspected": frozenset({HEAVY_SMOKING}),
    "pneumonia": frozenset({FEVER, LEUKOCYTOSIS}),
    "effusion_cardiogenic": frozenset({HEART_FAILURE}),
    "lymphadenopathy_metastasis_suspected": frozenset({KNOWN_CANCER}),
}
#: the classes of :data:`CONTEXT_FACTS` that their facts alone decide (a primary lung cancer
#: needs a spiculated margin too, which the image shows, not the note)
CONTEXT_DECIDED = frozenset(CONTEXT_FACTS) - {"primary_lung_malignancy_suspected"}


def stated_context(classes: Sequence[str], stated: Collection[str], head: int = 0) -> int:
    """One context slot's class (an index into its ``classes``, class 0 "the note adds
    nothing") given the facts the note states (``stated``) and the context head's class
    ``head``: the first class of :data:`CONTEXT_DECIDED` whose facts are all stated; else
    the head's, unless it rests on a fact the note does not state (then class 0)."""
    if not 0 <= head < len(classes):
        raise ValueError(f"head class {head} is not one of the slot's {len(classes)} classes")
    have = set(stated)
    for i, cls in enumerate(classes):
        if i > 0 and cls in CONTEXT_DECIDED and CONTEXT_FACTS[cls] <= have:
            return i
    return 0 if not CONTEXT_FACTS.get(classes[head], frozenset()) <= have else head


#: what a draft sentence claims about the history: wording -> the facts it rests on
CLAIMS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"\bpneumonia\b"), (FEVER, LEUKOCYTOSIS)),
    (_FEVER, (FEVER,)),
    (_LEUKO, (LEUKOCYTOSIS,)),
    (re.compile(r"\bcardiogenic\b"), (HEART_FAILURE,)),
    (_HF, (HEART_FAILURE,)),
    (re.compile(r"\bmetasta\w*"), (KNOWN_CANCER,)),
    # "in a patient with known breast cancer" (not "the known heart failure")
    (re.compile(r"\bknown\b[^.;]*?\b(?:primary|cancer|carcinoma|malignancy|lymphoma|melanoma|"
                r"sarcoma|myeloma|leukemia)\b"), (KNOWN_CANCER,)),
    (re.compile(r"\bheavy smoker\b"), (HEAVY_SMOKING,)),
)


def claimed_history(sentence: str) -> list[str]:
    """The facts of :data:`FACTS` that a draft sentence affirms or draws a conclusion from, in
    :data:`FACTS` order."""
    s = sentence.lower()
    need: set[str] = set()
    for pattern, facts in CLAIMS:
        if _affirmed(pattern, s):
            need.update(facts)
    return [f for f in FACTS if f in need]


def unsupported(sentence: str, history: NoteHistory) -> list[str]:
    """The facts a draft sentence rests on that the note (``history``) does not state."""
    return [f for f in claimed_history(sentence) if not history.states(f)]
