"""Frozen, validated configuration dataclasses of the fusion model (YAML in configs/model/)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from multimodal.errors import ModelConfigError

LATERALITY: tuple[str, ...] = ("none", "left", "right", "bilateral")


def _pos(name: str, *values: float) -> None:
    if any(v <= 0 for v in values):
        raise ModelConfigError(f"{name} must be > 0, got {values}")


def _div3(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (a[0] // b[0], a[1] // b[1], a[2] // b[2])


@dataclass(frozen=True)
class CTStemConfig:
    """CT input grid (z, y, x), HU windows and the 3D patch embedding."""

    grid_shape: tuple[int, int, int] = (32, 64, 64)
    spacing_mm: tuple[float, float, float] = (10.0, 7.0, 7.0)
    patch: tuple[int, int, int] = (4, 8, 8)
    #: (centre, width) HU windows -> channels: lung, soft tissue, bone
    windows: tuple[tuple[float, float], ...] = ((-600.0, 1500.0), (40.0, 400.0),
                                                (400.0, 1800.0))
    pad_hu: float = -1024.0
    abs_pos: str = "learned"  # "learned" | "sinusoidal"
    rel_bias: bool = True
    #: channels of the strided Conv3d + GroupNorm + GELU layers before the patch embedding
    #: (each halves every axis whose remaining patch factor is even); () = linear patchify
    conv_stem: tuple[int, ...] = ()
    #: fixed reduction of the input grid before the conv stem: non-overlapping blocks of this
    #: size, each summarised by ``pool_stats`` per window channel ("mean" keeps density,
    #: "max" keeps small dense things such as nodules, "min" small lucencies such as
    #: emphysema), so the network sees a fine grid at the cost of a coarse one; (1, 1, 1) = off
    pre_pool: tuple[int, int, int] = (1, 1, 1)
    pool_stats: tuple[str, ...] = ("mean",)
    #: Gaussian scales (mm) of the fixed dot-enhancement channels appended after the windows
    #: (:class:`multimodal.transforms.BlobEnhance`: scale-normalised determinant of the HU
    #: Hessian where all three curvatures are negative; bright spheres such as nodules
    #: respond, tubes such as vessels and plates such as fissures hardly do), computed on the
    #: full grid before any pre-pool; () = none
    blob_scales_mm: tuple[float, ...] = ()
    #: the blob response mapped to 1 (channel = clip(response / blob_full_scale, 0, 1))
    blob_full_scale: float = 0.25
    #: channels of the dense detector (:class:`multimodal.dense.DenseDetector`) on the first
    #: conv-stem layer's map: per-cell finding logits trained on the label map at that
    #: resolution (deep supervision of the stem), whose per-patch maximum is added to the
    #: MIL patch logits; 0 = off (needs ``conv_stem``)
    dense_hidden: int = 0
    #: where the grid sits on a scan read from DICOM (:func:`multimodal.transforms.place_grid`):
    #: "lungs" (the scan's centre unless that leaves more than ``placement_max_loss`` of the
    #: lungs out along z; then moved to hold them) or "centre" (the scan's centre always; the
    #: generator's fast path renders its training cases there)
    placement: str = "lungs"
    #: the share of the lungs the centred grid may leave out before it moves: 0.1, above the
    #: most a centred grid leaves out on the generated test splits (6.7 %), which the demo
    #: model was trained with (moving for those lowered its micro-F1 under shift)
    placement_max_loss: float = 0.1
    #: a scan read from DICOM with less aerated lung than this (mL) is refused as no chest CT
    #: (a head CT's sinuses hold tens of mL, a chest CT litres); 0 drafts any scan
    min_lung_ml: float = 300.0
    #: a scan read from DICOM whose "lungs" fill more than this share of the body's midline
    #: (:func:`multimodal.transforms.midline_air`) is refused as no chest CT: a chest has its
    #: mediastinum there (400 generated chests 0.05 median, 0.09 at most; the shared real
    #: A0001 0.21; bench/placement.py), the air inside a hollow phantom crosses it (the
    #: shared Philips head phantom 0.90); 1 turns the check off, and so does ``min_lung_ml`` 0
    max_midline_air: float = 0.65
    #: a scan noisier than this (:func:`multimodal.noise.noise_index`, HU) is smoothed in-plane
    #: down to it before the model reads it (:func:`multimodal.noise.match_noise`): the noisiest
    #: of the checkpoint's validation cases; 0 reads every scan as it is
    noise_max_index: float = 0.0

    def __post_init__(self) -> None:
        if self.noise_max_index < 0:
            raise ModelConfigError(f"ct.noise_max_index must be >= 0 (0: off), got "
                                   f"{self.noise_max_index!r}")
        if self.placement not in ("lungs", "centre"):
            raise ModelConfigError(f"ct.placement must be 'lungs' or 'centre', got "
                                   f"{self.placement!r}")
        if self.min_lung_ml < 0:
            raise ModelConfigError(f"ct.min_lung_ml must be >= 0, got {self.min_lung_ml!r}")
        if not 0.0 < self.max_midline_air <= 1.0:
            raise ModelConfigError(f"ct.max_midline_air must be in (0, 1] (1: off), got "
                                   f"{self.max_midline_air!r}")
        if not 0.0 <= self.placement_max_loss < 1.0:
            raise ModelConfigError(f"ct.placement_max_loss must be in [0, 1), got "
                                   f"{self.placement_max_loss!r}")
        if len(self.grid_shape) != 3 or len(self.patch) != 3 or len(self.spacing_mm) != 3:
            raise ModelConfigError("ct.grid_shape, ct.patch and ct.spacing_mm need 3 values")
        _pos("ct.grid_shape", *self.grid_shape)
        _pos("ct.patch", *self.patch)
        _pos("ct.spacing_mm", *self.spacing_mm)
        if any(g % p for g, p in zip(self.grid_shape, self.patch, strict=True)):
            raise ModelConfigError("ct.grid_shape must be divisible by ct.patch")
        if not self.windows or any(len(w) != 2 or w[1] <= 0 for w in self.windows):
            raise ModelConfigError("ct.windows must be (centre, width > 0) pairs")
        if self.abs_pos not in ("learned", "sinusoidal"):
            raise ModelConfigError("ct.abs_pos must be 'learned' or 'sinusoidal'")
        if any(c < 1 for c in self.conv_stem):
            raise ModelConfigError("ct.conv_stem channels must be >= 1")
        _pos("ct.pre_pool", *self.pre_pool)
        if len(self.pre_pool) != 3 or any(p % q for p, q in zip(self.patch, self.pre_pool,
                                                                 strict=True)):
            raise ModelConfigError(f"ct.patch {self.patch} must be divisible by ct.pre_pool "
                                   f"{self.pre_pool}")
        if not self.pool_stats or len(set(self.pool_stats)) != len(self.pool_stats) or \
                any(st not in ("mean", "max", "min") for st in self.pool_stats):
            raise ModelConfigError("ct.pool_stats must be distinct values of mean, max, min; "
                                   f"got {self.pool_stats}")
        if any(s <= 0 for s in self.blob_scales_mm) or \
                len(set(self.blob_scales_mm)) != len(self.blob_scales_mm):
            raise ModelConfigError("ct.blob_scales_mm must be distinct scales > 0 mm, got "
                                   f"{self.blob_scales_mm}")
        _pos("ct.blob_full_scale", self.blob_full_scale)
        if self.dense_hidden < 0 or (self.dense_hidden and not self.conv_stem):
            raise ModelConfigError("ct.dense_hidden must be >= 0, and > 0 only with a "
                                   f"ct.conv_stem (got {self.dense_hidden}, conv_stem "
                                   f"{self.conv_stem})")

    @property
    def pooled_shape(self) -> tuple[int, int, int]:
        """The grid after ``pre_pool``."""
        return _div3(self.grid_shape, self.pre_pool)

    @property
    def stem_patch(self) -> tuple[int, int, int]:
        """The patch in voxels of the pre-pooled grid (what the conv stem + embedding span)."""
        return _div3(self.patch, self.pre_pool)

    @property
    def pooled(self) -> bool:
        return self.pre_pool != (1, 1, 1) or self.pool_stats != ("mean",)

    @property
    def n_channels(self) -> int:
        """Channels of the full-grid CT input: the HU windows, then the blob channels."""
        return len(self.windows) + len(self.blob_scales_mm)

    @property
    def in_channels(self) -> int:
        """Channels after the pre-pool: one per (input channel, statistic)."""
        return self.n_channels * len(self.pool_stats)

    def stem_strides(self) -> list[tuple[int, int, int]]:
        """Stride of each conv-stem layer; the patch embedding takes the remaining factor."""
        rem = list(self.stem_patch)
        out = []
        for _ in self.conv_stem:
            st = tuple(2 if r % 2 == 0 else 1 for r in rem)
            rem = [r // s for r, s in zip(rem, st, strict=True)]
            out.append((st[0], st[1], st[2]))
        return out

    @property
    def dense_block(self) -> tuple[int, int, int]:
        """Full-grid voxels per cell of the first conv-stem layer's map (the dense grid)."""
        st = self.stem_strides()[0] if self.conv_stem else (1, 1, 1)
        a, b, c = (p * q for p, q in zip(self.pre_pool, st, strict=True))
        return a, b, c

    @property
    def dense_shape(self) -> tuple[int, int, int]:
        """The dense detector's grid (z, y, x)."""
        return _div3(self.grid_shape, self.dense_block)

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        return _div3(self.grid_shape, self.patch)

    @property
    def n_patches(self) -> int:
        a, b, c = self.patch_grid
        return a * b * c


