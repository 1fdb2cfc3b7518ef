"""UID validation: no path is ever built from a UID that has not passed :func:`validate_uid`."""

from __future__ import annotations

import re
from pathlib import Path

from dicom_io.errors import InvalidUIDError

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(uid: object) -> bool:
    """True if ``uid`` is a DICOM UID: digits and dots, 1 to 64 characters, no empty part."""
    return (
        isinstance(uid, str)
        and 0 < len(uid) <= 64
        and _UID_RE.fullmatch(uid) is not None
    )


def validate_uid(uid: object, *, what: str = "UID", path: str | Path | None = None) -> str:
    """Return ``uid`` unchanged if valid, else raise :class:`InvalidUIDError`.

    Args:
        uid: the value to check.
        what: the attribute name, used in the message.
        path: the file the UID came from, for the message.
    """
    if not is_valid_uid(uid):
        shown = repr(uid)[:80]
        raise InvalidUIDError(
            f"{what} {shown} is not a valid DICOM UID (digits and dots, at most 64 characters); "
            "refusing to use it",
            path=path,
        )
    return str(uid)


def uid_path(root: Path, *uids: str) -> Path:
    """Build ``root/uid1/uid2/...`` after validating every UID; the result stays under root."""
    parts = [validate_uid(u) for u in uids]
    return root.joinpath(*parts)
