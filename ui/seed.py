"""Demo data for ``medassist serve --demo DIR``: generated studies drafted by the real
pipeline (``medassist batch`` code path) into an SQLite database, and demo users.

The studies come from the synthetic case generator (docs/synth.md); the drafts come from the
checkpoint given (``models/demo`` in ``make demo``), never from canned text.
"""

from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist import audit
from medassist.auth import create_user
from medassist.storage import make_engine, session_factory, unit_of_work, upgrade
from medassist.storage.models import User
from ui.errors import UIError

ROOT = Path(__file__).resolve().parents[1]
SYNTH_CONFIG = ROOT / "configs" / "synth" / "small.yaml"


def generate_cases(root: Path, indices: list[int], *, seed: int = 11,
                   config: Path = SYNTH_CONFIG) -> list[Path]:
    """Write generated cases ``case_<index>`` (DICOM + EMR) under ``root`` (kept if present)."""
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    cfg = load_config(config)
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    out = []
    for i in indices:
        folder = root / f"case_{i:05d}"
        if not (folder / "emr.txt").is_file():
            write_case(make_case(cfg, vocab, seed, i, "test"), cfg, folder)
        out.append(folder)
    return out


def ensure_user(factory: sessionmaker[Session], username: str, display_name: str, role: str,
                password: str) -> bool:
    """Create the user unless it exists; returns whether it was created."""
    with unit_of_work(factory) as s:
        if s.scalar(select(User.id).where(User.username == username)) is not None:
            return False
        create_user(s, username=username, display_name=display_name, role=role,
                    password=password, actor=audit.SYSTEM)
    return True


@dataclass(frozen=True)
class DemoInfo:
    db_url: str
    users: dict[str, str]
    summary: dict[str, int]


def seed_demo(out_dir: Path, checkpoint: Path, *, n_cases: int = 4, db_url: str | None = None,
              log: io.TextIOBase | None = None) -> DemoInfo:
    """Generate ``n_cases`` studies under ``out_dir/cases``, draft them with ``checkpoint``
    into ``out_dir/medassist.db`` and create ``demo.clinician`` and ``demo.auditor`` (their
    passwords are written once to ``out_dir/credentials.txt``, mode 600)."""
    from medassist.batch_cli import run_batch

    if not (checkpoint / "model.safetensors").is_file():
        raise UIError(f"no model checkpoint in {checkpoint}: train one (`medassist train`) or "
                      "pass --checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    url = db_url or f"sqlite:///{(out_dir / 'medassist.db').resolve()}"
    engine = make_engine(url)
    try:
        upgrade(engine)
        factory = session_factory(engine)
        cases = out_dir / "cases"
        generate_cases(cases, list(range(n_cases)))
        sink = io.StringIO()
        summary = run_batch(cases, db=url, checkpoint=str(checkpoint), err=sink, out=sink)
        creds = out_dir / "credentials.txt"
        users: dict[str, str] = {}
        if creds.is_file():
            for line in creds.read_text(encoding="utf-8").splitlines():
                name, _, pw = line.partition(" ")
                if name and pw:
                    users[name] = pw
        for name, display, role in (("demo.clinician", "Dr Demo Clinician", "clinician"),
                                    ("demo.auditor", "Demo Auditor", "auditor")):
            pw = users.get(name) or secrets.token_urlsafe(12)
            if ensure_user(factory, name, display, role, pw):
                users[name] = pw
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(f"{k} {v}\n" for k, v in users.items())
    finally:
        engine.dispose()
    return DemoInfo(url, users, {k: int(summary[k]) for k in ("done", "failed", "skipped")})
