"""The admin commands (db upgrade, user add/disable, audit verify/export, export) on both
backends, through argparse + admin_cli.add_parser as the main CLI will wire them."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import text

from medassist import admin_cli, reports
from medassist.draft import ReportDraft
from medassist.storage import head_revision, make_engine, session_factory
from tests.dicom_factory import axial_positions, write_series

from .factories import DRAFT, PASSWORD, SERIES_UID, STUDY_UID


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return admin_cli.run(argv)


def test_admin_commands(empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db", empty_url]
    assert _run(["db", "upgrade", *db], monkeypatch) == 0
    assert f"revision {head_revision()}" in capsys.readouterr().out
    assert _run(["user", "add", "dana", "--name", "Dr. Dana Diaz", "--role", "clinician",
                 "--password-stdin", *db], monkeypatch, PASSWORD + "\n") == 0
    assert _run(["user", "add", "dana", "--name", "X", "--role", "clinician",
                 "--password-stdin", *db], monkeypatch, PASSWORD + "\n") == 1
    assert "already exists" in capsys.readouterr().err
    assert _run(["user", "add", "eve", "--name", "Eve", "--role", "admin", "--password-stdin",
                 *db], monkeypatch, "short\n") == 1
    assert "too short" in capsys.readouterr().err

    engine = make_engine(empty_url)
    with session_factory(engine).begin() as s:
        rid = reports.store_draft(s, ReportDraft.from_dict(DRAFT), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0003").id
    # as large as the draft's evidence box needs (rows 100-112, columns 150-162)
    ct = write_series(tmp_path / "ct", axial_positions(64, 2.0), rows=192, cols=192,
                      study_uid=STUDY_UID, series_uid=SERIES_UID)
    assert ct
    for fmt in ("txt", "fhir", "sr", "pdf"):
        out = tmp_path / f"r.{fmt}"
        assert _run(["export", str(rid), "--format", fmt, "--out", str(out), "--user", "dana",
                     "--password-stdin", "--dicom", str(tmp_path / "ct"), *db], monkeypatch,
                    PASSWORD + "\n") == 0, capsys.readouterr().err
        assert out.stat().st_size > 0
    assert _run(["export", str(rid), "--format", "txt", "--out", str(tmp_path / "x"),
                 "--user", "dana", "--password-stdin", *db], monkeypatch, "bad password\n") == 1
    assert "login failed" in capsys.readouterr().err

    assert _run(["user", "disable", "dana", *db], monkeypatch) == 0
    assert _run(["audit", "verify", *db], monkeypatch) == 0
    assert "intact" in capsys.readouterr().out

    out = tmp_path / "audit.json"
    assert _run(["audit", "export", "--since", "2000-01-01", "--format", "json", "--out",
                 str(out), *db], monkeypatch) == 0
    events = json.loads(out.read_text())
    kinds = [e["event_type"] for e in events]
    assert kinds.count("EXPORT") == 4 and "USER_DISABLE" in kinds and "DB_MIGRATE" in kinds
    assert [e["outcome"] for e in events if e["event_type"] == "LOGIN"].count(4) == 1
    assert _run(["audit", "export", "--format", "atna-xml", *db], monkeypatch) == 0
    root = ET.fromstring(capsys.readouterr().out)
    assert len(root.findall("AuditMessage")) == len(events) + 1  # + the json export itself

    # tamper in raw SQL: verify exits 1 and names the event
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
        conn.execute(text("UPDATE audit_events SET username = 'mallory' WHERE seq = 3"))
    engine.dispose()
    assert _run(["audit", "verify", *db], monkeypatch) == 1
    assert "broken at event seq 3" in capsys.readouterr().out


def test_db_url_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MEDASSIST_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert _run(["db", "upgrade"], monkeypatch) == 0
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("MEDASSIST_DB_URL")
    monkeypatch.setenv("MEDASSIST_DATA_DIR", str(tmp_path / "data"))
    assert _run(["audit", "verify"], monkeypatch) == 0
    assert (tmp_path / "data" / "medassist.db").exists()
    capsys.readouterr()


def test_export_sr_from_a_zipped_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``export --format sr --dicom study.zip`` (a study batched from a zip file) writes the
    SR the study's folder gives; a file that is not a zip archive is a typed error (exit 1,
    no traceback)."""
    import zipfile

    import pydicom

    db = ["--db", f"sqlite:///{tmp_path / 'zip.db'}"]
    assert _run(["db", "upgrade", *db], monkeypatch) == 0
    assert _run(["user", "add", "dana", "--name", "Dr. Dana Diaz", "--role", "clinician",
                 "--password-stdin", *db], monkeypatch, PASSWORD + "\n") == 0
    engine = make_engine(db[1])
    with session_factory(engine).begin() as s:
        rid = reports.store_draft(s, ReportDraft.from_dict(DRAFT), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0003").id
    engine.dispose()
    files = write_series(tmp_path / "ct", axial_positions(64, 2.0), rows=192, cols=192,
                         study_uid=STUDY_UID, series_uid=SERIES_UID)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("README.txt", "not DICOM")
        for f in reversed(sorted(files)):
            zf.write(f, f"ct/{Path(f).name}")
    got = {}
    for name, src in (("folder", tmp_path / "ct"), ("zip", archive)):
        out = tmp_path / f"{name}.sr.dcm"
        assert _run(["export", str(rid), "--format", "sr", "--out", str(out), "--user", "dana",
                     "--password-stdin", "--dicom", str(src), *db], monkeypatch,
                    PASSWORD + "\n") == 0, capsys.readouterr().err
        ds = pydicom.dcmread(out)
        got[name] = (sorted(str(i.ReferencedSOPInstanceUID)
                            for ev in ds.CurrentRequestedProcedureEvidenceSequence
                            for se in ev.ReferencedSeriesSequence
                            for i in se.ReferencedSOPSequence),
                     str(ds.StudyInstanceUID))
    assert got["zip"] == got["folder"] and got["zip"][1] == STUDY_UID
    assert len(got["zip"][0]) == 64
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip archive")
    assert _run(["export", str(rid), "--format", "sr", "--out", str(tmp_path / "b.dcm"),
                 "--user", "dana", "--password-stdin", "--dicom", str(bad), *db], monkeypatch,
                PASSWORD + "\n") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
