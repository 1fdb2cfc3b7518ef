"""Defaults that the commands and the library share, importable without the model stack (the
argument parsers read them when ``medassist --help`` is built)."""

from __future__ import annotations

from pathlib import Path

#: the shipped demo checkpoint, ``models/demo`` of the source tree, whatever the working
#: directory a command runs in
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "demo"
#: the finding labels (``configs/findings.yaml`` of the source tree), whatever the working
#: directory (a relative path failed ``medassist batch`` run from another folder)
DEFAULT_FINDINGS = Path(__file__).resolve().parents[1] / "configs" / "findings.yaml"

__all__ = ["DEFAULT_CHECKPOINT", "DEFAULT_FINDINGS"]
