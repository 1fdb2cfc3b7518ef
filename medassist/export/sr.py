"""DICOM Comprehensive 3D SR (TID 1500 Measurement Report) built with highdicom.

Each finding becomes a measurement group: finding type and site (SNOMED CT), a qualitative
evaluation (present / absent / not evaluated), laterality, the size (UCUM mm), a measured
cardiothoracic ratio (no units) and the AI probability as measurements, and the algorithm
identification.  A finding with an evidence box is a TID 1411 volumetric ROI group whose
regions draw the box on each evidence slice; one without (not called, or called without
CT evidence) a TID 1501 group citing its evidence slices, if any. Drafts are UNVERIFIED;
signed reports VERIFIED with the verifying observer (the signer). The findings are the
draft's as the report's text decided them (:func:`medassist.review.reviewed_findings`: a
rejected one left out, the reviewer's side and size), and a side flagged ``side_uncertain``
that no reviewer set or kept is not coded.
"""

from __future__ import annotations

import copy
import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medassist.draft import Finding
from medassist.errors import ExportError
from medassist.export.codes import (
    CARDIOTHORACIC_RATIO,
    LATERALITY,
    LONG_AXIS,
    MEASURED,
    SHORT_AXIS,
    SIDE_EVIDENCE,
    Code,
    FindingCodes,
    evaluation,
    load_codes,
    size_concept,
    size_method,
)
from medassist.reports import ReportView
from medassist.review import reviewed_findings

MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
PROBABILITY = hd.sr.CodedConcept("MA-PROB", "99MEDASSIST", "AI probability of presence")
CT_CHEST = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")


TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _cc(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


#: what pydicom raises on a damaged or non-DICOM input (besides InvalidDicomError)
_PARSE_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, IndexError,
                 TypeError, AttributeError, struct.error)


def read_source_dataset(source: str | Path) -> Dataset:
    """The headers (no pixel data) of one source CT instance named as ``dicom_io`` names them
    (``Header.source``, ``Provenance.source_files``): a file, or a zip archive's member
    ``archive.zip!member`` (a study batched from a zip file), whose bytes
    :func:`dicom_io.volume.read_source` reads from the archive (nothing is extracted).

    Raises:
        ExportError: the file or archive member cannot be read or is not DICOM; the message
            names it.
    """
    from dicom_io.errors import DicomIOError
    from dicom_io.volume import read_source

    name = str(source)
    try:
        if Path(name).is_file():  # a plain file: pydicom reads the headers only
            return pydicom.dcmread(name, stop_before_pixels=True)
        try:
            data = read_source(name)
        except DicomIOError as exc:
            raise ExportError(f"cannot read the source instance {name}: {exc.reason}") from exc
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except _PARSE_ERRORS as exc:
        raise ExportError(f"the source instance {name} is not readable DICOM "
                          f"({type(exc).__name__}: {exc})") from exc


def load_sources(sources: Sequence[Dataset | str | Path]) -> list[Dataset]:
    """Source CT headers (pixel data not needed), sorted along the slice axis.

    ``sources``: datasets, or files and zip archive members (``archive.zip!member``) as
    :func:`read_source_dataset` reads them.

    Sorting is by ImagePositionPatient projected on the slice normal (InstanceNumber when
    geometry is missing), which is the order the draft's slice indices refer to.
    """
    out: list[Dataset] = []
    for s in sources:
        ds = copy.deepcopy(s) if isinstance(s, Dataset) else read_source_dataset(s)
        for kw in TYPE2_COPIED:  # highdicom copies these into the SR; type 2 may be empty
            if kw not in ds:
                setattr(ds, kw, "")
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if kw not in ds:
                raise ExportError(f"source instance lacks {kw}; pass the CT series' files")
        out.append(ds)
    if not out:
        raise ExportError("the SR needs the source CT instances: pass the series' files")

    def key(ds: Dataset) -> tuple[float, int]:
        inst = int(getattr(ds, "InstanceNumber", 0) or 0)
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is None or iop is None:
            return (float(inst), inst)
        r, c = [float(v) for v in iop[:3]], [float(v) for v in iop[3:]]
        n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        return (sum(float(p) * q for p, q in zip(ipp, n, strict=True)), inst)

    out.sort(key=key)
    studies = {ds.StudyInstanceUID for ds in out}
    if len(studies) != 1:
        raise ExportError(f"source instances come from {len(studies)} studies; pass one series")
    return out


