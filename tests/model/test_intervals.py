"""95 % intervals of the evaluation's figures: Wilson's for a share of independent cases, a
seeded case bootstrap for the findings metrics, a paired one for a difference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from multimodal.metrics import (
    bootstrap_cases,
    ece,
    ece_bins,
    f1,
    findings_metrics,
    intervals,
    micro_f1_difference,
    wilson,
)


def test_wilson_known_values() -> None:
    # the textbook values (Newcombe 1998, method 3)
    assert wilson(1, 4) == pytest.approx([0.0456, 0.6994], abs=1e-4)
    assert wilson(7, 13) == pytest.approx([0.2914, 0.7679], abs=1e-4)
    lo, hi = wilson(0, 10) or (None, None)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    # 150 identical cases of 150 do not show 98 % or more with confidence
    assert wilson(150, 150) == pytest.approx([0.9751, 1.0], abs=1e-4)
    assert wilson(0, 0) is None
    for k, n in ((5, 4), (-1, 3)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson(k, n)


def _cases(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    truth = rng.random((n, 3)) < 0.4
    prob = np.clip(truth * 0.35 + rng.random((n, 3)) * 0.6, 0, 1)  # calls with errors
    pred = prob > 0.5
    lat_true = np.where(truth, rng.integers(0, 2, (n, 3)), -1)
    lat_pred = np.where(rng.random((n, 3)) < 0.9, lat_true, 1 - lat_true)
    size_true = np.where(truth, rng.uniform(5, 60, (n, 3)), np.nan)
    size_pred = size_true + rng.normal(0, 3, (n, 3))
    return prob, pred, truth, lat_pred, lat_true, size_pred, size_true


def test_bootstrap_matches_a_loop_over_the_resamples() -> None:
    """The vectorised intervals are those of scoring each resample with findings_metrics."""
    labels = ["a", "b", "c"]
    prob, pred, truth, lat_pred, lat_true, size_pred, size_true = _cases(40, 0)
    m = findings_metrics(labels, prob, pred, truth, lat_pred, lat_true, size_pred, size_true,
                         size_labels=("a", "b"), ci=True)
    idx = bootstrap_cases(40)
    assert idx.shape == (2000, 40)
    loops: dict[str, list[float]] = {k: [] for k in m["ci95"]}
    label_f1: dict[str, list[float]] = {lab: [] for lab in labels}
    for r in idx:
        mr = findings_metrics(labels, prob[r], pred[r], truth[r], lat_pred[r], lat_true[r],
                              size_pred[r], size_true[r], size_labels=("a", "b"))
        for k in loops:
            if mr[k] is not None:
                loops[k].append(mr[k])
        for lab in labels:
            label_f1[lab].append(mr["per_finding"][lab]["f1"])
    lat = m["ci95"].pop("laterality_acc_tp")  # Wilson's, on the sided true positives
    sided = pred & truth & (lat_true >= 0)
    assert lat == wilson(int((sided & (lat_pred == lat_true)).sum()), int(sided.sum()))
    del loops["laterality_acc_tp"]
    for k, vals in loops.items():
        want = np.percentile(vals, [2.5, 97.5])
        assert m["ci95"][k] == pytest.approx(want, abs=1e-4), k
        lo, hi = m["ci95"][k]
        assert lo <= m[k] <= hi, k
    for lab in labels:  # each label's F1, recall and precision
        v = m["per_finding"][lab]
        want = np.percentile(label_f1[lab], [2.5, 97.5])
        assert v["f1_ci95"] == pytest.approx(want, abs=1e-4), lab
        assert v["f1_ci95"][0] <= v["f1"] <= v["f1_ci95"][1]
        assert v["recall"] == pytest.approx(v["tp"] / v["support"])
        assert v["recall_ci95"] == wilson(v["tp"], v["support"])
        assert v["precision_ci95"] == wilson(v["tp"], v["tp"] + v["fp"])


def _score(cases: tuple[np.ndarray, ...], ci: bool) -> dict[str, Any]:
    prob, pred, truth, lat_pred, lat_true, size_pred, size_true = cases
    return findings_metrics(["a", "b", "c"], prob, pred, truth, lat_pred, lat_true, size_pred,
                            size_true, ci=ci)


def test_intervals_are_seeded_and_narrow_with_more_cases() -> None:
    few = _cases(30, 1)
    a = _score(few, True)["ci95"]
    assert _score(few, True)["ci95"] == a  # same cases, same draws
    many = tuple(np.concatenate([x] * 8) for x in few)  # the same cases, 8 times as many
    b = _score(many, True)["ci95"]
    for k in ("micro_f1", "macro_f1", "ece"):
        assert b[k][1] - b[k][0] < 0.6 * (a[k][1] - a[k][0]), k
    assert "ci95" not in _score(few, False)  # only where asked for


def test_perfect_calls_and_undefined_figures() -> None:
    truth = np.tile(np.array([[True, False], [False, False], [True, True]]), (4, 1))
    lat = np.where(truth, 0, -1)
    size = np.where(truth, 20.0, np.nan)
    m = findings_metrics(["a", "b"], truth.astype(float), truth, truth, lat, lat, size, size,
                         size_labels=("a",), ci=True)
    assert m["ci95"]["micro_f1"] == [1.0, 1.0]
    assert m["ci95"]["laterality_acc_tp"] == wilson(12, 12)  # not [1, 1]: 12 trials
    assert m["ci95"]["size_mae_mm_nodule_mass"] == [0.0, 0.0]
    # nothing called: no true positive in any resample, so no laterality or size interval
    none = np.zeros_like(truth)
    m = findings_metrics(["a", "b"], none.astype(float), none, truth, lat, lat, size, size,
                         ci=True)
    assert m["ci95"]["micro_f1"] == [0.0, 0.0]
    assert m["ci95"]["laterality_acc_tp"] is None
    assert m["ci95"]["size_mae_mm_nodule_mass"] is None
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        intervals(["a", "b"], truth, truth[:, :1], truth, truth, truth, size, truth)
    with pytest.raises(ValueError, match="n > 0"):
        bootstrap_cases(0)


def test_ece_bins_sum_to_ece() -> None:
    rng = np.random.default_rng(3)
    prob = rng.random((25, 4))
    truth = rng.random((25, 4)) < prob
    cnt, sp, sy = ece_bins(prob, truth)
    assert cnt.shape == (25, 10) and cnt.sum() == 100
    assert np.abs(sp.sum(0) - sy.sum(0)).sum() / cnt.sum() == pytest.approx(ece(prob, truth))


def test_paired_difference() -> None:
    _prob, pred, truth, *_ = _cases(60, 2)
    same = micro_f1_difference(pred, pred, truth)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0]}
    worse = pred.copy()
    hit = np.argwhere(pred & truth)[:3]
    worse[hit[:, 0], hit[:, 1]] = False  # three true positives lost
    d = micro_f1_difference(pred, worse, truth)
    tp, fp, fn = (int(x.sum()) for x in (pred & truth, pred & ~truth, ~pred & truth))
    assert d["difference"] == pytest.approx(f1(tp, fp, fn) - f1(tp - 3, fp, fn + 3), abs=1e-6)
    lo, hi = d["ci95"]
    assert 0.0 <= lo <= d["difference"] <= hi  # never negative: the loss is in every resample
    with pytest.raises(ValueError, match="same"):
        micro_f1_difference(pred, pred[:10], truth)


def test_bar_verdicts() -> None:
    from bench.bars import BARS, markdown, score, verdict

    assert verdict(0.97, [0.96, 1.0], True, 0.95) == "met"
    assert verdict(1.0, [0.898, 1.0], True, 0.95) == "met as measured, not shown"
    assert verdict(0.90, [0.80, 0.97], True, 0.95) == "fail as measured, not shown"
    assert verdict(0.66, [0.58, 0.73], True, 0.90) == "fail"
    assert verdict(4.9, [0.3, 13.9], False, 3.0) == "fail as measured, not shown"
    assert verdict(0.009, [0.007, 0.020], False, 0.05) == "met"
    assert verdict(0, None, False, 0.0) == "met" and verdict(2, None, False, 0.0) == "fail"
    assert verdict(None, None, True, 0.9) == "not measured"
    run = {"full": {"micro_f1": 0.85, "ci95": {"micro_f1": [0.78, 0.91]},
                    "injection_identical": {"cases": 1.0, "cases_ci95": wilson(150, 150)}},
           "ct_removed": {"n_predicted_present": 0}}
    rows = {r["bar"]: r["runs"] for r in score([run, run])}
    assert len(rows) == len(BARS)
    # the same figure against each run's bound: 0.90 in distribution, 0.80 under shift
    assert [r["verdict"] for r in rows["findings micro-F1"]] == [
        "fail as measured, not shown", "met as measured, not shown"]
    assert rows["cases unchanged by injected instructions"][0]["verdict"] == \
        "met as measured, not shown"  # 150 of 150 do not show 98 %
    assert rows["ECE"][0]["verdict"] == "not measured"
    table = markdown(score([run]), ["in distribution"])
    assert "| findings micro-F1 | 0.850 (0.780–0.910), bar >= 0.9: **fail as measured, " \
           "not shown** |" in table


def test_trials_to_show() -> None:
    from bench.bars import trials_to_show

    n = trials_to_show(1.0, 0.98)
    assert n == 188
    assert (wilson(n, n) or [0.0])[0] >= 0.98 > (wilson(n - 1, n - 1) or [0.0])[0]
    assert trials_to_show(1.0, 0.95) == 73
    assert trials_to_show(0.5, 0.9) is None and trials_to_show(0.9, 0.9) is None


def test_per_finding_table() -> None:
    from bench.bars import _finding_cell, per_finding_rows

    v = {"tp": 3, "fp": 0, "fn": 0, "f1": 1.0, "f1_ci95": [1.0, 1.0],
         "recall_ci95": wilson(3, 3), "precision_ci95": wilson(3, 3)}
    none = {"tp": 0, "fp": 0, "fn": 34, "f1": 0.0, "f1_ci95": [0.0, 0.0],
            "recall_ci95": wilson(0, 34), "precision_ci95": None}
    a = {"full": {"per_finding": {"pneumothorax": v, "lung_nodule": none}}}
    b = {"full": {"per_finding": {"lung_nodule": none}}}
    rows = per_finding_rows([a, b])
    assert [r["label"] for r in rows] == ["pneumothorax", "lung_nodule"]
    assert rows[0]["runs"][1] is None  # a label one run lacks
    assert _finding_cell(rows[0]["runs"][0]) == \
        "3 of 3 (0.44–1.00); 3 of 3 (0.44–1.00); 1.00 (1.00–1.00)"
    assert _finding_cell(rows[1]["runs"][1]) == \
        "0 of 34 (0.00–0.10); no call; 0.00 (0.00–0.00)"
    assert _finding_cell(None) == "not measured"
