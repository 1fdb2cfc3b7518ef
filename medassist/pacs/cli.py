"""``medassist pacs watch`` and ``medassist pacs listen`` (wired in by ``add_parser``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from medassist.errors import UsageError

log = logging.getLogger("medassist.pacs")

ENV_USER = "MEDASSIST_ORTHANC_USER"
ENV_PASSWORD = "MEDASSIST_ORTHANC_PASSWORD"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("pacs", help="PACS integration: Orthanc watcher, C-STORE listener")
    psub = p.add_subparsers(dest="pacs_command", required=True)

    w = psub.add_parser("watch", help="follow Orthanc's /changes and process stable studies")
    w.add_argument("--orthanc", help="Orthanc base URL (default: configs/pacs.yaml)")
    w.add_argument("--user", help=f"HTTP user (default: ${ENV_USER})")
    w.add_argument("--password", help=f"HTTP password (prefer ${ENV_PASSWORD})")
    w.add_argument("--db", help="database URL (default: $MEDASSIST_DB_URL or the data dir)")
    w.add_argument("--once", action="store_true", help="one poll and drain, then exit")
    w.add_argument("--processor", help="module:callable StudyProcessor (default: config)")
    w.add_argument("--workdir", help="folder for downloaded studies (default: system temp)")
    w.add_argument("--config", help="PACS YAML (default: configs/pacs.yaml)")
    w.add_argument("--from-now", action="store_true",
                   help="on first start (no stored cursor), skip the studies already in the "
                   "PACS; a stored cursor always wins")
    w.set_defaults(func=cmd_watch)

    sd = psub.add_parser("send", help="send signed reports' SRs back to the PACS (STOW-RS), "
                         "retrying until delivered")
    sd.add_argument("--orthanc", help="Orthanc base URL (default: configs/pacs.yaml)")
    sd.add_argument("--user", help=f"HTTP user (default: ${ENV_USER})")
    sd.add_argument("--password", help=f"HTTP password (prefer ${ENV_PASSWORD})")
    sd.add_argument("--db", help="database URL")
    sd.add_argument("--once", action="store_true", help="one round, then exit")
    sd.add_argument("--interval", type=float, default=None,
                    help="seconds between rounds (default: config send.interval_s or 10)")
    sd.add_argument("--retry-now", action="store_true",
                    help="make every undelivered item due now (after the PACS is back)")
    sd.add_argument("--config", help="PACS YAML (default: configs/pacs.yaml)")
    sd.set_defaults(func=cmd_send)

    ln = psub.add_parser("listen", help="hardened C-STORE SCP feeding the ingest queue")
    ln.add_argument("--aet", help="our AE title")
    ln.add_argument("--port", type=int, help="TCP port")
    ln.add_argument("--bind", help="address to listen on (default: config, 127.0.0.1)")
    ln.add_argument("--allow", action="append", default=[], metavar="AE@HOST",
                    help="allowed calling AE title and host (repeatable)")
    ln.add_argument("--storage", help="storage root (default: <data dir>/incoming)")
    ln.add_argument("--db", help="database URL")
    ln.add_argument("--max-associations", type=int)
    ln.add_argument("--max-pdu", type=int)
    ln.add_argument("--config", help="PACS YAML (default: configs/pacs.yaml)")
    ln.set_defaults(func=cmd_listen)


def _factory(db: str | None) -> Any:
    from medassist.storage.engine import make_engine, resolve_db_url, session_factory
    from medassist.storage.migrate import upgrade

    engine = make_engine(resolve_db_url(db))
    upgrade(engine)
    return session_factory(engine)


def load_processor(spec: str) -> Any:
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name:
        raise UsageError(f"--processor {spec!r}: write module:callable")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--processor {spec!r}: {exc}") from exc
    if not callable(fn):
        raise UsageError(f"--processor {spec!r} is not callable")
    return fn


def _client(args: argparse.Namespace, sec: dict[str, Any]) -> Any:
    from medassist.pacs.dicomweb import PacsClient

    url = args.orthanc or sec.get("orthanc")
    if not url:
        raise UsageError("pass --orthanc URL (or set pacs.watch.orthanc in the config)")
    user = args.user or os.environ.get(ENV_USER)
    password = args.password or os.environ.get(ENV_PASSWORD)
    return PacsClient(url, user=user, password=password,
                      dicomweb_root=str(sec.get("dicomweb_root", "/dicom-web")),
                      timeout_s=float(sec.get("timeout_s", 30)))


def cmd_send(args: argparse.Namespace) -> int:
    from medassist.pacs import config, outbox
    from medassist.pacs.sendback import PacsSources, chain, local_sources, send_round
    from medassist.storage.engine import unit_of_work

    cfg = config.load(args.config)
    client = _client(args, {**config.section(cfg, "watch"), **config.section(cfg, "send")})
    factory = _factory(args.db)
    if args.retry_now:
        with unit_of_work(factory) as s:
            print(f"{outbox.retry_now(s)} item(s) due now", flush=True)
    resolver = chain(local_sources, PacsSources(client))
    interval = float(args.interval if args.interval is not None
                     else config.section(cfg, "send").get("interval_s", 10))
    stop = threading.Event()
    if not args.once:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        rec, d = send_round(factory, resolver, client.store_bytes)
        if args.once or rec.queued or d.sent or d.failed or rec.pending:
            print(f"queued {rec.queued} SR(s), {rec.pending} pending; sent {d.sent}, "
                  f"failed {d.failed}", flush=True)
        if args.once:
            return 0 if not (d.failed or rec.pending) else 1
        try:
            if stop.wait(interval):
                return 0
        except KeyboardInterrupt:
            return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from medassist.pacs import config, queue
    from medassist.pacs.watch import Watcher, start_from_now

    sec = config.section(config.load(args.config), "watch")
    client = _client(args, sec)
    b = sec.get("backoff", {})
    watcher = Watcher(
        factory=_factory(args.db), client=client,
        processor=load_processor(args.processor or sec.get(
            "processor", "medassist.pacs.watch:volume_summary_processor")),
        workdir=Path(args.workdir) if args.workdir else None,
        poll_interval_s=float(sec.get("poll_interval_s", 5)),
        lease_s=float(sec.get("lease_s", 1800)),
        backoff=queue.Backoff(float(b.get("base_s", 5)), float(b.get("cap_s", 3600)),
                              int(b.get("max_attempts", 8))))
    if args.from_now:
        start_from_now(watcher.factory, client)
    if args.once:
        for o in watcher.run_once():
            print(f"{o.study_uid}\t{o.state}\t{o.reason or ''}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def _sleep(seconds: float) -> None:
        stop.wait(seconds)

    watcher.sleep = _sleep
    try:
        watcher.run_forever(stop.is_set)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from medassist.pacs import config
    from medassist.pacs.scp import AllowEntry, Listener, ListenerConfig, queue_on_study
    from medassist.storage.engine import default_data_dir

    sec = config.section(config.load(args.config), "listen")
    allow = tuple(AllowEntry.parse(a) for a in (args.allow or sec.get("allow", [])))
    cfg = ListenerConfig(
        ae_title=args.aet or str(sec.get("aet", "MEDASSIST")),
        port=int(args.port or sec.get("port", 11112)),
        allow=allow,
        storage_root=Path(args.storage) if args.storage else default_data_dir() / "incoming",
        bind=args.bind or str(sec.get("bind", "127.0.0.1")),
        max_associations=int(args.max_associations or sec.get("max_associations", 4)),
        max_pdu=int(args.max_pdu or sec.get("max_pdu", 65536)),
        max_control_pdu=int(sec.get("max_control_pdu", 262144)),
        max_message_bytes=int(sec.get("max_message_bytes", 1 << 30)),
        fsync=bool(sec.get("fsync", True)))
    listener = Listener(cfg, queue_on_study(_factory(args.db)))
    print(f"listening {cfg.ae_title} {cfg.bind}:{listener.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    listener.stop()
    return 0
