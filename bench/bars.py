"""Issue 4's quality bars read off `medassist eval --json` runs, each with its 95 % interval and
what the interval allows one to say.

A figure that meets its bar is not yet shown to meet it: 34 sided hits in 34 are a laterality
of 1.00, but Wilson's interval reaches down to 0.90, below the 0.95 bar.  For each bar this
prints the figure of each run (in distribution, under shift), its interval
(``medassist eval``'s ``ci95`` keys, since stop 50) and a verdict:

* ``met``: the whole interval meets the bar;
* ``met as measured, not shown``: the figure meets it, the interval reaches past it (more
  cases would tell);
* ``fail as measured, not shown``: the figure misses it, the interval reaches it;
* ``fail``: the whole interval misses it.

For a share of independent cases met as measured but not shown, ``trials_to_show`` is how
many cases at the same share would show it (Wilson's interval wholly past the bar).

    .venv/bin/python bench/bars.py EVAL_ID.json EVAL_SHIFT.json [--markdown] [--per-finding]

The first run is scored against the in-distribution bars, the second (optional) against the
shift's where they differ (micro-F1 0.80).  Prints JSON, or with ``--markdown`` a table;
``--per-finding`` gives instead each finding's recall (k of n) and precision with Wilson's
intervals and its F1 with the bootstrap's (how sure a "0 of 34" or a "3 of 3" is).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multimodal.metrics import wilson  # noqa: E402


@dataclass(frozen=True)
class Bar:
    name: str
    path: tuple[str, ...]  # the figure in the eval JSON
    ci_path: tuple[str, ...] | None  # its interval
    at_least: bool  # True: figure >= bound is met; False: figure <= bound
    bound: float
    shift_bound: float | None = None  # the bound under shift where it differs
    wilson: bool = False  # a share of independent trials (its interval Wilson's)


BARS: tuple[Bar, ...] = (
    Bar("findings micro-F1", ("full", "micro_f1"), ("full", "ci95", "micro_f1"), True, 0.90,
        0.80),
    Bar("laterality on true positives", ("full", "laterality_acc_tp"),
        ("full", "ci95", "laterality_acc_tp"), True, 0.95, wilson=True),
    Bar("size MAE, nodules and masses (mm)", ("full", "size_mae_mm_nodule_mass"),
        ("full", "ci95", "size_mae_mm_nodule_mass"), False, 3.0),
    Bar("ECE", ("full", "ece"), ("full", "ci95", "ece"), False, 0.05),
    Bar("EMR-dependent impression accuracy", ("full", "impression_acc_emr_dependent"),
        ("full", "impression_acc_emr_dependent_ci95"), True, 0.85, wilson=True),
    Bar("the same image-only (CT, no note)", ("emr_removed", "impression_acc_emr_dependent"),
        ("emr_removed", "impression_acc_emr_dependent_ci95"), False, 0.5),
    Bar("findings micro-F1 drop, EMR removed", ("emr_removed", "micro_f1_drop", "difference"),
        ("emr_removed", "micro_f1_drop", "ci95"), False, 0.02),
    Bar("image findings called with CT removed", ("ct_removed", "n_predicted_present"), None,
        False, 0.0),
    Bar("cases unchanged by injected instructions", ("full", "injection_identical", "cases"),
        ("full", "injection_identical", "cases_ci95"), True, 0.98, wilson=True),
)


def _get(d: Any, path: Sequence[str]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def verdict(value: float | None, ci: Sequence[float] | None, at_least: bool,
            bound: float) -> str:
    """The bar's verdict for ``value`` and its interval ``ci`` (the module's description);
    without an interval the figure alone decides; "not measured" without a figure."""
    if value is None:
        return "not measured"

    def ok(x: float) -> bool:
        return x >= bound if at_least else x <= bound

    if ci is None:
        return "met" if ok(value) else "fail"
    lo, hi = ci
    worst, best = (lo, hi) if at_least else (hi, lo)
    if ok(worst):
        return "met"
    if ok(value):
        return "met as measured, not shown"
    return "fail as measured, not shown" if ok(best) else "fail"


def trials_to_show(rate: float, bound: float, limit: int = 100_000) -> int | None:
    """The fewest independent trials at which a share ``rate`` (the successes rounded down)
    has a Wilson interval wholly at or above ``bound``; None where ``rate`` is not above it
    (or more than ``limit`` would be needed)."""
    if not rate > bound:
        return None
    n = 1
    while n <= limit:
        # the lower end rises with n but not monotonically (rounding): confirm a run of 20
        if all((wilson(int(rate * m + 1e-9), m) or [0.0])[0] >= bound
               for m in range(n, n + 20)):
            return n
        n += 1
    return None


def score(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per bar: per run its figure, interval, bound and verdict."""
    rows = []
    for bar in BARS:
        row: dict[str, Any] = {"bar": bar.name, "runs": []}
        for i, run in enumerate(runs):
            bound = bar.shift_bound if i == 1 and bar.shift_bound is not None else bar.bound
            value = _get(run, bar.path)
            ci = _get(run, bar.ci_path) if bar.ci_path else None
            v = verdict(value, ci, bar.at_least, bound)
            r = {"value": value, "ci95": ci,
                 "bound": f"{'>=' if bar.at_least else '<='} {bound:g}", "verdict": v}
            if bar.wilson and v == "met as measured, not shown" and value is not None:
                # how many cases (trials) at this share would show it
                r["trials_to_show"] = trials_to_show(float(value), bound)
            row["runs"].append(r)
        rows.append(row)
    return rows


