"""`medassist serve`: registered through the `medassist.commands` entry point (pyproject), so
that the medassist package never imports ui."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medassist.defaults import DEFAULT_CHECKPOINT


def add_parser(sub: Any) -> None:
    sp = sub.add_parser("serve", help="run the clinician review web app (Gradio) on loopback")
    sp.add_argument("--db", help="database URL (default: MEDASSIST_DB_URL or the embedded "
                                 "SQLite)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    sp.add_argument("--config", help="UI settings file (default configs/ui.yaml)")
    sp.add_argument("--export-dir", help="where signed reports are exported (SR, FHIR)")
    sp.add_argument("--demo", metavar="DIR",
                    help="first seed DIR with generated studies drafted by --checkpoint and "
                         "demo users (SQLite DIR/medassist.db unless --db), then serve it")
    sp.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                    help="model checkpoint for --demo (default: the shipped models/demo)")
    sp.add_argument("--cases", type=int, default=4, help="generated studies for --demo")
    sp.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ui.app import serve  # heavy (gradio): imported only when the command runs
    from ui.config import load_config

    cfg = load_config(args.config)
    db = args.db
    export_dir = args.export_dir
    if args.demo:
        from ui.seed import seed_demo

        out = Path(args.demo)
        sys.stderr.write(f"seeding {args.cases} generated studies into {out} ...\n")
        info = seed_demo(out, Path(args.checkpoint), n_cases=args.cases, db_url=db)
        db = info.db_url
        export_dir = export_dir or str(out / "exports")
        sys.stderr.write(f"drafts: {info.summary}\n")
        for name, pw in info.users.items():
            sys.stdout.write(f"demo user {name}  password {pw}\n")
        sys.stdout.write(f"open http://{args.host}:{args.port}/ and log in\n")
        sys.stdout.flush()
    return serve(db=db, host=args.host, port=args.port, config=cfg, export_dir=export_dir)
