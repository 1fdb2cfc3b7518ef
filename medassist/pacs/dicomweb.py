"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS via dicomweb-client) and the few Orthanc REST calls
``watch`` needs (``/changes``, ``/studies/{id}``), behind one small typed wrapper.

Errors are translated: unreachable, timeouts and 5xx → :class:`PacsUnavailableError`
(transient, retried), anything else → :class:`PacsProtocolError`.  Every UID that comes back
from the PACS is validated before a path is built from it.  Credentials come from the caller
(the CLI reads ``MEDASSIST_ORTHANC_USER`` / ``MEDASSIST_ORTHANC_PASSWORD``); nothing here logs
them or any PHI.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

from dicom_io.errors import InvalidUIDError
from dicom_io.uids import is_valid_uid, uid_path, validate_uid
from medassist.errors import PacsProtocolError, PacsUnavailableError

log = logging.getLogger("medassist.pacs")

T = TypeVar("T")

#: WADO-RS: ask for the instances in the encoding they were stored in.
WADO_MEDIA = (("application/dicom", "*"),)


@dataclass(frozen=True)
class SeriesInfo:
    series_uid: str
    modality: str
    n_instances: int | None
    description: str


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str
    resource_type: str
    orthanc_id: str


@dataclass(frozen=True)
class ChangesPage:
    changes: tuple[Change, ...]
    last: int
    done: bool


