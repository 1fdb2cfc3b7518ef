"""Cases in model terms: generated (fast tensor path, cached) or read from a folder written by
``medassist synth``; their finding targets and the training samples built from them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medassist.drafting import ModelCLIError, load_study

FIXED_LOCATIONS = {"pleural_effusion": "pleural space", "pneumothorax": "pleural space",
                   "emphysema": "upper lobes", "pericardial_effusion": "pericardium",
                   "cardiomegaly": "heart", "liver_lesion": "liver", "rib_fracture": "rib"}


def finding_labels(path: str | Path | None = None) -> tuple[str, ...]:
    """The finding labels of ``path`` (default: the source tree's ``configs/findings.yaml``,
    whatever the working directory)."""
    import yaml

    from medassist.defaults import DEFAULT_FINDINGS

    path = DEFAULT_FINDINGS if path is None else path
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return tuple(str(k) for k in raw["findings"])


@dataclass
class CaseRecord:
    """One case in model terms (independent of where it came from)."""

    case_id: str
    hu: npt.NDArray[Any] | None  # (Z, Y, X) HU on the model grid (float32, or int16 cached)
    label_map: npt.NDArray[np.uint8] | None  # (Z, Y, X) finding index + 1 (0 = none)
    findings: list[dict[str, Any]]  # truth.json "findings" entries
    emr: str | None
    report_text: str
    meta: dict[str, Any] = field(default_factory=dict)


def location_of(f: Mapping[str, Any]) -> str:
    a = f.get("attributes", {})
    if f["kind"] in ("lung_nodule", "lung_mass", "consolidation"):
        return str(a.get("lobe", "other"))
    if f["kind"] == "mediastinal_lymphadenopathy":
        return str(a.get("station", "other"))
    return FIXED_LOCATIONS.get(str(f["kind"]), "other")


def label_targets(findings: Sequence[Mapping[str, Any]], labels: Sequence[str],
                  locations: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
    """Per-label presence, laterality, location and size (largest finding of the type).

    What a finding lists in ``unstated`` (``side``, ``location``, ``size``: a report-derived
    finding whose report did not say, :mod:`medassist.dataset`) gets no target (-100, NaN)."""
    from multimodal.config import LATERALITY

    n = len(labels)
    present = np.zeros(n, np.float32)
    lat = np.full(n, -100, np.int64)
    loc = np.full(n, -100, np.int64)
    size = np.full(n, np.nan, np.float32)
    for li, lab in enumerate(labels):
        fs = [f for f in findings if f["kind"] == lab]
        if not fs:
            continue
        present[li] = 1.0
        sides = {str(f.get("attributes", {}).get("side", "")) for f in fs}
        if "bilateral" in sides or {"left", "right"} <= sides:
            side = "bilateral"
        elif "left" in sides:
            side = "left"
        elif "right" in sides:
            side = "right"
        else:
            side = "none"
        if not all("side" in f.get("unstated", ()) for f in fs):
            lat[li] = LATERALITY.index(side)
        big = max(fs, key=lambda f: -1.0 if f.get("size_mm") is None else float(f["size_mm"]))
        if "location" not in big.get("unstated", ()):
            name = location_of(big)
            loc[li] = locations.index(name) if name in locations else locations.index(
                "other") if "other" in locations else 0
        if big.get("size_mm") is not None:
            size[li] = float(big["size_mm"])
    return {"present": present, "laterality": lat, "location": loc, "size": size}


def report_target_text(report_text: str) -> str:
    """The decoder writes the Findings and Impression sections (of a signed medassist
    report, the Findings' prose without the block of the reviewer's decisions,
    :mod:`medassist.review`)."""
    from medassist.review import BLOCK

    m = re.search(r"FINDINGS:\s*(.*?)\s*IMPRESSION:\s*(.*)", report_text, re.S)
    if not m:
        return report_text.strip()
    findings = m.group(1).partition(BLOCK)[0]
    return f"findings: {findings.strip()} impression: {m.group(2).strip()}"


def synth_records(synth_config: str, model_cfg: Any, seed: int, n: int, split: str = "train",
                  shift: bool = False, start: int = 0) -> Iterator[CaseRecord]:
    """Cases of the generator rendered by its fast tensor path onto the model grid, placed as
    the model's CT stem places it on a DICOM scan (``ct.placement``)."""
    from medassist.synth.case import make_case
    from medassist.synth.config import FastPathConfig, load_config
    from medassist.synth.fast_path import render_tensor
    from medassist.synth.findings import load_vocabulary

    cfg = load_config(synth_config)
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    fp = FastPathConfig(shape=model_cfg.ct.grid_shape, spacing_mm=model_cfg.ct.spacing_mm,
                        pad_hu=model_cfg.ct.pad_hu, placement=model_cfg.ct.placement,
                        placement_max_loss=model_cfg.ct.placement_max_loss)
    for i in range(start, start + n):
        case = make_case(cfg, vocab, seed, i, split, shift)
        hu, lab = render_tensor(case, fp)
        yield CaseRecord(case_id=f"{split}/{case.case_id}", hu=hu, label_map=lab,
                         findings=[f.to_json(case.anatomy) for f in case.findings],
                         emr=case.emr.text, report_text=case.report.text,
                         meta={"emr_kind": case.emr.kind,
                               "impression": case.report.to_json()["impression"]})


