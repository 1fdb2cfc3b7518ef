"""``pacs watch``: follow Orthanc's ``/changes`` feed, queue each ``StableStudy``, pull its CT
series over DICOMweb, select the diagnostic series with ``dicom_io`` and hand the study to a
:class:`StudyProcessor` (the pipeline; it plugs in here once the model exists).

- The ``/changes`` cursor and the enqueued studies are committed in one transaction: a
  restart neither misses nor repeats a study.
- Each study is claimed from the shared ingest queue; the processor's writes and the ``done``
  mark commit together (see :mod:`medassist.pacs.queue`): one result per StudyInstanceUID.
- Transient errors (PACS down, timeouts, 5xx) put the study back with an exponential backoff;
  a study without a diagnostic CT series is ``no_diagnostic_ct`` with dicom_io's reason.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_io.errors import DicomIOError, NoDiagnosticSeriesError
from medassist.errors import (
    InputError,
    PacsError,
    PacsUnavailableError,
    QueueStateError,
    StorageError,
)
from medassist.pacs import queue
from medassist.pacs.dicomweb import PacsClient
from medassist.pacs.models import IngestState, PacsCursor
from medassist.storage.engine import unit_of_work

log = logging.getLogger("medassist.pacs")


@dataclass(frozen=True)
class ProcessResult:
    """What a processor reports; ``summary`` is stored with the queue row (no PHI)."""

    summary: Mapping[str, Any] = field(default_factory=dict)
    report_id: int | None = None


class StudyProcessor(Protocol):
    """Turns one downloaded study into its result (the pipeline: draft stored for review).

    Called with a fresh Session; its writes commit together with the queue's ``done`` mark,
    so they happen once.  Raise :class:`PacsUnavailableError` (or another transient error) to
    be retried, :class:`NoDiagnosticSeriesError` when the study has no usable CT.
    """

    def __call__(self, study_dir: Path, study_uid: str, session: Session) -> ProcessResult: ...


def volume_summary_processor(study_dir: Path, study_uid: str, session: Session) -> ProcessResult:
    """Assemble the diagnostic CT volume with ``dicom_io.load_volume`` and report its summary.

    This is real work (index, selection, assembly, HU), not a draft: it stands in for the
    pipeline until the model exists, and is what the tests run.
    """
    from dicom_io.volume import load_volume

    vol = load_volume(study_dir)
    s = vol.summary()
    return ProcessResult(summary={"kind": "volume_summary", "series_uid": s["series_uid"],
                                  "shape": s["shape"], "spacing_mm": s["spacing_mm"],
                                  "hu_min": s["hu_min"], "hu_max": s["hu_max"],
                                  "instances": s["instances"]})


def cursor_name(base_url: str) -> str:
    """The cursor row of one Orthanc: ``orthanc:`` + a hash of its URL (no credentials)."""
    return "orthanc:" + hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:32]


def get_cursor(session: Session, name: str) -> int:
    row = session.get(PacsCursor, name)
    return 0 if row is None else row.seq


def set_cursor(session: Session, name: str, seq: int) -> None:
    row = session.get(PacsCursor, name)
    if row is None:
        session.add(PacsCursor(name=name, seq=seq))
    elif seq < row.seq:
        raise QueueStateError(f"cursor {name} would move back from {row.seq} to {seq}; was the "
                              "Orthanc database reset? set it explicitly to proceed")
    else:
        row.seq = seq
        row.updated_at = queue.utcnow()
    session.flush()


def start_from_now(factory: sessionmaker[Session], client: PacsClient) -> bool:
    """``watch --from-now``: a watcher without a cursor starts at Orthanc's latest change, so
    the archive already in the PACS is not drafted. A stored cursor is kept (a restart never
    skips studies); returns whether the cursor was set."""
    name = cursor_name(client.base_url)
    last = client.last_seq()  # network outside any transaction
    with unit_of_work(factory) as s:
        if s.get(PacsCursor, name) is not None:
            return False
        set_cursor(s, name, last)
    log.info("watch: starting from change %d (--from-now)", last)
    return True


def poll_changes(factory: sessionmaker[Session], client: PacsClient, *, page: int = 100) -> int:
    """Consume ``/changes`` up to the end; returns the number of studies newly queued.

    Each page (its StableStudy entries and the cursor after it) commits in one transaction.
    """
    name = cursor_name(client.base_url)
    queued = 0
    while True:
        with unit_of_work(factory) as s:
            since = get_cursor(s, name)
        batch = client.changes(since, page)  # network outside any transaction
        uids: list[str] = []
        for ch in batch.changes:
            if ch.change_type == "StableStudy" and ch.resource_type == "Study":
                uid = client.study_uid_of(ch.orthanc_id)
                if uid is None:
                    log.info("change %d: study deleted from Orthanc before it was read", ch.seq)
                    continue
                uids.append(uid)
        with unit_of_work(factory) as s:
            if get_cursor(s, name) != since:
                continue  # another watcher consumed this page; read again from its cursor
            for uid in uids:
                _, created = queue.enqueue(s, uid, source="watch")
                queued += int(created)
            if batch.last > since:
                set_cursor(s, name, batch.last)
        if batch.done or not batch.changes:
            return queued


def _no_ct_reason(series: list[Any]) -> str:
    mods = sorted({s.modality or "unknown" for s in series})
    if not series:
        return "no diagnostic CT series: the study has no series in the PACS"
    return f"no diagnostic CT series: the study has no CT series (modalities: {', '.join(mods)})"


@dataclass
class Outcome:
    study_uid: str
    state: str
    reason: str | None = None


def process_one(factory: sessionmaker[Session], client: PacsClient | None,
                processor: StudyProcessor, *, workdir: Path | None = None,
                lease_s: float = 1800.0, backoff: queue.Backoff | None = None,
                sources: tuple[str, ...] = queue.SOURCES) -> Outcome | None:
    """Claim one due study, fetch it (watch) or use its folder (listen/batch), select, process.

    Returns None when nothing is due.
    """
    with unit_of_work(factory) as s:
        claim = queue.claim(s, lease_s=lease_s, sources=sources)
    if claim is None:
        return None
    uid = claim.study_uid
    tmp: Path | None = None
    try:
        if claim.location is not None:
            study_dir = Path(claim.location)  # a folder, or a zip file (batch)
            if not (study_dir.is_dir() or study_dir.is_file()):
                return _close(factory, claim, IngestState.FAILED,
                              f"study folder {study_dir} is missing", backoff)
        else:
            if client is None:
                raise PacsError("a watch study needs a PACS client")
            tmp = Path(tempfile.mkdtemp(prefix="medassist-pacs-", dir=workdir))
            series, n = client.retrieve_study(uid, tmp)
            if n == 0:
                return _close(factory, claim, IngestState.NO_DIAGNOSTIC_CT,
                              _no_ct_reason(series), backoff)
            study_dir = tmp
        try:
            with unit_of_work(factory) as s:
                result = processor(study_dir, uid, s)
                queue.finish(s, claim, result=dict(result.summary)
                             | ({"report_id": result.report_id} if result.report_id else {}))
            log.info("study %s processed (attempt %d)", uid, claim.attempts)
            return Outcome(uid, IngestState.DONE.value)
        except NoDiagnosticSeriesError as exc:
            return _close(factory, claim, IngestState.NO_DIAGNOSTIC_CT,
                          f"no diagnostic CT series: {exc.reason}", backoff)
    except QueueStateError as exc:
        log.warning("%s", exc)
        return Outcome(uid, "lost")
    except (PacsUnavailableError, StorageError, OSError, TimeoutError) as exc:
        return _retry(factory, claim, f"{type(exc).__name__}: {exc}", backoff)
    except (DicomIOError, InputError, PacsError) as exc:
        return _close(factory, claim, IngestState.FAILED, f"{type(exc).__name__}: {exc}",
                      backoff)
    except Exception as exc:  # a processor bug: keep the study, visible, retried with backoff
        log.exception("study %s: processor failed", uid)
        return _retry(factory, claim, f"{type(exc).__name__}: {exc}", backoff)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _close(factory: sessionmaker[Session], claim: queue.Claim, state: IngestState,
           reason: str, backoff: queue.Backoff | None) -> Outcome:
    with unit_of_work(factory) as s:
        if state == IngestState.FAILED:
            queue.fail(s, claim, reason[:4000], transient=False, backoff=backoff)
        else:
            queue.finish(s, claim, state=state, reason=reason[:4000])
    log.info("study %s: %s", claim.study_uid, state.value)
    return Outcome(claim.study_uid, state.value, reason)


def _retry(factory: sessionmaker[Session], claim: queue.Claim, reason: str,
           backoff: queue.Backoff | None) -> Outcome:
    with unit_of_work(factory) as s:
        row = queue.fail(s, claim, reason[:4000], transient=True, backoff=backoff)
        state = row.state
    log.warning("study %s: attempt %d failed (%s); %s", claim.study_uid, claim.attempts,
                reason.split(":")[0], state)
    return Outcome(claim.study_uid, state, reason)


@dataclass
class Watcher:
    """The ``pacs watch`` loop: poll ``/changes``, then drain the due studies."""

    factory: sessionmaker[Session]
    client: PacsClient
    processor: StudyProcessor
    workdir: Path | None = None
    poll_interval_s: float = 5.0
    lease_s: float = 1800.0
    backoff: queue.Backoff = field(default_factory=queue.Backoff)
    sleep: Callable[[float], None] = time.sleep

    def run_once(self) -> list[Outcome]:
        """One poll of the feed, then every due study (watch-sourced ones are pulled)."""
        poll_changes(self.factory, self.client)
        out: list[Outcome] = []
        while (o := process_one(self.factory, self.client, self.processor,
                                workdir=self.workdir, lease_s=self.lease_s,
                                backoff=self.backoff)) is not None:
            out.append(o)
        return out

    def run_forever(self, stop: Callable[[], bool] = lambda: False) -> None:
        failures = 0
        while not stop():
            try:
                self.run_once()
                failures = 0
                self.sleep(self.poll_interval_s)
            except (PacsUnavailableError, StorageError) as exc:
                failures += 1
                delay = self.backoff.delay(failures).total_seconds()
                log.warning("watch: %s; retrying in %.0f s", type(exc).__name__, delay)
                self.sleep(delay)


def states(session: Session) -> dict[str, tuple[str, str | None]]:
    """study UID → (state, reason) of every queued study (status displays, tests)."""
    from medassist.pacs.models import IngestItem

    return {r.study_uid: (r.state, r.reason) for r in session.scalars(select(IngestItem))}
