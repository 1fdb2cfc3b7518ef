"""Samples, the training loop (AdamW, warmup + cosine, grad accumulation, bf16 autocast on
CUDA only, safetensors checkpoints, exact resume) and batched prediction."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from multimodal.batching import collate
from multimodal.calibration import fit_bilateral_cutoffs
from multimodal.checkpoint import load_checkpoint, load_optimizer, save_checkpoint
from multimodal.config import ModelConfig
from multimodal.dense import dense_targets
from multimodal.distributed import (
    check_batch,
    current_world,
    from_rank0,
    mean_over_ranks,
    no_sync,
    rank_digests,
    shard,
    step_seed,
    wrap,
)
from multimodal.errors import CheckpointError, ModelConfigError, ShapeError
from multimodal.losses import Targets, compute_losses
from multimodal.noise import match_noise
from multimodal.outputs import ModelOutput
from multimodal.tokenizer import WordTokenizer
from multimodal.transforms import ct_channels


@dataclass(frozen=True)
class OptimConfig:
    seed: int = 0
    steps: int = 400
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    clip_norm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    #: mixed precision on CUDA: "bf16" (autocast) or "off" (fp32); the CPU always trains fp32
    amp: str = "bf16"

    def __post_init__(self) -> None:
        if self.amp not in ("bf16", "off"):
            raise ModelConfigError(f"optim.amp must be 'bf16' or 'off', got {self.amp!r}")


def lr_at(step: int, oc: OptimConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr``."""
    if step < oc.warmup_steps:
        return oc.lr * (step + 1) / oc.warmup_steps
    t = (step - oc.warmup_steps) / max(1, oc.steps - oc.warmup_steps)
    return oc.lr * (oc.min_lr_ratio + (1 - oc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_sample(cfg: ModelConfig, tok: WordTokenizer, *, hu: npt.NDArray[Any] | None,
                emr: str | None, report: str | None = None,
                label_map: npt.NDArray[Any] | None = None,
                label_values: Mapping[str, Sequence[int]] | None = None,
                targets: Mapping[str, npt.NDArray[Any]] | None = None,
                ct_quality: float | None = None, max_emr_tokens: int | None = None,
                noise: float | None = None) -> dict[str, Any]:
    """One sample dict (numpy).  ``hu`` is (Z, Y, X) on the model grid; ``label_map`` the same
    grid with finding values, ``label_values[label]`` the values belonging to each label;
    ``noise`` the scan's :func:`multimodal.noise.noise_index` where the caller measured it."""
    s: dict[str, Any] = {"ct": None, "emr_ids": None, "emr_spans": None}
    if hu is not None:
        if tuple(hu.shape) != cfg.ct.grid_shape:
            raise ShapeError(f"hu must be {cfg.ct.grid_shape}, got {hu.shape}")
        if cfg.ct.noise_max_index > 0:  # a scan noisier than the training cases, smoothed
            hu = match_noise(hu, cfg.ct.noise_max_index, index=noise)[0]
        s["ct"] = ct_channels(hu, cfg.ct.windows, cfg.ct.spacing_mm, cfg.ct.blob_scales_mm,
                              cfg.ct.blob_full_scale)
        s["ct_quality"] = 1.0 if ct_quality is None else ct_quality
    if emr:
        n = min(max_emr_tokens or cfg.emr.max_tokens, cfg.emr.max_tokens)
        ids, spans = tok.encode(emr, max_tokens=n)
        if ids:
            s["emr_ids"] = np.asarray(ids[:n], np.int64)
            s["emr_spans"] = np.asarray(spans[:n], np.int64).reshape(-1, 2)
    if report is not None:
        ids, _ = tok.encode(report, bos=True, split_decimals=True)  # "0.58": 0 . 58
        s["report_ids"] = np.asarray([*ids[:cfg.decoder.max_len - 1], 3], np.int64)  # + EOS
    if targets is not None:
        s.update({k: np.asarray(v) for k, v in targets.items()})
    if label_map is not None and label_values is not None:
        pz, py, px = cfg.ct.patch
        gz, gy, gx = cfg.ct.patch_grid
        maps, masks = [], []
        for lab in cfg.heads.labels:
            mask = np.isin(label_map, list(label_values.get(lab, ())))
            masks.append(mask)
            m = mask.astype(np.float32)
            maps.append(m.reshape(gz, pz, gy, py, gx, px).mean((1, 3, 5)).reshape(-1))
        s["loc_map"] = np.stack(maps)  # (F, N)
        if cfg.ct.dense_hidden:
            s["dense_map"] = dense_targets(np.stack(masks), cfg.ct.dense_block)  # (F, z, y, x)
    return s


def collate_targets(samples: Sequence[Mapping[str, Any]], rep_tgt: torch.Tensor | None
                    ) -> Targets:
    def stack(k: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([np.asarray(s[k]) for s in samples]))

    loc = stack("loc_map").float() if all("loc_map" in s for s in samples) else None
    ctx = stack("context").long() if all("context" in s for s in samples) else None
    dense = stack("dense_map") if all("dense_map" in s for s in samples) else None
    return Targets(present=stack("present").float(), laterality=stack("laterality").long(),
                   location=stack("location").long(), size_mm=stack("size").float(),
                   loc_map=loc, report_targets=rep_tgt, context=ctx, dense_map=dense)


def to_device(x: Any, dev: torch.device) -> Any:
    from dataclasses import fields, is_dataclass, replace

    if isinstance(x, torch.Tensor):
        return x.to(dev)
    if is_dataclass(x) and not isinstance(x, type):
        return replace(x, **{f.name: to_device(getattr(x, f.name), dev) for f in fields(x)})
    return x


def step_indices(step: int, micro: int, oc: OptimConfig, n: int) -> list[int]:
    """Sample indices of micro-batch ``micro`` of ``step``: epoch-wise permutations seeded by
    (seed, epoch), so the order depends only on the step (exact resume)."""
    g0 = (step * oc.grad_accum + micro) * oc.batch_size
    out = []
    for g in range(g0, g0 + oc.batch_size):
        perm = np.random.default_rng([oc.seed, g // n]).permutation(n)
        out.append(int(perm[g % n]))
    return out


class WithLoss(nn.Module):
    """The model and its losses in one forward: DistributedDataParallel then looks for unused
    parameters from the losses (parameters feeding only outputs without a loss term, e.g. the
    EMR attribution, or routed experts no token chose, get no gradient)."""

    def __init__(self, model: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, x: Any, tg: Targets) -> dict[str, torch.Tensor]:
        return compute_losses(self.model(x), tg, self.cfg)


def train_loop(model: nn.Module, cfg: ModelConfig, kind: str, tok: WordTokenizer,
               samples: Sequence[Mapping[str, Any]], oc: OptimConfig, out: str | Path, *,
               device: str = "cpu", resume: bool = False, stop_after: int | None = None,
               log: Callable[[str], None] | None = None, extra_meta: Mapping[str, Any] = {},
               calibration: (Sequence[Mapping[str, Any]]
                             | Callable[[], Sequence[Mapping[str, Any]]] | None) = None,
               threshold_objective: str = "label_f1", min_call_auroc: float = 0.0
               ) -> dict[str, Any]:
    """Train; checkpoints go to ``out`` (latest only).  ``stop_after`` stops early (tests).
    With ``calibration`` samples, the presence temperature is fitted on them once training is
    complete and the final checkpoint is written again with it (thresholds by
    ``threshold_objective``, :func:`fit_thresholds`; labels below ``min_call_auroc`` never
    called, :func:`fit_temperature`).  ``calibration`` may be a function that returns them:
    it is called only then, on rank 0, after this function has let go of ``samples``, so
    the training and the calibration samples are never held together (where the caller
    keeps no reference to ``samples`` either).

    In a joined process group (torchrun, :mod:`multimodal.distributed`) every rank trains a
    DistributedDataParallel copy on its share of each step's global batch; rank 0 alone logs,
    calibrates and writes checkpoints."""
    world = current_world()
    check_batch(oc.batch_size, world)
    dev = torch.device(device)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=oc.lr, weight_decay=oc.weight_decay)
    start = 0
    if resume:
        ck = Path(out)
        if not (ck / "meta.json").is_file():
            raise CheckpointError(f"nothing to resume in {ck}")
        m2, _c, _k, _t, meta = load_checkpoint(ck)
        model.load_state_dict(m2.state_dict())
        load_optimizer(ck, opt)
        start = int(meta["step"])
    net = wrap(WithLoss(model, cfg), dev) if world.distributed else WithLoss(model, cfg)
    dist_meta = {"world_size": world.size} if world.distributed else {}
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    n_seen = 0
    amp = dev.type == "cuda" and oc.amp == "bf16"
    for step in range(start, oc.steps):
        if stop_after is not None and step >= stop_after:
            break
        torch.manual_seed(step_seed(oc.seed, step, world))
        net.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, oc)
        opt.zero_grad(set_to_none=True)
        agg: dict[str, float] = {}
        for micro in range(oc.grad_accum):
            idx = shard(step_indices(step, micro, oc, len(samples)), world)
            batch = [samples[i] for i in idx]
            x, rep = collate(batch)
            tg = collate_targets(batch, rep)
            x, tg = to_device(x, dev), to_device(tg, dev)
            with no_sync(net, micro < oc.grad_accum - 1):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    losses: dict[str, torch.Tensor] = net(x, tg)
                (losses["total"] / oc.grad_accum).backward()  # type: ignore[no-untyped-call]
            for k, v in losses.items():
                agg[k] = agg.get(k, 0.0) + float(v.detach()) / oc.grad_accum
            n_seen += len(batch)
        if oc.clip_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), oc.clip_norm)
        opt.step()
        if world.distributed:  # the mean of the ranks' losses is what the step optimised
            agg = mean_over_ranks(agg, dev)
        agg["step"] = step + 1
        history.append(agg)
        if log is not None and world.is_main and ((step + 1) % oc.log_every == 0
                                                  or step == start):
            log(json.dumps({k: round(v, 4) for k, v in agg.items()}))
        if world.is_main and ((step + 1) % oc.checkpoint_every == 0
                              or step + 1 in (oc.steps, stop_after)):
            meta = {"step": step + 1, "seed": oc.seed, "optim": asdict(oc), **extra_meta,
                    **dist_meta}
            save_checkpoint(out, model, cfg, kind, tok, meta, opt)
    dt = time.perf_counter() - t0
    res: dict[str, Any] = {"history": history, "seconds": dt,
                           "cases_per_s": n_seen * world.size / dt if dt > 0 else 0.0}
    done = stop_after is None or stop_after >= oc.steps
    fit_on: Sequence[Mapping[str, Any]] | None = None
    go = False
    if done and calibration is not None:
        if callable(calibration):
            del samples  # the training samples go before the calibration's are built
            release_freed_memory()
            fit_on = calibration() if world.is_main else None
            go = bool(fit_on)
            if world.distributed:  # whether rank 0 has any, on every rank
                go = bool(from_rank0(model, go))
        else:
            fit_on, go = calibration, bool(calibration)
    if go:
        # rank 0 fits on the raw module (no collectives); the others take its buffers
        cal = (fit_temperature(model, fit_on or [], threshold_objective=threshold_objective,
                               min_call_auroc=min_call_auroc)
               if world.is_main else {})
        if world.distributed:
            cal = from_rank0(model, cal)
        if world.is_main:
            meta = {"step": oc.steps, "seed": oc.seed, "optim": asdict(oc), **extra_meta,
                    **dist_meta, "calibration": cal}
            save_checkpoint(out, model, cfg, kind, tok, meta, opt)
        res["calibration"] = cal
    if world.distributed:
        res.update(dist_meta, cases_this_rank=n_seen,
                   rank_digests=rank_digests(model))
    return res


