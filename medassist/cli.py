"""The ``medassist`` command line.

Exit status: 0 success, 2 usage error, 3 unusable input (a typed error names the file and
the reason), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_io.errors import DicomIOError
from medassist.errors import MedAssistError, from_dicom_io, from_multimodal
from multimodal.errors import MultimodalError

log = logging.getLogger("medassist")


def _dicom_config(args: argparse.Namespace) -> Any:
    from dicom_io.config import load_config

    overrides: dict[str, Any] = {}
    assembly: dict[str, Any] = {}
    if getattr(args, "lenient", False):
        assembly["strict"] = False
    if getattr(args, "tilt", None):
        assembly["tilt"] = args.tilt
    if getattr(args, "uneven_spacing", None):
        assembly["uneven_spacing"] = args.uneven_spacing
    if assembly:
        overrides["assembly"] = assembly
    return load_config(getattr(args, "config", None), overrides=overrides)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def cmd_ingest(args: argparse.Namespace) -> int:
    from dicom_io.index import scan
    from dicom_io.select import select_series

    cfg = _dicom_config(args)
    index = scan(args.path)
    selections = select_series(index, cfg.selection)
    if args.json:
        _print_json({"index": index.to_dict(),
                     "selection": [s.to_dict() for s in selections]})
        return 0
    out = sys.stdout
    out.write(f"Input: {index.root}\n")
    for study, selection in zip(index.studies, selections, strict=True):
        out.write(f"Study {study.study_uid}\n")
        for s in study.series:
            d = next(d for d in selection.decisions if d.series is s)
            mark = "*" if selection.selected is s else " "
            out.write(
                f" {mark} series {s.number if s.number is not None else '-':>4} "
                f"{s.role.value:<10} {s.n_images:>5} img  kernel {s.kernel or '-':<8} "
                f"{(s.slice_thickness or 0):>5.2f} mm  {s.description!r}\n"
                f"      role: {s.role_reason}\n"
            )
            for r in d.rules:
                out.write(f"      [{'pass' if r.passed else 'FAIL'}] {r.rule}: {r.detail}\n")
        out.write(f"  Selection: {selection.explanation}\n")
    if index.dicomdirs:
        out.write(f"DICOMDIR files (directories, not images): {len(index.dicomdirs)}\n")
        for p in index.dicomdirs:
            out.write(f"   {p}\n")
    if index.rejected:
        out.write(f"Rejected files: {len(index.rejected)}\n")
        for rej in index.rejected:
            out.write(f"   {rej.path}: {rej.error}: {rej.reason}\n")
    return 0


def cmd_volume(args: argparse.Namespace) -> int:
    import nibabel as nib

    from dicom_io.volume import load_volume

    cfg = _dicom_config(args)
    vol = load_volume(args.path, series_uid=args.series, config=cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(vol.to_nifti(), str(out))
    summary = vol.summary()
    summary["nifti"] = str(out)
    summary["nifti_affine_ras"] = [[round(float(v), 6) + 0.0 for v in row]
                                   for row in vol.nifti_affine()]
    _print_json(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medassist",
        description="Draft grounded CT reports from DICOM CT and EMR notes (not a medical "
                    "device; drafts stay DRAFT until a clinician signs them).",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", required=True)

    def dicom_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="dicom_io YAML (default: built-in defaults)")
        sp.add_argument("--lenient", action="store_true",
                        help="interpolate gaps and merge identical duplicates (flagged) "
                             "instead of refusing")
        sp.add_argument("--tilt", choices=["resample", "refuse"], help="gantry tilt policy")
        sp.add_argument("--uneven-spacing", choices=["resample", "refuse"],
                        help="uneven slice spacing policy")

    sp = sub.add_parser("ingest", help="index DICOM input and explain the series selection")
    sp.add_argument("path", help="folder, zip file, DICOMDIR or DICOM file")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    dicom_opts(sp)
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("volume", help="assemble a CT series and write NIfTI (RAS)")
    sp.add_argument("path", help="folder, zip file, DICOMDIR or DICOM file")
    sp.add_argument("--series", help="SeriesInstanceUID (default: the selected series)")
    sp.add_argument("--out", required=True, help="output .nii or .nii.gz")
    dicom_opts(sp)
    sp.set_defaults(func=cmd_volume)

    from medassist import (
        admin_cli,
        batch_cli,
        calibrate_cli,
        dataset_cli,
        deid_cli,
        model_cli,
    )
    from medassist.pacs import cli as pacs_cli
    from medassist.synth import cli as synth_cli

    deid_cli.add_parser(sub)
    synth_cli.add_parser(sub)
    admin_cli.add_parser(sub)
    pacs_cli.add_parser(sub)
    model_cli.add_parser(sub)
    calibrate_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    dataset_cli.add_parser(sub)
    add_plugin_commands(sub)
    return p


PLUGIN_GROUP = "medassist.commands"


def add_plugin_commands(sub: Any) -> None:
    """Sub-commands registered by packages that sit above medassist (the clinician UI's
    `serve`), through the `medassist.commands` entry-point group, so that medassist never
    imports them. Each entry point names an `add_parser(sub)` function."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        ep.load()(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except DicomIOError as exc:
        err: MedAssistError = from_dicom_io(exc)
    except MultimodalError as exc:
        err = from_multimodal(exc)
    except MedAssistError as exc:
        err = exc
    sys.stderr.write(f"medassist: error: {err}\n")
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
