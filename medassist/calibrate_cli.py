"""`medassist calibrate`: refit a checkpoint's calibration, every weight unchanged.

What ``medassist train`` fits on the validation cases once training ends
(:func:`multimodal.training.fit_temperature`): the presence temperature, the per-label
decision thresholds, the prevalence stated without CT, the validation AUROC and the bilateral
cut-offs.  This command refits them for an existing checkpoint, on a hospital's own validation
cases (``--val-dir``: ``medassist dataset import`` or ``medassist synth`` output) or on the
generated ones the checkpoint was trained with, and writes a copy: after a change to the
fitting (stop 39: thresholds taken from the middle of the gap between the validation
positives and negatives, docs/model.md "Twenty-ninth round") or to a site's own cases.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from medassist.defaults import DEFAULT_CHECKPOINT

_SOURCE = re.compile(r"\(([^()]+\.ya?ml)\)")


def _defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's own validation set and fitting settings, from its meta.json."""
    data = meta.get("data", {})
    cal = meta.get("calibration") or {}
    m = _SOURCE.search(str(data.get("source", "")))
    return {"synth_config": m.group(1) if m else None,
            "data_seed": data.get("data_seed"), "val_cases": data.get("val_cases"),
            "threshold_objective": cal.get("threshold_objective", "label_f1"),
            "min_call_auroc": float(cal.get("min_call_auroc", 0.0))}


def cmd_calibrate(args: argparse.Namespace) -> int:
    from medassist.drafting import ModelCLIError
    from medassist.model_data import validation_samples
    from multimodal.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint, sha256_file
    from multimodal.training import THRESHOLD_OBJECTIVES, fit_temperature

    src, out = Path(args.checkpoint), Path(args.out)
    if out.exists() and (out.resolve() == src.resolve() or any(out.iterdir())):
        raise ModelCLIError(f"--out {out}: give a new or empty folder (the checkpoint "
                            f"{src} is copied there, never changed in place)")
    model, cfg, kind, tok, meta = load_checkpoint(src)
    d = _defaults(meta)
    objective = args.threshold_objective or d["threshold_objective"]
    if objective not in THRESHOLD_OBJECTIVES:
        raise ModelCLIError(f"--threshold-objective must be one of {list(THRESHOLD_OBJECTIVES)}"
                            f", got {objective!r}")
    min_auroc = d["min_call_auroc"] if args.min_call_auroc is None else args.min_call_auroc
    if not 0.0 <= min_auroc <= 1.0:
        raise ModelCLIError(f"--min-call-auroc must be in [0, 1] (0: off), got {min_auroc}")
    val: dict[str, Any]
    if args.val_dir:
        if not Path(args.val_dir).is_dir():
            raise ModelCLIError(f"--val-dir {args.val_dir}: no such folder")
        samples = validation_samples(cfg, tok, args.max_emr_tokens, val_dir=args.val_dir,
                                     val_cases=args.val_cases or 0)
        val = {"val_source": args.val_dir}
    else:
        n = args.val_cases if args.val_cases is not None else d["val_cases"]
        synth = args.synth_config or d["synth_config"]
        seed = args.data_seed if args.data_seed is not None else d["data_seed"]
        if not synth or seed is None or not n:
            raise ModelCLIError(f"{src}: its meta.json names no generated validation set; "
                                "give --val-dir, or --synth-config, --data-seed and "
                                "--val-cases")
        samples = validation_samples(cfg, tok, args.max_emr_tokens, val_cases=n,
                                     synth_config=synth, seed=seed, cache_dir=args.cache_dir)
        val = {"synth_config": synth, "data_seed": seed}
    if not any(s.get("ct") is not None for s in samples):
        raise ModelCLIError("no validation case with a CT to calibrate on")
    old = meta.get("calibration") or {}
    cal = fit_temperature(model, samples, threshold_objective=objective,
                          min_call_auroc=min_auroc)
    # the source as a path under the working directory where it is one (no machine's
    # absolute path in a checkpoint that travels); its weights' sha256 identifies it
    where = os.path.relpath(src.resolve())
    new_meta = {**meta, "calibration": cal, "recalibrated": {
        "from": str(src.resolve()) if where.startswith("..") else where,
        "weights_sha256": sha256_file(src / WEIGHTS),
        "val_cases": len(samples), "max_emr_tokens": args.max_emr_tokens, **val}}
    save_checkpoint(out, model, cfg, kind, tok, new_meta)
    card = src / "MODEL_CARD.md"
    if card.is_file():  # the card speaks for the source; kept beside it, marked as such
        shutil.copy2(card, out / "MODEL_CARD.source.md")
    labels = list(cfg.heads.labels)
    print(json.dumps({"out": str(out), "n_cases": cal["n_cases"],
                      "temperature": [old.get("temperature"), cal["temperature"]],
                      "thresholds": {lab: [a, b] for lab, a, b in zip(
                          labels, old.get("thresholds", [None] * len(labels)),
                          cal["thresholds"], strict=True)}}, indent=1))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``calibrate`` on an argparse subparsers object."""
    p = sub.add_parser("calibrate", help="refit a checkpoint's presence temperature, decision "
                                         "thresholds and prevalences on validation cases; "
                                         "writes a copy, weights unchanged")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the copy")
    p.add_argument("--val-dir", default=None, metavar="DIR",
                   help="validation cases (medassist dataset import or synth output) instead "
                        "of the checkpoint's generated ones")
    p.add_argument("--val-cases", type=int, default=None, metavar="N",
                   help="at most this many (default: the checkpoint's val_cases; with "
                        "--val-dir, all)")
    p.add_argument("--synth-config", default=None,
                   help="generator config (default: the one in the checkpoint's meta.json)")
    p.add_argument("--data-seed", type=int, default=None)
    p.add_argument("--cache-dir", default="", metavar="DIR",
                   help="case cache of medassist train (empty: generate in process)")
    p.add_argument("--max-emr-tokens", type=int, default=512,
                   help="note tokens per case, as in training (the demo configs: 512)")
    p.add_argument("--threshold-objective", default=None,
                   help="label_f1 or micro_f1 (default: the checkpoint's)")
    p.add_argument("--min-call-auroc", type=float, default=None,
                   help="never call a label below this validation AUROC (default: the "
                        "checkpoint's)")
    p.set_defaults(func=cmd_calibrate)