def release_freed_memory() -> None:
    """Collect garbage and hand the heap's freed pages back to the system (glibc's
    ``malloc_trim``; a no-op elsewhere). Arrays of a few MB come from the heap once larger
    ones have raised glibc's mmap threshold, and their pages stay with the process when
    freed: without this the training samples' memory was not there for the calibration's."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


#: threshold objectives of :func:`fit_thresholds`
THRESHOLD_OBJECTIVES = ("label_f1", "micro_f1")
#: the threshold of a label whose calls lower the micro-F1 at every candidate: above any
#: probability, so the label is never called (its probability is still reported)
NEVER = 2.0


def _middle(cands: Sequence[float], tied: Collection[float]) -> float:
    """The candidate in the middle (in log-odds) of the run of consecutive ``tied`` candidates
    around the one nearest 0.5: the threshold furthest from the cases on either side of the
    gap, not the gap's edge (ties: nearer 0.5, then the higher)."""
    anchor = max(tied, key=lambda t: (-abs(t - 0.5), t))
    i = j = cands.index(anchor)
    while i > 0 and cands[i - 1] in tied:
        i -= 1
    while j < len(cands) - 1 and cands[j + 1] in tied:
        j += 1
    run = cands[i: j + 1]
    mid = (math.log(run[0] / (1 - run[0])) + math.log(run[-1] / (1 - run[-1]))) / 2
    return min(run, key=lambda t: (abs(math.log(t / (1 - t)) - mid), abs(t - 0.5), -t))