@dataclass(frozen=True)
class EMRStemConfig:
    """Token embedding of the EMR (and of the report decoder: one shared vocabulary)."""

    vocab_size: int = 4000
    max_tokens: int = 32768

    def __post_init__(self) -> None:
        if self.vocab_size < 8:
            raise ModelConfigError("emr.vocab_size must be >= 8")
        _pos("emr.max_tokens", self.max_tokens)


@dataclass(frozen=True)
class EncoderConfig:
    """The shared (all-modality) shallow Transformer encoder."""

    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _pos("encoder.depth/heads/mlp_ratio", self.depth, self.heads, self.mlp_ratio)
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError("encoder.dropout must be in [0, 1)")


@dataclass(frozen=True)
class LongEMRConfig:
    """Segment-recurrent EMR encoding with sliding-window attention and memory tokens."""

    segment_len: int = 512
    window: int = 128
    n_memory: int = 16
    #: bench only: one pass of full attention over all tokens, all tokens handed to fusion
    full_attention: bool = False
    #: training only: probability per batch that the EMR runs in the full-attention mode
    #: above, so that one set of weights serves both modes (the bench's "same model with
    #: full attention"); inference uses ``full_attention``
    full_attention_p: float = 0.0

    def __post_init__(self) -> None:
        _pos("long_emr.segment_len/window/n_memory", self.segment_len, self.window,
             self.n_memory)
        if self.window > self.segment_len:
            raise ModelConfigError("long_emr.window must be <= long_emr.segment_len")
        if not 0.0 <= self.full_attention_p <= 1.0:
            raise ModelConfigError(
                f"long_emr.full_attention_p must be in [0, 1], got {self.full_attention_p}")


