"""No PHI in logs or audit rows: plant PHI in the report text, the EMR-derived sections and a
rejection reason, run the whole workflow at DEBUG log level, and scan."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from medassist import reports
from medassist.auth import authenticate
from medassist.draft import ReportDraft
from medassist.errors import AuthenticationError
from medassist.export import export_report
from medassist.storage import AuditEvent, unit_of_work

from .conftest import Db
from .factories import PASSWORD, STUDY_UID, add_user, decided, draft_dict

PHI = ["Zebulon Quixote", "99887766", "1951-02-03", "42 Wallaby Way"]


def test_no_phi_in_logs_or_audit(db: Db, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    d = draft_dict()
    d["sections"]["indication"] = (f"Patient {PHI[0]}, MRN {PHI[1]}, born {PHI[2]}, of "
                                   f"{PHI[3]}: cough.")
    d["findings"][0]["sentence"] = f"Nodule in {PHI[0]}."
    with db.factory.begin() as s:
        doc = add_user(s, "frank")
        rid = reports.store_draft(s, ReportDraft.from_dict(d), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0009").id
        rid2 = reports.store_draft(s, ReportDraft.from_dict(draft_dict()),
                                   study_uid=STUDY_UID, patient_pseudo_id="PSEUDO-0009").id
    with db.factory.begin() as s:
        view = reports.read_report(s, rid, doc)
        assert PHI[0] in view.text
        reports.edit_report(s, rid, doc, decided(view.text + f"\nAddendum for {PHI[0]}.",
                                                 view.draft), 1)
        reports.submit_for_review(s, rid, doc, 2)
        reports.sign_report(s, rid, doc, PASSWORD, 3)
        reports.submit_for_review(s, rid2, doc, 1)
        reports.reject_report(s, rid2, doc, f"this is {PHI[0]}'s old history", 2)
        for fmt in ("txt", "fhir", "pdf"):
            export_report(s, rid, doc, fmt, tmp_path / f"r.{fmt}")
    with pytest.raises(AuthenticationError), unit_of_work(db.factory) as s:
        authenticate(s, "frank", PHI[0])  # a password that happens to be PHI
    with db.factory() as s:
        rows = [" ".join(str(v) for v in r) for r in
                s.execute(select(AuditEvent.__table__)).all()]
    assert len(rows) > 10
    logs = [r.getMessage() for r in caplog.records]
    assert any("stored draft report" in m for m in logs)
    for needle in PHI:
        assert not any(needle in r for r in rows), needle
        assert not any(needle in m for m in logs), needle
