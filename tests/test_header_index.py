"""Header parsing (fast walker vs pydicom), indexing, roles and selection."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet

from dicom_io.config import SelectionConfig
from dicom_io.errors import AmbiguousInputError, NoDiagnosticSeriesError, UnreadableFileError
from dicom_io.header import _parse_with_pydicom, parse_header, read_header
from dicom_io.index import SeriesRole, scan
from dicom_io.select import kernel_class, select_series, select_single
from dicom_io.volume import load_volume


def dicom_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                out.append(p)
    return out


def test_fast_walker_agrees_with_pydicom_on_every_real_file(shared_data: Path) -> None:
    files = dicom_files(shared_data)
    assert len(files) > 150
    compared = 0
    rejected: dict[str, str] = {}
    for p in files:
        buf = p.read_bytes()
        try:
            fast = parse_header(buf, str(p))
        except UnreadableFileError as exc:
            rejected[p.name] = exc.reason
            continue
        try:
            slow = _parse_with_pydicom(buf, str(p), None)
        except UnreadableFileError:
            continue  # pydicom fails where the walker succeeded: nothing to compare
        a = dataclasses.asdict(fast)
        b = dataclasses.asdict(slow)
        for k in ("pixel_offset", "pixel_length"):
            a.pop(k)
            b.pop(k)
        assert a == b, p
        compared += 1
        if fast.is_native:
            ds = pydicom.dcmread(p)
            assert fast.pixel_offset is not None and fast.pixel_length is not None
            assert buf[fast.pixel_offset:fast.pixel_offset + fast.pixel_length] == ds.PixelData
    assert compared > 150
    # Exactly the broken files are refused, each for its real defect.
    assert set(rejected) == {"rtplan_truncated.dcm", "MR_truncated.dcm", "badVR.dcm",
                             "meta_missing_tsyntax.dcm"}, rejected
    assert "no SOP Class UID" in rejected["meta_missing_tsyntax.dcm"]
    assert "declares 976 bytes" in rejected["rtplan_truncated.dcm"]
    assert "PixelData declares 8192 bytes" in rejected["MR_truncated.dcm"]
    assert "NumberOfFrames" in rejected["badVR.dcm"]


def test_read_header_does_not_need_pixels(tmp_path: Path, a0001: Path) -> None:
    src = a0001 / "1-01.dcm"
    h = read_header(src)
    assert h.rows == 512 and h.columns == 512 and h.pixel_length == 512 * 512 * 2
    assert h.is_native and h.modality == "CT"
    assert h.image_type[:2] == ("ORIGINAL", "PRIMARY")
    # Truncate inside the pixel data: the header still reads, the pixel length check fails.
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UnreadableFileError, match="PixelData declares"):
        read_header(cut)


def test_index_roles_and_rejections(shared_data: Path) -> None:
    idx = scan(shared_data / "ct")
    by_desc = {(s.first.manufacturer, s.first.series_number): s for s in idx.all_series()}
    assert len(idx.studies) == 3
    a0001 = next(s for s in idx.all_series() if s.n_images == 64)
    assert a0001.role == SeriesRole.DIAGNOSTIC
    s4010 = [s for s in idx.all_series() if s.first.series_number == 401]
    assert s4010 and s4010[0].role in (SeriesRole.SECONDARY, SeriesRole.DERIVED,
                                       SeriesRole.LOCALIZER)
    assert by_desc
    rejected = {Path(r.path).name: r for r in idx.rejected}
    assert "LICENSE" in rejected and rejected["LICENSE"].error == "UnreadableFileError"
    assert "not a DICOM file" in rejected["LICENSE"].reason
    assert sorted(Path(p).name for p in idx.dicomdirs) == ["DIRFILE", "DIRFILE"]
    # The DIRFILEs are not counted as images or rejected files.
    assert "DIRFILE" not in rejected


def test_selection_explains_every_rule(shared_data: Path) -> None:
    idx = scan(shared_data / "ct" / "dcm_qa_ct" / "Philips-S21610")
    (sel,) = select_series(idx)
    assert sel.selected is not None and sel.selected.first.series_number == 201
    d401 = next(d for d in sel.decisions if d.series.first.series_number == 401)
    assert not d401.eligible and d401.rank is None
    failed = {r.rule for r in d401.rules if not r.passed}
    assert {"original_primary", "diagnostic_role"} <= failed
    assert all(r.detail for d in sel.decisions for r in d.rules)
    assert "selected series" in sel.explanation


def test_several_studies_are_not_guessed(shared_data: Path) -> None:
    with pytest.raises(AmbiguousInputError):
        load_volume(shared_data / "ct")
    idx = scan(shared_data / "ct")
    assert len(select_series(idx)) == 3


def test_selection_prefers_soft_kernel_then_thin(tmp_path: Path) -> None:
    from tests.dicom_factory import axial_positions, write_series

    study = "1.2.826.0.1.3680043.8.498.1"

    def kernel(k: str, thick: float):  # type: ignore[no-untyped-def]
        def f(ds: pydicom.Dataset, n: int) -> None:
            ds.ConvolutionKernel = k
            ds.SliceThickness = thick
        return f

    write_series(tmp_path / "lung1", axial_positions(20, 1.0), study_uid=study,
                 extra=kernel("LUNG", 1.0))
    write_series(tmp_path / "std5", axial_positions(20, 5.0), study_uid=study,
                 extra=kernel("STANDARD", 5.0))
    write_series(tmp_path / "std1", axial_positions(20, 1.0), study_uid=study,
                 extra=kernel("STANDARD", 1.0))
    write_series(tmp_path / "few", axial_positions(5, 1.0), study_uid=study,
                 extra=kernel("STANDARD", 0.5))
    idx = scan(tmp_path)
    chosen = select_single(idx)
    assert chosen.kernel == "STANDARD" and chosen.slice_thickness == 1.0
    (sel,) = select_series(idx)
    ranks = {d.series.kernel + str(d.series.slice_thickness): d.rank for d in sel.decisions}
    assert ranks == {"STANDARD1.0": 1, "STANDARD5.0": 2, "LUNG1.0": 3, "STANDARD0.5": None}
    with pytest.raises(NoDiagnosticSeriesError):
        select_single(idx, SelectionConfig(min_slices=100))


@pytest.mark.parametrize(("kernel", "cls"), [
    ("STANDARD", "soft"), ("B30f", "soft"), ("Br40d", "soft"), ("B", "soft"), ("FC13", "soft"),
    ("LUNG", "sharp"), ("BONEPLUS", "sharp"), ("B70f", "sharp"), ("YB", "sharp"), ("", "unknown"),
    ("UB", "unknown"),
])
def test_kernel_classes(kernel: str, cls: str) -> None:
    assert kernel_class(kernel, SelectionConfig()) == cls


def test_zip_and_dicomdir_inputs(a0001: Path, tmp_path: Path) -> None:
    files = sorted(a0001.glob("*.dcm"))[:20]
    zpath = tmp_path / "s.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in files:
            zf.write(f, arcname=f"sub/{f.name}")
        zf.writestr("notes.txt", "not dicom")
    idx = scan(zpath)
    (series,) = idx.all_series()
    assert series.n_images == 20
    assert [Path(r.path).name for r in idx.rejected] == ["s.zip!notes.txt"]

    fs = FileSet()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyID = "1"
        fs.add(ds)
    media = tmp_path / "media"
    fs.write(media)
    idx2 = scan(media / "DICOMDIR")
    assert idx2.dicomdirs == (str(media / "DICOMDIR"),)
    (s2,) = idx2.all_series()
    assert s2.n_images == 20


def test_unreadable_files_never_stop_the_scan(a0001: Path, tmp_path: Path) -> None:
    shutil.copy(a0001 / "1-01.dcm", tmp_path / "good.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    idx = scan(tmp_path)
    assert len(idx.all_series()) == 1
    names = {Path(r.path).name for r in idx.rejected}
    assert names == {"empty.dcm", "junk.dcm"}
    assert all(r.reason for r in idx.rejected)


def test_parallel_scan_equals_serial_scan(shared_data: Path) -> None:
    folder = shared_data / "ct"
    serial = scan(folder, workers=1)
    parallel = scan(folder, workers=2)
    assert serial.to_dict() == parallel.to_dict()
    assert [h for s in serial.all_series() for h in s.instances] == [
        h for s in parallel.all_series() for h in s.instances]


def test_scan_reads_through_links_once_and_names_broken_ones(tmp_path: Path) -> None:
    """A study folder of links (a curated data set, an archive): linked files and folders are
    read (they were silently left out), a file reached twice is one instance, a link loop
    ends, and a link to nothing is rejected with that reason."""
    from dicom_io.deid import DeidKey, deidentify_path
    from tests.dicom_factory import axial_positions, write_series

    store = tmp_path / "store"
    files = write_series(store / "series", axial_positions(20, 2.0))
    study = tmp_path / "study"
    study.mkdir()
    for f in files[:3]:
        (study / f"link_{f.name}").symlink_to(f)  # three slices as links to files
    (study / "rest").symlink_to(store / "series", target_is_directory=True)  # all again
    (study / "rest_again").symlink_to(store, target_is_directory=True)  # and once more
    (study / "loop").symlink_to(study, target_is_directory=True)
    (study / "gone.dcm").symlink_to(tmp_path / "missing.dcm")
    idx = scan(study)
    (series,) = [s for st in idx.studies for s in st.series]
    assert series.n_images == 20  # each slice once, whichever link reached it first
    assert [(Path(r.path).name, r.reason) for r in idx.rejected] == [
        ("gone.dcm", "a symbolic link whose target does not exist")]
    assert load_volume(study).array.shape[0] == 20
    # de-identification reads a linked folder too
    report = deidentify_path(study / "rest", tmp_path / "deid", DeidKey.generate())
    assert len(report.written) == 20
