"""The decoder's text as a report reads: sentence case, acronyms, one heading per line.

The word tokenizer (:mod:`multimodal.tokenizer`) lower-cases what it reads, so the report
decoder writes "lungs and airways: there is a 3.4 cm lobulated mass in the left upper lobe.
pleura: no pleural effusion." on one line, and "pet/ct" for PET/CT.  The reader of a draft
(the UI, the text and PDF exports, FHIR's ``presentedForm`` and ``conclusion``) gets
instead::

    Lungs and airways: There is a 3.4 cm lobulated mass in the left upper lobe.
    Pleura: No pleural effusion.

:func:`present_text` changes letter case and white space only (a line break where a sentence
ended, the space inside a station's "4 r"), and the words it recases do not change what a
sentence states: every reader of the text in medassist (the labeler, the
history rules, the review's decision block) reads it case-blind, and its sentences end where
they ended (a line break is put only where a sentence already ended).  The draft's own
bracketed marks (``[UNVERIFIED: ...]``) are kept as written; one in front of a heading moves
behind it, onto the sentence it marks.

What it knows is a table of words (:data:`CASED_WORDS`, the acronyms and units of the
generator's reports and common radiology ones; the draft adds the checkpoint's own,
``WordTokenizer.cased``: how the reports its vocabulary was built from write their words,
since stop 49), a station's side ("station 4 r" -> "station 4R") and where sentences,
headings and list items begin.  A word neither knows stays as the decoder wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from medassist.labeler import ANNOTATION

#: lower-case word -> how a report writes it (a word of letters only; "pet/ct" is "pet" and
#: "ct"; "mm", "cm", "ml" stay lower case)
CASED_WORDS: Mapping[str, str] = {
    "ct": "CT", "cta": "CTA", "pet": "PET", "mri": "MRI", "fdg": "FDG", "suv": "SUV",
    "iv": "IV", "kvp": "kVp", "mas": "mAs", "hu": "HU", "copd": "COPD", "ild": "ILD",
    "ards": "ARDS", "ivc": "IVC", "svc": "SVC", "rul": "RUL", "rml": "RML", "rll": "RLL",
    "lul": "LUL", "lll": "LLL", "ggo": "GGO", "tnm": "TNM", "ebus": "EBUS",
    "emr": "EMR", "ecg": "ECG", "ekg": "EKG",
}
_WORD = re.compile(r"(?<![A-Za-z])[a-z]+(?![A-Za-z])")
#: a lymph-node station split by the tokenizer ("station 4 r", "stations 4 r and 7")
_STATION = re.compile(r"\b(stations?\s+(?:\d{1,2}[RL]?(?:\s*,\s*|\s+and\s+|\s+or\s+))*)"
                      r"(\d{1,2}) ?([rl])\b")
#: where a sentence begins: the text's start, a line's, or after a full stop (not a decimal
#: point), "!" or "?" followed by white space; with headings, after a colon too
_START = re.compile(r"(?:^|(?<=[.!?])[ \t]+|\n[ \t]*)")
_START_COLON = re.compile(r"(?:^|(?<=[.!?:])[ \t]+|\n[ \t]*)")
#: what may stand before a sentence's first word: marks, a list item's bullet, "("
_LEAD = re.compile(r"(?:\[[^\]]*\]\s*|-\s+|\(\s*)*")
#: a heading at a sentence's start (after a full stop or at the text's start), marks before it;
#: a line break goes only after a full stop, where the labeler's sentences end already
#: (:data:`medassist.history.SENTENCE`: not after "?", "!" or a colon, where a break would end
#: a sentence, and with it a negation's reach)
_HEADING = re.compile(r"(?:^|(?<=\.)[ \t]+)((?:\[[^\]]*\][ \t]*)*)"
                      r"([A-Za-z]+(?: [A-Za-z]+){0,4}):[ \t]+")
#: a numbered list item ("2. ...") or a bullet ("- ...") after a full stop
_ITEM = re.compile(r"(?<=\.)[ \t]+(?=(?:\d{1,2}\.|-)[ \t]+\S)")
#: a word written in mixed case ("kVp", "mAs"): its first letter is not changed
_MIXED = re.compile(r"[A-Za-z][a-z]*[A-Z]")


def _recase_words(part: str, table: Mapping[str, str]) -> str:
    """``part`` (no marks) with each word of ``table`` written its way, and a station's side
    in capitals."""
    part = _WORD.sub(lambda m: table.get(m.group(0), m.group(0)), part)
    while True:  # one station a pass: "stations 2 r and 4 r" takes two
        done = _STATION.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3).upper()}", part,
                            count=1)
        if done == part:
            return part
        part = done


def _outside_marks(text: str, table: Mapping[str, str]) -> str:
    """:func:`_recase_words` on the text between the draft's marks; the marks as written."""
    out, at = [], 0
    for m in ANNOTATION.finditer(text):
        out += [_recase_words(text[at:m.start()], table), m.group(0)]
        at = m.end()
    out.append(_recase_words(text[at:], table))
    return "".join(out)


def _sentence_case(text: str, colon: bool) -> str:
    """``text`` with the first letter of each sentence (and, with ``colon``, of what follows
    a colon) upper case, past any marks, bullet or opening bracket in front of it."""
    chars = list(text)
    marks = [(m.start(), m.end()) for m in ANNOTATION.finditer(text)]
    for m in (_START_COLON if colon else _START).finditer(text):
        if any(a < m.end() < b for a, b in marks):
            continue  # a colon inside a mark ("[UNVERIFIED: size ...]")
        lead = _LEAD.match(text, m.end())
        at = lead.end() if lead else m.end()
        if at < len(chars) and chars[at].isalpha() and not _MIXED.match(text, at):
            chars[at] = chars[at].upper()
    return "".join(chars)


def _headings(text: str) -> str:
    """Each heading ("lungs and airways:") that follows a sentence on its own line, the
    marks in front of it moved behind it."""
    def one(m: re.Match[str]) -> str:
        marks = m.group(1).strip()
        lead = "" if m.start() == 0 else "\n"
        return f"{lead}{m.group(2)}: " + (f"{marks} " if marks else "")
    return _HEADING.sub(one, text)


def present_text(text: str, *, headings: bool = True,
                 table: Mapping[str, str] = CASED_WORDS) -> str:
    """The decoder's lower-case ``text`` (a Findings or an Impression section, with the
    draft's marks) as a report writes it: each word of ``table`` (default
    :data:`CASED_WORDS`) and a station's side in capitals, each sentence, heading and list
    item begun with a capital, and each numbered or bulleted item on its own line; with
    ``headings`` (a Findings section), each heading on its own line too, and what follows
    it (and any colon) begun with a capital.  Only letter case and white space change."""
    text = _outside_marks(text.strip(), table)
    if headings:
        text = _headings(text)
    text = _ITEM.sub("\n", text)
    return _sentence_case(text, colon=headings)
