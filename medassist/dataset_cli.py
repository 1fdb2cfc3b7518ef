"""``medassist dataset import INPUT OUT [--reports DIR [--emr-dir D]] [--deid-key-file K]
[--json]``, ``medassist dataset signed OUT --user U`` and ``medassist dataset agreement DIR``.

``import``: every folder under INPUT holding a ``report.txt`` (the signed report, with FINDINGS
and IMPRESSION sections) and the study's DICOM (the folder's files, or its ``dicom/``
sub-folder; an ``emr.txt`` / ``emr.json`` / ``emr_fhir.json`` note beside them), or with
``--reports DIR`` every study ``medassist batch`` would find under INPUT with its report from DIR
(by StudyInstanceUID, AccessionNumber or folder name) and its note as batch finds it, becomes a
case of OUT that ``medassist train`` (``train.data_dir`` / ``train.val_dir``) and ``medassist eval
--data`` read, labelled from the report's text (:mod:`medassist.dataset`).  A study that cannot
be imported is listed with its reason (``OUT/import.json``) and the import goes on; exit status 1
when any failed.

``signed``: the clinicians' signed reports (the latest per study, an amendment's where signed)
with links to their studies' DICOM (where the ingest queue knows a local location; with
``--orthanc URL`` a study drafted from the PACS is retrieved from it) and notes,
as the input of ``import``: drafts corrected and signed by clinicians become training labels.
Every report read is audited as an export; a clinician's credentials are required.

``agreement``: for cases that carry both a report and reference findings (``medassist synth``
output), how the findings and impression codes read off each report agree with the reference:
the labeler's error, which silver labels bring into training and evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def cmd_import(args: argparse.Namespace) -> int:
    from medassist.dataset import import_cases

    key = None
    if args.deid_key_file:
        from dicom_io.deid import DeidKey

        key = DeidKey.from_file(args.deid_key_file)
    results = import_cases(Path(args.input), Path(args.out), key=key,
                           reports_dir=Path(args.reports) if args.reports else None,
                           emr_dir=Path(args.emr_dir) if args.emr_dir else None)
    done = [r for r in results if r.case_dir is not None]
    failed = [r for r in results if r.case_dir is None]
    if args.json:
        json.dump({"imported": len(done), "failed": len(failed),
                   "cases": [r.to_json() for r in results]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"imported {len(done)} of {len(results)} studies into {args.out} "
              f"(labels from the reports' text; {Path(args.out) / 'import.json'})")
        for r in failed:  # the operator's terminal: the source path (import.json may not)
            print(f"  not imported: {r.source}\n      {r.reason}")
    return 1 if failed or not results else 0


def cmd_agreement(args: argparse.Namespace) -> int:
    from medassist.dataset import CODES, agreement, impression_codes, report_findings
    from medassist.errors import InputError
    from medassist.model_data import finding_labels
    from medassist.model_eval import EMR_DEPENDENT

    labels = finding_labels()
    root = Path(args.data)
    if args.labels:  # a radiologist's labels of a sample of the reports
        from medassist.dataset import read_hand_labels

        hand = read_hand_labels(Path(args.labels), labels)
        hand_pairs = []
        for case, ref in sorted(hand.items()):
            report = root / case / "report.txt"
            try:
                text = report.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"{report}: cannot read the labelled case's report "
                                 f"({type(exc).__name__})", path=str(report)) from exc
            hand_pairs.append((report_findings(text, labels), ref))
        res = agreement(hand_pairs, labels)
        res["n_cases"] = len(hand_pairs)
        json.dump(res, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    truths = sorted(root.rglob("truth.json"))
    if not truths:
        raise InputError(f"no truth.json under {root}", path=str(root))
    pairs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    codes_equal = dependent_equal = 0
    for tp in truths:
        text = (tp.parent / "report.txt").read_text(encoding="utf-8")
        truth = json.loads(tp.read_text(encoding="utf-8"))
        silver = report_findings(text, labels)
        pairs.append((silver, truth["findings"]))
        got = {str(c["code"]) for c in impression_codes(text, silver)}
        want = {str(c["code"]) for c in truth.get("report", {}).get("impression", [])}
        codes_equal += int(got & CODES == want & CODES)
        dependent_equal += int(got & set(EMR_DEPENDENT) == want & set(EMR_DEPENDENT))
    res = agreement(pairs, labels)
    res["impression_codes"] = {"context_codes_equal": codes_equal,
                               "emr_dependent_equal": dependent_equal}
    res["n_cases"] = len(pairs)
    json.dump(res, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def cmd_signed(args: argparse.Namespace) -> int:
    from medassist.admin_cli import _engine, _password
    from medassist.auth import actor_of, authenticate
    from medassist.dataset import export_signed
    from medassist.errors import UsageError
    from medassist.storage import session_factory, unit_of_work

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; give a new folder")
    password = _password(args, f"password for {args.user}: ")
    engine = _engine(args)
    try:
        factory = session_factory(engine)
        with unit_of_work(factory) as s:
            actor = actor_of(authenticate(s, args.user, password))
        pacs = None
        if args.orthanc:  # studies drafted from the PACS: retrieved from it (WADO-RS)
            import os

            from medassist.pacs import config
            from medassist.pacs.cli import ENV_PASSWORD, ENV_USER
            from medassist.pacs.dicomweb import PacsClient

            sec = config.section(config.load(args.pacs_config), "watch")
            pacs = PacsClient(args.orthanc, user=os.environ.get(ENV_USER),
                              password=os.environ.get(ENV_PASSWORD),
                              dicomweb_root=str(sec.get("dicomweb_root", "/dicom-web")),
                              timeout_s=float(sec.get("timeout_s", 30)))
        with unit_of_work(factory) as s:  # one transaction: every read audited, or none
            got = export_signed(s, actor, out, Path(args.emr_dir) if args.emr_dir else None,
                                pacs=pacs)
    finally:
        engine.dispose()
    written = [g for g in got if g.folder is not None]
    print(f"{len(written)} of {len(got)} studies with a signed report written to {out}; "
          f"make cases of them with: medassist dataset import {out} CASES")
    for g in got:
        if g.folder is None:
            print(f"  left out: study {g.study_uid} (report {g.report_id}): {g.reason}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``dataset`` on an argparse subparsers object."""
    p = sub.add_parser("dataset", help="a hospital's studies and reports as training and "
                                       "evaluation cases (labels read off the reports)")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    q = dsub.add_parser("import", help="make cases of every study folder with a report.txt")
    q.add_argument("input", help="folder of study folders, each with report.txt and DICOM "
                                 "(with --reports: the studies as medassist batch finds them)")
    q.add_argument("out", help="new folder for the cases (train.data_dir / eval --data)")
    q.add_argument("--reports", default=None, metavar="DIR",
                   help="the reports kept apart: DIR/<StudyInstanceUID>.txt, "
                        "<AccessionNumber>.txt or <study folder or zip name>.txt")
    q.add_argument("--emr-dir", default=None, metavar="DIR",
                   help="with --reports: notes as <StudyInstanceUID>.txt or <study name>.txt "
                        "(as medassist batch reads them; else the note beside the study)")
    q.add_argument("--deid-key-file", default=None, metavar="KEYFILE",
                   help="de-identify the cases (the key file of medassist deid --key-file): "
                        "DICOM through the PS3.15 Annex E profile, the patient's known "
                        "identifiers and dates redacted in the report and note, pseudonymous "
                        "case ids")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_import)
    q = dsub.add_parser("signed", help="the clinicians' signed reports, with links to their "
                                       "studies and notes, as input for dataset import "
                                       "(audited exports; clinicians only)")
    q.add_argument("out", help="new folder")
    q.add_argument("--user", required=True, help="a clinician's user name")
    q.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    q.add_argument("--db", help="database URL (default: $MEDASSIST_DB_URL, else SQLite in "
                                "the data directory)")
    q.add_argument("--emr-dir", default=None,
                   help="notes as <StudyInstanceUID>.txt or <case>.txt (as batch reads them)")
    q.add_argument("--orthanc", default=None, metavar="URL",
                   help="retrieve the studies drafted from the PACS (pacs watch keeps no "
                        "local copy) from this Orthanc over DICOMweb (credentials: "
                        "$MEDASSIST_ORTHANC_USER, $MEDASSIST_ORTHANC_PASSWORD)")
    q.add_argument("--pacs-config", default=None,
                   help="PACS settings (DICOMweb root, timeout; default configs/pacs.yaml)")
    q.set_defaults(func=cmd_signed)
    q = dsub.add_parser("agreement", help="how report-derived labels agree with reference "
                                          "findings (medassist synth output)")
    q.add_argument("data", help="folder with truth.json and report.txt per case (or, with "
                                "--labels, report.txt per case folder)")
    q.add_argument("--labels", default=None, metavar="CSV",
                   help="a radiologist's labels of a sample of the reports: "
                        "case,label,side,lobe,size_mm, one row per finding, label none for "
                        "a normal report")
    q.set_defaults(func=cmd_agreement)