def _group(i: int, f: Finding, codes_: FindingCodes, sources: Sequence[Dataset],
           algo: hd.sr.AlgorithmIdentification
           ) -> (hd.sr.MeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations):
    fc = codes_.for_label(f.label)
    # a side resting on near-equal evidence that no reviewer set or kept is not coded as
    # fact (the text marks it, MA-PROB-L / MA-PROB-R below show the evidence)
    lat = codes_.laterality_of(f.laterality, f.flags)
    site_code = codes_.locations.get(f.location) if f.location else None
    sites = []
    if site_code is not None or fc.site is not None:
        anat = site_code if site_code is not None else fc.site
        if anat is not None:
            sites.append(hd.sr.FindingSite(_cc(anat), laterality=_cc(lat) if lat else None))
    slices = _evidence_slices(i, f, sources)
    measurements = [hd.sr.Measurement(name=PROBABILITY, value=f.probability, unit=NO_UNITS,
                                      algorithm_id=algo)]
    if f.size_mm is not None:
        # measured on the CT, or the size head's estimate (TID 300 Measurement Method); a
        # size the reviewer stated is theirs: no method, no algorithm
        method = size_method(f.flags)
        measurements.append(hd.sr.Measurement(
            name=_cc(size_concept(f.label)), value=f.size_mm, unit=MM,
            method=None if method is None else _cc(method),
            algorithm_id=None if method is None else algo))
    if f.size_axes_mm is not None:
        # a measured lesion's axial long and short axis, as a reader states them
        for name, value in ((LONG_AXIS, f.size_axes_mm[0]), (SHORT_AXIS, f.size_axes_mm[1])):
            measurements.append(hd.sr.Measurement(name=_cc(name), value=value, unit=MM,
                                                  method=_cc(MEASURED), algorithm_id=algo))
    if f.ratio is not None:
        measurements.append(hd.sr.Measurement(name=_cc(CARDIOTHORACIC_RATIO), value=f.ratio,
                                              unit=NO_UNITS, method=_cc(MEASURED),
                                              algorithm_id=algo))
    if f.side_evidence is not None:
        # the per-side evidence the side was read from (flag side_uncertain: near equal)
        for code, value in zip(SIDE_EVIDENCE, f.side_evidence, strict=True):
            measurements.append(hd.sr.Measurement(name=_cc(code), value=value, unit=NO_UNITS,
                                                  algorithm_id=algo))
    evaluations = [hd.sr.QualitativeEvaluation(_cc(fc.finding),
                                               _cc(evaluation(f.present, f.flags)))]
    if lat is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(_cc(LATERALITY), _cc(lat)))
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=_tracking_name(i, f.label))
    regions = _evidence_regions(i, f, slices)
    if regions:
        # TID 1411: the evidence box drawn on each evidence slice (the regions reference the
        # slices' instances, as the source images of a TID 1501 group would)
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_regions=regions,
            finding_type=_cc(fc.finding), algorithm_id=algo, finding_sites=sites or None,
            measurements=measurements, qualitative_evaluations=evaluations)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=_cc(fc.finding), algorithm_id=algo,
        finding_sites=sites or None, measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID)
                       for ds in slices] or None)


def _evidence_slices(i: int, f: Finding, sources: Sequence[Dataset]) -> list[Dataset]:
    """The instances of a finding's evidence slices (``sources``: the series in slice
    order); an ``ExportError`` where it cites a slice the series does not have."""
    for k in f.evidence.slices:
        if k >= len(sources):
            raise ExportError(f"finding {i} ({f.label}) cites slice {k} but the series has "
                              f"{len(sources)} instances; pass the series the draft was made on")
    return [sources[k] for k in f.evidence.slices]


def _evidence_regions(i: int, f: Finding, slices: Sequence[Dataset]
                      ) -> list[hd.sr.ImageRegion]:
    """A finding's evidence box as a closed rectangle (SCOORD POLYLINE, in pixel coordinates
    whose origin is the top left corner of the top left pixel) around its rows and columns, on
    each of its evidence slices (``slices``: their instances); none without a box."""
    box = f.evidence.box_voxels
    if box is None or not slices:
        return []
    x0, y0, x1, y1 = box[2], box[1], box[5] + 1, box[4] + 1
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float64)
    out = []
    for k, ds in zip(f.evidence.slices, slices, strict=True):
        if y1 > int(ds.Rows) or x1 > int(ds.Columns):
            raise ExportError(f"finding {i} ({f.label}): its evidence box (rows {box[1]}-"
                              f"{box[4]}, columns {box[2]}-{box[5]}) lies outside slice {k}'s "
                              f"{ds.Rows} x {ds.Columns} pixels; pass the series the draft "
                              f"was made on")
        out.append(hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=rect,
            source_image=hd.sr.SourceImageForRegion(ds.SOPClassUID, ds.SOPInstanceUID)))
    return out


