"""Tamper-evident audit trail (hash chain) with PS3.15 A.5 / ATNA vocabulary and export.

The names below are imported from their modules on first use (PEP 562), so that importing
the vocabulary (:mod:`medassist.audit.events`, :data:`DEFAULT_CHAIN`), as the command line's
parser does, does not load SQLAlchemy and the storage models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medassist.audit.chain import (
        GENESIS,
        AuditRecord,
        BrokenLink,
        EventSpec,
        VerifyResult,
        append,
        append_many,
        events_since,
        record,
        verify,
    )
    from medassist.audit.events import (
        DEFAULT_CHAIN,
        SYSTEM,
        Actor,
        AuditAction,
        ObjectType,
        Outcome,
    )

#: public name -> the module that defines it
_WHERE: dict[str, str] = {
    **dict.fromkeys(("GENESIS", "AuditRecord", "BrokenLink", "EventSpec", "VerifyResult",
                     "append", "append_many", "events_since", "record", "verify"),
                    "medassist.audit.chain"),
    **dict.fromkeys(("DEFAULT_CHAIN", "SYSTEM", "Actor", "AuditAction", "ObjectType",
                     "Outcome"), "medassist.audit.events"),
}


#: submodules reached as attributes of the package (``audit.chain.utc_timestamp``)
_SUBMODULES = ("chain", "events", "export")


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # binds it on the package
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'medassist.audit' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_SUBMODULES})


__all__ = [
    "DEFAULT_CHAIN", "GENESIS", "SYSTEM", "Actor", "AuditAction", "AuditRecord", "BrokenLink",
    "EventSpec", "ObjectType", "Outcome", "VerifyResult", "append", "append_many",
    "events_since", "record", "verify",
]
