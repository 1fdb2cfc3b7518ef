"""``pacs listen``: a hardened pynetdicom C-STORE SCP for sites without Orthanc.

Hardening, on top of pynetdicom:

- **Allow-list** of ``AE@host`` pairs: a connection from a host that is on no entry is closed
  before any PDU is read; an A-ASSOCIATE-RQ whose calling AE title is not allowed for that
  host is rejected (result 1, source 1, reason 3 "calling AE title not recognised").
- **Association cap**: ``max_associations`` at a time (pynetdicom rejects the others with
  "local limit exceeded" while the accepted ones carry on); beyond ``max_associations + 16``
  open connections new ones are closed without a thread of their own.
- **PDU length cap before buffering**: pynetdicom's reader allocates whatever PDU length the
  peer declares.  :class:`HardenedDUL` reads the 6-byte header, and a declared length above
  the cap (our maximum PDU for P-DATA-TF, ``max_control_pdu`` for the others) aborts the
  association (A-ABORT) without reading the body.  P-DATA fragments of one message are also
  counted against ``max_message_bytes``.
- **UIDs validated before any path** (``dicom_io.uids``); the path is checked to stay under the
  storage root; files are written to a temporary file, fsynced and renamed.
- **Handlers return DICOM status codes**, never raise; each study received on an association
  that ends with an A-RELEASE is queued in the shared ingest queue.

Logs carry UIDs, AE titles and peer addresses only, never PHI.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.acse import ACSE
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_io.uids import is_valid_uid
from medassist.errors import ListenerConfigError
from medassist.pacs.dicomweb import atomic_write_bytes

log = logging.getLogger("medassist.pacs.scp")

#: DICOM status codes returned by the C-STORE handler (PS3.4 Annex B).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
VERIFICATION = "1.2.840.10008.1.1"

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.")


def _check_ae(ae: str, what: str) -> str:
    ae = ae.strip()
    if not 0 < len(ae) <= 16 or not set(ae) <= _AE_CHARS:
        raise ListenerConfigError(f"{what} {ae!r} is not a valid AE title (1-16 letters, digits, "
                                  "space, _ - .)")
    return ae


@dataclass(frozen=True)
class AllowEntry:
    """One ``AE@host`` pair (host: an IP address; ``localhost`` means 127.0.0.1)."""

    ae: str
    host: str

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        ae, sep, host = text.rpartition("@")
        if not sep:
            raise ListenerConfigError(f"allow-list entry {text!r}: write AE@host, e.g. "
                                      "CT01@10.0.0.5")
        host = "127.0.0.1" if host == "localhost" else host
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError as exc:
            raise ListenerConfigError(f"allow-list entry {text!r}: host must be an IP "
                                      "address") from exc
        return cls(_check_ae(ae, "allow-list AE title"), host)


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str
    port: int
    allow: tuple[AllowEntry, ...]
    storage_root: Path
    bind: str = "127.0.0.1"
    max_associations: int = 4
    max_pdu: int = 65536
    max_control_pdu: int = 256 * 1024
    max_message_bytes: int = 1 << 30
    acse_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    fsync: bool = True

    def __post_init__(self) -> None:
        _check_ae(self.ae_title, "listener AE title")
        if not self.allow:
            raise ListenerConfigError("the allow-list is empty: pass --allow AE@host")
        if not 0 < self.port < 65536:
            raise ListenerConfigError(f"port {self.port} out of range")
        if not 1 <= self.max_associations <= 256:
            raise ListenerConfigError("max_associations must be 1..256")
        if not 4096 <= self.max_pdu <= 16 << 20:
            raise ListenerConfigError("max_pdu must be 4 KiB..16 MiB")

    def allowed(self, ae: str, host: str) -> bool:
        return AllowEntry(ae.strip(), host) in self.allow

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(e.host for e in self.allow)


#: P-DATA-TF bytes tolerated above our maximum PDU (PDV item headers).
PDU_SLACK = 64


class HardenedDUL(DULServiceProvider):
    """pynetdicom's DUL with the declared PDU length checked before anything is buffered."""

    def __init__(self, assoc: Association, cfg: ListenerConfig) -> None:
        super().__init__(assoc)
        self._cfg = cfg
        self._message_bytes = 0
        self.refused: str | None = None

    def _refuse(self, why: str) -> None:
        if self.refused is not None:  # already aborting: drop the connection, read nothing
            self.event_queue.put("Evt17")
            return
        self.refused = why
        log.warning("association from %s aborted: %s", _peer(self.assoc), why)
        self.event_queue.put("Evt19")  # invalid PDU → A-ABORT to the peer
        self.event_queue.put("Evt17")  # then drop the transport: no slot held until ARTIM
        if not self.assoc.is_established:
            # The association thread is still waiting (up to the ACSE timeout) for an
            # A-ASSOCIATE-RQ that will never come; a None wakes it and it ends at once, so a
            # refused peer cannot hold a slot of the association cap.
            self.to_user_queue.put(None)  # type: ignore[arg-type]

    def _read_pdu_data(self) -> None:
        sock = self.socket
        if sock is None or self.refused is not None:  # refused: read no more of its bytes
            self.event_queue.put("Evt17")
            return
        try:
            header = bytes(sock.recv(6))
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(header) != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            self._refuse(f"unknown PDU type 0x{pdu_type:02X}")
            return
        cap = self._cfg.max_pdu + PDU_SLACK if pdu_type == 0x04 else self._cfg.max_control_pdu
        if length > cap:
            self._refuse(f"declared PDU length {length} (type 0x{pdu_type:02X}) above the "
                         f"{cap}-byte cap")
            return
        try:
            body = bytes(sock.recv(length))
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and not self._count_pdvs(body):
            return
        try:
            pdu, event = self._decode_pdu(bytearray(header + body))
        except Exception:
            self._refuse("undecodable PDU")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _count_pdvs(self, body: bytes) -> bool:
        """Count data-set fragment bytes of the current message; False (and abort) over cap."""
        off = 0
        while off + 6 <= len(body):
            (item_len,) = struct.unpack(">L", body[off:off + 4])
            mch = body[off + 5]
            if item_len < 2 or off + 4 + item_len > len(body):
                self._refuse("malformed PDV item")
                return False
            if not mch & 0x01:  # data set fragment (command fragments are small and bounded)
                self._message_bytes += item_len - 2
                if self._message_bytes > self._cfg.max_message_bytes:
                    self._refuse(f"message above {self._cfg.max_message_bytes} bytes")
                    return False
                if mch & 0x02:
                    self._message_bytes = 0
            off += 4 + item_len
        return True