@dataclass(frozen=True)
class GatingConfig:
    hidden: int = 64
    #: probability per training case that EMR (resp. CT) is dropped when both are present
    drop_emr: float = 0.3
    drop_ct: float = 0.0

    def __post_init__(self) -> None:
        _pos("gating.hidden", self.hidden)
        if not (0 <= self.drop_emr < 1 and 0 <= self.drop_ct < 1
                and self.drop_emr + self.drop_ct < 1):
            raise ModelConfigError("gating.drop_emr/drop_ct must be in [0, 1) with sum < 1")


@dataclass(frozen=True)
class FusionConfig:
    """Deep fusion: joint attention + DeepSeekMoE (or dense) feed-forward."""

    depth: int = 2
    heads: int = 4
    n_extra_queries: int = 4
    moe: bool = True
    n_shared: int = 1
    n_routed: int = 8
    top_k: int = 2
    expert_hidden: int = 64
    dense_hidden: int = 256
    balance_coef: float = 0.01

    def __post_init__(self) -> None:
        _pos("fusion.depth/heads/expert_hidden/dense_hidden", self.depth, self.heads,
             self.expert_hidden, self.dense_hidden)
        if self.n_extra_queries < 0 or self.n_shared < 0 or self.balance_coef < 0:
            raise ModelConfigError("fusion.n_extra_queries/n_shared/balance_coef must be >= 0")
        if self.moe and not 1 <= self.top_k <= self.n_routed:
            raise ModelConfigError("fusion.top_k must be in [1, n_routed]")