def _status_of(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def _translate(what: str, exc: BaseException) -> Exception:
    import requests

    code = _status_of(exc)
    if isinstance(exc, requests.ConnectionError | requests.Timeout) or (
            code is not None and (code >= 500 or code in (408, 429))):
        return PacsUnavailableError(f"{what}: PACS unavailable ({type(exc).__name__}"
                                    f"{f', HTTP {code}' if code else ''}); will retry")
    return PacsProtocolError(f"{what}: {type(exc).__name__}"
                             f"{f' HTTP {code}' if code else ''}: {str(exc)[:200]}")


def _attr(item: dict[str, Any], tag: str) -> str:
    value = item.get(tag, {}).get("Value")
    return str(value[0]) if value else ""


class PacsClient:
    """An Orthanc (or any DICOMweb server) at ``base_url``; DICOMweb under ``dicomweb_root``."""

    def __init__(self, base_url: str, *, user: str | None = None, password: str | None = None,
                 dicomweb_root: str = "/dicom-web", timeout_s: float = 30.0) -> None:
        import requests
        import requests.adapters
        from dicomweb_client.api import DICOMwebClient

        self.base_url = base_url.rstrip("/")
        default_timeout = timeout_s

        class _TimeoutAdapter(requests.adapters.HTTPAdapter):
            def send(self, request: requests.PreparedRequest, stream: bool = False,
                     timeout: float | tuple[float | None, float | None] | None = None,
                     verify: bool | str = True, cert: str | tuple[str, str] | None = None,
                     proxies: dict[str, str] | None = None) -> requests.Response:
                return super().send(request, stream=stream,
                                    timeout=default_timeout if timeout is None else timeout,
                                    verify=verify, cert=cert, proxies=proxies)

        session = requests.Session()
        adapter = _TimeoutAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if user is not None:
            session.auth = (user, password or "")
        self._session = session
        self._dw = DICOMwebClient(url=self.base_url + dicomweb_root, session=session)

    # --- Orthanc REST ---------------------------------------------------------------------

    def _get_json(self, path: str, **params: Any) -> Any:
        import requests

        try:
            resp = self._session.get(self.base_url + path, params=params or None)
            resp.raise_for_status()
            return resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise _translate(f"GET {path}", exc) from exc

    def ping(self) -> dict[str, Any]:
        data = self._get_json("/system")
        if not isinstance(data, dict):
            raise PacsProtocolError("GET /system: not a JSON object; is this Orthanc?")
        return data

    def changes(self, since: int, limit: int = 100) -> ChangesPage:
        data = self._get_json("/changes", since=since, limit=limit)
        try:
            items = tuple(Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]),
                                 str(c["ID"])) for c in data["Changes"])
            return ChangesPage(items, int(data["Last"]), bool(data["Done"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PacsProtocolError(f"GET /changes: unexpected answer ({exc})") from exc

    def last_seq(self) -> int:
        """The sequence number of the newest change (to start a cursor "from now")."""
        data = self._get_json("/changes", last="")
        try:
            return int(data["Last"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PacsProtocolError(f"GET /changes?last: unexpected answer ({exc})") from exc

    def study_uid_of(self, orthanc_id: str) -> str | None:
        """The StudyInstanceUID of an Orthanc study ID; None if it was deleted since."""
        if not orthanc_id.replace("-", "").isalnum():
            raise PacsProtocolError(f"implausible Orthanc ID {orthanc_id[:80]!r}")
        try:
            data = self._get_json(f"/studies/{orthanc_id}")
        except PacsProtocolError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        uid = data.get("MainDicomTags", {}).get("StudyInstanceUID") if isinstance(data, dict) \
            else None
        if not is_valid_uid(uid):
            raise PacsProtocolError(f"Orthanc study {orthanc_id}: no valid StudyInstanceUID")
        return str(uid)

    # --- DICOMweb -------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import requests

        try:
            return fn()
        except requests.RequestException as exc:
            raise _translate(what, exc) from exc

    def series_of_study(self, study_uid: str) -> list[SeriesInfo]:
        """QIDO-RS ``/studies/{uid}/series``."""
        uid = validate_uid(study_uid, what="StudyInstanceUID")
        found = self._call("QIDO-RS series", lambda: self._dw.search_for_series(
            study_instance_uid=uid, get_remaining=True))
        out = []
        for item in found:
            s_uid = _attr(item, "0020000E")
            if not is_valid_uid(s_uid):
                log.warning("QIDO-RS: skipping a series with an invalid UID in study %s", uid)
                continue
            n = _attr(item, "00201209")
            out.append(SeriesInfo(s_uid, _attr(item, "00080060"), int(n) if n.isdigit() else None,
                                  _attr(item, "0008103E")))
        return out

    def iter_series(self, study_uid: str, series_uid: str) -> Iterator[Any]:
        """WADO-RS ``/studies/{uid}/series/{uid}``: the instances as pydicom Datasets."""
        st = validate_uid(study_uid, what="StudyInstanceUID")
        se = validate_uid(series_uid, what="SeriesInstanceUID")
        it = self._call("WADO-RS series", lambda: self._dw.iter_series(st, se))
        while True:
            ds = self._call("WADO-RS series", lambda: next(it, None))
            if ds is None:
                return
            yield ds

    def retrieve_series_to(self, study_uid: str, series_uid: str, dest: Path) -> int:
        """Write every instance of a series to ``dest/<series>/<sop>.dcm`` (atomically)."""
        n = 0
        folder = uid_path(dest, series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        for ds in self.iter_series(study_uid, series_uid):
            try:
                sop = validate_uid(getattr(ds, "SOPInstanceUID", None), what="SOPInstanceUID")
                if ds.StudyInstanceUID != study_uid or ds.SeriesInstanceUID != series_uid:
                    raise PacsProtocolError(f"WADO-RS returned an instance of another series "
                                            f"for {series_uid}")
            except InvalidUIDError as exc:
                raise PacsProtocolError(f"WADO-RS returned {exc.reason}") from exc
            atomic_write_dataset(ds, folder / f"{sop}.dcm")
            n += 1
        return n

    def retrieve_study(self, study_uid: str, dest: Path,
                       modalities: Sequence[str] = ("CT",)) -> tuple[list[SeriesInfo], int]:
        """QIDO-RS the series, then WADO-RS those of ``modalities`` into ``dest``.

        Returns (all series of the study, instances written).
        """
        series = self.series_of_study(study_uid)
        n = 0
        for s in series:
            if s.modality.upper() in modalities:
                n += self.retrieve_series_to(study_uid, s.series_uid, dest)
        return series, n

    def store(self, datasets: Sequence[Any], study_uid: str | None = None) -> None:
        """STOW-RS; raises unless every instance was stored."""
        uid = validate_uid(study_uid, what="StudyInstanceUID") if study_uid else None
        result = self._call("STOW-RS", lambda: self._dw.store_instances(
            datasets=list(datasets), study_instance_uid=uid))
        failed = getattr(result, "FailedSOPSequence", None)
        if failed:
            raise PacsProtocolError(f"STOW-RS: {len(failed)} instance(s) refused by the PACS")

    def store_bytes(self, payload: bytes, study_uid: str | None = None) -> None:
        import pydicom

        self.store([pydicom.dcmread(BytesIO(payload))], study_uid)

    def series_metadata(self, study_uid: str, series_uid: str) -> list[Any]:
        """WADO-RS ``.../series/{uid}/metadata``: the instances' headers as pydicom Datasets
        (no pixel data; bulk data left out)."""
        from pydicom.dataset import Dataset

        st = validate_uid(study_uid, what="StudyInstanceUID")
        se = validate_uid(series_uid, what="SeriesInstanceUID")
        found = self._call("WADO-RS metadata",
                           lambda: self._dw.retrieve_series_metadata(st, se))
        out = []
        for item in found:
            kept = {k: v for k, v in item.items()
                    if isinstance(v, dict) and "BulkDataURI" not in v}
            out.append(Dataset.from_json(kept))
        return out

    def search_instances(self, study_uid: str, series_uid: str | None = None) -> list[str]:
        """QIDO-RS SOPInstanceUIDs of a study (optionally one series)."""
        st = validate_uid(study_uid, what="StudyInstanceUID")
        se = validate_uid(series_uid, what="SeriesInstanceUID") if series_uid else None
        found = self._call("QIDO-RS instances", lambda: self._dw.search_for_instances(
            study_instance_uid=st, series_instance_uid=se, get_remaining=True))
        return [_attr(i, "00080018") for i in found]

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        st = validate_uid(study_uid, what="StudyInstanceUID")
        se = validate_uid(series_uid, what="SeriesInstanceUID")
        sop = validate_uid(sop_uid, what="SOPInstanceUID")
        return self._call("WADO-RS instance", lambda: self._dw.retrieve_instance(st, se, sop))


def atomic_write_bytes(data: bytes, dest: Path, *, fsync: bool = True) -> None:
    """Write ``dest`` via a temporary file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        Path(tmp).replace(dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_dataset(ds: Any, dest: Path, *, fsync: bool = True) -> None:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(buf.getvalue(), dest, fsync=fsync)
