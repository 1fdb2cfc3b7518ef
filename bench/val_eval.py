"""Findings metrics of a checkpoint on the generated validation cases (the ones its thresholds
were fitted on), without text generation: used to choose between checkpoints or
post-processing rules before the held-out test splits are scored.

    .venv/bin/python bench/val_eval.py CHECKPOINT [--val 192] [--cache runs/cache] [--text]
                                      [--data DIR] [--synth-config configs/synth/small.yaml]
                                      [--sides [--side-probs]] [--sizes [--min-fit-fraction F]
                                      [--max-wall-share W] [--island-labels [L ...]]]
                                      [--evidence [--evidence-box patches|cells]
                                       [--evidence-cell-prob P [P ...]]
                                       [--evidence-min-peak Q [Q ...]]
                                       [--fluid-box band|sac]
                                       [--fluid-sac-depth D [D ...]]]

Prints micro-F1, laterality on true positives (the stated side, the laterality head's, and
the side read off the image), ``per_finding`` (F1, TP / FP / FN, AUROC and the stated side
on its true positives), and nodule / mass detection by reference size as JSON; with
``--text`` the reports are generated too (both modalities only) and their text micro-F1,
EMR-dependent impression accuracy and the EMR context head's accuracy are added.
``--data DIR`` scores the cases of a ``medassist synth`` folder instead (e.g. a test split,
once the choice is made).  ``--sides`` adds ``side_confusion``: per label whose side is read
off the image (``heads.evidence_side_labels``), the true positives counted by reference side
and stated side ("right -> bilateral": 3); with ``--side-probs`` also ``side_probs_tp``: each
of those true positives' case, reference and stated side, and the per-side presence the side
rule reads (left, right; bilateral where both reach the label's fitted cut-off).
``--sizes`` adds the nodule / mass sizes the draft states (measured on the CT where that
succeeds, ``multimodal.measure``): their MAE on the true positives, the size head's alone,
the (reference, stated) pairs and how many calls were measured; ``--min-fit-fraction`` and
``--max-wall-share`` set ``heads.measure.min_fit_fraction`` and ``max_wall_share`` for the
run (how the measurement's settings are chosen on validation cases), ``--island-labels``
``heads.measure.island_labels`` (the labels also looked for on the whole CT where the head
does not call them, ``multimodal.islands``; given alone: none). ``--evidence`` adds
``evidence_localisation`` (the evidence boxes of the true positives against their labelled
voxels, as ``medassist eval`` reports it), once per ``--evidence-cell-prob``
(``heads.evidence_cell_prob``, for every label: the checkpoint's per-label
``heads.evidence_cell_probs`` cleared; default the checkpoint's settings) under
``evidence_by_cell_prob`` (how those settings are chosen on validation cases), and once per
``--evidence-min-peak`` (``heads.evidence_min_peak``, for every label: the per-label
``heads.evidence_min_peaks`` cleared; the cells' probabilities the checkpoint's) under
``evidence_by_min_peak``; ``--evidence-box`` sets ``heads.evidence_box`` for the run,
``--fluid-box`` ``heads.measure.fluid_box`` (the evidence box of a pericardial effusion
found on the CT), and ``--fluid-sac-depth`` scores each ``heads.measure.fluid_sac_depth``
(how far back the sac box reaches) under ``evidence_by_fluid_sac_depth``.
The cases come from
``medassist.model_data.cached_synth_records`` (``--synth-config``, default
configs/synth/small.yaml; seed 7, split val).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import (  # noqa: E402
    cached_synth_records,
    folder_records,
    record_sample,
)
from medassist.model_eval import evaluate  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402


def side_confusion(model: Any, cfg: Any, samples: list[dict[str, Any]],
                   case_ids: list[str] | None = None
                   ) -> tuple[dict[str, dict[str, int]], dict[str, list[list[Any]]]]:
    """Reference side -> stated side on the true positives of the image-sided labels, and
    (with ``case_ids``, one per sample) each such true positive's [case, reference side,
    stated side, left, right]: the per-side presence the side rule reads
    (:func:`multimodal.heads.side_probs`; bilateral where both reach the label's cut-off)."""
    from multimodal.config import LATERALITY
    from multimodal.heads import predict_findings, side_probs
    from multimodal.training import predict

    out: dict[str, Counter[str]] = {}
    rows: dict[str, list[list[Any]]] = {}
    batch = 8  # predict's batches: output k holds samples[k * batch: (k + 1) * batch]
    for i, o in zip(range(0, len(samples), batch), predict(model, samples, batch),
                    strict=True):
        for b, case in enumerate(predict_findings(o, cfg.heads, cfg.ct, None)):
            s = samples[i + b]
            sides = None
            for f, p in enumerate(case):
                if p.present and s["present"][f] > 0.5 \
                        and p.label in cfg.heads.evidence_side_labels:
                    truth = LATERALITY[int(s["laterality"][f])]
                    out.setdefault(p.label, Counter())[f"{truth} -> {p.laterality}"] += 1
                    if case_ids is None or o.patch_logits is None or o.mil_affine is None:
                        continue
                    if sides is None:
                        mid = float(o.ct_midline[b]) if o.ct_midline is not None else \
                            (cfg.ct.grid_shape[2] - 1) / 2
                        sides = side_probs(
                            o.patch_logits[b].detach().float().reshape(-1, *cfg.ct.patch_grid),
                            o.mil_affine[0].detach().float(), o.mil_affine[1].detach().float(), mid,
                            cfg.ct.patch[2])
                    rows.setdefault(p.label, []).append(
                        [case_ids[i + b], truth, p.laterality, round(float(sides[0][f]), 3),
                         round(float(sides[1][f]), 3)])
    return ({lab: dict(sorted(c.items())) for lab, c in sorted(out.items())},
            dict(sorted(rows.items())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--val", type=int, default=192)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--sides", action="store_true", help="add side_confusion")
    ap.add_argument("--side-probs", action="store_true",
                    help="with --sides: each true positive's per-side presence "
                         "(side_probs_tp)")
    ap.add_argument("--data", default="", help="score a `medassist synth` folder instead")
    ap.add_argument("--sizes", action="store_true",
                    help="add the sizes the draft states (measured on the CT)")
    ap.add_argument("--min-fit-fraction", type=float, default=None,
                    help="heads.measure.min_fit_fraction for this run (with --sizes)")
    ap.add_argument("--max-wall-share", type=float, default=None,
                    help="heads.measure.max_wall_share for this run (with --sizes)")
    ap.add_argument("--island-labels", nargs="*", default=None, metavar="LABEL",
                    help="heads.measure.island_labels for this run (with --sizes; none "
                         "given: off)")
    ap.add_argument("--evidence", action="store_true",
                    help="add the evidence boxes' localisation on the true positives")
    ap.add_argument("--evidence-box", choices=("patches", "cells"), default=None,
                    help="heads.evidence_box for this run (with --evidence)")
    ap.add_argument("--evidence-cell-prob", type=float, nargs="+", default=None,
                    help="heads.evidence_cell_prob values to score (with --evidence)")
    ap.add_argument("--evidence-min-peak", type=float, nargs="+", default=None,
                    help="heads.evidence_min_peak values to score (with --evidence)")
    ap.add_argument("--fluid-box", choices=("band", "sac"), default=None,
                    help="heads.measure.fluid_box for this run (with --evidence)")
    ap.add_argument("--fluid-sac-depth", type=float, nargs="+", default=None,
                    help="heads.measure.fluid_sac_depth values to score (with --evidence)")
    ap.add_argument("--synth-config", default=str(REPO / "configs/synth/small.yaml"),
                    help="generator config of the cached validation cases")
    a = ap.parse_args(argv)
    model, cfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    over: dict[str, Any] = {k: v for k, v in (("min_fit_fraction", a.min_fit_fraction),
                              ("max_wall_share", a.max_wall_share),
                              ("island_labels", None if a.island_labels is None
                               else tuple(a.island_labels)),
                              ("fluid_box", a.fluid_box)) if v is not None}
    if over:
        cfg = replace(cfg, heads=replace(cfg.heads, measure=replace(cfg.heads.measure,
                                                                    **over)))
    if a.evidence_box is not None:
        cfg = replace(cfg, heads=replace(cfg.heads, evidence_box=a.evidence_box))
    if a.evidence_cell_prob:  # one probability for every label, the per-label ones cleared
        cfg = replace(cfg, heads=replace(cfg.heads, evidence_cell_probs=()))
    if a.data:
        recs = list(folder_records(a.data, cfg))
    else:
        recs = cached_synth_records(a.cache, a.synth_config, cfg, 7, a.val, "val")
    samples = [record_sample(r, cfg, tok, with_report=False) for r in recs]
    with torch.no_grad():
        full = evaluate(model, cfg, samples, tok=tok if a.text else None,
                        records=recs if a.text or a.sizes or a.evidence else None,
                        modes=(None,), injection=False)["full"]
    keys = ["micro_f1", "macro_auroc", "laterality_acc_tp", "laterality_acc_tp_head",
            "laterality_acc_tp_evidence", "per_finding", "detection_by_size"]
    if a.text:
        keys += ["text_micro_f1", "impression_acc_emr_dependent", "n_emr_dependent"]
    keys += [k for k in ("context_acc", "context_acc_per_slot", "n_context",
                         "context_recall_nonzero", "n_context_nonzero",
                         "context_false_nonzero") if k in full]
    if a.sizes:
        keys += ["size_mae_mm_nodule_mass", "size_mae_mm_nodule_mass_head", "size_measured"]
    res = {"checkpoint": a.checkpoint, "n_cases": len(samples), **{k: full[k] for k in keys}}
    if a.sizes:
        res["min_fit_fraction"] = cfg.heads.measure.min_fit_fraction
        res["max_wall_share"] = cfg.heads.measure.max_wall_share
        res["island_labels"] = list(cfg.heads.measure.island_labels)
        res["size_pairs_mm_tp"] = {lab: full["per_finding"][lab].get("size_pairs_mm_tp")
                                   for lab in ("lung_nodule", "lung_mass")
                                   if lab in full["per_finding"]}
    if a.sides:
        res["side_confusion"], per_case = side_confusion(
            model, cfg, samples, [r.case_id for r in recs] if a.side_probs else None)
        if a.side_probs:
            res["side_probs_tp"] = per_case
    if a.evidence:
        def localisation(heads: Any) -> dict[str, Any]:
            """``evidence_localisation`` of the cases with ``heads`` in the checkpoint's
            config."""
            with torch.no_grad():
                out = evaluate(model, replace(cfg, heads=heads), samples, records=recs,
                               modes=(None,), injection=False)
            loc: dict[str, Any] = out["full"]["evidence_localisation"]
            return loc

        by_prob = {str(prob): full["evidence_localisation"]
                   if prob == cfg.heads.evidence_cell_prob
                   else localisation(replace(cfg.heads, evidence_cell_prob=prob))
                   for prob in a.evidence_cell_prob or [cfg.heads.evidence_cell_prob]}
        if a.evidence_min_peak:  # one peak for every label, the per-label ones cleared
            res["evidence_by_min_peak"] = {
                str(peak): localisation(replace(cfg.heads, evidence_min_peak=peak,
                                                evidence_min_peaks=()))
                for peak in a.evidence_min_peak}
        if a.fluid_sac_depth:
            res["evidence_by_fluid_sac_depth"] = {
                str(depth): localisation(replace(cfg.heads, measure=replace(
                    cfg.heads.measure, fluid_sac_depth=depth)))
                for depth in a.fluid_sac_depth}
        res["evidence_box"] = cfg.heads.evidence_box
        res["evidence_cell_probs"] = [list(p) for p in cfg.heads.evidence_cell_probs]
        res["evidence_min_peak"] = cfg.heads.evidence_min_peak
        res["evidence_min_peaks"] = [list(p) for p in cfg.heads.evidence_min_peaks]
        res["fluid_box"] = cfg.heads.measure.fluid_box
        res["fluid_sac_depth"] = cfg.heads.measure.fluid_sac_depth
        res["evidence_by_cell_prob"] = by_prob
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