@dataclass(frozen=True)
class MeasureConfig:
    """A called nodule's or mass's size measured on the image (:mod:`multimodal.measure`):
    inside the finding's evidence box, the voxel most enclosed by lung is taken as the
    lesion's centre, rays cast from it find the lesion's edge (half way between its core and
    the lung around it), and an ellipsoid fitted to the edge points gives the longest diameter.
    A measurement that fails a check keeps the size head's estimate."""

    enabled: bool = True
    #: (label, smallest, largest diameter in mm) of the findings measured; a diameter outside
    #: its label's range is not taken (a "nodule" measured at 50 mm is some other structure);
    #: labels the model does not predict are ignored
    lesions: tuple[tuple[str, float, float], ...] = (("lung_nodule", 3.0, 30.0),
                                                     ("lung_mass", 30.0, 120.0))
    #: a ray has left the lesion when it reaches this HU (lung or air) ...
    air_hu: float = -500.0
    #: ... and a candidate centre is at least this dense
    tissue_hu: float = -200.0
    #: the shares of 26 rays that must reach lung within max_radius_mm for a candidate
    #: centre, tried in this order (a lesion against the chest wall or mediastinum is enclosed
    #: less)
    enclosure: tuple[float, ...] = (0.9, 0.8)
    #: the candidate's distance to the nearest lung (its inscribed radius) at least this
    min_depth_mm: float = 6.0
    max_radius_mm: float = 60.0
    #: edge points further than this relative distance from the fitted ellipsoid are dropped
    #: (spicules, a vessel or the pleura touching the lesion) and the ellipsoid refitted
    trim: float = 0.12
    #: the share of the rays the final ellipsoid must explain
    min_fit_fraction: float = 0.85
    #: a lesion against the chest wall or mediastinum has no edge on the rays into them (no
    #: contrast): up to this share of such rays, the fit fraction counts only the rays with a
    #: lung edge (the ellipsoid is fitted to the lesion's lung-facing surface); 0 = every ray
    max_wall_share: float = 0.0
    #: candidate centres (best first, 15 mm apart) measured per enclosure level
    n_tries: int = 3
    #: labels whose size is the cardiothoracic ratio, measured on the CT when called
    #: (:mod:`multimodal.cardiac`); labels the model does not predict are ignored
    ratio_labels: tuple[str, ...] = ("cardiomegaly",)
    #: a measured ratio outside this range is not taken (the head's estimate stays)
    ratio_range: tuple[float, float] = (0.3, 0.85)
    #: labels found and measured as a band of fluid around the heart (:mod:`multimodal.
    #: pericardium`): called where the band is found, whatever the presence head says, its
    #: size the band's thickness; labels the model does not predict are ignored
    fluid_labels: tuple[str, ...] = ("pericardial_effusion",)
    #: the HU range of the band (fluid: between fat and the myocardium's density)
    fluid_hu: tuple[float, float] = (-15.0, 28.0)
    #: a ray counts a band of at least this thickness ...
    fluid_band_mm: float = 4.0
    #: ... and the finding is called where this share of the rays do (the midpoint of the
    #: gap between the 480 validation cases with an effusion, 0.932 or more, and those
    #: without, 0.466 or less: bench/pericardium.py --val 480)
    fluid_min_share: float = 0.7
    #: the evidence box of a fluid call: "band" (around the band's samples, the anterior
    #: half the rays score) or "sac" (around the heart's sections, which hold the fluid, on
    #: its slices and the overlapping ones beyond: the whole sac;
    #: :attr:`multimodal.pericardium.PericardialFluid.sac_box_voxels`)
    fluid_box: str = "band"
    #: the sac box reaches back to the heart's sections cut at this share of the lungs'
    #: front-to-back extent, on the heart's own slices (the sections the rays use stop at
    #: 0.6, before the back of the heart: :func:`multimodal.pericardium.pericardial_fluid`);
    #: 0.6 = those sections alone
    fluid_sac_depth: float = 0.6
    #: labels whose call is taken back where their evidence box holds air bronchograms and
    #: ``bronchogram_within`` is called (:mod:`multimodal.bronchogram`): a mass read in a
    #: consolidation; () = never
    bronchogram_labels: tuple[str, ...] = ("lung_mass",)
    bronchogram_within: str = "consolidation"
    #: at least this many air voxels enclosed by dense tissue: on the 480 validation cases,
    #: 2 takes back 14 of the 24 false mass calls made with a consolidation and none of the
    #: 16 true ones (1 would take back 17, and the real A0001 mass, which holds 1:
    #: bench/bronchogram.py --val 480, docs/model.md "Twenty-eighth round")
    bronchogram_min_voxels: int = 2
    #: ... each with this share of the square of this radius around it in its slice dense
    bronchogram_share: float = 0.7
    bronchogram_radius_mm: float = 5.5
    #: (air below, dense above) in HU
    bronchogram_hu: tuple[float, float] = (-600.0, -300.0)
    #: lesion labels (of ``lesions``) also looked for on the CT where the head does not call
    #: them (:mod:`multimodal.islands`): a piece of tissue the lung surrounds in which a
    #: lesion of the label's diameter range is measured calls the finding ("found on the CT");
    #: () = never (the default: the shipped config names lung_mass)
    island_labels: tuple[str, ...] = ()
    #: islands smaller than this (mL) are not measured (a vessel cut across)
    island_min_ml: float = 4.0
    #: the share of an island's in-plane rim that must be lung
    island_lung_share: float = 0.9
    #: a lesion found so is taken only if at most this share of the voxels inside its
    #: ellipsoid (its extents scaled by 0.8) is air (below ``air_hu``): air bronchograms or
    #: a cavity say consolidation, on the 480 validation cases no mass held any
    island_max_air_share: float = 0.0
    #: at most this many islands (the largest first) are measured
    island_max_tries: int = 12

    def __post_init__(self) -> None:
        for i, les in enumerate(self.lesions):
            if not les[0] or not 0 < les[1] < les[2]:
                raise ModelConfigError(f"heads.measure.lesions[{i}] must be [label, smallest "
                                       f"mm, largest mm] with 0 < smallest < largest, got {les}")
        if len({les[0] for les in self.lesions}) != len(self.lesions):
            raise ModelConfigError("heads.measure.lesions lists a label twice")
        if not -1024 < self.air_hu < self.tissue_hu < 1000:
            raise ModelConfigError("heads.measure needs -1024 < air_hu < tissue_hu < 1000, got "
                                   f"{self.air_hu}, {self.tissue_hu}")
        if not self.enclosure or any(not 0 < e <= 1 for e in self.enclosure):
            raise ModelConfigError("heads.measure.enclosure must list shares in (0, 1]")
        _pos("heads.measure.min_depth_mm/max_radius_mm/trim/min_fit_fraction/n_tries",
             self.min_depth_mm, self.max_radius_mm, self.trim, self.min_fit_fraction,
             self.n_tries)
        if self.min_depth_mm >= self.max_radius_mm or self.trim >= 1 \
                or self.min_fit_fraction > 1:
            raise ModelConfigError("heads.measure needs min_depth_mm < max_radius_mm, trim < 1 "
                                   "and min_fit_fraction <= 1")
        if not 0 <= self.max_wall_share < 1:
            raise ModelConfigError("heads.measure.max_wall_share must be in [0, 1), got "
                                   f"{self.max_wall_share}")
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] < self.ratio_range[1] \
                or not all(self.ratio_labels):
            raise ModelConfigError("heads.measure.ratio_range must be [low, high] with "
                                   f"0 < low < high, got {self.ratio_range}; ratio_labels "
                                   "must name labels")
        if len(self.fluid_hu) != 2 or not -200 < self.fluid_hu[0] < self.fluid_hu[1] < 100:
            raise ModelConfigError("heads.measure.fluid_hu must be [low, high] with -200 < low "
                                   f"< high < 100, got {self.fluid_hu}")
        if self.fluid_band_mm <= 0 or not 0 < self.fluid_min_share <= 1 \
                or not all(self.fluid_labels):
            raise ModelConfigError("heads.measure needs fluid_band_mm > 0 and 0 < "
                                   f"fluid_min_share <= 1, got {self.fluid_band_mm}, "
                                   f"{self.fluid_min_share}; fluid_labels must name labels")
        if not 0.6 <= self.fluid_sac_depth <= 1:
            raise ModelConfigError(f"heads.measure.fluid_sac_depth must be in [0.6, 1], got "
                                   f"{self.fluid_sac_depth}")
        if self.fluid_box not in ("band", "sac"):
            raise ModelConfigError(f"heads.measure.fluid_box must be 'band' or 'sac', got "
                                   f"{self.fluid_box!r}")
        if not all(self.bronchogram_labels) or not self.bronchogram_within \
                or self.bronchogram_within in self.bronchogram_labels:
            raise ModelConfigError("heads.measure.bronchogram_labels must name labels and "
                                   "bronchogram_within another one, got "
                                   f"{self.bronchogram_labels}, {self.bronchogram_within!r}")
        if self.bronchogram_min_voxels < 1 or not 0 < self.bronchogram_share <= 1 \
                or self.bronchogram_radius_mm <= 0 or len(self.bronchogram_hu) != 2 \
                or not -1024 < self.bronchogram_hu[0] < self.bronchogram_hu[1] < 1000:
            raise ModelConfigError(
                "heads.measure needs bronchogram_min_voxels >= 1, 0 < bronchogram_share <= 1, "
                "bronchogram_radius_mm > 0 and bronchogram_hu [air, dense] with -1024 < air < "
                f"dense < 1000, got {self.bronchogram_min_voxels}, {self.bronchogram_share}, "
                f"{self.bronchogram_radius_mm}, {self.bronchogram_hu}")
        lesion_labels = {les[0] for les in self.lesions}
        if not set(self.island_labels) <= lesion_labels:
            raise ModelConfigError("heads.measure.island_labels must be lesion labels (of "
                                   f"heads.measure.lesions), got {self.island_labels}")
        if self.island_min_ml <= 0 or not 0 < self.island_lung_share <= 1 \
                or not 0 <= self.island_max_air_share < 1 or self.island_max_tries < 1:
            raise ModelConfigError(
                "heads.measure needs island_min_ml > 0, 0 < island_lung_share <= 1, "
                "0 <= island_max_air_share < 1 and island_max_tries >= 1, got "
                f"{self.island_min_ml}, {self.island_lung_share}, {self.island_max_air_share}, "
                f"{self.island_max_tries}")
        kinds = [{les[0] for les in self.lesions}, set(self.ratio_labels),
                 set(self.fluid_labels)]
        if any(kinds[i] & kinds[j] for i in range(3) for j in range(i + 1, 3)):
            raise ModelConfigError("heads.measure: a label is a lesion (diameter), a ratio "
                                   "label or a fluid label, only one of them")