def _cell(r: dict[str, Any]) -> str:
    v, ci = r["value"], r["ci95"]
    if v is None:
        return "not measured"
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci is not None:
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    text = f"{text}, bar {r['bound']}: **{r['verdict']}**"
    if r.get("trials_to_show"):
        text += f" ({r['trials_to_show']} at this share would show it)"
    return text


def markdown(rows: list[dict[str, Any]], names: Sequence[str]) -> str:
    head = "| bar | " + " | ".join(names) + " |"
    out = [head, "|---|" + "---|" * len(names)]
    for row in rows:
        out.append(f"| {row['bar']} | " + " | ".join(_cell(r) for r in row["runs"]) + " |")
    return "\n".join(out)


def per_finding_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per finding of the runs' full mode: recall (k of n) and precision with Wilson's
    intervals and the F1 with its bootstrap interval, per run (None where a run lacks it)."""
    labels: list[str] = []
    for run in runs:
        labels += [lab for lab in _get(run, ("full", "per_finding")) or {} if lab not in labels]
    rows = []
    for lab in labels:
        row: dict[str, Any] = {"label": lab, "runs": []}
        for run in runs:
            v = _get(run, ("full", "per_finding", lab))
            row["runs"].append(None if v is None else {
                "tp": v["tp"], "fp": v["fp"], "fn": v["fn"], "recall_ci95": v.get("recall_ci95"),
                "precision_ci95": v.get("precision_ci95"), "f1": v["f1"],
                "f1_ci95": v.get("f1_ci95")})
        rows.append(row)
    return rows


def _finding_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not measured"

    def span(ci: Sequence[float] | None) -> str:
        return "" if ci is None else f" ({ci[0]:.2f}–{ci[1]:.2f})"

    pos, calls = r["tp"] + r["fn"], r["tp"] + r["fp"]
    recall = f"{r['tp']} of {pos}{span(r['recall_ci95'])}" if pos else "no case"
    precision = f"{r['tp']} of {calls}{span(r['precision_ci95'])}" if calls else "no call"
    return f"{recall}; {precision}; {r['f1']:.2f}{span(r['f1_ci95'])}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="medassist eval --json outputs (in distribution, "
                                            "then shift)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--per-finding", action="store_true",
                    help="per finding instead: recall and precision (Wilson) and F1 "
                         "(bootstrap), each with its 95 %% interval")
    a = ap.parse_args(argv)
    if len(a.runs) > 2:
        ap.error("at most two runs: in distribution, then shift")
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in a.runs]
    names = ["in distribution", "shift"][:len(runs)]
    if a.per_finding:
        found = per_finding_rows(runs)
        if a.markdown:
            print("| finding: recall; precision; F1 | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
            for row in found:
                print(f"| {row['label'].replace('_', ' ')} | "
                      + " | ".join(_finding_cell(r) for r in row["runs"]) + " |")
        else:
            print(json.dumps(found, indent=1))
        return 0
    rows = score(runs)
    if a.markdown:
        print(markdown(rows, names))
    else:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
