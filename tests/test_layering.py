"""Imports flow one way: ui → medassist → (multimodal, dicom_io); the two leaves import
neither medassist, ui nor each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "dicom_io": {"medassist", "multimodal", "ui"},
    "multimodal": {"medassist", "dicom_io", "ui"},
    "medassist": {"ui"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    bad = {f"{p.relative_to(REPO)} imports {m}" for p in files
           for m in _imports(p) & FORBIDDEN[package]}
    assert not bad, sorted(bad)