@dataclass(frozen=True)
class HeadsConfig:
    """Finding heads: one query per label (labels come from configs/findings.yaml)."""

    labels: tuple[str, ...] = ()
    locations: tuple[str, ...] = ("none", "other")
    size_max_mm: float = 200.0
    #: a called finding's EMR evidence: at most this many of the note's tokens, ranked by
    #: gradient x input (multimodal.attribution.note_spans) ...
    n_emr_spans: int = 3
    #: ... taken only where the note raises the finding's presence logit by this much or
    #: more against the same pass without it (a finding that does not rest on the note has
    #: no note evidence)
    emr_evidence_min_logit: float = 0.1
    #: localisation: patches with map >= rel_threshold * max form the evidence box
    rel_threshold: float = 0.5
    #: multiple-instance presence: per-patch logits (trained on the label map), pooled by
    #: logsumexp into a per-finding score that is added to the query's presence logit
    mil: bool = False
    #: a sided finding takes its side from where its image evidence lies relative to the body
    #: midline instead of from the laterality head (with MIL: the per-side pooled patch scores)
    side_from_evidence: bool = False
    #: the labels that rule applies to (their side is always read off the image); empty: every
    #: finding that the laterality head calls left, right or bilateral
    evidence_side_labels: tuple[str, ...] = ()
    #: with MIL, a finding is bilateral when both sides' pooled probabilities reach this
    #: (the default of each label's cut-off, which calibration fits on the validation cases
    #: when it has enough sided positives: multimodal.calibration)
    bilateral_min_prob: float = 0.5
    #: with MIL and ``side_from_evidence``, a one-sided call whose stated side's pooled odds
    #: are less than this many times the other side's is ``side_uncertain`` (the draft flags
    #: it and marks the sentences stating its side); 1 turns it off
    min_side_odds_ratio: float = 2.0
    #: a label whose presence AUROC on the calibration (validation) cases is below this, or
    #: that had too few positives there to measure it, is flagged ``unreliable_detector`` in
    #: every draft, present or absent (the decision itself is unchanged); 0 turns it off
    min_reliable_auroc: float = 0.0
    #: the evidence box a present finding is shown with: "patches", the bounding box of its
    #: selected patches (those the side and the rules on the CT read); "cells", within them,
    #: that of the dense detector's cells of probability ``evidence_cell_prob`` or more
    #: (ct.dense_hidden; the patches' where it has none) and, for a nodule or mass measured
    #: on the CT, that of the fitted ellipsoid (:func:`multimodal.measure.focus_evidence`)
    evidence_box: str = "cells"
    #: the dense cells' probability that "cells" takes
    evidence_cell_prob: float = 0.5
    #: [label, probability] pairs: the cells' probability "cells" takes for that label
    #: instead of ``evidence_cell_prob`` (chosen per label on validation cases:
    #: ``bench/val_eval.py --evidence``)
    evidence_cell_probs: tuple[tuple[str, float], ...] = ()
    #: "cells" boxes only the clusters of those cells (26-connected) whose most probable cell
    #: reaches this, or every cluster where none does (:func:`multimodal.heads.cells_box`): a
    #: weak cluster apart from the finding's confident ones does not stretch its box; 0 boxes
    #: every cluster
    evidence_min_peak: float = 0.0
    #: [label, probability] pairs: the peak "cells" takes for that label instead of
    #: ``evidence_min_peak`` (chosen per label on validation cases: ``bench/val_eval.py
    #: --evidence --evidence-min-peak``)
    evidence_min_peaks: tuple[tuple[str, float], ...] = ()
    #: a called nodule's or mass's size measured on the image instead of the size head's
    measure: MeasureConfig = field(default_factory=MeasureConfig)

    def cell_prob(self, label: str) -> float:
        """The dense cells' probability the "cells" evidence box of ``label`` takes."""
        return dict(self.evidence_cell_probs).get(label, self.evidence_cell_prob)

    def min_peak(self, label: str) -> float:
        """The peak a cluster of cells needs for the "cells" evidence box of ``label``."""
        return dict(self.evidence_min_peaks).get(label, self.evidence_min_peak)

    def __post_init__(self) -> None:
        if self.evidence_box not in ("patches", "cells"):
            raise ModelConfigError(f"heads.evidence_box must be 'patches' or 'cells', got "
                                   f"{self.evidence_box!r}")
        if not 0 < self.evidence_cell_prob < 1:
            raise ModelConfigError(f"heads.evidence_cell_prob must be in (0, 1), got "
                                   f"{self.evidence_cell_prob}")
        for i, pair in enumerate(self.evidence_cell_probs):
            if len(pair) != 2 or pair[0] not in self.labels or not 0 < pair[1] < 1:
                raise ModelConfigError(f"heads.evidence_cell_probs[{i}] must be [label, p] with "
                                       f"a label of heads.labels and 0 < p < 1, got {pair}")
        if len({pair[0] for pair in self.evidence_cell_probs}) != len(self.evidence_cell_probs):
            raise ModelConfigError("heads.evidence_cell_probs lists a label twice")
        if not 0 <= self.evidence_min_peak < 1:
            raise ModelConfigError(f"heads.evidence_min_peak must be in [0, 1), got "
                                   f"{self.evidence_min_peak}")
        for i, pair in enumerate(self.evidence_min_peaks):
            if len(pair) != 2 or pair[0] not in self.labels or not 0 <= pair[1] < 1:
                raise ModelConfigError(f"heads.evidence_min_peaks[{i}] must be [label, p] with "
                                       f"a label of heads.labels and 0 <= p < 1, got {pair}")
        if len({pair[0] for pair in self.evidence_min_peaks}) != len(self.evidence_min_peaks):
            raise ModelConfigError("heads.evidence_min_peaks lists a label twice")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ModelConfigError("heads.labels must be a non-empty list of unique labels")
        if len(self.locations) < 2 or self.locations[0] != "none":
            raise ModelConfigError("heads.locations must start with 'none' and have >= 2")
        _pos("heads.size_max_mm", self.size_max_mm)
        if self.n_emr_spans < 0 or not 0 < self.rel_threshold <= 1:
            raise ModelConfigError("heads.n_emr_spans >= 0 and rel_threshold in (0, 1]")
        if not (math.isfinite(self.emr_evidence_min_logit)
                and self.emr_evidence_min_logit >= 0):
            raise ModelConfigError("heads.emr_evidence_min_logit must be a logit gain >= 0, "
                                   f"got {self.emr_evidence_min_logit}")
        unknown = sorted(set(self.evidence_side_labels) - set(self.labels))
        if unknown:
            raise ModelConfigError(f"heads.evidence_side_labels {unknown} are not in "
                                   "heads.labels; list only labels the model predicts")
        if not 0 < self.bilateral_min_prob < 1:
            raise ModelConfigError("heads.bilateral_min_prob must be in (0, 1)")
        if not self.min_side_odds_ratio >= 1:
            raise ModelConfigError("heads.min_side_odds_ratio must be >= 1 (1: off), got "
                                   f"{self.min_side_odds_ratio}")
        if not 0 <= self.min_reliable_auroc <= 1:
            raise ModelConfigError("heads.min_reliable_auroc must be in [0, 1] (0: off)")