def _peer(assoc: Association) -> str:
    try:
        info = assoc.requestor.address_info
        return "?" if info is None else str(info.address)
    except Exception:
        return "?"


class HardenedACSE(ACSE):
    """Rejects a calling AE title that is not allowed for the peer's host."""

    def __init__(self, assoc: Association, cfg: ListenerConfig) -> None:
        super().__init__(assoc)
        self._cfg = cfg

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "") or "")
        host = _peer(self.assoc)
        if not self._cfg.allowed(calling, host):
            log.warning("association rejected: calling AE %r from %s is not on the allow-list",
                        calling[:16], host)
            self.send_reject(0x01, 0x01, 0x03)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class HardenedServer(ThreadedAssociationServer):
    medassist_cfg: ListenerConfig


class HardenedRequestHandler(RequestHandler):
    """Filters hosts and floods before pynetdicom starts an association thread."""

    def handle(self) -> None:
        server = self.server
        cfg: ListenerConfig = server.medassist_cfg  # type: ignore[attr-defined]
        host = str(self.client_address[0])
        if host not in cfg.hosts:
            log.warning("connection from %s closed: host not on the allow-list", host)
            server.shutdown_request(self.request)
            return
        if len(self.ae.active_associations) > cfg.max_associations + 16:
            log.warning("connection from %s closed: too many open connections", host)
            server.shutdown_request(self.request)
            return
        super().handle()

    def _create_association(self) -> Association:
        cfg: ListenerConfig = self.server.medassist_cfg  # type: ignore[attr-defined]
        assoc = super()._create_association()
        old = assoc.dul
        dul = HardenedDUL(assoc, cfg)
        dul.socket = old.socket
        while not old.event_queue.empty():  # Evt5 (connection open) was queued on the old one
            dul.event_queue.put(old.event_queue.get_nowait())
        assoc.dul = dul
        assoc.acse = HardenedACSE(assoc, cfg)
        # the timeouts live on the DUL's timers: set them again on the new one
        assoc.acse_timeout = cfg.acse_timeout_s
        assoc.dimse_timeout = cfg.dimse_timeout_s
        assoc.network_timeout = cfg.network_timeout_s
        return assoc


