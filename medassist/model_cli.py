"""`medassist train | eval | report`: the command line of the fusion model.

Cases and training samples: :mod:`medassist.model_data`; evaluation metrics:
:mod:`medassist.model_eval`; the report stage: :mod:`medassist.drafting`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medassist.defaults import DEFAULT_CHECKPOINT

# The report stage lives in medassist.drafting; DISCLAIMER, ModelCLIError and make_report are
# re-exported for callers, loaded on first use (PEP 562). drafting, model_data and model_eval
# load numpy: the commands import them when they run, not when the parser is built.
if TYPE_CHECKING:
    from medassist.drafting import DISCLAIMER as DISCLAIMER
    from medassist.drafting import ModelCLIError as ModelCLIError
    from medassist.drafting import make_report as make_report
    from medassist.model_data import CaseRecord

_FROM_DRAFTING = ("DISCLAIMER", "ModelCLIError", "make_report")



def __getattr__(name: str) -> object:
    if name not in _FROM_DRAFTING:
        raise AttributeError(f"module 'medassist.model_cli' has no attribute {name!r}")
    import medassist.drafting

    value = getattr(medassist.drafting, name)
    globals()[name] = value  # later lookups skip this function
    return value


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TrainConfig:
    """``configs/train/*.yaml`` (top-level key ``train``): data settings + optimiser."""

    model_config: str = "configs/model/demo.yaml"
    model_kind: str = "fusion"
    synth_config: str = "configs/synth/small.yaml"
    #: folder written by ``medassist synth``; empty = generate in process (fast path)
    data_dir: str = ""
    data_seed: int = 7
    train_cases: int = 256
    #: generated validation cases (split "val") for presence-temperature calibration; 0 = none
    #: (with ``val_dir``: at most this many of its cases; 0 = all)
    val_cases: int = 0
    #: folder of validation cases (the layout of ``data_dir``: ``medassist synth`` output or
    #: ``medassist dataset import``'s) for the calibration instead of generated ones
    val_dir: str = ""
    max_emr_tokens: int = 2048
    out: str = "runs/model"
    #: folder for generated cases (HU as int16 + label maps + JSON), keyed by generator
    #: config, seed, split, count and model grid; empty = no cache (regenerate each run)
    cache_dir: str = ""
    optim: dict[str, Any] = field(default_factory=dict)
    #: how the per-label decision thresholds are fitted on the validation cases
    #: (``multimodal.training.fit_thresholds``): "label_f1" (each label's best F1; a detector
    #: at chance then calls every case) or "micro_f1" (the best F1 of all calls together; a
    #: label whose calls lower it is never called)
    threshold_objective: str = "label_f1"
    #: a label whose presence AUROC on the validation cases is below this is never called,
    #: whatever the threshold objective would pick (a detector at chance whose calls raise the
    #: validation F1 does so by chance); 0 = off
    min_call_auroc: float = 0.0
    #: augmentation of the training cases (``multimodal.augment.AugmentConfig`` keys: p,
    #: zoom, min_kept, seed for the zoom; shift_p, shift_mm for an in-plane move); empty =
    #: none
    augment: dict[str, Any] = field(default_factory=dict)
    #: a checkpoint folder whose weights and vocabulary start the run (fine-tuning); its
    #: architecture must be the model config's, or the config may add modules (their
    #: parameters start fresh and are listed in meta.json); empty = random initialisation
    init_from: str = ""
    #: parameter-name prefixes that train (e.g. ["decoder.", "condition."]: the report
    #: decoder alone, every decision unchanged); empty = all
    trainable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from medassist.drafting import ModelCLIError
        from multimodal.training import THRESHOLD_OBJECTIVES

        if self.model_kind not in ("fusion", "late"):
            raise ModelCLIError("train.model_kind must be 'fusion' or 'late'")
        if self.threshold_objective not in THRESHOLD_OBJECTIVES:
            raise ModelCLIError(f"train.threshold_objective must be one of "
                                f"{list(THRESHOLD_OBJECTIVES)}, got {self.threshold_objective!r}")
        if not 0.0 <= self.min_call_auroc <= 1.0:
            raise ModelCLIError(f"train.min_call_auroc must be in [0, 1] (0: off), got "
                                f"{self.min_call_auroc}")
        if min(self.train_cases, self.max_emr_tokens) < 1 or self.val_cases < 0:
            raise ModelCLIError("train.train_cases and max_emr_tokens must be >= 1")
        self.augment_config()  # a bad augment section fails when the file is read

    def augment_config(self) -> Any:
        from medassist.drafting import ModelCLIError
        from multimodal.augment import AugmentConfig
        from multimodal.errors import ModelConfigError

        unknown = set(self.augment) - set(AugmentConfig.__dataclass_fields__)
        if unknown:
            raise ModelCLIError(f"train.augment: unknown keys {sorted(unknown)}")
        try:
            return AugmentConfig(**self.augment)
        except (TypeError, ModelConfigError) as exc:
            raise ModelCLIError(f"train.augment: {exc}") from exc

    def optim_config(self) -> Any:
        from medassist.drafting import ModelCLIError
        from multimodal.training import OptimConfig

        unknown = set(self.optim) - set(OptimConfig.__dataclass_fields__)
        if unknown:
            raise ModelCLIError(f"train.optim: unknown keys {sorted(unknown)}")
        try:
            oc = OptimConfig(**self.optim)
        except TypeError as exc:
            raise ModelCLIError(f"train.optim: {exc}") from exc
        if min(oc.steps, oc.batch_size, oc.grad_accum, oc.checkpoint_every, oc.log_every) < 1:
            raise ModelCLIError("train.optim counts must be >= 1")
        if oc.lr <= 0 or oc.weight_decay < 0 or not 0 <= oc.min_lr_ratio <= 1:
            raise ModelCLIError("train.optim: lr > 0, weight_decay >= 0, min_lr_ratio in [0, 1]")
        return oc


def load_train_config(path: str | Path) -> TrainConfig:
    import yaml

    from medassist.drafting import ModelCLIError

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelCLIError(f"cannot read {path}: {exc}") from exc
    body = raw.get("train", raw) if isinstance(raw, Mapping) else None
    if not isinstance(body, Mapping):
        raise ModelCLIError(f"{path}: expected a 'train' mapping")
    unknown = set(body) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ModelCLIError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        return TrainConfig(**dict(body))
    except TypeError as exc:
        raise ModelCLIError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- cases -> samples

# --------------------------------------------------------------------------- samples

def load_records(tc: TrainConfig, cfg: Any) -> list[CaseRecord]:
    from medassist.model_data import cached_synth_records, folder_records, synth_records

    if tc.data_dir:
        return list(folder_records(tc.data_dir, cfg))[: tc.train_cases]
    if tc.cache_dir:
        return cached_synth_records(tc.cache_dir, tc.synth_config, cfg, tc.data_seed,
                                    tc.train_cases)
    return list(synth_records(tc.synth_config, cfg, tc.data_seed, tc.train_cases))


def training_samples(tc: TrainConfig, cfg: Any, tok: Any,
                     records: list[CaseRecord] | Iterator[CaseRecord] | None
                     ) -> list[dict[str, Any]]:
    """Compact training samples of ``records`` (consumed: each record is dropped as its
    sample is built; an iterator, a folder's cases, is read one volume at a time), or with
    None of the case cache, one chunk of volumes at a time.  With
    ``train.augment`` each case is first zoomed and / or moved in-plane (:func:`augmented`)."""
    from medassist.model_data import compact, iter_cached_chunks, record_sample
    from multimodal.augment import RandShift, RandZoom

    aug = tc.augment_config()
    # only what is on: a shift-only run does not pass each volume through an idle zoom
    t = RandZoom(aug) if aug.zoom_active else None
    shift = RandShift(aug, cfg.ct.spacing_mm) if aug.shift_active else None
    samples: list[dict[str, Any]] = []

    def add(r: CaseRecord) -> None:
        if t is not None or shift is not None:
            r = augmented(r, t, aug.seed, tc.data_seed, len(samples), shift)
        samples.append(compact(record_sample(r, cfg, tok, tc.max_emr_tokens), cfg))

    if records is None:
        for chunk in iter_cached_chunks(tc.cache_dir, tc.synth_config, cfg, tc.data_seed,
                                        tc.train_cases):
            for r in chunk:
                add(r)
            del chunk
            release_free_heap()
        return samples
    if not isinstance(records, list):
        for i, r in enumerate(records, start=1):
            add(r)
            if i % 200 == 0:
                release_free_heap()
        release_free_heap()
        return samples
    records.reverse()
    while records:
        add(records.pop())
    release_free_heap()
    return samples


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``).  Building
    thousands of samples from transient multi-MB volumes (a case's HU, its zoomed copy)
    leaves them freed but held between the samples that stay, and glibc raises its mmap
    threshold after the first large block is freed, so later ones land in the heap too: the
    first 4,800-case zoom run was killed by the OOM killer while building them.  Trimming
    after every chunk keeps the allocation policy (a fixed mmap threshold, tried first, makes
    every large allocation of the later training steps an mmap: the zoom run with it trained
    its 4,800 steps in 2,509 s, stop 22's run in 1,413 s).
    False where the C library has no ``malloc_trim`` (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return False
    if fn is None:
        return False
    fn(0)
    return True


def augmented(r: CaseRecord, t: Any, seed: int, data_seed: int, index: int,
              shift: Any = None) -> CaseRecord:
    """``r`` zoomed by ``t`` (:class:`multimodal.augment.RandZoom`; None: no zoom, the same
    as one whose zoom is off, which draws nothing) with training case ``index``'s own
    generator: volume, label map and every finding's size (mm) scale together; the factor
    goes to ``meta["zoom"]`` (None: left as generated).  Then, with ``shift``
    (:class:`multimodal.augment.RandShift`), volume and label map move in-plane with the
    same generator's next draws; the move (rows, columns) goes to ``meta["shift"]`` (None:
    not moved).  Without ``shift`` no draw is added, so a zoom-only run draws as before."""
    import dataclasses

    from multimodal.augment import case_rng

    if r.hu is None:
        return r
    rng = case_rng(seed, data_seed, index)
    hu, lab, f = t(r.hu, r.label_map, rng) if t is not None else (r.hu, r.label_map, None)
    meta: dict[str, Any] = {**r.meta, "zoom": f}
    findings = r.findings if f is None else [
        {**x, "size_mm": float(x["size_mm"]) * f} if "size_mm" in x else x
        for x in r.findings]
    if f is None:
        hu, lab = r.hu, r.label_map
    if shift is not None:
        moved_hu, moved_lab, d = shift(hu, lab, rng)
        meta["shift"] = None if d is None else [int(d[0]), int(d[1])]
        if d is not None:
            hu, lab = moved_hu, moved_lab
    return dataclasses.replace(r, hu=hu, label_map=lab, findings=findings, meta=meta)


# --------------------------------------------------------------------------- train

def train(tc: TrainConfig, *, device: str = "cpu", resume: bool = False,
          stop_after: int | None = None, log: Any = None) -> dict[str, Any]:
    """Train; in processes started by torchrun (WORLD_SIZE > 1) data-parallel, each rank on
    its share of every step's global batch (docs/model.md, "Distributed training")."""
    from medassist.model_data import cached_synth_records
    from multimodal.config import load_model_config
    from multimodal.distributed import barrier, check_batch, env_world, process_group

    oc = tc.optim_config()
    check_batch(oc.batch_size, env_world()[0])  # before joining the process group
    with process_group(device) as (world, rank_device):
        if world.distributed and tc.cache_dir and not tc.data_dir:
            if world.is_main:  # fill the shared case cache once; the other ranks read it
                cfg = load_model_config(tc.model_config)
                load_records(tc, cfg)
                if tc.val_cases and not tc.val_dir:
                    cached_synth_records(tc.cache_dir, tc.synth_config, cfg, tc.data_seed,
                                         tc.val_cases, "val")
            barrier(world)
        return _train(tc, device=rank_device, resume=resume, stop_after=stop_after, log=log)


def _train(tc: TrainConfig, *, device: str, resume: bool, stop_after: int | None,
           log: Any) -> dict[str, Any]:
    from medassist.drafting import ModelCLIError
    from medassist.model_data import (
        build_tokenizer,
        cached_synth_records,
        finding_labels,
        folder_records,
        validation_samples,
    )
    from multimodal.checkpoint import VOCAB, build_model
    from multimodal.config import load_model_config
    from multimodal.tokenizer import WordTokenizer
    from multimodal.training import train_loop

    oc = tc.optim_config()
    cfg = load_model_config(tc.model_config)
    labels = finding_labels()
    if tuple(cfg.heads.labels) != labels:
        raise ModelCLIError(f"{tc.model_config}: heads.labels must equal the labels of "
                            f"configs/findings.yaml {list(labels)}")
    if tc.init_from:
        from multimodal.checkpoint import CONFIG, WEIGHTS

        lacking = [n for n in (WEIGHTS, CONFIG, VOCAB) if not (Path(tc.init_from) / n).is_file()]
        if lacking:
            raise ModelCLIError(f"train.init_from {tc.init_from}: cannot read its checkpoint "
                                f"(no {', '.join(lacking)}); give a folder written by "
                                "medassist train")
    t0 = time.perf_counter()
    out = Path(tc.out)
    finished = False
    if resume and (out / "meta.json").is_file():
        finished = int(json.loads((out / "meta.json").read_text())["step"]) >= oc.steps
    # a finished run resumed (e.g. to calibrate) needs no training data; from the case cache
    # the first pass reads the notes and reports only (the tokenizer's corpus), and the
    # samples are then built one chunk of volumes at a time
    chunked = bool(tc.cache_dir) and not tc.data_dir
    streamed = bool(tc.data_dir)  # a folder's cases: texts first, then one volume at a time
    if finished:
        records: list[CaseRecord] = []
    elif chunked:
        records = cached_synth_records(tc.cache_dir, tc.synth_config, cfg, tc.data_seed,
                                       tc.train_cases, images=False)
    elif streamed:
        records = list(itertools.islice(folder_records(tc.data_dir, cfg, images=False),
                                        tc.train_cases))
    else:
        records = load_records(tc, cfg)
    if resume:
        tok = WordTokenizer.load(out / VOCAB)
    elif tc.init_from:  # the weights' own vocabulary: their embeddings index it
        tok = WordTokenizer.load(Path(tc.init_from) / VOCAB)
    else:
        tok = build_tokenizer(records, cfg.emr.vocab_size)
    if streamed and not finished:
        samples = training_samples(tc, cfg, tok, itertools.islice(
            folder_records(tc.data_dir, cfg), tc.train_cases))
    else:
        samples = training_samples(tc, cfg, tok, None if chunked and not finished else records)
    torch_seed(oc.seed)
    model = build_model(cfg, tc.model_kind)
    fresh: list[str] = []
    if tc.init_from:  # a resumed run then loads its own latest checkpoint over these
        fresh = init_weights(model, tc.init_from, tc.model_kind)
    if tc.trainable:
        frozen = 0
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(x) for x in tc.trainable))
            frozen += int(not p.requires_grad)
        if frozen == sum(1 for _ in model.parameters()):
            raise ModelCLIError(f"train.trainable {tc.trainable} matches no parameter; give "
                                "parameter-name prefixes such as 'decoder.'")
    def calibration_samples() -> list[dict[str, Any]]:
        # built once training is done (train_loop calls it, on rank 0 only): the validation
        # cases' full-grid float32 volumes (16.8 MB a case with the demo config, 8 GB for
        # 480) are never held beside the training samples
        return validation_samples(cfg, tok, tc.max_emr_tokens, val_dir=tc.val_dir,
                                  val_cases=tc.val_cases, synth_config=tc.synth_config,
                                  seed=tc.data_seed, cache_dir=tc.cache_dir)

    t_data = time.perf_counter() - t0  # cases read or generated, samples built
    meta = {"model_config": tc.model_config, "data": {
        "source": tc.data_dir or f"medassist.synth fast path ({tc.synth_config})",
        "data_seed": tc.data_seed, "train_cases": tc.train_cases, "val_cases": tc.val_cases,
        **({"val_source": tc.val_dir} if tc.val_dir else {}),
        **({"augment": tc.augment} if tc.augment_config().active else {})}}
    if tc.init_from:
        from multimodal.checkpoint import WEIGHTS, sha256_file

        meta["init_from"] = {"checkpoint": tc.init_from,
                             "weights_sha256": sha256_file(Path(tc.init_from) / WEIGHTS),
                             **({"new_parameters": fresh} if fresh else {})}
    if tc.trainable:
        meta["trainable"] = list(tc.trainable)
    # handed over, not kept: train_loop lets go of the samples before the calibration's
    handover = [samples]
    del samples
    res = train_loop(model, cfg, tc.model_kind, tok, handover.pop(), oc, out, device=device,
                     resume=resume, stop_after=stop_after, log=log, extra_meta=meta,
                     calibration=calibration_samples if tc.val_dir or tc.val_cases else None,
                     threshold_objective=tc.threshold_objective,
                     min_call_auroc=tc.min_call_auroc)
    return {"out": str(out), "data_seconds": round(t_data, 2),
            "train_seconds": round(res["seconds"], 2),
            "cases_per_s": round(res["cases_per_s"], 3),
            "final": res["history"][-1] if res["history"] else None,
            "calibration": res.get("calibration"),
            "params": sum(p.numel() for p in model.parameters()),
            **{k: res[k] for k in ("world_size", "cases_this_rank", "rank_digests") if k in res}}


def init_weights(model: Any, folder: str | Path, kind: str) -> list[str]:
    """Load the weights of the checkpoint ``folder`` into ``model`` (built from the run's
    config); the checkpoint must be of the same kind and architecture, except that the run's
    config may add parameters to the checkpoint's (returned: they start fresh)."""
    from safetensors.torch import load_file

    from medassist.drafting import ModelCLIError
    from multimodal.checkpoint import CONFIG, WEIGHTS, build_model
    from multimodal.config import ModelConfig, from_mapping
    from multimodal.errors import MultimodalError

    src = Path(folder)
    try:
        raw = json.loads((src / CONFIG).read_text(encoding="utf-8"))
        state = load_file(str(src / WEIGHTS))
    except (OSError, ValueError) as exc:
        raise ModelCLIError(f"train.init_from {src}: cannot read its checkpoint ({exc}); "
                            "give a folder written by medassist train") from exc
    if str(raw.get("kind", "fusion")) != kind:
        raise ModelCLIError(f"train.init_from {src} is a {raw.get('kind')!r} checkpoint, the "
                            f"run trains {kind!r}")
    try:  # the parameters the checkpoint's own config has: the run's others start fresh
        own = set(build_model(from_mapping(ModelConfig, raw["model"]), kind).state_dict())
    except (KeyError, TypeError, MultimodalError) as exc:
        raise ModelCLIError(f"train.init_from {src}: bad config.json ({exc})") from exc
    new = set(model.state_dict()) - own
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelCLIError(f"train.init_from {src} does not fit the model config: "
                            f"{str(exc).splitlines()[0]}") from exc
    lacking = sorted(set(res.missing_keys) - new)
    if lacking or res.unexpected_keys:
        raise ModelCLIError(f"train.init_from {src} does not fit the model config: "
                            f"missing {lacking[:5]}, unexpected {sorted(res.unexpected_keys)[:5]}")
    return sorted(new)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


# --------------------------------------------------------------------------- eval

def cmd_eval(args: argparse.Namespace) -> int:
    from medassist.drafting import ModelCLIError
    from medassist.model_data import folder_records, record_sample
    from medassist.model_eval import evaluate
    from multimodal.checkpoint import load_checkpoint
    from multimodal.errors import ModelConfigError

    model, cfg, kind, tok, _meta = load_checkpoint(args.checkpoint)
    if args.int8:  # the same dynamic int8 as `report --int8`
        import torch

        model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8)
    over = {k: v for k, v in (("placement", args.placement),
                              ("placement_max_loss", args.placement_max_loss),
                              ("noise_max_index", args.noise_max_index)) if v is not None}
    if over:
        try:
            cfg = replace(cfg, ct=replace(cfg.ct, **over))
        except ModelConfigError as exc:
            raise ModelCLIError(f"--placement / --placement-max-loss / --noise-max-index: "
                                f"{exc}") from exc
    if args.image_pass is not None:
        cfg = replace(cfg, decoder=replace(cfg.decoder, image_pass=args.image_pass == "on"))
    if args.island_labels is not None:
        try:
            cfg = replace(cfg, heads=replace(cfg.heads, measure=replace(
                cfg.heads.measure, island_labels=tuple(args.island_labels))))
        except ModelConfigError as exc:
            raise ModelCLIError(f"--island-labels: {exc}") from exc
    if args.fluid_box is not None:
        cfg = replace(cfg, heads=replace(cfg.heads, measure=replace(
            cfg.heads.measure, fluid_box=args.fluid_box)))
    records = list(folder_records(args.data, cfg))
    samples = [record_sample(r, cfg, tok, with_report=False) for r in records]
    res = evaluate(model, cfg, samples, tok=tok, records=records)
    res["checkpoint"] = str(args.checkpoint)
    res["model_kind"] = kind
    res["int8"] = bool(args.int8)
    res["placement"] = cfg.ct.placement
    res["placement_max_loss"] = cfg.ct.placement_max_loss
    res["noise_max_index"] = cfg.ct.noise_max_index
    res["image_pass"] = cfg.decoder.image_pass
    res["island_labels"] = list(cfg.heads.measure.island_labels)
    res["fluid_box"] = cfg.heads.measure.fluid_box
    if args.json:
        print(json.dumps(res, indent=1, sort_keys=True))
    else:
        for k in ("full", "emr_removed", "ct_removed"):
            if k in res:
                r = res[k]
                size = "" if r.get("size_mae_mm_nodule_mass") is None else (
                    f" size MAE {r['size_mae_mm_nodule_mass']:.1f} mm (size head "
                    f"{r['size_mae_mm_nodule_mass_head']:.1f})")
                ci = r.get("ci95", {}).get("micro_f1")
                span = "" if ci is None else f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})"
                print(f"{k}: micro-F1 {r['micro_f1']:.3f}{span} macro-F1 "
                      f"{r['macro_f1']:.3f} ECE {r['ece']:.3f}{size}")
                if k == "full":
                    for line in per_finding_lines(r["per_finding"]):
                        print(f"  {line}")
                    loc = r.get("evidence_localisation", {}).get("all")
                    if loc and loc["tp"]:
                        print(f"  {evidence_line(loc)}")
    return 0


def per_finding_lines(per: dict[str, Any]) -> list[str]:
    """One line per finding of an eval's ``per_finding``: F1 (with its 95 % interval where
    the eval has it), TP / FP / FN, the recall's 95 % interval and, where it has false calls,
    the findings their cases have (``false_calls_with``)."""
    out = []
    for lab, v in per.items():
        ci = v.get("f1_ci95")
        line = f"{lab}: F1 {v['f1']:.2f}" + ("" if ci is None else
                                              f" (95 % CI {ci[0]:.2f}-{ci[1]:.2f})")
        line += f" (TP {v['tp']}, FP {v['fp']}, FN {v['fn']})"
        rci = v.get("recall_ci95")
        if rci is not None:
            line += f"; recall {v['tp']} of {v['tp'] + v['fn']} ({rci[0]:.2f}-{rci[1]:.2f})"
        with_ = v.get("false_calls_with") or {}
        if with_:
            line += "; false calls in cases with " + ", ".join(
                f"{other} {n}" for other, n in with_.items())
        out.append(line)
    return out


def evidence_line(loc: dict[str, Any]) -> str:
    """An eval's pooled ``evidence_localisation`` as one line."""
    return (f"evidence boxes: {loc['hit']} of {loc['tp']} true positives hold their finding; "
            f"median IoU {loc['box_iou']:.2f}, coverage {loc['coverage']:.2f}, "
            f"{loc['box_ml']:,.0f} mL")


# --------------------------------------------------------------------------- report

def cmd_report(args: argparse.Namespace) -> int:
    from medassist.drafting import ModelCLIError, make_report

    if args.db:  # through every pipeline stage, stored (idempotent: same inputs, same report)
        if args.min_lung_ml is not None:
            raise ModelCLIError("--min-lung-ml drafts a scan without lungs for review on the "
                                "command line only; drop --db")
        return _report_to_db(args)
    if args.emr:
        check_note_identity(Path(args.study), Path(args.emr))
    rep = make_report(args.study, args.emr, args.checkpoint, int8=args.int8,
                      device=args.device, min_lung_ml=args.min_lung_ml)
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        s = rep["sections"]
        print(f"[{rep['status']}] {rep['disclaimer']}\n\nINDICATION: {s['indication']}\n\n"
              f"TECHNIQUE: {s['technique']}\n\nFINDINGS:\n{s['findings']}\n\n"
              f"IMPRESSION:\n{s['impression']}")
    return 0


def check_note_identity(study: Path, emr: Path) -> None:
    """Refuse to draft ``study`` with a note whose MRN, accession, date of birth or sex
    contradicts its selected series' DICOM header (:func:`medassist.pipeline.
    identity_mismatches`; the stored route, ``--db``, refuses and audits in the pipeline).
    Names what differs, never a value."""
    from medassist.emr import read_note
    from medassist.errors import IdentityMismatchError
    from medassist.pipeline import identity_mismatches, identity_reason, select_series

    bad = identity_mismatches(select_series(study).instances, read_note(emr))
    if bad:
        raise IdentityMismatchError(
            f"{identity_reason(bad)}: the note {emr} does not describe the patient of the "
            f"study {study}; refusing to draft. Give this study's own note, or none")


def _report_to_db(args: argparse.Namespace) -> int:
    from medassist.errors import UsageError
    from medassist.pipeline import store_study
    from medassist.reports import get_report
    from medassist.storage.engine import make_engine, resolve_db_url, session_factory, unit_of_work
    from medassist.storage.migrate import upgrade

    if args.int8:
        raise UsageError("--int8 drafts are not stored (the stored draft names the fp32 "
                         "checkpoint); drop --int8 or --db")
    if args.device != "cpu":
        raise UsageError("--db drafts run on the CPU (the pipeline's own model); drop "
                         f"--device {args.device} or --db")
    engine = make_engine(resolve_db_url(args.db))
    try:
        upgrade(engine)
        with unit_of_work(session_factory(engine)) as s:
            st = store_study(s, Path(args.study), checkpoint=Path(args.checkpoint),
                             emr_path=Path(args.emr) if args.emr else None)
            report = get_report(s, st.report_id)
            out = {"report_id": st.report_id, "job_id": st.job_id, "created": st.created,
                   "status": str(report.status)}
    finally:
        engine.dispose()
    print(json.dumps(out) if args.json else
          f"report {out['report_id']} ({'stored' if st.created else 'already stored'}), "
          f"status {out['status']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from multimodal.distributed import env_world

    tc = load_train_config(args.config)
    if args.out:
        tc = replace(tc, out=args.out)
    if args.data_dir is not None:
        tc = replace(tc, data_dir=args.data_dir)
    if args.val_dir is not None:
        tc = replace(tc, val_dir=args.val_dir)
    res = train(tc, device=args.device, resume=args.resume, stop_after=args.stop_after,
                log=lambda line: print(line, file=sys.stderr, flush=True))
    if env_world()[0].is_main:  # under torchrun, rank 0 alone prints the summary
        print(json.dumps(res, indent=1, sort_keys=True))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``train``, ``eval`` and ``report`` on an argparse subparsers object."""
    p = sub.add_parser("train", help="train the fusion model (or the late-fusion baseline)")
    p.add_argument("--config", required=True, help="configs/train/<name>.yaml")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in out")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop at this step (same schedule as the full run; a checkpoint is "
                        "written there if STEP is a multiple of checkpoint_every)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="checkpoint folder (overrides the config's out)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="training cases: medassist synth or medassist dataset import output "
                        "(overrides the config's data_dir)")
    p.add_argument("--val-dir", default=None, metavar="DIR",
                   help="validation cases for the calibration, the same layout (overrides "
                        "the config's val_dir)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint on cases written by medassist synth "
                                    "or medassist dataset import")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--data", required=True)
    p.add_argument("--int8", action="store_true",
                   help="evaluate the dynamic int8 model (CPU), as `report --int8` runs it")
    p.add_argument("--placement", choices=("lungs", "centre"), default=None,
                   help="where the grid sits on each scan (overrides the checkpoint's "
                        "ct.placement; docs/model.md)")
    p.add_argument("--placement-max-loss", type=float, default=None, metavar="SHARE",
                   help="the share of the lungs a centred grid may leave out before it moves "
                        "(overrides the checkpoint's ct.placement_max_loss)")
    p.add_argument("--noise-max-index", type=float, default=None, metavar="HU",
                   help="smooth a scan noisier than this down to it before the model reads it "
                        "(overrides the checkpoint's ct.noise_max_index; 0: off; "
                        "multimodal/noise.py)")
    p.add_argument("--image-pass", choices=("on", "off"), default=None,
                   help="write the text, and the locations and sizes it states, from a pass "
                        "without the note (overrides the checkpoint's decoder.image_pass; "
                        "multimodal/image_pass.py)")
    p.add_argument("--island-labels", nargs="*", default=None, metavar="LABEL",
                   help="the labels also looked for on the whole CT where the head does not "
                        "call them (overrides the checkpoint's heads.measure.island_labels; "
                        "given alone: none; multimodal/islands.py), e.g. to score a "
                        "checkpoint trained without the setting like for like")
    p.add_argument("--fluid-box", choices=("band", "sac"), default=None,
                   help="the evidence box of a pericardial effusion found on the CT: the "
                        "fluid band's samples or the whole sac (overrides the checkpoint's "
                        "heads.measure.fluid_box; multimodal/pericardium.py)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("report", help="draft a report for one CT study (+ EMR)")
    p.add_argument("study", help="DICOM folder / file / zip")
    p.add_argument("--emr", default=None, help="EMR note (plain text)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantisation (CPU)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N (16 generated studies drafted equal on both in "
                        "bench/cuda_check.py; probabilities may differ in the 4th digit)")
    p.add_argument("--db", help="store the draft (every pipeline stage, idempotent) in this "
                   "database URL; prints the report id")
    p.add_argument("--min-lung-ml", type=float, default=None, metavar="ML",
                   help="refuse a scan with less aerated lung than this (default: the "
                        "checkpoint's ct.min_lung_ml, 300); 0 drafts any scan (nor is its "
                        "midline checked for a mediastinum)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (the lead wires :func:`add_parser` into medassist.cli)."""
    from medassist.drafting import ModelCLIError
    from multimodal.errors import MultimodalError

    ap = argparse.ArgumentParser(prog="medassist-model")
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    try:
        return int(args.func(args))
    except (ModelCLIError, MultimodalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