@dataclass(frozen=True)
class DecoderConfig:
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    max_len: int = 256
    #: the decoder also attends to one token per finding type that states the findings
    #: head's decision (present or absent, and side): the text follows the head.  Training
    #: teacher-forces it with the true findings
    condition: bool = False
    #: the conditioning token of a present finding also carries its stated size (log mm
    #: through a linear layer): the size the draft states (measured on the CT where that
    #: succeeds), teacher-forced with the true size in training; needs condition
    condition_size: bool = False
    #: the conditioning token of a present finding also carries its stated location (an
    #: embedding per heads.locations code: the lobe of a nodule, mass or consolidation), so
    #: the text names the location head's lobe; teacher-forced with the true location in
    #: training; needs condition
    condition_location: bool = False
    #: the decoder cross-attends to the note's tokens handed to fusion (the long-EMR memory
    #: tokens, or every token in the full-attention mode); false: they are masked out of its
    #: memory, and the note reaches the text only through fusion (the finding queries and CT
    #: tokens attended to it), the decisions and the context classes, so the text does not
    #: read how the note was compressed
    emr_memory: bool = True
    #: the text is written from a second pass of the same weights without the note: the
    #: decoder reads that pass's memory, and a called finding's location and size (the
    #: heads' own) come from it (multimodal.image_pass); the note reaches the text only
    #: through the findings head's decisions and the context classes.  Inference only:
    #: training is unchanged
    image_pass: bool = False
    #: decoding never writes a word n-gram of this length twice within one sentence (a
    #: degenerate loop: "ratio approximately (cardiothoracic ratio approximately ..."); 0: off.
    #: Decoding only: training is unchanged
    no_repeat_ngram: int = 0

    def __post_init__(self) -> None:
        _pos("decoder.depth/heads/mlp_ratio/max_len", self.depth, self.heads, self.mlp_ratio,
             self.max_len)
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            raise ModelConfigError("decoder.no_repeat_ngram must be 0 (off) or >= 2, got "
                                   f"{self.no_repeat_ngram}")
        if self.condition_size and not self.condition:
            raise ModelConfigError("decoder.condition_size needs decoder.condition: true")
        if self.condition_location and not self.condition:
            raise ModelConfigError("decoder.condition_location needs decoder.condition: true")


