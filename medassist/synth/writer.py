"""Write one case: ``dicom/``, ``emr.txt``, ``emr_fhir.json``, ``truth.json``, ``report.txt``
and (optionally) ``labels.npy.gz``.  Every file is byte-deterministic for a given seed."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medassist.synth.case import Case
from medassist.synth.config import SynthConfig
from medassist.synth.errors import OutputError
from medassist.synth.phantom import Physics, RenderResult, render

TRUTH_VERSION = 1


def render_case(case: Case, *, sharp: bool = False) -> RenderResult:
    """Render the DICOM-grid volume of a case (noise from the case's own stream)."""
    acq = case.acquisition
    ph = acq.physics
    phys = Physics(kvp=ph.kvp, mas=ph.mas, thickness_mm=ph.thickness_mm, kernel_sharp=sharp,
                   psf_fwhm_mm=ph.psf_fwhm_mm, noise_ref_hu=ph.noise_ref_hu,
                   noise_scale=ph.noise_scale, beam_hardening_hu=ph.beam_hardening_hu,
                   noise=ph.noise)
    return render(case.anatomy, case.findings, acq.grid, phys, case.noise_rng(1 if sharp else 0))


def truth_dict(case: Case, files: list[str]) -> dict[str, Any]:
    an = case.anatomy
    return {
        "version": TRUTH_VERSION,
        "case_id": case.case_id,
        "seed": case.seed,
        "split": case.split,
        "shift": case.shift,
        "index": case.index,
        "normal": not case.findings,
        "patient": case.profile.to_json(),
        "study": {"study_instance_uid": case.uid("study"),
                  "main_series_instance_uid": case.uid("series", 2),
                  "frame_of_reference_uid": case.uid("frame-of-reference")},
        "acquisition": case.acquisition.to_json(),
        "anatomy": an.to_json(),
        "midline_x_mm": round(an.cx + an.mid_u, 3),
        "coordinates": "DICOM LPS millimetres: +x patient's left, +y posterior, +z superior",
        "findings": [f.to_json(an) for f in case.findings],
        "emr": {"kind": case.emr.kind, "tokens": case.emr.tokens,
                "indication": case.emr.indication,
                "labels": [lab.to_json() for lab in case.emr.labels]},
        "report": case.report.to_json(),
        "files": sorted(files),
    }


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_labels(path: Path, labels: npt.NDArray[np.uint8]) -> None:
    """uint8 label map (z, y, x) as .npy inside gzip with a fixed header (no mtime, no name)."""
    buf = io.BytesIO()
    np.save(buf, labels, allow_pickle=False)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                               compresslevel=6) as gz:
        gz.write(buf.getvalue())


def read_labels(path: Path) -> npt.NDArray[np.uint8]:
    with gzip.open(path, "rb") as gz:
        return np.asarray(np.load(io.BytesIO(gz.read()), allow_pickle=False), dtype=np.uint8)


def write_case(case: Case, cfg: SynthConfig, folder: Path) -> dict[str, Any]:
    """Write the case under ``folder`` (created; must be empty or absent); returns the truth."""
    from medassist.synth.dicom_writer import write_localizer, write_series
    from medassist.synth.fhir import make_bundle

    if folder.exists() and any(folder.iterdir()):
        raise OutputError(f"{folder} exists and is not empty; refusing to overwrite a case")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror}") from exc
    dc = cfg.dicom
    rle = dc.transfer_syntax == "rle"
    acq = case.acquisition
    res = render_case(case)
    files: list[Path] = []
    dicom = folder / "dicom"
    if dc.localizer:
        files.append(write_localizer(case, res.hu, acq.grid, dicom / "series_001_localizer",
                                     rle=rle))
    files += write_series(case, res.hu, acq.grid, dicom / f"series_002_{acq.kernel}",
                          series_number=2, kernel=acq.kernel, rle=rle)
    if dc.second_kernel:
        sharp = render_case(case, sharp=True)
        files += write_series(case, sharp.hu, acq.grid, dicom / f"series_003_{acq.sharp_kernel}",
                              series_number=3, kernel=acq.sharp_kernel, rle=rle)
    (folder / "emr.txt").write_text(case.emr.text, encoding="utf-8")
    files.append(folder / "emr.txt")
    (folder / "emr_fhir.json").write_text(_json(make_bundle(case)), encoding="utf-8")
    files.append(folder / "emr_fhir.json")
    (folder / "report.txt").write_text(case.report.text, encoding="utf-8")
    files.append(folder / "report.txt")
    if dc.write_labels:
        write_labels(folder / "labels.npy.gz", res.labels)
        files.append(folder / "labels.npy.gz")
    rel = [p.relative_to(folder).as_posix() for p in files]
    truth = truth_dict(case, [*rel, "truth.json"])
    (folder / "truth.json").write_text(_json(truth), encoding="utf-8")
    return truth
