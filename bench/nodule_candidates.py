"""Can a generated nodule be found as a candidate and told from the vessels by its shape?

The demo model's nodule detector is at chance, 10-20 mm nodules included; a crop probe
recognises a nodule it is pointed at (``bench/nodule_crop_probe.py``) and a Hessian blob
filter does not find them among the vessels (``bench/nodule_blobness.py``).  This bench tries
the classical two-stage route of computer-aided detection on the model grid:

1. Candidates: inside the lungs (air below -500 HU inside the body, holes filled slice by
   slice), the connected components (6-connected) of the voxels above a level (``--levels``:
   -400 HU finds solid nodules, -650 HU part-solid and ground glass ones as well; each level
   gives its own candidates).
2. Features per candidate (SimpleITK label statistics): voxel count, bounding-box extents,
   elongation, flatness, roundness, equivalent spherical diameter, highest and mean HU, the
   share of its one-voxel shell that is not lung (a candidate against the pleura or the
   mediastinum), its position in the chest, and the case's number of candidates at that level.
3. A small MLP on those features, trained on the candidates of ``--train-cases`` cached
   training cases (a candidate is positive where it covers a nodule's labelled voxels).

A case is called where its highest candidate logit reaches the threshold fitted on
``--val-cases`` cached validation cases (the best F1 among calls of ``--min-precision`` or
more: calls of precision p raise a micro-F1 F only where p > F / 2, so 0.5 keeps to calls
that raise any).

It prints, on the held-out folders (``--data``, written by ``medassist synth``), the case-level
AUROC of the highest candidate score for "the case has a nodule" (all nodules, and by the
case's largest nodule: below 6, 6-10, 10 mm or more, and solid 10 mm or more), where each
nodule's own candidate ranks among its case's (``rank_top1`` / ``rank_top3``: the share of
nodules whose candidate is the case's first / in its first three), and the share of nodules
that are a candidate at all, the calls (``calls``) and, with ``--eval-json`` (``medassist
eval --json`` of a checkpoint on the same folder), that checkpoint's findings micro-F1 with its
nodule calls replaced by these (``micro_f1``).  High case-level AUROC for 10 mm or more would
make candidates plus a classifier the route for a nodule head; chance would close it on this
grid.

    .venv/bin/python bench/nodule_candidates.py --data /tmp/runs/test_id_body/test
        [--eval-json EVAL.json] [--data ... --eval-json ...] [--train-cases 1200]
        [--val-cases 480] [--min-precision 0.5] [--cache runs/cache]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--levels -400 -650]

Needs the ``bench`` extra (SimpleITK).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import folder_records, iter_cached_chunks  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402

F32 = npt.NDArray[np.float32]
N_FEATURES = 17


def _sitk() -> Any:
    """SimpleITK (the ``bench`` extra; its API is untyped)."""
    import importlib

    return importlib.import_module("SimpleITK")


def lung_mask(hu: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """The lungs: air below -500 HU inside the body (the body's tissue closed in-plane, so a
    thin chest wall on a coarse grid still encloses them, and filled), holes (vessels,
    nodules) filled, slice by slice."""
    sitk = _sitk()
    out = np.zeros(hu.shape, bool)
    for k in range(hu.shape[0]):
        tissue = sitk.GetImageFromArray(np.ascontiguousarray(hu[k] >= -500, np.uint8))
        body = sitk.GetArrayFromImage(sitk.BinaryFillhole(
            sitk.BinaryMorphologicalClosing(tissue, [2, 2]))) > 0
        air = body & (hu[k] < -500)
        if air.any():
            img = sitk.GetImageFromArray(air.astype(np.uint8))
            out[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(img)) > 0
    return out


def candidates(hu: npt.NDArray[Any], lung: npt.NDArray[np.bool_], level: float,
               spacing: tuple[float, float, float], min_voxels: int
               ) -> tuple[npt.NDArray[np.int32], F32]:
    """Component map (Z, Y, X; 0 none) of the lung voxels above ``level`` in components of
    ``min_voxels`` or more, and the features (N, N_FEATURES) of components 1..N."""
    sitk = _sitk()
    dense = ((hu > level) & lung).astype(np.uint8)
    img = sitk.GetImageFromArray(dense)
    img.SetSpacing(spacing[::-1])
    cc_img = sitk.RelabelComponent(sitk.ConnectedComponent(img, False), min_voxels)
    cc = sitk.GetArrayFromImage(cc_img).astype(np.int32)
    dense = (cc > 0).astype(np.uint8)
    img = sitk.GetImageFromArray(dense)
    img.SetSpacing(spacing[::-1])
    n = int(cc.max())
    if n == 0:
        return cc, np.zeros((0, N_FEATURES), np.float32)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(cc_img)
    vals = sitk.GetImageFromArray(np.asarray(hu, np.float32))
    vals.CopyInformation(cc_img)
    inten = sitk.LabelIntensityStatisticsImageFilter()
    inten.Execute(cc_img, vals)
    # the share of each component's one-voxel shell outside the lung (pleura, mediastinum)
    shell = sitk.GetArrayFromImage(sitk.BinaryDilate(img, [1, 1, 1])) > 0
    shell &= dense == 0
    near = sitk.GetArrayFromImage(sitk.GrayscaleDilate(cc_img, [1, 1, 1]))
    idx = near[shell]
    outside = np.bincount(idx, weights=~lung[shell], minlength=n + 1)
    total = np.bincount(idx, minlength=n + 1)
    zc, yc, xc = (np.asarray(hu.shape, np.float32) - 1) / 2
    feats = np.zeros((n, N_FEATURES), np.float32)
    for lab in range(1, n + 1):
        *_, dx, dy, dz = shape.GetBoundingBox(lab)
        cx, cy, cz = cc_img.TransformPhysicalPointToContinuousIndex(shape.GetCentroid(lab))
        feats[lab - 1] = (
            np.log(shape.GetNumberOfPixels(lab)), dz, dy, dx,
            shape.GetElongation(lab), shape.GetFlatness(lab), shape.GetRoundness(lab),
            shape.GetEquivalentSphericalRadius(lab), inten.GetMaximum(lab), inten.GetMean(lab),
            outside[lab] / max(total[lab], 1), (cz - zc) / zc, (cy - yc) / yc,
            abs(cx - xc) / xc, np.log(n), level / 1000.0, dz / max(dy, dx, 1))
    return cc, feats


def case_candidates(hu: npt.NDArray[Any], label_map: npt.NDArray[Any] | None,
                    findings: list[dict[str, Any]], levels: list[float],
                    spacing: tuple[float, float, float], min_voxels: int = 2
                    ) -> tuple[F32, npt.NDArray[np.int64], dict[int, list[int]]]:
    """Features of every candidate of one case at every level, the nodule each covers (its
    index in ``findings``, -1 none), and per nodule the candidates that cover it."""
    hu = np.asarray(hu, np.float32)
    lung = lung_mask(hu)
    xs, ys = [], []
    covers: dict[int, list[int]] = {}
    nods = {i: f for i, f in enumerate(findings) if f["kind"] == "lung_nodule"}
    off = 0
    for level in levels:
        cc, feats = candidates(hu, lung, level, spacing, min_voxels)
        y = np.full(len(feats), -1, np.int64)
        if label_map is not None:
            for i, f in nods.items():
                hit = np.unique(cc[label_map == f["label_value"]])
                for c in hit[hit > 0]:
                    y[c - 1] = i
                    covers.setdefault(i, []).append(off + int(c) - 1)
        xs.append(feats)
        ys.append(y)
        off += len(feats)
    return np.concatenate(xs), np.concatenate(ys), covers


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 64), nn.GELU(), nn.Linear(64, 64),
                                 nn.GELU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, N_FEATURES) -> (N,) logits
        out: torch.Tensor = self.net(x).squeeze(-1)
        return out


def train_scorer(x: F32, y: npt.NDArray[np.bool_], epochs: int, seed: int
                 ) -> tuple[Scorer, F32, F32]:
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y.astype(np.float32))
    model = Scorer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    pos_weight = torch.tensor(float((~y).sum() / max(y.sum(), 1)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.split(torch.randperm(len(xt), generator=gen), 1024):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(xt[idx]), yt[idx], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return model.eval(), mu, sd


def score_cases(records: Any, model: Scorer, mu: F32, sd: F32, levels: list[float],
                spacing: tuple[float, float, float], min_voxels: int) -> dict[str, Any]:
    """Per case: the highest candidate logit, the largest nodule (mm; 0 none), whether a
    solid one of 10 mm or more; per nodule, its candidate's rank among the case's others;
    every candidate's logit and whether it covers a nodule."""
    out: dict[str, Any] = {"score": [], "max_mm": [], "solid10": [], "ranks": [], "found": 0,
                           "nodules": 0, "cand_score": [], "cand_y": []}
    for r in records:
        if r.hu is None:
            continue
        x, y, covers = case_candidates(r.hu, r.label_map, r.findings, levels, spacing,
                                       min_voxels)
        with torch.no_grad():
            s = model(torch.from_numpy((x - mu) / sd)).numpy() if len(x) else np.zeros(0)
        out["cand_score"].append(s)
        out["cand_y"].append(y >= 0)
        nods = [(i, f) for i, f in enumerate(r.findings) if f["kind"] == "lung_nodule"]
        out["score"].append(float(s.max()) if len(s) else -1e9)
        out["max_mm"].append(max((float(f["size_mm"]) for _, f in nods), default=0.0))
        out["solid10"].append(any(float(f["size_mm"]) >= 10 and f["attributes"].get(
            "composition") == "solid" for _, f in nods))
        for i, _f in nods:
            out["nodules"] += 1
            if i in covers:
                out["found"] += 1
                own = np.zeros(len(s), bool)
                own[covers[i]] = True
                # rank among the case's other candidates (not this nodule's own)
                out["ranks"].append(int((s[~own] > float(s[own].max())).sum()))
    return out