def folder_records(data: str | Path, model_cfg: Any, images: bool = True
                   ) -> Iterator[CaseRecord]:
    """Cases written by ``medassist synth`` or ``medassist dataset import`` (DICOM read with
    dicom_io, resampled), one at a time; ``images=False`` reads their text alone (``hu`` and
    ``label_map`` None: the tokenizer's corpus without reading a volume)."""
    from medassist.synth.writer import read_labels

    root = Path(data)
    truths = sorted(root.rglob("truth.json"))
    if not truths:
        raise ModelCLIError(f"no truth.json under {root}")
    for tp in truths:
        case = tp.parent
        truth = json.loads(tp.read_text(encoding="utf-8"))
        hu = lab = None
        if images:
            # a case of medassist dataset import may link a study kept as a zip file
            dicom = case / "dicom" if (case / "dicom").exists() or not (
                case / "dicom.zip").is_file() else case / "dicom.zip"
            study = load_study(dicom, model_cfg)
            hu = study.hu
            if (case / "labels.npy.gz").is_file():
                lab = study.resample_labels(read_labels(case / "labels.npy.gz"))
        yield CaseRecord(case_id=str(case.relative_to(root)), hu=hu, label_map=lab,
                         findings=list(truth["findings"]),
                         emr=(case / "emr.txt").read_text(encoding="utf-8")
                         if (case / "emr.txt").is_file() else None,
                         report_text=(case / "report.txt").read_text(encoding="utf-8"),
                         meta={"emr_kind": truth["emr"]["kind"],
                               "impression": truth["report"]["impression"]})


def build_tokenizer(records: Sequence[CaseRecord], max_size: int) -> Any:
    from multimodal.tokenizer import WordTokenizer

    reports = [report_target_text(r.report_text) for r in records]
    corpus = [r.emr or "" for r in records] + reports
    # the reports' own case of their words: the draft writes the decoder's text with it
    return WordTokenizer.build(corpus, max_size=max_size, cased_from=reports)


def context_targets(impression: Sequence[Mapping[str, Any]], context: Any
                    ) -> npt.NDArray[np.int64]:
    """The EMR context class of each slot of ``context`` (:class:`ContextConfig`): the class
    named by an impression code of the reference report (the generator's rules: known
    primary, fever and leukocytosis, heart failure...), -100 where none is (the slot's
    finding is absent)."""
    codes = {str(i["code"]) for i in impression}
    out = np.full(len(context.labels), -100, np.int64)
    for k, classes in enumerate(context.classes):
        hits = [j for j, c in enumerate(classes) if c in codes]
        if hits:
            out[k] = max(hits)
    return out


def record_sample(r: CaseRecord, cfg: Any, tok: Any, max_emr_tokens: int | None = None,
                  with_report: bool = True) -> dict[str, Any]:
    from multimodal.training import make_sample

    values: dict[str, list[int]] = {}
    for f in r.findings:
        values.setdefault(str(f["kind"]), []).append(int(f["label_value"]))
    targets = label_targets(r.findings, cfg.heads.labels, cfg.heads.locations)
    if cfg.context.labels and "impression" in r.meta:
        targets["context"] = context_targets(r.meta["impression"], cfg.context)
    return make_sample(
        cfg, tok, hu=r.hu, emr=r.emr,
        report=report_target_text(r.report_text) if with_report else None,
        label_map=r.label_map, label_values=values, targets=targets,
        max_emr_tokens=max_emr_tokens)


CACHE_CHUNK = 200


