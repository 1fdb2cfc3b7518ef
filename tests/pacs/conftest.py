"""A real Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``, installed by
``make services``) for the PACS tests, started in the foreground with a generated config:
temporary storage, free ports, DICOMweb on, remote access off, ``DicomAlwaysAllowStore`` false
with an explicit modality list.  Connect only to 127.0.0.1.  A missing binary FAILS the tests.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.orm import Session, sessionmaker

from medassist.storage.engine import make_engine, session_factory
from medassist.storage.migrate import upgrade

ORTHANC_AET = "ORTHANC"
OUR_AET = "MEDASSIST"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    def __init__(self, root: Path) -> None:
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.is_file():
            pytest.fail("Orthanc or its DICOMweb plugin is not installed: run `make services` "
                        "(apt-get install orthanc orthanc-dicomweb)")
        self.binary = binary
        self.root = root
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "MEDASSIST-TEST",
            "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "storage"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": ORTHANC_AET,
            "DicomServerEnabled": True, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": True,
            "DicomModalities": {"medassist": [OUR_AET, "127.0.0.1", free_port()]},
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "WebDavEnabled": False, "StableAge": 1, "HttpTimeout": 30,
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                         "WadoRoot": "/wado", "Host": "127.0.0.1", "Ssl": False},
        }, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.proc.returncode}; see "
                            f"{self.root / 'orthanc.log'}")
            try:
                with urllib.request.urlopen(self.url + "/system", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        pytest.fail("Orthanc did not answer /system within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def wait_stable(self, study_uid: str, timeout: float = 20.0) -> None:
        """Wait until Orthanc reported StableStudy for ``study_uid``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self._lookup(study_uid)
            if ids:
                info = self.get(f"/studies/{ids[0]}")
                if isinstance(info, dict) and info.get("IsStable"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"study {study_uid} not stable in Orthanc after {timeout} s")

    def wait_all_stable(self, timeout: float = 30.0) -> None:
        """Wait until every study in Orthanc is stable (its StableStudy change is out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            studies = self.get("/studies?expand")
            if isinstance(studies, list) and all(st.get("IsStable") for st in studies):
                return
            time.sleep(0.2)
        raise AssertionError(f"Orthanc still has unstable studies after {timeout} s")

    def _lookup(self, uid: str) -> list[str]:
        req = urllib.request.Request(self.url + "/tools/lookup", data=uid.encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return [x["ID"] for x in json.loads(r.read()) if x.get("Type") == "Study"]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def synth_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated case (configs/synth/small.yaml): ``dicom/`` (one CT series) + truth."""
    from medassist.cli import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(out), "--cases", "2", "--seed", "7", "--config",
                 str(REPO / "configs" / "synth" / "small.yaml")]) == 0
    cases = sorted(out.glob("*/case_*"))
    assert len(cases) == 2
    return out


def case_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("*/case_*"))


def read_series(case: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted((case / "dicom").rglob("*.dcm"))]


def c_store(port: int, datasets: list[pydicom.Dataset], *, calling: str = OUR_AET,
            called: str = ORTHANC_AET) -> list[int]:
    """pynetdicom SCU: C-STORE ``datasets``; returns the status of each."""
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association refused"
    statuses = []
    try:
        for ds in datasets:
            st = assoc.send_c_store(ds)
            statuses.append(int(st.Status) if "Status" in st else -1)
    finally:
        assoc.release()
    return statuses


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'medassist.db'}")
    upgrade(engine)
    return session_factory(engine)
