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


def findings_metrics(labels: Sequence[str], prob: Arr, pred: Arr, truth: Arr,
                     lat_pred: Arr, lat_true: Arr, size_pred: Arr, size_true: Arr,
                     size_labels: Sequence[str] = ("lung_nodule", "lung_mass")) -> dict[str, Any]:
    """All arrays (N, F).  lat_true < 0 / size_true NaN where absent."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    per: dict[str, dict[str, float]] = {}
    tps = fps = fns = 0
    for f, lab in enumerate(labels):
        tp = int((pred[:, f] & truth[:, f]).sum())
        fp = int((pred[:, f] & ~truth[:, f]).sum())
        fn = int((~pred[:, f] & truth[:, f]).sum())
        tps, fps, fns = tps + tp, fps + fp, fns + fn
        per[lab] = {"f1": f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
                    "support": int(truth[:, f].sum())}
    supported = [v["f1"] for v in per.values() if v["support"] > 0]
    tp_mask = pred & truth
    lat_ok = (np.asarray(lat_pred) == np.asarray(lat_true))[tp_mask]
    sel = np.zeros_like(tp_mask)
    for f, lab in enumerate(labels):
        if lab in size_labels:
            sel[:, f] = tp_mask[:, f]
    st = np.asarray(size_true, np.float64)
    sp = np.asarray(size_pred, np.float64)
    size_err = np.abs(sp - st)[sel & ~np.isnan(st)]
    all_err = np.abs(sp - st)[tp_mask & ~np.isnan(st)]
    return {
        "micro_f1": f1(tps, fps, fns),
        "macro_f1": float(np.mean(supported)) if supported else 1.0,
        "per_finding": per,
        "laterality_acc_tp": float(lat_ok.mean()) if lat_ok.size else None,
        "size_mae_mm_nodule_mass": float(size_err.mean()) if size_err.size else None,
        "size_mae_mm_all": float(all_err.mean()) if all_err.size else None,
        "ece": ece(prob, truth),
        "n_cases": int(truth.shape[0]),
        "n_predicted_present": int(pred.sum()),
    }