OnStudy = Callable[[str, Path], None]


@dataclass
class StoreHandler:
    """EVT_C_STORE / EVT_RELEASED / EVT_ABORTED: write files, queue complete studies."""

    root: Path
    on_study: OnStudy
    fsync: bool = True
    _studies: dict[int, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stored: int = 0
    refused: int = 0

    def handle_store(self, event: evt.Event) -> int:
        try:
            return self._store(event)
        except OSError:
            log.exception("C-STORE: cannot write to the storage root")
            return OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE: unexpected error")
            return CANNOT_UNDERSTAND

    def _store(self, event: evt.Event) -> int:
        req_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            ds = event.dataset
            study = getattr(ds, "StudyInstanceUID", None)
            series = getattr(ds, "SeriesInstanceUID", None)
            sop = getattr(ds, "SOPInstanceUID", None)
        except Exception:
            self._refuse("undecodable data set")
            return CANNOT_UNDERSTAND
        for what, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                          ("SOPInstanceUID", sop), ("AffectedSOPInstanceUID", req_uid)):
            if not is_valid_uid(uid):
                self._refuse(f"invalid {what}")
                return CANNOT_UNDERSTAND
        if sop != req_uid:
            self._refuse("SOPInstanceUID differs from the request's AffectedSOPInstanceUID")
            return DATASET_MISMATCH
        root = self.root.resolve()
        folder = root / str(study) / str(series)
        dest = folder / f"{sop}.dcm"
        if not dest.resolve().is_relative_to(root):  # pragma: no cover - UIDs are digits
            self._refuse("path outside the storage root")
            return CANNOT_UNDERSTAND
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(event.encoded_dataset(include_meta=True), dest, fsync=self.fsync)
        with self._lock:
            self._studies.setdefault(id(event.assoc), set()).add(str(study))
            self.stored += 1
        return SUCCESS

    def _refuse(self, why: str) -> None:
        with self._lock:
            self.refused += 1
        log.warning("C-STORE refused: %s", why)

    def handle_released(self, event: evt.Event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), set())
        for uid in sorted(studies):
            try:
                self.on_study(uid, self.root / uid)
            except Exception:
                log.exception("study %s received but could not be queued; it stays in %s",
                              uid, self.root)

    def handle_aborted(self, event: evt.Event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), set())
        if studies:
            log.warning("association aborted: %d partially received stud(y/ies) not queued",
                        len(studies))


def queue_on_study(factory: sessionmaker[Session]) -> OnStudy:
    """``on_study`` that puts the study in the shared ingest queue (source ``listen``)."""
    from medassist.pacs import queue
    from medassist.storage.engine import unit_of_work

    def on_study(study_uid: str, folder: Path) -> None:
        with unit_of_work(factory) as s:
            _, created = queue.enqueue(s, study_uid, source="listen", location=str(folder))
        log.info("study %s received; %s", study_uid, "queued" if created else "already queued")

    return on_study


class Listener:
    """A running hardened SCP; :meth:`stop` shuts it down."""

    def __init__(self, cfg: ListenerConfig, on_study: OnStudy) -> None:
        self.cfg = cfg
        cfg.storage_root.mkdir(parents=True, exist_ok=True)
        self.handler = StoreHandler(cfg.storage_root, on_study, fsync=cfg.fsync)
        ae = ApplicationEntity(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.max_pdu
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = True
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        self.ae = ae
        handlers: list[Any] = [(evt.EVT_C_STORE, self.handler.handle_store),
                               (evt.EVT_RELEASED, self.handler.handle_released),
                               (evt.EVT_ABORTED, self.handler.handle_aborted)]
        server = cast(HardenedServer, ae.make_server(
            (cfg.bind, cfg.port), evt_handlers=handlers, server_class=HardenedServer,
            request_handler=HardenedRequestHandler))
        server.medassist_cfg = cfg
        ae._servers.append(server)  # as start_server() does, so shutdown() can remove it
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="medassist-scp",
                                        daemon=True)
        self._thread.start()
        log.info("listening as %s on %s:%d (%d allowed AE@host, max %d associations, max PDU "
                 "%d)", cfg.ae_title, cfg.bind, self.port, len(cfg.allow),
                 cfg.max_associations, cfg.max_pdu)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.ae.shutdown()
        self._thread.join(timeout=10)
