"""Findings metrics: per-label and micro/macro F1, laterality accuracy, size MAE, ECE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Arr = npt.NDArray[Any]


def f1(tp: int, fp: int, fn: int) -> float:
    """F1; 1.0 when there is nothing to find and nothing was found."""
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def ece(prob: Arr, truth: Arr, bins: int = 10) -> float:
    """Expected calibration error over all (case, label) probabilities."""
    p = np.asarray(prob, np.float64).ravel()
    y = np.asarray(truth, np.float64).ravel()
    if p.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / p.size * abs(p[m].mean() - y[m].mean())
    return float(total)


def auroc(prob: Arr, truth: Arr) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    p = np.asarray(prob, np.float64).ravel()
    y = np.asarray(truth, bool).ravel()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, np.float64)
    sp = p[order]
    i = 0
    while i < p.size:  # average ranks over ties
        j = i
        while j + 1 < p.size and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def findings_metrics(labels: Sequence[str], prob: Arr, pred: Arr, truth: Arr,
                     lat_pred: Arr, lat_true: Arr, size_pred: Arr, size_true: Arr,
                     size_labels: Sequence[str] = ("lung_nodule", "lung_mass")) -> dict[str, Any]:
    """All arrays (N, F).  lat_true < 0 / size_true NaN where absent."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    per: dict[str, dict[str, Any]] = {}
    tps = fps = fns = 0
    tp_mask = pred & truth
    lat_hit = np.asarray(lat_pred) == np.asarray(lat_true)
    lat_known = np.asarray(lat_true) >= 0  # a reference without a stated side is not scored
    st = np.asarray(size_true, np.float64)
    sp = np.asarray(size_pred, np.float64)
    err = np.abs(sp - st)
    for f, lab in enumerate(labels):
        tp = int((pred[:, f] & truth[:, f]).sum())
        fp = int((pred[:, f] & ~truth[:, f]).sum())
        fn = int((~pred[:, f] & truth[:, f]).sum())
        tps, fps, fns = tps + tp, fps + fp, fns + fn
        # the side stated on this label's true positives (where most of a low overall
        # laterality comes from tells a side rule from a detector whose hits are chance)
        per[lab] = {"f1": f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
                    "support": int(truth[:, f].sum()),
                    "auroc": auroc(np.asarray(prob)[:, f], truth[:, f]),
                    "laterality_acc_tp": float(lat_hit[tp_mask[:, f] & lat_known[:, f], f]
                                               .mean())
                    if (tp_mask[:, f] & lat_known[:, f]).any() else None}
        # size error on this label's true positives with a reference size (which finding a
        # pooled size MAE comes from)
        has = tp_mask[:, f] & ~np.isnan(st[:, f])
        e = err[has, f]
        per[lab]["size_mae_mm_tp"] = float(e.mean()) if e.size else None
        if lab in size_labels:
            # each true positive's (reference, stated) size: a head that states the median
            # size for every case shows here, not in the mean error
            per[lab]["size_pairs_mm_tp"] = [[round(float(a), 1), round(float(b), 1)]
                                            for a, b in zip(st[has, f], sp[has, f], strict=True)]
        per[lab]["false_calls_with"] = false_calls_with(labels, f, pred, truth)
    supported = [v["f1"] for v in per.values() if v["support"] > 0]
    aucs = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    lat_ok = lat_hit[tp_mask & lat_known]
    sel = np.zeros_like(tp_mask)
    for f, lab in enumerate(labels):
        if lab in size_labels:
            sel[:, f] = tp_mask[:, f]
    size_err = err[sel & ~np.isnan(st)]
    all_err = err[tp_mask & ~np.isnan(st)]
    return {
        "micro_f1": f1(tps, fps, fns),
        "macro_f1": float(np.mean(supported)) if supported else 1.0,
        "macro_auroc": float(np.mean(aucs)) if aucs else None,
        "per_finding": per,
        "laterality_acc_tp": float(lat_ok.mean()) if lat_ok.size else None,
        "size_mae_mm_nodule_mass": float(size_err.mean()) if size_err.size else None,
        "size_mae_mm_all": float(all_err.mean()) if all_err.size else None,
        "ece": ece(prob, truth),
        "detection_by_size": detection_by_size(labels, prob, pred, truth, size_true,
                                               size_labels),
        "n_cases": int(truth.shape[0]),
        "n_predicted_present": int(pred.sum()),
    }


def false_calls_with(labels: Sequence[str], f: int, pred: Arr, truth: Arr) -> dict[str, int]:
    """The cases where label ``f`` is called but absent, counted by each finding they do have
    (``"none"``: a case with no finding at all); a case with two findings counts for both.
    Tells what a false call stands for (a mass called where the case has a consolidation)."""
    yp = np.asarray(pred, bool)
    y = np.asarray(truth, bool)
    if yp.shape != y.shape or yp.ndim != 2 or not 0 <= f < yp.shape[1] \
            or yp.shape[1] != len(labels):
        raise ValueError(f"pred and truth must both be (N, {len(labels)}) and 0 <= f < "
                         f"{len(labels)}; got {yp.shape}, {y.shape} and f={f}")
    false = yp[:, f] & ~y[:, f]
    out = {lab: int((false & y[:, g]).sum()) for g, lab in enumerate(labels) if g != f}
    out = {lab: n for lab, n in sorted(out.items(), key=lambda kv: -kv[1]) if n}
    none = int((false & ~y.any(1)).sum())
    if none:
        out["none"] = none
    return out


#: Upper edges (mm, exclusive) of the reference-size bins of :func:`detection_by_size`.
SIZE_BINS_MM: tuple[float, ...] = (6.0, 10.0, 20.0, float("inf"))


def detection_by_size(labels: Sequence[str], prob: Arr, pred: Arr, truth: Arr,
                      size_true: Arr, size_labels: Sequence[str],
                      edges: Sequence[float] = SIZE_BINS_MM) -> dict[str, list[dict[str, Any]]]:
    """Recall and AUROC of each ``size_labels`` finding per bin of its reference size (mm):
    the positives of one bin against all negatives of the label.  Positives without a size
    are left out.  Tells a resolution limit (small ones missed) from a detector that misses
    large ones too."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(truth, bool)
    yp = np.asarray(pred, bool)
    st = np.asarray(size_true, np.float64)
    out: dict[str, list[dict[str, Any]]] = {}
    for f, lab in enumerate(labels):
        if lab not in size_labels:
            continue
        rows = []
        lo = 0.0
        for hi in edges:
            m = y[:, f] & (st[:, f] >= lo) & (st[:, f] < hi)
            n = int(m.sum())
            neg = ~y[:, f]
            sel = m | neg
            rows.append({"min_mm": lo, "max_mm": None if hi == float("inf") else hi,
                         "support": n, "tp": int((yp[:, f] & m).sum()),
                         "recall": float((yp[:, f] & m).sum() / n) if n else None,
                         "auroc": auroc(p[sel, f], m[sel]) if n else None})
            lo = hi
        out[lab] = rows
    return out
