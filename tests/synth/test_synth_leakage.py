"""Leakage: trivial global image statistics must not predict the finding labels.

A logistic regression (numpy, L2, standardised features) on mean HU, SD and a coarse
10-bin histogram of the fast-path volume, 5-fold cross-validated.  Chance is a balanced
accuracy of 0.5; the bound asserted is 0.65.
"""

from __future__ import annotations

import numpy as np
import pytest

from medassist.synth.case import make_case
from medassist.synth.config import FastPathConfig, SynthConfig
from medassist.synth.fast_path import render_tensor
from medassist.synth.findings import Vocabulary

N_CASES = 160
BOUND = 0.65
COARSE = FastPathConfig(shape=(40, 64, 64), spacing_mm=(8.0, 7.0, 7.0))


def features(hu: np.ndarray) -> np.ndarray:
    h, _ = np.histogram(hu, bins=10, range=(-1024.0, 1200.0))
    return np.concatenate([[hu.mean(), hu.std()], h / hu.size])


def logistic_cv_balanced_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5,
                                  l2: float = 1e-2, steps: int = 400) -> float:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    pred = np.zeros(len(y), dtype=bool)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        xt = np.column_stack([np.ones(len(train)), (x[train] - mu) / sd])
        xv = np.column_stack([np.ones(len(test)), (x[test] - mu) / sd])
        w = np.zeros(xt.shape[1])
        pos = y[train].mean()
        sw = np.where(y[train], 0.5 / max(pos, 1e-9), 0.5 / max(1 - pos, 1e-9))  # balanced
        for _ in range(steps):
            p = 1 / (1 + np.exp(-xt @ w))
            g = xt.T @ (sw * (p - y[train])) / len(train) + l2 * w
            w -= 0.5 * g
        pred[test] = xv @ w > 0
    tpr = np.mean(pred[y]) if y.any() else 0.0
    tnr = np.mean(~pred[~y]) if (~y).any() else 0.0
    return float((tpr + tnr) / 2)


@pytest.fixture(scope="module")
def dataset(small_cfg: SynthConfig, vocab: Vocabulary) -> tuple[np.ndarray, list[set[str]]]:
    xs, labels = [], []
    for i in range(N_CASES):
        case = make_case(small_cfg, vocab, 77, i, "train")
        hu, _lab = render_tensor(case, COARSE)
        xs.append(features(hu))
        labels.append({f.kind for f in case.findings})
    return np.asarray(xs), labels


def test_classifier_detects_a_planted_global_cue(
        dataset: tuple[np.ndarray, list[set[str]]]) -> None:
    """The probe works: shifting mean HU by +40 for abnormal cases is detected."""
    x, labels = dataset
    y = np.asarray([bool(s) for s in labels])
    x2 = x.copy()
    x2[y, 0] += 40.0
    assert logistic_cv_balanced_accuracy(x2, y) > 0.8


def test_global_statistics_do_not_predict_findings(
        dataset: tuple[np.ndarray, list[set[str]]]) -> None:
    x, labels = dataset
    y_any = np.asarray([bool(s) for s in labels])
    scores = {"any": logistic_cv_balanced_accuracy(x, y_any)}
    for kind in sorted(set().union(*labels)):
        y = np.asarray([kind in s for s in labels])
        if y.sum() >= 12:
            scores[kind] = logistic_cv_balanced_accuracy(x, y)
    print("leakage balanced accuracy (chance 0.5):", {k: round(v, 3) for k, v in scores.items()})
    assert all(v <= BOUND for v in scores.values()), scores
