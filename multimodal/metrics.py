"""Findings metrics: per-label and micro/macro F1, laterality accuracy, size MAE, ECE, and
their 95 % intervals (a case bootstrap; Wilson's interval for a share of independent cases)."""

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


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson's score interval [lo, hi] for ``k`` successes in ``n`` independent trials (95 %
    at z = 1.96); None for n = 0.  Unlike the normal approximation it stays inside [0, 1]
    and is not empty at k = 0 or k = n: 1 of 4 is [0.046, 0.699]."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(float(max(0.0, mid - half)), 4), round(float(min(1.0, mid + half)), 4)]


#: Case resamples of :func:`bootstrap_cases` (and so of every bootstrap interval here).
BOOTSTRAP_REPS = 2000


def bootstrap_cases(n: int, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> npt.NDArray[np.int64]:
    """(reps, n) case indices drawn with replacement, seeded: the same ``n`` gives the same
    draws, so two metrics (or two runs) over the same cases are resampled alike."""
    if n <= 0 or reps <= 0:
        raise ValueError(f"need n > 0 cases and reps > 0, got {n}, {reps}")
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def _pct(values: Arr) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the finite ``values`` (None if there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def _f1s(tp: Arr, fp: Arr, fn: Arr) -> npt.NDArray[np.float64]:
    """Elementwise :func:`f1` of count arrays."""
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def ece_bins(prob: Arr, truth: Arr, bins: int = 10) -> tuple[npt.NDArray[np.float64], ...]:
    """Per case (row), per :func:`ece` bin: the count, the sum of probabilities and the sum of
    outcomes, each (N, bins); :func:`ece` is sum_b |sum p - sum y| / count over all rows."""
    p = np.asarray(prob, np.float64).reshape(len(prob), -1)
    y = np.asarray(truth, np.float64).reshape(len(truth), -1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    one = np.eye(bins)[idx]  # (N, F, bins)
    return one.sum(1), (one * p[..., None]).sum(1), (one * y[..., None]).sum(1)


def intervals(labels: Sequence[str], prob: Arr, pred: Arr, truth: Arr, lat_hit: Arr,
              lat_known: Arr, size_err: Arr, size_sel: Arr, reps: int = BOOTSTRAP_REPS,
              seed: int = 0) -> dict[str, Any]:
    """95 % intervals of :func:`findings_metrics`' summary figures: micro- and macro-F1, the
    size MAE, the ECE and (``per_finding_f1``, in ``labels``' order) each label's F1 as
    percentiles over ``reps`` case resamples (:func:`bootstrap_cases`: the cases are what is
    sampled, so a case's findings move together); the laterality on true positives as
    Wilson's interval (:func:`wilson`).  Arrays (N, F); ``lat_hit`` / ``lat_known`` the stated
    side's agreement and where the reference states one, ``size_err`` / ``size_sel`` the
    absolute size error and where it is scored.  A resample in which a figure is undefined
    (no true positive to score) is left out of that figure's interval."""
    y = np.asarray(truth, bool)
    yp = np.asarray(pred, bool)
    n, nf = y.shape
    if yp.shape != (n, nf) or nf != len(labels):
        raise ValueError(f"pred and truth must both be (N, {len(labels)}); got {yp.shape}, "
                         f"{y.shape}")
    idx = bootstrap_cases(n, reps, seed)
    tp, fp, fn = (yp & y), (yp & ~y), (~yp & y)  # (N, F)
    rtp, rfp, rfn = (a.astype(np.int64)[idx].sum(1) for a in (tp, fp, fn))  # (R, F)
    micro = _f1s(rtp.sum(1), rfp.sum(1), rfn.sum(1))
    supported = y.astype(np.int64)[idx].sum(1) > 0  # (R, F)
    per = _f1s(rtp, rfp, rfn)
    macro = np.where(supported.any(1), (per * supported).sum(1) / np.maximum(
        supported.sum(1), 1), 1.0)
    # the side: one trial per true positive whose reference states one, Wilson's interval
    # (a bootstrap of n hits in n is [1, 1], a certainty n trials do not give)
    scored = tp & np.asarray(lat_known, bool)
    lat = wilson(int((scored & np.asarray(lat_hit, bool)).sum()), int(scored.sum()))
    sel = np.asarray(size_sel, bool)
    err = np.where(sel, np.nan_to_num(np.asarray(size_err, np.float64)), 0.0)
    e_sum, e_n = err.sum(1)[idx].sum(1), sel.sum(1)[idx].sum(1)
    mae = np.where(e_n > 0, e_sum / np.maximum(e_n, 1), np.nan)
    cnt, sp, sy = (a[idx].sum(1) for a in ece_bins(prob, truth))  # (R, bins)
    ece_r = np.abs(sp - sy).sum(1) / np.maximum(cnt.sum(1), 1)
    return {"micro_f1": _pct(micro), "macro_f1": _pct(macro), "laterality_acc_tp": lat,
            "per_finding_f1": [_pct(per[:, f]) for f in range(nf)],
            "size_mae_mm_nodule_mass": _pct(mae), "ece": _pct(ece_r)}


def micro_f1_difference(pred_a: Arr, pred_b: Arr, truth: Arr, reps: int = BOOTSTRAP_REPS,
                        seed: int = 0) -> dict[str, Any]:
    """Micro-F1 of ``pred_a`` minus that of ``pred_b`` on the same cases (N, F), and its 95 %
    paired interval: both are scored on the same case resamples, so what the cases share
    cancels out (e.g. the drop when the note is removed)."""
    a, b, y = (np.asarray(v, bool) for v in (pred_a, pred_b, truth))
    if a.shape != y.shape or b.shape != y.shape or y.ndim != 2:
        raise ValueError(f"pred_a, pred_b and truth must be the same (N, F); got {a.shape}, "
                         f"{b.shape}, {y.shape}")
    idx = bootstrap_cases(y.shape[0], reps, seed)

    def micro(p: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        c = [v.sum(1)[idx].sum(1) for v in (p & y, p & ~y, ~p & y)]
        return _f1s(*c)

    def point(p: npt.NDArray[np.bool_]) -> float:
        return f1(int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum()))

    return {"difference": round(point(a) - point(b), 6), "ci95": _pct(micro(a) - micro(b))}


def findings_metrics(labels: Sequence[str], prob: Arr, pred: Arr, truth: Arr,
                     lat_pred: Arr, lat_true: Arr, size_pred: Arr, size_true: Arr,
                     size_labels: Sequence[str] = ("lung_nodule", "lung_mass"),
                     ci: bool = False) -> dict[str, Any]:
    """All arrays (N, F).  lat_true < 0 / size_true NaN where absent.  With ``ci`` the result
    has ``ci95``, the summary figures' 95 % intervals (:func:`intervals`), and each label of
    ``per_finding`` its F1's (``f1_ci95``) and Wilson's intervals of its recall and precision
    (``recall_ci95``, ``precision_ci95``: one trial per positive case, per call)."""
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
                    # sensitivity and precision (None where undefined)
                    "recall": tp / (tp + fn) if tp + fn else None,
                    "precision": tp / (tp + fp) if tp + fp else None,
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
    out: dict[str, Any] = {
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
    if ci:
        out["ci95"] = intervals(labels, prob, pred, truth, lat_hit, lat_known, err,
                                sel & ~np.isnan(st))
        for lab, f1_ci in zip(labels, out["ci95"].pop("per_finding_f1"), strict=True):
            v = per[lab]
            v["f1_ci95"] = f1_ci
            v["recall_ci95"] = wilson(v["tp"], v["tp"] + v["fn"])
            v["precision_ci95"] = wilson(v["tp"], v["tp"] + v["fp"])
    return out


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
