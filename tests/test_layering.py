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


def test_error_modules_load_no_dicom_stack() -> None:
    """Every command's error handling imports dicom_io.errors (through medassist.errors):
    that must not load pydicom, gdcm or numpy (dicom_io's names load on first use); the
    package's names still resolve."""
    import subprocess
    import sys

    code = ("import sys, dicom_io.errors, medassist.errors, medassist.cli; "
            "print(sorted(m for m in ('pydicom', 'gdcm', 'numpy', 'torch') if m in sys.modules)); "
            "import dicom_io; print(dicom_io.Volume.__module__, dicom_io.scan.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.splitlines()
    assert out == ["[]", "dicom_io.volume dicom_io.index"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import dicom_io

        _ = dicom_io.nope
