"""``medassist deid IN OUT [--key-file K]``: de-identified copies plus a JSON change report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from medassist.errors import UsageError

KEY_ENV = "MEDASSIST_DEID_KEY_FILE"


def add_parser(sub: Any) -> None:
    sp = sub.add_parser(
        "deid",
        help="de-identify DICOM (PS3.15 Annex E basic profile + retain longitudinal "
             "modified dates, retain patient characteristics, clean descriptors)",
    )
    sp.add_argument("src", help="DICOM file or folder")
    sp.add_argument("out", help="output folder (files go to OUT/<study>/<series>/<sop>.dcm)")
    sp.add_argument("--key-file", help=f"secret key for UID/ID pseudonyms (or ${KEY_ENV}); "
                                       "created with mode 0600 if it does not exist")
    sp.add_argument("--clean-pixels", action="store_true",
                    help="allow images with burned-in annotation (pixels are cleaned)")
    sp.add_argument("--keep-private", action="store_true",
                    help="do not remove private tags (not recommended)")
    sp.add_argument("--report", help="also write the JSON report to this file")
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dicom_io.deid import DeidKey, DeidOptions, deidentify_path

    key_path = args.key_file or os.environ.get(KEY_ENV)
    if not key_path:
        raise UsageError(
            "a key is required so that pseudonyms are reproducible: pass --key-file K "
            f"(created if missing) or set {KEY_ENV}"
        )
    kp = Path(key_path)
    if kp.exists():
        key = DeidKey.from_file(kp)
    else:
        key = DeidKey.generate()
        key.save(kp)
        sys.stderr.write(f"medassist: created a new de-identification key at {kp}\n")
    options = DeidOptions(clean_pixels=args.clean_pixels,
                          remove_private_tags=not args.keep_private)
    report = deidentify_path(Path(args.src), Path(args.out), key, options)
    data = report.to_json()
    text = json.dumps(data, indent=2, sort_keys=True)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0
