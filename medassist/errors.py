"""Errors of the medassist application core, rooted at :class:`MedAssistError`.

``dicom_io`` and ``multimodal`` import nothing from ``medassist``, so their errors have roots
of their own (:class:`dicom_io.errors.DicomIOError`, :class:`multimodal.errors.MultimodalError`).
The application translates them at its boundary with :func:`from_dicom_io` and
:func:`from_multimodal`, keeping the original as ``__cause__``.
"""

from __future__ import annotations

from dicom_io.errors import DicomIOError
from multimodal.errors import MultimodalError


class MedAssistError(Exception):
    """Root of every error medassist reports to a user."""

    #: Process exit status for the CLI.
    exit_code: int = 1


class InputError(MedAssistError):
    """The input (DICOM, EMR, configuration) is unusable; the message says why and where."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None, kind: str = "") -> None:
        self.path = path
        self.kind = kind
        super().__init__(message)


class DatasetImportError(InputError):
    """A study that ``medassist dataset import`` cannot make a case of (no report, a report
    without FINDINGS and IMPRESSION sections); the import records it and goes on."""


class NotAChestCTError(InputError):
    """The scan holds no lungs (a head or an abdomen CT, the wrong series): medassist drafts
    chest CT reports, and a draft of chest findings on it would be nonsense."""


class UsageError(MedAssistError):
    """The command line is inconsistent."""

    exit_code = 2


def from_dicom_io(exc: DicomIOError) -> InputError:
    """Translate a dicom_io error, keeping its type name and the file it names."""
    err = InputError(f"{type(exc).__name__}: {exc}", path=exc.path, kind=type(exc).__name__)
    err.__cause__ = exc
    return err


class ModelError(MedAssistError):
    """The model, its checkpoint or its configuration is unusable (a multimodal error)."""

    exit_code = 2


def from_multimodal(exc: MultimodalError) -> ModelError:
    """Translate a multimodal error (checkpoint, model config, tokenizer), keeping its type."""
    err = ModelError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


# --- application core: drafts, storage, audit, lifecycle, export (issue 5) -----------------


class DraftError(MedAssistError):
    """A report draft (the model's JSON) does not match the contract; ``field`` names where."""

    exit_code = 3

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(f"invalid report draft at {field!r}: {message}")


class StorageError(MedAssistError):
    """The database is unreachable, unmigrated or inconsistent; the message says what to do."""


class MigrationError(StorageError):
    """A schema migration failed or the database is at an unknown revision."""


class NotFoundError(StorageError):
    """A referenced row (report, user, study) does not exist."""


class RefusalError(MedAssistError):
    """An operation was refused and the refusal was written to the audit trail.

    The session still holds that audit event: commit it (``storage.unit_of_work`` does) so
    the refusal is kept even though the operation did not happen.
    """


class AuthenticationError(RefusalError):
    """Wrong user name or password, or a disabled account."""


class PermissionDeniedError(RefusalError):
    """The user's role does not allow the operation."""


class IllegalTransitionError(RefusalError):
    """A report lifecycle transition that the state machine does not allow."""

    def __init__(self, message: str, *, report_id: int, state: str, action: str) -> None:
        self.report_id = report_id
        self.state = state
        self.action = action
        super().__init__(message)


class ImmutableReportError(MedAssistError):
    """A signed or rejected report was changed behind the lifecycle's back (ORM guard)."""


class ConflictError(MedAssistError):
    """Optimistic-locking conflict: someone else changed the report since it was read."""

    def __init__(self, message: str, *, report_id: int, expected: int | None,
                 actual: int | None) -> None:
        self.report_id = report_id
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class SignatureError(MedAssistError):
    """An electronic signature does not verify against the stored content."""


class AuditError(MedAssistError):
    """The audit trail cannot be written or read."""


class ExportError(MedAssistError):
    """A report cannot be exported in the requested format; the message says why."""


class ReportValidationError(MedAssistError):
    """A lifecycle request is incomplete (e.g. a rejection without a reason, empty text)."""


# --- PACS integration: Orthanc/DICOMweb, ingest queue, send-back, C-STORE SCP (issue 7) -----


class PacsError(MedAssistError):
    """A PACS operation (DICOMweb, DIMSE, ingest queue) failed; the message says what to do."""


class PacsUnavailableError(PacsError):
    """The PACS could not be reached or answered 5xx/timeout: transient, retried with backoff."""


class PacsProtocolError(PacsError):
    """The PACS answered something unusable (4xx, malformed JSON, wrong study): not retried."""


class QueueStateError(PacsError):
    """An ingest or outbox row is not in the state the operation needs (e.g. a lost lease)."""


class SourcesUnavailableError(PacsError):
    """The source CT headers an SR needs cannot be had now (study folder gone, PACS down); the
    SR stays pending and ``medassist pacs send`` retries it."""


class ListenerConfigError(UsageError):
    """The C-STORE listener configuration is invalid (allow-list entry, port, limits)."""


# --- report pipeline and batch (issue 5, section 2 and 6) -----------------------------------


class PipelineError(InputError):
    """A study failed in one pipeline stage; ``stage`` names it, the message says why.

    The message starts with the stage (``build_volume: PixelDataError: ...``) so the ingest
    queue's ``reason`` column keeps both.  Never PHI in the message.
    """

    def __init__(self, message: str, *, stage: str, path: str | None = None,
                 kind: str = "") -> None:
        self.stage = stage
        super().__init__(f"{stage}: {message}", path=path, kind=kind)


class IdentityMismatchError(RefusalError, PipelineError):
    """The EMR names another patient (MRN) or accession than the DICOM study: refused, and the
    refusal is audited (committed by ``storage.unit_of_work``); only hashes were compared."""

    def __init__(self, message: str, *, stage: str = "cross_check_identity") -> None:
        super().__init__(message, stage=stage, kind="IdentityMismatch")


# --- batch engines (issue 8) ----------------------------------------------------------------


class EngineUnavailableError(UsageError):
    """A batch engine was asked for whose optional dependency is not installed
    (``--engine ray`` without Ray); the message says how to install it."""

    def __init__(self, message: str, *, engine: str, install: str) -> None:
        self.engine = engine
        self.install = install
        super().__init__(message)
