"""``python -m medassist.pacs watch|listen ...`` (the same as ``medassist pacs ...``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dicom_io.errors import DicomIOError
from medassist.errors import MedAssistError, from_dicom_io
from medassist.pacs.cli import add_parser


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medassist.pacs")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = p.parse_args(["pacs", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except DicomIOError as exc:
        err: MedAssistError = from_dicom_io(exc)
    except MedAssistError as exc:
        err = exc
    sys.stderr.write(f"medassist: error: {err}\n")
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
