"""Defaults for ``pacs watch`` / ``pacs listen`` from ``configs/pacs.yaml`` (or ``--config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medassist.errors import UsageError

DEFAULT = Path(__file__).resolve().parents[2] / "configs" / "pacs.yaml"


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The ``pacs:`` mapping; an absent default file gives ``{}`` (built-in defaults)."""
    import yaml

    p = Path(path) if path else DEFAULT
    if not p.is_file():
        if path:
            raise UsageError(f"PACS config {p} not found")
        return {}
    with p.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    pacs = data.get("pacs", {}) if isinstance(data, dict) else None
    if not isinstance(pacs, dict):
        raise UsageError(f"{p}: expected a 'pacs:' mapping")
    for key in ("password", "user"):
        if key in pacs.get("watch", {}):
            raise UsageError(f"{p}: credentials do not belong in the config; set "
                             "MEDASSIST_ORTHANC_USER / MEDASSIST_ORTHANC_PASSWORD")
    return pacs


def section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    sec = cfg.get(name, {})
    if not isinstance(sec, dict):
        raise UsageError(f"pacs.{name} must be a mapping")
    return sec