def build_sr(view: ReportView, sources: Sequence[Dataset | str | Path], *,
             codes_: FindingCodes | None = None, institution: str = "medassist",
             series_number: int = 9901) -> hd.sr.Comprehensive3DSR:
    """The SR of a stored report; ``sources``: the CT series' datasets, file paths or zip
    archive members (``archive.zip!member``, :func:`read_source_dataset`)."""
    codes_ = codes_ or load_codes()
    src = load_sources(sources)
    if src[0].StudyInstanceUID != view.study_uid:
        raise ExportError(f"source instances belong to study {src[0].StudyInstanceUID}, the "
                          f"report to {view.study_uid}")
    d = view.draft
    algo = hd.sr.AlgorithmIdentification(name=d.model.name, version=d.model.version,
                                         parameters=[f"checkpoint_sha256={d.model.checkpoint_sha256}"])
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["medassist-model", d.model.name, d.model.version,
                                           d.model.checkpoint_sha256]),
            name=d.model.name, model_name=d.model.version, manufacturer_name="medassist"))
    person = None
    signed = view.status == "SIGNED" and view.signature is not None
    if signed and view.signature is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=_pn(view.signature.signer_name)))
    context = hd.sr.ObservationContext(observer_person_context=person,
                                       observer_device_context=device)
    # the findings as the report's current text decided them (a rejected one left out; the
    # tracking identifiers keep the draft's numbering)
    groups = [_group(i, f, codes_, src, algo) for i, f in reviewed_findings(d, view.text)]
    if not groups:
        raise ExportError(f"report {view.report_id}: the reviewer rejected every AI finding, "
                          "and a TID 1500 SR holds one measurement group at least, so there "
                          "is no SR to write; the report is in the FHIR, text and PDF exports")
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=CT_CHEST,
                                     imaging_measurements=groups)
    ident = ["medassist-sr", str(view.report_id), str(view.version_id), view.status]
    sr = hd.sr.Comprehensive3DSR(
        evidence=src, content=report[0],
        series_instance_uid=generate_uid(entropy_srcs=[*ident, "series"]),
        series_number=series_number,
        sop_instance_uid=generate_uid(entropy_srcs=[*ident, "instance"]),
        instance_number=1, manufacturer="medassist", institution_name=institution,
        is_complete=True, is_final=signed, is_verified=signed,
        verifying_observer_name=_pn(view.signature.signer_name) if signed and view.signature
        else None,
        verifying_organization=institution if signed else None)
    sr.SeriesDescription = "medassist AI report" + ("" if signed else " (DRAFT)")
    return sr


def measurement_groups(ds: Dataset) -> list[Any]:
    """The measurement groups of an SR built by :func:`build_sr`, in the drafts' finding
    order, whichever template each is (TID 1501, or TID 1411 with the evidence box)."""
    report = hd.sr.MeasurementReport.from_sequence([ds])
    groups = [*report.get_image_measurement_groups(),
              *report.get_volumetric_roi_measurement_groups()]
    return sorted(groups, key=lambda g: _finding_number(str(g.tracking_identifier)))


def _tracking_name(i: int, label: str) -> str:
    """The tracking identifier of the draft's ``i``-th finding (0-based): "finding 3:
    lung_nodule"; :func:`_finding_number` reads it back."""
    return f"finding {i + 1}: {label}"


def _finding_number(identifier: str) -> int:
    """``"finding 3: lung_nodule"`` -> 3 (the tracking identifier :func:`_tracking_name`
    writes)."""
    head = identifier.split(":", 1)[0].split()
    if len(head) != 2 or head[0] != "finding" or not head[1].isdigit():
        raise ExportError(f"measurement group {identifier!r} was not written by medassist")
    return int(head[1])


def group_source_uids(group: Any) -> list[str]:
    """The SOP Instance UIDs of the CT slices a measurement group cites: its source images
    (TID 1501), or the images its regions are drawn on (TID 1411)."""
    if isinstance(group, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations):
        regions = group.roi if isinstance(group.roi, list) else []
        # each region's SELECTED FROM image item
        return [str(r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                for r in regions]
    return [str(r.referenced_sop_instance_uid) for r in group.source_images]


def _pn(name: str) -> str:
    """A display name as a DICOM PN (family^given) without titles."""
    parts = [p for p in name.replace(",", " ").split() if not p.endswith(".")]
    if not parts:
        return name
    return parts[-1] if len(parts) == 1 else f"{parts[-1]}^{' '.join(parts[:-1])}"


def write_sr(sr: hd.sr.Comprehensive3DSR, out: str | Path) -> Path:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(p, enforce_file_format=True)
    return p


def check_sr(path: str | Path) -> hd.sr.Comprehensive3DSR:
    """Read back with pydicom and highdicom; raise ExportError on a problem."""
    ds = pydicom.dcmread(path)
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
               "ContentSequence", "VerificationFlag", "CompletionFlag", "ConceptNameCodeSequence",
               "CurrentRequestedProcedureEvidenceSequence", "Modality"):
        if kw not in ds:
            raise ExportError(f"SR {path} lacks required attribute {kw}")
    if ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.34":
        raise ExportError(f"SR {path} is not a Comprehensive 3D SR")
    return hd.sr.Comprehensive3DSR.from_dataset(ds)
