"""Send-back: an SR (highdicom TID 1500, built here from the generated CT as TEST DATA: the
model is absent) goes to Orthanc by STOW-RS; with Orthanc stopped it stays queued, visible and
audited, and is delivered once Orthanc is back.  QIDO finds it, WADO-RS reads it, highdicom
validates it."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist.audit import verify
from medassist.pacs import outbox
from medassist.pacs.dicomweb import PacsClient
from medassist.pacs.models import OutboxItem
from medassist.storage import AuditEvent
from medassist.storage.engine import unit_of_work
from tests.pacs.conftest import OrthancServer, c_store, case_dirs, read_series
from tests.pacs.helpers import restamp


def _test_sr(ct: list[pydicom.Dataset]) -> bytes:
    """TEST DATA: a TID 1500 SR with one qualitative finding on the CT's first slices."""
    ctx = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medassist-test")))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="test finding"),
        finding_type=codes.SCT.Nodule,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Nodule,
                                                             codes.SCT.Present)])
    report = hd.sr.MeasurementReport(observation_context=ctx,
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=ct[:2], content=report[0], series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medassist (test data)",
        is_complete=True, is_final=False, is_verified=False)
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_send_back_survives_orthanc_down(orthanc: OrthancServer, synth_case: Path,
                                         factory: sessionmaker[Session]) -> None:
    ct = restamp(read_series(case_dirs(synth_case)[0]))
    study = ct[0].StudyInstanceUID
    assert set(c_store(orthanc.dicom_port, ct[:4])) == {0}
    payload = _test_sr(ct)
    sr_uid = pydicom.dcmread(BytesIO(payload)).SOPInstanceUID
    with unit_of_work(factory) as s:
        item = outbox.add(s, payload, kind="sr")
        assert outbox.add(s, payload, kind="sr").id == item.id  # idempotent
    client = PacsClient(orthanc.url, timeout_s=5)

    orthanc.stop()
    try:
        d = outbox.deliver_pending(factory, client.store_bytes)
        assert (d.sent, d.failed) == (0, 1)
        with unit_of_work(factory) as s:
            row = s.scalars(select(OutboxItem)).one()
            assert (row.state, row.attempts) == ("retrying", 1)
            assert "PacsUnavailableError" in (row.last_error or "")
            assert [r.id for r in outbox.pending(s)] == [row.id]
            failures = s.scalars(select(AuditEvent).where(AuditEvent.outcome == 8)).all()
            assert len(failures) == 1 and failures[0].object_id == study
        assert outbox.deliver_pending(factory, client.store_bytes).failed == 0  # backoff
    finally:
        orthanc.start()

    with unit_of_work(factory) as s:
        assert outbox.retry_now(s) == 1
    d = outbox.deliver_pending(factory, client.store_bytes)
    assert (d.sent, d.failed) == (1, 0)
    with unit_of_work(factory) as s:
        row = s.scalars(select(OutboxItem)).one()
        assert (row.state, row.attempts, row.last_error) == ("sent", 2, None)
        assert outbox.pending(s) == []
        assert verify(s).ok

    assert sr_uid in client.search_instances(study)
    series_uid = next(s.series_uid for s in client.series_of_study(study) if s.modality == "SR")
    got = client.retrieve_instance(study, series_uid, sr_uid)
    sr = hd.sr.Comprehensive3DSR.from_dataset(got)
    assert sr.StudyInstanceUID == study and sr.SOPInstanceUID == sr_uid
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_image_measurement_groups()) == 1
    # nothing goes twice
    assert outbox.deliver_pending(factory, client.store_bytes).sent == 0
