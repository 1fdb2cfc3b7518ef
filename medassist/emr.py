"""The EMR note a draft reads: plain text, or a FHIR R4 resource that carries it.

A hospital's EMR hands a note over as text or as FHIR: a ``DocumentReference`` whose
attachment holds the note (``contentType`` text/plain, ``data`` base64), alone or inside a
``Bundle`` (``medassist synth`` writes one per case, ``emr_fhir.json``).  :func:`read_note`
reads either:

* a file named ``*.json``, or one whose first non-blank character is ``{``: a FHIR R4 JSON
  resource; the note is the text of its ``DocumentReference`` attachments (a Bundle's in entry
  order, joined by a blank line).  Other resources (Observation, Condition, ...) are not read:
  the model reads the note's text, and a lab it does not state is not in it;
* anything else: UTF-8 text, as it is.

:func:`read_emr` also returns what a Bundle's Conditions and Observations state of the
history a draft's conclusions rest on (a white count, a temperature, heart failure, a
cancer), so that the guard does not mark a conclusion the record supports but the note's
text does not spell out.

Every failure is an :class:`medassist.errors.InputError` (kind ``EMRInput``) naming the file
and what to give instead; nothing is fetched (an attachment given by URL only is refused).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medassist.errors import InputError

#: attachment content types read as the note (a charset parameter is allowed)
TEXT_TYPES = ("text/plain",)


def _error(path: Path, why: str) -> InputError:
    return InputError(f"{path}: {why}", path=str(path), kind="EMRInput")


def _attachment_text(path: Path, att: Any, where: str) -> str:
    if not isinstance(att, dict):
        raise _error(path, f"{where}: the attachment is not a JSON object")
    ctype = str(att.get("contentType", "text/plain")).split(";")[0].strip().lower()
    if ctype not in TEXT_TYPES:
        raise _error(path, f"{where}: the note is {ctype}, not text/plain; give the note as "
                     "text")
    if "data" not in att:
        url = att.get("url")
        raise _error(path, f"{where}: the note is not included"
                     + (f" (only its URL, {url})" if url else "")
                     + "; medassist fetches nothing: include it as base64 `data`, or give "
                     "the note as a text file")
    try:
        raw = base64.b64decode(str(att["data"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _error(path, f"{where}: the attachment's data is not base64 ({exc})") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, f"{where}: the attachment is not UTF-8 text ({exc.reason} at byte "
                     f"{exc.start})") from exc


def _document_texts(path: Path, doc: dict[str, Any], where: str) -> list[str]:
    content = doc.get("content")
    if not isinstance(content, list) or not content:
        raise _error(path, f"{where}: a DocumentReference without content")
    return [_attachment_text(path, c.get("attachment") if isinstance(c, dict) else None,
                             f"{where}.content[{i}]")
            for i, c in enumerate(content)]


@dataclass(frozen=True)
class EmrInput:
    """The note a draft reads, and what a FHIR Bundle's structured resources state besides
    (:func:`medassist.history.facts_from_fhir`: the guard holds the text's conclusions to
    both; the model reads the text only)."""

    text: str
    facts: frozenset[str] = frozenset()


def note_from_fhir(resource: Any, path: Path) -> str:
    """The note text of a FHIR R4 DocumentReference or Bundle (``path`` names it in errors)."""
    if not isinstance(resource, dict) or "resourceType" not in resource:
        raise _error(path, "JSON, but not a FHIR resource (no resourceType); give the note as "
                     "text, or a FHIR Bundle or DocumentReference holding it")
    rtype = resource["resourceType"]
    if rtype == "DocumentReference":
        texts = _document_texts(path, resource, "DocumentReference")
    elif rtype == "Bundle":
        texts = []
        for i, entry in enumerate(resource.get("entry") or []):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict) and res.get("resourceType") == "DocumentReference":
                texts += _document_texts(path, res, f"entry[{i}] DocumentReference")
        if not texts:
            raise _error(path, "a FHIR Bundle without a DocumentReference holding the note; "
                         "give the note as text, or add it as a DocumentReference")
    else:
        raise _error(path, f"a FHIR {rtype}, not a Bundle or DocumentReference holding the "
                     "note; give the note as text")
    return "\n\n".join(texts)


def read_note(path: str | Path) -> str:
    """The EMR note of ``path``: UTF-8 text, or the note a FHIR R4 JSON resource holds."""
    return read_emr(path).text


def read_emr(path: str | Path) -> EmrInput:
    """:func:`read_note`'s text, with the facts a FHIR Bundle's other resources state."""
    from medassist.history import facts_from_fhir

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise _error(p, f"cannot read the EMR note ({exc.strerror or type(exc).__name__})"
                     ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(p, f"the EMR note is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                     "save it as UTF-8") from exc
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            resource = json.loads(text)
        except json.JSONDecodeError as exc:
            if p.suffix.lower() == ".json":
                raise _error(p, f"not valid JSON ({exc.msg}, line {exc.lineno}); give the "
                             "note as text, or a FHIR Bundle or DocumentReference") from exc
            return EmrInput(text)  # a text note that starts with "{"
        entries = resource.get("entry") if isinstance(resource, dict) \
            and resource.get("resourceType") == "Bundle" else None
        facts = facts_from_fhir(e.get("resource") for e in entries or []
                                if isinstance(e, dict))
        return EmrInput(note_from_fhir(resource, p), facts)
    return EmrInput(text)
