"""A weak modality, not only a missing one: what a noisier CT, a cut note or another patient's
note does to a checkpoint's weights, decisions and impressions.

The issue asks that a missing *or weak* modality cost gracefully; ``medassist eval`` scores
the missing ones (``emr_removed``, ``ct_removed``).  This bench scores the same cases of a
``medassist synth`` folder under each condition, with the drafts' rules (the measurement on
the CT, the noise matching, the text written from the image pass), as ``medassist eval``'s
``full`` run does:

* ``clean``: the case as generated;
* ``ct_noise_<SD>``: white noise of that SD (HU) added to the CT on the model grid (seeded
  per case); a scan noisier than the training cases is then smoothed to their level as the
  drafts do (``ct.noise_max_index``);
* ``emr_first_<N>``: the note cut to its first N words (a note stopped short, or only its
  header pasted);
* ``emr_other_patient``: each case given the next case's note (a note filed to the wrong
  study): what the model does with it, and ``identity_refused``: how many of those notes
  the pipeline's identity check refuses before the model sees them
  (:func:`medassist.pipeline.identity_mismatches` against the case's DICOM header), as
  written and with their ``MRN:`` field removed (then on the date of birth and sex alone);
* ``emr_removed``: no note.

Per condition: the mean modality weights, findings micro-F1 (with its 95 % case-bootstrap
interval), text micro-F1, EMR-dependent impression accuracy, the impressions drawing an
EMR-dependent conclusion their reference does not (``unfounded``), the context classes'
accuracy, and the true and false calls.

    .venv/bin/python bench/weak_modality.py --data /tmp/runs/test_id_body/test
        [--checkpoint models/demo] [--limit N] [--noise 20 40] [--first-words 32]
        [--identity-only]

``--identity-only`` runs no model: the identity check on each case's own note and on the
next case's (``identity_refused`` for both), in seconds.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import CaseRecord, folder_records, record_sample  # noqa: E402
from medassist.model_eval import evaluate  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402

KEYS = ("micro_f1", "text_micro_f1", "impression_acc_emr_dependent",
        "impression_acc_emr_dependent_ci95", "n_emr_dependent",
        "n_impression_false_emr_dependent", "context_acc", "mean_modality_weights")


def noisier(r: CaseRecord, sd: float, seed: int) -> CaseRecord:
    """``r`` with white noise of ``sd`` HU added to its CT (a new array; ``r`` unchanged)."""
    if r.hu is None:
        raise ValueError(f"case {r.case_id} has no CT to add noise to")
    rng = np.random.default_rng(seed)
    hu = np.asarray(r.hu, np.float32) + rng.normal(0.0, sd, r.hu.shape).astype(np.float32)
    return dataclasses.replace(r, hu=hu)


def first_words(r: CaseRecord, n: int) -> CaseRecord:
    """``r`` with its note cut to its first ``n`` words (line breaks kept)."""
    if not r.emr:
        return r
    words = 0
    out = []
    for line in r.emr.splitlines():
        left = n - words
        if left <= 0:
            break
        toks = line.split()
        out.append(" ".join(toks[:left]))
        words += min(len(toks), left)
    return dataclasses.replace(r, emr="\n".join(out))


def conditions(recs: list[CaseRecord], noise: list[float], n_words: int
               ) -> dict[str, list[CaseRecord]]:
    """Each condition's cases (the module's description), in the same order."""
    out = {"clean": recs}
    for sd in noise:
        out[f"ct_noise_{sd:g}"] = [noisier(r, sd, i) for i, r in enumerate(recs)]
    out[f"emr_first_{n_words}"] = [first_words(r, n_words) for r in recs]
    notes = [r.emr for r in recs]
    out["emr_other_patient"] = [dataclasses.replace(r, emr=notes[(i + 1) % len(recs)])
                                for i, r in enumerate(recs)]
    out["emr_removed"] = [dataclasses.replace(r, emr=None) for r in recs]
    return out


def identity_refused(folder: Path, recs: Sequence[CaseRecord], notes: Sequence[str | None]
                     ) -> dict[str, Any]:
    """How many of ``notes`` (one per case of ``recs``, in order) the identity check refuses
    against each case's DICOM header (``folder/<case_id>/dicom``), by what differs; the same
    with each note's ``MRN:`` field removed.  Cases without a note or DICOM folder are not
    counted."""
    import re
    from collections import Counter

    from dicom_io.header import read_header
    from medassist.pipeline import identity_mismatches

    out: dict[str, Any] = {"checked": 0, "refused": 0, "refused_without_mrn": 0,
                           "by_reason": Counter(), "by_reason_without_mrn": Counter()}
    for r, note in zip(recs, notes, strict=True):
        files = sorted(p for p in (folder / r.case_id / "dicom").rglob("*") if p.is_file())
        if note is None or not files:
            continue
        h = read_header(files[0])
        out["checked"] += 1
        for key, text in (("", note), ("_without_mrn", re.sub(r"\bMRN\s*[:#]\s*\S+", "", note))):
            bad = identity_mismatches([h], text)
            out[f"refused{key}"] += bool(bad)
            out[f"by_reason{key}"][", ".join(bad) or "none"] += 1
    out["by_reason"] = dict(out["by_reason"])
    out["by_reason_without_mrn"] = dict(out["by_reason_without_mrn"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a `medassist synth` split folder")
    ap.add_argument("--checkpoint", default=str(REPO / "models" / "demo"))
    ap.add_argument("--limit", type=int, default=0, help="the first N cases (0: all)")
    ap.add_argument("--noise", type=float, nargs="*", default=[20.0, 40.0], metavar="SD")
    ap.add_argument("--first-words", type=int, default=32)
    ap.add_argument("--identity-only", action="store_true",
                    help="only the identity check on each case's own note and the next "
                         "case's (no model run, seconds)")
    a = ap.parse_args(argv)
    if a.identity_only:
        folder = Path(a.data)
        recs0 = [CaseRecord(d.name, None, None, [], (d / "emr.txt").read_text("utf-8"), "")
                 for d in sorted(folder.glob("case_*")) if (d / "emr.txt").is_file()]
        if a.limit:
            recs0 = recs0[:a.limit]
        notes = [r.emr for r in recs0]
        print(json.dumps({"data": a.data, "cases": len(recs0),
                          "own_note": identity_refused(folder, recs0, notes),
                          "next_case_note": identity_refused(folder, recs0,
                                                             notes[1:] + notes[:1])},
                         indent=1))
        return 0
    import torch

    model, cfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    recs = list(folder_records(a.data, cfg))
    if a.limit:
        recs = recs[:a.limit]
    if len(recs) < 2:
        raise SystemExit(f"{a.data}: need 2 cases or more, found {len(recs)}")
    out: dict[str, Any] = {"data": a.data, "checkpoint": a.checkpoint, "cases": len(recs),
                           "noise_max_index": cfg.ct.noise_max_index, "conditions": {}}
    for name, rs in conditions(recs, a.noise, a.first_words).items():
        t0 = time.perf_counter()
        samples = [record_sample(r, cfg, tok, with_report=False) for r in rs]
        with torch.no_grad():
            full = evaluate(model, cfg, samples, tok=tok, records=rs, modes=(None,),
                            injection=False)["full"]
        row = {k: full.get(k) for k in KEYS}
        row["micro_f1_ci95"] = full["ci95"]["micro_f1"]
        row["true_calls"] = sum(v["tp"] for v in full["per_finding"].values())
        row["false_calls"] = sum(v["fp"] for v in full["per_finding"].values())
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if name == "emr_other_patient":
            row["identity_refused"] = identity_refused(Path(a.data), recs,
                                                       [r.emr for r in rs])
        out["conditions"][name] = row
        print(f"{name}: micro-F1 {row['micro_f1']:.3f}, impressions "
              f"{row['impression_acc_emr_dependent']}, weights "
              f"{row['mean_modality_weights']}", file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
