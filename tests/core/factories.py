"""Test data: a valid draft (the model's JSON contract) and users with cheap argon2 costs."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy.orm import Session

from medassist.audit import SYSTEM, Actor
from medassist.auth import Argon2Params, actor_of, create_user
from medassist.draft import ReportDraft
from medassist.review import BLOCK, decision_line, undecided
from medassist.storage import Role

FAST = Argon2Params(time_cost=1, memory_cost_kib=1024, parallelism=1)
PASSWORD = "correct horse battery"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"

DRAFT: dict[str, Any] = {
    "status": "DRAFT",
    "disclaimer": "AI-generated draft; not for clinical use until reviewed and signed.",
    "sections": {
        "indication": "Cough for three weeks.",
        "technique": "Non-contrast CT of the chest, 1.25 mm slices.",
        "findings": "A 9 mm solid nodule in the right upper lobe. Small left pleural effusion.",
        "impression": "1. Right upper lobe nodule, 9 mm.\n2. Small left pleural effusion.",
    },
    "findings": [
        {"label": "lung_nodule", "present": True, "probability": 0.91, "laterality": "right",
         "location": "RUL", "size_mm": 9.0, "sentence": "A 9 mm solid nodule in the RUL.",
         "evidence": {"slices": [40, 41, 42], "z_mm": [-120.5, -117.0],
                      "box_voxels": [40, 100, 150, 42, 112, 162],
                      "box_mm": [40.0, -30.0, -120.5, 49.0, -21.0, -117.0],
                      "emr_spans": [[10, 25]]},
         "flags": []},
        {"label": "pleural_effusion", "present": True, "probability": 0.72,
         "laterality": "left", "location": None, "size_mm": 14.0,
         "sentence": "Small left pleural effusion.",
         "evidence": {"slices": [60], "z_mm": None, "box_voxels": None, "box_mm": None,
                      "emr_spans": []},
         "flags": ["low_confidence"]},
        {"label": "pneumothorax", "present": False, "probability": 0.03, "laterality": None,
         "location": None, "size_mm": None, "sentence": "No pneumothorax.",
         "evidence": {"slices": [], "z_mm": None, "box_voxels": None, "box_mm": None,
                      "emr_spans": []},
         "flags": []},
    ],
    "modality_weights": {"ct": 0.64, "emr": 0.36},
    "model": {"name": "medassist-fusion", "version": "0.1.0", "checkpoint_sha256": "c" * 64},
    "inputs": {"series_uid": SERIES_UID, "dicom_sha256": "d" * 64, "emr_sha256": "e" * 64},
}


def decided(text: str, draft: ReportDraft | dict[str, Any] = DRAFT, *lines: str) -> str:
    """``text`` with the reviewer's ``lines`` added to its decision block under FINDINGS and
    every AI finding of ``draft`` still undecided accepted as drafted (its side, size and
    sentence, as the review app's "Accept the undecided findings" writes it): what a report
    needs before it is signed."""
    d = draft if isinstance(draft, ReportDraft) else ReportDraft.from_dict(draft)
    mine = {ln.split()[1] for ln in lines}
    add = [*lines, *(decision_line(f.label, "accepted", f.laterality or "", f.size_mm,
                                   f.sentence)
                     for f in d.findings if f.label in undecided(d, text) and
                     f.label not in mine)]
    if not add:
        return text
    block = ("" if BLOCK in text else BLOCK + "\n") + "\n".join(add) + "\n"
    at = text.find("IMPRESSION:")
    if at < 0:
        return text.rstrip("\n") + "\n\n" + block
    return text[:at] + block + "\n" + text[at:]


def draft_dict(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(DRAFT)
    d.update(changes)
    return d


def add_user(session: Session, username: str, role: Role = Role.CLINICIAN,
             display_name: str | None = None, actor: Actor = SYSTEM) -> Actor:
    user = create_user(session, username=username, display_name=display_name or
                       f"Dr. {username.title()}", role=role, password=PASSWORD, actor=actor,
                       params=FAST)
    return actor_of(user)
