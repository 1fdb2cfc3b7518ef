"""``python -m medassist.pacs watch|listen ...``: the same as ``medassist pacs ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from medassist.cli import main as medassist_main


def main(argv: Sequence[str] | None = None) -> int:
    return medassist_main(["pacs", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
