"""Processors and study builders for the PACS tests (test data only; no report drafts)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pydicom
from pydicom.uid import UID, generate_uid
from sqlalchemy.orm import Session

from medassist.pacs.watch import ProcessResult, volume_summary_processor


def slow_processor(study_dir: Path, study_uid: str, session: Session) -> ProcessResult:
    """Signals that it started (file named by $MEDASSIST_TEST_MARKER), then hangs: the test
    kills the watcher in the middle of this study."""
    Path(os.environ["MEDASSIST_TEST_MARKER"]).write_text(study_uid)
    time.sleep(120)
    return volume_summary_processor(study_dir, study_uid, session)


def restamp(datasets: list[pydicom.Dataset], **changes: object) -> list[pydicom.Dataset]:
    """Copies of ``datasets`` as a new study (new study/series/SOP UIDs) with ``changes``."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in datasets:
        d = copy.deepcopy(ds)
        d.StudyInstanceUID, d.SeriesInstanceUID = study, series
        d.SOPInstanceUID = generate_uid()
        d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        for k, v in changes.items():
            setattr(d, k, v)
            if k == "SOPClassUID":
                d.file_meta.MediaStorageSOPClassUID = UID(str(v))
        out.append(d)
    return out


def text_sr(study_uid: str | None = None) -> pydicom.Dataset:
    """A minimal Basic Text SR (an SR-only study)."""
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "TEST-SR"
    ds.PatientName = "Test^SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    return ds