@dataclass(frozen=True)
class ContextConfig:
    """EMR context head: what the note adds to an image finding (known cancer, fever and
    leukocytosis, heart failure...).  Slot k qualifies finding ``labels[k]`` with one of
    ``classes[k]`` (class 0: the note adds nothing, or there is no note); the decoder states
    the predicted class on that finding's conditioning token (with decoder.condition).
    Empty: no context head."""

    labels: tuple[str, ...] = ()
    classes: tuple[tuple[str, ...], ...] = ()
    hidden: int = 64
    #: weight of the context cross-entropy in the training loss
    weight: float = 1.0

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.classes) or len(set(self.labels)) != len(self.labels):
            raise ModelConfigError("context.labels must be unique, one per context.classes "
                                   "entry")
        for lab, cls in zip(self.labels, self.classes, strict=True):
            if len(cls) < 2 or len(set(cls)) != len(cls):
                raise ModelConfigError(f"context.classes of {lab!r} needs >= 2 unique names")
        _pos("context.hidden", self.hidden)
        if self.weight < 0:
            raise ModelConfigError("context.weight must be >= 0")

    @property
    def n_classes(self) -> int:
        """Classes of the widest slot (narrower slots mask the rest)."""
        return max((len(c) for c in self.classes), default=0)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "medassist-deepseek-mm"
    dim: int = 64
    ct: CTStemConfig = field(default_factory=CTStemConfig)
    emr: EMRStemConfig = field(default_factory=EMRStemConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    long_emr: LongEMRConfig = field(default_factory=LongEMRConfig)
    gating: GatingConfig = field(default_factory=GatingConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    heads: HeadsConfig = field(default_factory=lambda: HeadsConfig(labels=("finding",)))
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    align_temperature: float = 0.07
    align_weight: float = 0.1
    loc_weight: float = 0.5
    lm_weight: float = 1.0
    #: weight of the laterality, location and size losses (averaged over few positives)
    attr_weight: float = 1.0
    #: weight of the per-patch (MIL) loss against the label map (heads.mil only)
    patch_weight: float = 1.0
    #: positive-class weight of that per-patch BCE (abnormal patches are rare)
    patch_pos_weight: float = 1.0
    #: weight of the dense detector's class-balanced BCE (ct.dense_hidden > 0 only)
    dense_weight: float = 1.0
    #: hard negatives of the dense detector's loss: in every case without a finding, the
    #: mean of its ``dense_hard_k`` highest cell logits for that finding is pushed down too
    #: (the cells a case-level maximum fires on; the plain balanced BCE averages over all
    #: negative cells, mostly easy ones, and can learn where a finding may lie instead of
    #: whether it is there); 0 = off
    dense_hard_k: int = 0
    #: (label, mm): a case whose largest finding of ``label`` is smaller than this (its
    #: reference size) is left out of that label's presence, per-patch, dense and attribute
    #: losses, as neither a positive nor a negative: below what the model grid shows (a
    #: 5 mm slab and 2.75 mm pixels average a 6 mm nodule to a bump no brighter than the
    #: vessels), it would teach the detector noise.  Evaluation still counts it; calibration
    #: reads the label's AUROC on the cases the losses kept (``val_auroc_all``: on all)
    presence_min_mm: tuple[tuple[str, float], ...] = ()
    #: (label, confuser, weight): in the per-patch (MIL) loss, a patch the ``confuser``
    #: occupies where ``label`` is absent weighs ``weight`` times as a negative of ``label``
    #: (a consolidation read as a mass); heads.mil only
    patch_confusers: tuple[tuple[str, str, float], ...] = ()

    def __post_init__(self) -> None:
        _pos("dim", self.dim)
        _pos("align_temperature", self.align_temperature)
        for h, what in ((self.encoder.heads, "encoder"), (self.fusion.heads, "fusion"),
                        (self.decoder.heads, "decoder")):
            if self.dim % h:
                raise ModelConfigError(f"dim {self.dim} not divisible by {what}.heads {h}")
        if min(self.align_weight, self.loc_weight, self.lm_weight, self.attr_weight,
               self.patch_weight, self.patch_pos_weight, self.dense_weight) < 0:
            raise ModelConfigError("loss weights must be >= 0")
        if self.dense_hard_k < 0 or (self.dense_hard_k and not self.ct.dense_hidden):
            raise ModelConfigError(f"dense_hard_k must be >= 0, and > 0 only with "
                                   f"ct.dense_hidden (got {self.dense_hard_k})")
        if self.ct.dense_hidden and not self.heads.mil:
            raise ModelConfigError("ct.dense_hidden needs heads.mil: true (the dense map is "
                                   "read through the MIL patch logits)")
        for i, (lab, mm) in enumerate(self.presence_min_mm):
            if lab not in self.heads.labels or not mm > 0:
                raise ModelConfigError(f"presence_min_mm[{i}] must be [label of heads.labels, "
                                       f"mm > 0], got {[lab, mm]}")
        if len({lab for lab, _ in self.presence_min_mm}) != len(self.presence_min_mm):
            raise ModelConfigError("presence_min_mm lists a label twice")
        for i, (lab, conf, wt) in enumerate(self.patch_confusers):
            if lab not in self.heads.labels or conf not in self.heads.labels or lab == conf \
                    or not wt >= 1.0:
                raise ModelConfigError(f"patch_confusers[{i}] must be [label, another label "
                                       f"of heads.labels, weight >= 1], got {[lab, conf, wt]}")
        if self.patch_confusers and not self.heads.mil:
            raise ModelConfigError("patch_confusers needs heads.mil: true (per-patch loss)")
        unknown = sorted(set(self.context.labels) - set(self.heads.labels))
        if unknown:
            raise ModelConfigError(f"context.labels {unknown} are not in heads.labels")
        if self.context.labels and not self.decoder.condition:
            raise ModelConfigError("context needs decoder.condition: true (the decoder reads "
                                   "the context on the findings' conditioning tokens)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ModelConfigError(f"{where} must be a mapping")
        return from_mapping(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ModelConfigError(f"{where} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ModelConfigError(f"{where} needs {len(args)} values")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is bool:
        if not isinstance(value, bool):
            raise ModelConfigError(f"{where} must be true/false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelConfigError(f"{where} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelConfigError(f"{where} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ModelConfigError(f"{where} must be a string")
        return value
    raise ModelConfigError(f"{where}: unsupported type {tp}")


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "model") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys are errors."""
    if not dataclasses.is_dataclass(cls):
        raise ModelConfigError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ModelConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ModelConfigError(f"{where}: {exc}") from exc


def load_model_config(path: str | Path, labels: tuple[str, ...] | None = None) -> ModelConfig:
    """Read a YAML model config (top-level key ``model``); ``labels`` override heads.labels."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ModelConfigError(f"{path}: expected a mapping")
    body = raw.get("model", raw)
    if not isinstance(body, Mapping):
        raise ModelConfigError(f"{path}: 'model' must be a mapping")
    body = dict(body)
    if labels is not None:
        heads = dict(body.get("heads") or {})
        heads["labels"] = list(labels)
        body["heads"] = heads
    return from_mapping(ModelConfig, body)
