"""Audit export: JSON, and DICOM PS3.15 A.5 / IHE ATNA (RFC 3881 style) AuditMessage XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from medassist.errors import AuditError

FORMATS = ("json", "atna-xml")

# ParticipantObjectTypeCode (1 person, 2 system object), role and ID type per object type.
_OBJECT_CODES: dict[str, tuple[str, str, tuple[str, str, str]]] = {
    "study": ("2", "3", ("110180", "DCM", "Study Instance UID")),
    "report": ("2", "3", ("report-id", "99MEDASSIST", "Report ID")),
    "user": ("1", "11", ("11", "RFC-3881", "User Identifier")),
    "audit_log": ("2", "13", ("audit-chain", "99MEDASSIST", "Audit Chain")),
    "database": ("2", "13", ("db-revision", "99MEDASSIST", "Schema Revision")),
    "system": ("2", "13", ("system", "99MEDASSIST", "System")),
}


def to_json(events: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(events), indent=2, ensure_ascii=False, default=str) + "\n"


def to_atna_xml(events: Sequence[dict[str, Any]], *, source_id: str = "medassist") -> str:
    """One ``AuditMessage`` per event inside an ``AuditMessages`` root element."""
    root = ET.Element("AuditMessages")
    for e in events:
        msg = ET.SubElement(root, "AuditMessage")
        ident = ET.SubElement(msg, "EventIdentification", {
            "EventActionCode": str(e["action"]),
            "EventDateTime": str(e["event_time"]),
            "EventOutcomeIndicator": str(e["outcome"]),
        })
        ET.SubElement(ident, "EventID", {"csd-code": str(e["event_id"]),
                                         "codeSystemName": "DCM",
                                         "originalText": str(e["event_id_meaning"])})
        ET.SubElement(ident, "EventTypeCode", {"csd-code": str(e["event_type"]),
                                               "codeSystemName": "99MEDASSIST",
                                               "originalText": str(e["event_type"])})
        part = ET.SubElement(msg, "ActiveParticipant", {
            "UserID": str(e["username"]), "UserIsRequestor": "true"})
        ET.SubElement(part, "RoleIDCode", {"csd-code": str(e["role"]),
                                           "codeSystemName": "99MEDASSIST",
                                           "originalText": str(e["role"])})
        ET.SubElement(msg, "AuditSourceIdentification", {"AuditSourceID": source_id})
        otype = str(e["object_type"])
        if otype not in _OBJECT_CODES:
            raise AuditError(f"unknown participant object type {otype!r} in event "
                             f"seq {e['seq']}")
        type_code, role_code, (c, scheme, meaning) = _OBJECT_CODES[otype]
        obj = ET.SubElement(msg, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(e["object_id"]),
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role_code})
        ET.SubElement(obj, "ParticipantObjectIDTypeCode",
                      {"csd-code": c, "codeSystemName": scheme, "originalText": meaning})
        details = {"seq": e["seq"], "chain": e["chain"], "prev_hash": e["prev_hash"],
                   "row_hash": e["row_hash"], "model_version": e.get("model_version"),
                   "input_hashes": e.get("input_hashes"), "before_hash": e.get("before_hash"),
                   "after_hash": e.get("after_hash"), "detail": e.get("detail")}
        for k, v in details.items():
            if v not in (None, "", "{}"):
                ET.SubElement(obj, "ParticipantObjectDetail", {"type": k, "value": str(v)})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def render(events: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return to_json(events)
    if fmt == "atna-xml":
        return to_atna_xml(events)
    raise AuditError(f"unknown audit export format {fmt!r}; use one of {list(FORMATS)}")