def fit_threshold(score: F32, truth: npt.NDArray[np.bool_], min_precision: float) -> float:
    """The case threshold of the best F1 among those whose calls have at least
    ``min_precision`` (calls of precision p raise a micro-F1 F only where p > F / 2); +inf
    (never call) where none has."""
    best, thr = 0.0, float("inf")
    for t in np.unique(score):
        call = score >= t
        tp = int((call & truth).sum())
        if tp == 0 or tp / int(call.sum()) < min_precision:
            continue
        f1 = 2 * tp / (int(call.sum()) + int(truth.sum()))
        if f1 > best:
            best, thr = f1, float(t)
    return thr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--eval-json", action="append", default=[],
                    help="medassist eval --json of a checkpoint on each --data folder, in "
                         "order: the micro-F1 with its nodule calls replaced by these")
    ap.add_argument("--train-cases", type=int, default=1200)
    ap.add_argument("--val-cases", type=int, default=480)
    ap.add_argument("--min-precision", type=float, default=0.5)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    ap.add_argument("--model-config", default=str(REPO / "configs/model/demo_laa.yaml"))
    ap.add_argument("--levels", type=float, nargs="+", default=[-400.0, -650.0])
    ap.add_argument("--min-voxels", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.eval_json and len(a.eval_json) != len(a.data):
        ap.error("give one --eval-json per --data folder, or none")
    torch.set_num_threads(2)
    cfg = load_model_config(a.model_config)
    sz, sy, sx = (float(s) for s in cfg.ct.spacing_mm)
    spacing = (sz, sy, sx)
    t0 = time.perf_counter()
    xs, ys = [], []
    for chunk in iter_cached_chunks(a.cache, a.synth_config, cfg, 7, a.train_cases, "train"):
        for r in chunk:
            if r.hu is None:
                continue
            x, y, _ = case_candidates(r.hu, r.label_map, r.findings, a.levels, spacing,
                                      a.min_voxels)
            xs.append(x)
            ys.append(y >= 0)
    x_tr, y_tr = np.concatenate(xs), np.concatenate(ys)
    t_feat = time.perf_counter() - t0
    model, mu, sd = train_scorer(x_tr, y_tr, a.epochs, a.seed)
    val = score_cases((r for chunk in iter_cached_chunks(
        a.cache, a.synth_config, cfg, 7, a.val_cases, "val") for r in chunk),
        model, mu, sd, a.levels, spacing, a.min_voxels)
    v_score, v_truth = np.asarray(val["score"]), np.asarray(val["max_mm"]) > 0
    thr = fit_threshold(v_score, v_truth, a.min_precision)
    au = auroc(v_score, v_truth)
    res: dict[str, Any] = {"train_cases": a.train_cases, "levels": a.levels,
                           "train_candidates": len(x_tr),
                           "train_positive": int(y_tr.sum()),
                           "seconds_features": round(t_feat, 1),
                           "val_cases": len(v_score),
                           "val_case_auroc": None if au is None else round(au, 3),
                           # None: no threshold reaches the precision (never called)
                           "threshold_logit": None if np.isinf(thr) else round(thr, 3),
                           "seconds_total": 0.0, "splits": {}}
    for k, data in enumerate(a.data):
        got = score_cases(folder_records(data, cfg), model, mu, sd, a.levels, spacing,
                          a.min_voxels)
        score, mx = np.asarray(got["score"]), np.asarray(got["max_mm"])
        neg = mx == 0
        split: dict[str, Any] = {"cases": len(score), "nodules": got["nodules"],
                                 "candidate_share": round(got["found"] / max(got["nodules"],
                                                                              1), 3)}
        bins = {"all": mx > 0, "lt6": (mx > 0) & (mx < 6), "6to10": (mx >= 6) & (mx < 10),
                "ge10": mx >= 10, "solid_ge10": np.asarray(got["solid10"])}
        for name, pos in bins.items():
            au = auroc(score[pos | neg], pos[pos | neg])
            split[f"case_auroc_{name}"] = None if au is None else round(au, 3)
            split[f"n_{name}"] = int(pos.sum())
        rk = np.asarray(got["ranks"])
        split["rank_top1"] = round(float((rk == 0).mean()), 3) if len(rk) else None
        split["rank_top3"] = round(float((rk < 3).mean()), 3) if len(rk) else None
        au = auroc(np.concatenate(got["cand_score"]), np.concatenate(got["cand_y"]))
        split["candidate_auroc"] = None if au is None else round(au, 3)
        split["candidates_per_case"] = round(
            sum(len(c) for c in got["cand_score"]) / max(len(score), 1), 1)
        call, truth = score >= thr, mx > 0
        tp, fp = int((call & truth).sum()), int((call & ~truth).sum())
        split["calls"] = {"tp": tp, "fp": fp, "fn": int((~call & truth).sum()),
                          "tp_ge10": int((call & (mx >= 10)).sum())}
        if a.eval_json:
            per = json.loads(Path(a.eval_json[k]).read_text(encoding="utf-8"))["full"][
                "per_finding"]
            c = {key: sum(int(v[key]) for v in per.values()) for key in ("tp", "fp", "fn")}
            nod = per["lung_nodule"]
            before = 2 * c["tp"] / max(2 * c["tp"] + c["fp"] + c["fn"], 1)
            c2 = {key: c[key] - int(nod[key]) + split["calls"][key] for key in c}
            after = 2 * c2["tp"] / max(2 * c2["tp"] + c2["fp"] + c2["fn"], 1)
            split["micro_f1"] = {"checkpoint": round(before, 3),
                                 "nodule_calls_replaced": round(after, 3)}
        res["splits"][data] = split
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