def cached_synth_records(cache_dir: str | Path, synth_config: str, model_cfg: Any, seed: int,
                         n: int, split: str = "train", shift: bool = False,
                         images: bool = True) -> list[CaseRecord]:
    """:func:`synth_records`, stored in ``cache_dir`` in chunks of :data:`CACHE_CHUNK` cases
    on first use (the same cases, HU rounded to int16 and returned as int16).  With
    ``images`` False the records carry no HU or label map (notes, reports and findings only:
    the cache is filled, but nothing large is kept)."""
    return [r for chunk in iter_cached_chunks(cache_dir, synth_config, model_cfg, seed, n,
                                              split, shift, images) for r in chunk]


def validation_samples(cfg: Any, tok: Any, max_emr_tokens: int, *, val_dir: str = "",
                       val_cases: int = 0, synth_config: str = "", seed: int = 7,
                       cache_dir: str = "") -> list[dict[str, Any]]:
    """The calibration samples of ``medassist train`` and ``medassist calibrate``: the cases
    of ``val_dir`` (at most ``val_cases``; 0 = all), else ``val_cases`` generated ``val``
    cases of ``synth_config`` (cached under ``cache_dir`` where given); none without
    either."""
    import itertools

    if val_dir:
        records: Iterator[CaseRecord] | list[CaseRecord] = itertools.islice(
            folder_records(val_dir, cfg), val_cases or None)
    elif val_cases:
        records = cached_synth_records(cache_dir, synth_config, cfg, seed, val_cases, "val") \
            if cache_dir else synth_records(synth_config, cfg, seed, val_cases, split="val")
    else:
        return []
    return [record_sample(r, cfg, tok, max_emr_tokens, with_report=False) for r in records]


def iter_cached_chunks(cache_dir: str | Path, synth_config: str, model_cfg: Any, seed: int,
                       n: int, split: str = "train", shift: bool = False,
                       images: bool = True) -> Iterator[list[CaseRecord]]:
    """The cases of :func:`cached_synth_records`, one chunk at a time (a consumer that keeps
    only what it derives from a chunk holds one chunk's volumes at most)."""
    for start in range(0, n, CACHE_CHUNK):
        yield _cached_chunk(cache_dir, synth_config, model_cfg, seed, start,
                            min(CACHE_CHUNK, n - start), split, shift, images)


def _cached_chunk(cache_dir: str | Path, synth_config: str, model_cfg: Any, seed: int,
                  start: int, n: int, split: str, shift: bool, images: bool = True
                  ) -> list[CaseRecord]:
    import hashlib

    key_parts = [Path(synth_config).read_text(encoding="utf-8"), seed, split, shift,
                 model_cfg.ct.grid_shape, model_cfg.ct.spacing_mm, model_cfg.ct.pad_hu]
    if model_cfg.ct.placement != "centre":  # the grid may move on a longer scan
        key_parts += [model_cfg.ct.placement, model_cfg.ct.placement_max_loss]
    key = json.dumps(key_parts)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{split}-{digest}-{start:06d}-{n}.npz"
    if not path.is_file():
        recs = list(synth_records(synth_config, model_cfg, seed, n, split, shift, start))
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = [{"case_id": r.case_id, "findings": r.findings, "emr": r.emr,
                 "report_text": r.report_text, "meta": r.meta} for r in recs]
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hu=np.stack([np.round(np.asarray(r.hu)).astype(np.int16) for r in recs]),
                 lab=np.stack([np.asarray(r.label_map, np.uint8) for r in recs]),
                 meta=np.asarray(json.dumps(meta)))
        tmp.replace(path)
    with np.load(path) as z:  # members are read on access: no volumes without ``images``
        meta = json.loads(str(z["meta"]))
        hu, lab = (z["hu"], z["lab"]) if images else (None, None)
        return [CaseRecord(case_id=m["case_id"], hu=None if hu is None else hu[i],
                           label_map=None if lab is None else lab[i], findings=m["findings"],
                           emr=m["emr"], report_text=m["report_text"], meta=m["meta"])
                for i, m in enumerate(meta)]


def compact(sample: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """Training samples keep the windowed CT (values in [0, 1]) as uint8, value * 255 rounded
    (a quarter of the float32 memory; a step of 1/255 of each window: about 6 HU in the lung
    window); collate restores float32.  With ``cfg`` whose CT stem pre-pools, the pooled
    volume is stored (:class:`multimodal.transforms.BlockPool`; the stem accepts it as is)."""
    if sample.get("ct") is not None:
        ct = np.asarray(sample["ct"], dtype=np.float32)
        if cfg is not None and cfg.ct.pooled:
            from multimodal.transforms import BlockPool

            ct = BlockPool(cfg.ct.pre_pool, cfg.ct.pool_stats)(ct)
        sample["ct"] = np.rint(np.clip(ct, 0.0, 1.0) * 255.0).astype(np.uint8)
    return sample