def fit_thresholds(prob: torch.Tensor, y: torch.Tensor, lo: float = 0.2, hi: float = 0.8,
                   min_pos: int = 3, objective: str = "label_f1",
                   never: Collection[int] = ()) -> torch.Tensor:
    """(N, F) calibrated probabilities and 0/1 truth -> (F,) thresholds.

    ``label_f1``: per label, the one of 0.20, 0.25, ..., 0.80 with the best F1 on these cases.
    Ties: the middle, in log-odds, of the run of tied thresholds around the one nearest 0.5
    (:func:`_middle`): where the positives and negatives of these cases are apart, the
    threshold halfway across the gap, so a case a little past the cases seen here (another
    scanner) still falls on its side; the gap's edge next to 0.5 was taken until stop 39.
    (A grid down to 0.05 was tried then: it fitted pneumothorax to one validation case at
    0.06 and called one on the real A0001 at p 0.12; docs/model.md "Twenty-ninth round".)
    For a detector at chance that is "call every case" (F1 2p / (1 + p) at prevalence p beats
    any threshold that calls fewer).
    ``micro_f1``: starting there, coordinate ascent on the micro-F1 over all labels, each
    label's candidates being the same grid plus :data:`NEVER` (not called), until no label
    changes (ties: :data:`NEVER`, then the middle as above): a label is called only where its
    calls raise the F1 of all calls together (what ``medassist eval`` reports as micro-F1),
    and one that calls nothing on these cases at any threshold is never called.  With
    calibrated probabilities that is about calling where p >= F1 / 2 (Lipton et al., 2014),
    so a detector at chance whose prevalence is below half the F1 drops out.
    Labels with fewer than ``min_pos`` positives keep 0.5 (too few to fit) under both; the
    label indices in ``never`` are set to :data:`NEVER` and not fitted (a detector the caller
    found at chance: calls that raise the F1 on these cases would do so by chance)."""
    if objective not in THRESHOLD_OBJECTIVES:
        raise ValueError(f"threshold objective must be one of {THRESHOLD_OBJECTIVES}, "
                         f"got {objective!r}")
    if prob.ndim != 2 or prob.shape != y.shape:
        raise ValueError(f"prob and y must be the same (N, F) shape, got {tuple(prob.shape)} "
                         f"and {tuple(y.shape)}")
    if not 0 < lo < hi < 1:
        raise ValueError(f"threshold grid must have 0 < lo < hi < 1, got {lo}, {hi}")
    cands = [round(lo + 0.05 * i, 2) for i in range(round((hi - lo) / 0.05) + 1)]
    out = torch.full((prob.shape[1],), 0.5)
    truth = y > 0.5
    fitted = [f for f in range(prob.shape[1])
              if int(truth[:, f].sum()) >= min_pos and f not in never]
    for f in never:
        out[f] = NEVER
    for f in fitted:
        scores = {}
        for t in cands:
            pred = prob[:, f] >= t
            den = int(pred.sum()) + int(truth[:, f].sum())
            scores[t] = 2 * int((pred & truth[:, f]).sum()) / den if den else 0.0
        best = max(scores.values())
        out[f] = _middle(cands, [t for t, v in scores.items() if v == best])
    if objective == "label_f1":
        return out

    def micro(thr: torch.Tensor) -> float:
        pred = prob >= thr
        tp = int((pred & truth).sum())
        den = int(pred.sum()) + int(truth.sum())
        return 2 * tp / den if den else 0.0

    # a label's pick is a function of the others' thresholds (the best micro-F1, then
    # NEVER, then the middle of the tied run); the passes stop when no label moves, or after
    # 20 (a move between thresholds of equal micro-F1 need not raise it, so unlike a strict
    # ascent this is not guaranteed to settle; on the shipped validation cases it does)
    for _ in range(20):
        changed = False
        for f in fitted:
            cur = float(out[f])
            scores = {}
            for t in (*cands, NEVER):
                trial = out.clone()
                trial[f] = t
                scores[t] = micro(trial)
            best = max(scores.values())
            tied = [t for t, v in scores.items() if v == best]
            pick = NEVER if NEVER in tied else _middle(cands, tied)
            if abs(pick - cur) > 1e-6:
                out[f] = pick
                changed = True
        if not changed:
            break
    return out


