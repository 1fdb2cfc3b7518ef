"""Collate per-case samples (numpy) into a :class:`ModelInput` batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from multimodal.errors import ShapeError
from multimodal.outputs import ModelInput
from multimodal.tokenizer import PAD


def _pad(seqs: Sequence[Any], value: int) -> tuple[Tensor, Tensor]:
    n = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = True
    return ids, mask


def ct_float(ct: Any) -> Tensor:
    """A sample's windowed CT as float32; uint8 (training storage, ``value * 255`` rounded)
    is scaled back to [0, 1]."""
    a = np.asarray(ct)
    if a.dtype == np.uint8:
        return torch.from_numpy(a).float().div_(255.0)
    return torch.as_tensor(a, dtype=torch.float32)


def collate(samples: Sequence[Mapping[str, Any]]) -> tuple[ModelInput, Tensor | None]:
    """Samples hold ``ct`` ((C, Z, Y, X) float array in [0, 1], or uint8 scaled by 255, or
    None), ``emr_ids`` ((T,) ints or None), optional ``ct_quality`` and ``report_ids``
    ((L,) BOS ... EOS).

    Returns the batch and the next-token report targets (B, L - 1) (or None).  A missing
    modality's slot is filled only to keep the batch rectangular and is masked by
    ``*_present``; samples are not modified."""
    if not samples:
        raise ShapeError("cannot collate an empty batch")
    ct_present = torch.tensor([s.get("ct") is not None for s in samples])
    emr_present = torch.tensor([s.get("emr_ids") is not None and len(s["emr_ids"]) > 0
                                for s in samples])
    ct = None
    if bool(ct_present.any()):
        shape = next(np.shape(s["ct"]) for s in samples if s.get("ct") is not None)
        vols = []
        for s in samples:
            if s.get("ct") is None:
                vols.append(torch.zeros(shape, dtype=torch.float32))
            else:
                if np.shape(s["ct"]) != shape:
                    raise ShapeError("CT volumes of a batch must share one shape")
                vols.append(ct_float(s["ct"]))
        ct = torch.stack(vols)
    emr_ids = emr_mask = None
    if bool(emr_present.any()):
        emr_ids, emr_mask = _pad([s.get("emr_ids") if p else () for s, p in
                                  zip(samples, emr_present.tolist(), strict=True)], PAD)
    quality = None
    if any(s.get("ct_quality") is not None for s in samples):
        quality = torch.tensor([float(s.get("ct_quality") or 0.0) for s in samples])
    rep_in = rep_tgt = None
    if all(s.get("report_ids") is not None for s in samples):
        full, _m = _pad([s["report_ids"] for s in samples], PAD)
        rep_in, rep_tgt = full[:, :-1], full[:, 1:]
    cond_p = cond_s = cond_z = cond_l = None
    if rep_in is not None and all("present" in s and "laterality" in s for s in samples):
        # decoder conditioning, teacher-forced with the true findings (training)
        cond_p = torch.as_tensor(np.stack([np.asarray(s["present"]) for s in samples]) > 0.5)
        cond_s = torch.as_tensor(np.stack([np.asarray(s["laterality"], np.int64)
                                           for s in samples])).clamp_min(0)
        if all("size" in s for s in samples):  # the true sizes (NaN where none -> 0)
            cond_z = torch.as_tensor(np.nan_to_num(np.stack(
                [np.asarray(s["size"], np.float32) for s in samples]), nan=0.0))
        if all("location" in s for s in samples):  # the true locations (-100 where none)
            cond_l = torch.as_tensor(np.stack([np.asarray(s["location"], np.int64)
                                               for s in samples])).clamp_min(0)
    context = None
    if all("context" in s for s in samples):  # EMR context classes (-100: unknown)
        context = torch.as_tensor(np.stack([np.asarray(s["context"], np.int64)
                                            for s in samples]))
    batch = ModelInput(ct_present=ct_present, emr_present=emr_present, ct=ct, emr_ids=emr_ids,
                       emr_mask=emr_mask, ct_quality=quality, report_ids=rep_in,
                       cond_present=cond_p, cond_side=cond_s, cond_size=cond_z,
                       cond_location=cond_l,
                       context=context)
    return batch, rep_tgt
