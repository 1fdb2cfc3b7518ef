"""`medassist serve`: registered through the `medassist.commands` entry point (pyproject), so
that the medassist package never imports ui."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    sp = sub.add_parser("serve", help="run the clinician review web app (Gradio) on loopback")
    sp.add_argument("--db", help="database URL (default: MEDASSIST_DB or the embedded SQLite)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    sp.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ui.app import serve  # heavy (gradio): imported only when the command runs

    return serve(db=args.db, host=args.host, port=args.port)