@torch.no_grad()
def fit_temperature(model: nn.Module, samples: Sequence[Mapping[str, Any]],
                    grid: Sequence[float] = tuple(0.25 * 1.02 ** i for i in range(141)),
                    min_pos: int = 3, threshold_objective: str = "label_f1",
                    min_call_auroc: float = 0.0) -> dict[str, Any]:
    """Temperature scaling of the presence logits (grid search of the NLL on ``samples``,
    cases with CT only), then per-label decision thresholds (:func:`fit_thresholds` with
    ``threshold_objective``), the
    per-label prevalence (the probability stated without CT) and presence AUROC (NaN with
    fewer than ``min_pos`` positives: what ``heads.min_reliable_auroc`` reads); sets
    ``model.findings.temperature``, ``.thresholds``, ``.prior`` and ``.val_auroc``.  A label
    whose presence AUROC on ``samples`` is below ``min_call_auroc`` is never called (0: off).
    With
    the side read off MIL evidence (``heads.side_from_evidence``, ``evidence_side_labels``)
    also ``.bilateral_min`` (:func:`multimodal.calibration.fit_bilateral_cutoffs`)."""
    import torch.nn.functional as F

    from multimodal.metrics import auroc

    head = model.get_submodule("findings")
    temp = head.get_buffer("temperature")
    old = float(temp)
    outs = predict(model, samples)
    logits = torch.cat([o.presence_logits for o in outs]) * old  # (N, F) raw logits
    y = torch.as_tensor(np.stack([np.asarray(s["present"]) for s in samples])).float()
    has_ct = torch.tensor([s.get("ct") is not None for s in samples])
    logits, y = logits[has_ct], y[has_ct]

    def nll(t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(logits / t, y))

    best = min(grid, key=nll)
    temp.fill_(best)
    prob = torch.sigmoid(logits).numpy()

    def label_aucs(kept: torch.Tensor) -> list[float | None]:
        out: list[float | None] = []
        for f in range(y.shape[1]):
            k = kept[:, f] > 0
            yf = y[k, f]
            out.append(auroc(prob[k.numpy(), f], yf.numpy() > 0.5)
                       if int(yf.sum()) >= min_pos and int((1 - yf).sum()) >= min_pos else None)
        return out

    aucs_all = label_aucs(torch.ones_like(y))
    cfg = getattr(model, "cfg", None)
    # a label that presence_min_mm leaves out of the losses where it is too small to see is
    # judged (min_call_auroc, heads.min_reliable_auroc) on the cases the losses kept
    aucs = aucs_all
    if cfg is not None and cfg.presence_min_mm:
        from multimodal.losses import presence_weight

        size = torch.as_tensor(np.stack([np.asarray(s["size"], np.float32) for s in samples]))
        aucs = label_aucs(presence_weight(cfg, y, size[has_ct]))
    never = [f for f, a in enumerate(aucs) if a is not None and a < min_call_auroc]
    thr = fit_thresholds(torch.sigmoid(logits / best), y, min_pos=min_pos,
                         objective=threshold_objective, never=never)
    head.get_buffer("thresholds").copy_(thr)
    prior = y.mean(0)
    head.get_buffer("prior").copy_(prior)
    head.get_buffer("val_auroc").copy_(torch.tensor(
        [float("nan") if a is None else a for a in aucs]))
    sides: dict[str, Any] | None = None
    if cfg is not None and cfg.heads.mil and cfg.heads.side_from_evidence \
            and cfg.heads.evidence_side_labels:
        cut, sides = fit_bilateral_cutoffs(outs, samples, cfg.heads, cfg.ct, min_pos)
        head.get_buffer("bilateral_min").copy_(cut)
    return {"temperature": round(best, 4), "nll_before": round(nll(old), 5),
            "nll_after": round(nll(best), 5), "n_cases": int(has_ct.sum()),
            "threshold_objective": threshold_objective,
            **({"min_call_auroc": min_call_auroc} if min_call_auroc > 0 else {}),
            "thresholds": [round(float(t), 3) for t in thr],
            "prior": [round(float(p), 4) for p in prior],
            "val_auroc": [None if a is None else round(a, 4) for a in aucs],
            **({"val_auroc_all": [None if a is None else round(a, 4) for a in aucs_all]}
               if aucs is not aucs_all else {}),
            **({"bilateral": sides} if sides is not None else {})}


@torch.no_grad()
def predict(model: nn.Module, samples: Sequence[Mapping[str, Any]], batch_size: int = 8,
            drop: str | None = None) -> list[ModelOutput]:
    """Eval-mode outputs per batch; ``drop`` = "ct" / "emr" removes that modality."""
    model.eval()
    outs = []
    for i in range(0, len(samples), batch_size):
        chunk = []
        for s in samples[i: i + batch_size]:
            d = dict(s)
            d.pop("report_ids", None)
            if drop == "ct":
                d["ct"] = None
            elif drop == "emr":
                d["emr_ids"] = None
            chunk.append(d)
        x, _ = collate(chunk)
        outs.append(model(x))
    return outs
