"""Frozen, validated configuration of the case generator.

One dataclass per component, nested under :class:`SynthConfig`.  YAML files in
``configs/synth/`` map onto them (top level or under a ``synth`` key); unknown keys are errors.
Ranges are ``(low, high)`` pairs sampled uniformly; "choices" are tuples sampled uniformly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medassist.synth.errors import SynthConfigError


def _range(name: str, value: tuple[float, ...], lo: float | None = None,
           hi: float | None = None) -> None:
    if len(value) != 2 or value[0] > value[1]:
        raise SynthConfigError(f"{name} must be a (low, high) pair with low <= high, got {value}")
    if lo is not None and value[0] < lo:
        raise SynthConfigError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value[1] > hi:
        raise SynthConfigError(f"{name} must be <= {hi}, got {value}")


def _choices(name: str, value: tuple[Any, ...]) -> None:
    if len(value) == 0:
        raise SynthConfigError(f"{name} must list at least one choice")


@dataclass(frozen=True)
class GeometryConfig:
    """Acquisition grid of the DICOM series."""

    #: In-plane matrix choices (rows = columns).
    matrix: tuple[int, ...] = (512,)
    #: Slice thickness choices (mm); slices are contiguous (spacing = thickness).
    slice_thickness_mm: tuple[float, ...] = (1.25, 2.5, 5.0)
    #: Craniocaudal coverage (mm), from above the lung apices downwards.
    coverage_mm: tuple[float, float] = (300.0, 350.0)
    #: Reconstruction field of view is the body width plus this margin (mm), clipped to fov_mm.
    fov_margin_mm: tuple[float, float] = (30.0, 80.0)
    fov_mm: tuple[float, float] = (300.0, 500.0)
    #: The scan starts this far (mm) above the lung apices.
    top_margin_mm: tuple[float, float] = (10.0, 30.0)
    #: Safety cap on the slice count.
    max_slices: int = 600

    def __post_init__(self) -> None:
        _choices("geometry.matrix", self.matrix)
        if any(m < 32 or m > 1024 for m in self.matrix):
            raise SynthConfigError(f"geometry.matrix must be in [32, 1024], got {self.matrix}")
        _choices("geometry.slice_thickness_mm", self.slice_thickness_mm)
        if any(t <= 0.3 or t > 10 for t in self.slice_thickness_mm):
            raise SynthConfigError("geometry.slice_thickness_mm must be in (0.3, 10]")
        _range("geometry.coverage_mm", self.coverage_mm, 60.0, 600.0)
        _range("geometry.fov_margin_mm", self.fov_margin_mm, 0.0, 200.0)
        _range("geometry.fov_mm", self.fov_mm, 150.0, 700.0)
        _range("geometry.top_margin_mm", self.top_margin_mm, 0.0, 150.0)
        if self.max_slices < 8:
            raise SynthConfigError("geometry.max_slices must be >= 8")


@dataclass(frozen=True)
class ScannerConfig:
    """Scanner, protocol and image physics."""

    model_names: tuple[str, ...] = ("SynthCT 64", "SynthCT 128 Edge")
    kvp: tuple[float, ...] = (100.0, 120.0)
    mas: tuple[float, float] = (80.0, 300.0)
    #: Soft-tissue kernel names of the main series; a sharp one is used for the second series.
    soft_kernels: tuple[str, ...] = ("STANDARD", "B30f")
    sharp_kernels: tuple[str, ...] = ("LUNG", "B70f")
    contrast_probability: float = 0.5
    #: Noise SD (HU) at 120 kVp, 200 mAs, 5 mm, standard kernel, 330 mm body, 0.78 mm pixels.
    noise_ref_hu: float = 11.0
    noise_scale: float = 1.0
    #: In-plane point-spread FWHM (mm) of the soft kernel.
    psf_fwhm_mm: float = 1.0
    #: Cupping (HU at the body centre) as a crude beam-hardening model; 0 disables it.
    beam_hardening_hu: float = 0.0
    noise: bool = True

    def __post_init__(self) -> None:
        for name in ("model_names", "kvp", "soft_kernels", "sharp_kernels"):
            _choices(f"scanner.{name}", getattr(self, name))
        if any(k < 70 or k > 150 for k in self.kvp):
            raise SynthConfigError(f"scanner.kvp must be in [70, 150], got {self.kvp}")
        _range("scanner.mas", self.mas, 5.0, 1000.0)
        if not 0.0 <= self.contrast_probability <= 1.0:
            raise SynthConfigError("scanner.contrast_probability must be in [0, 1]")
        if self.noise_ref_hu < 0 or self.noise_scale < 0:
            raise SynthConfigError("scanner.noise_ref_hu and noise_scale must be >= 0")
        if not 0.0 < self.psf_fwhm_mm <= 5.0:
            raise SynthConfigError("scanner.psf_fwhm_mm must be in (0, 5]")
        if self.beam_hardening_hu < 0:
            raise SynthConfigError("scanner.beam_hardening_hu must be >= 0")


@dataclass(frozen=True)
class AnatomyConfig:
    """Patient habitus and normal anatomic variation."""

    #: Body size factor (1.0 = 320 x 230 mm chest).
    size_scale: tuple[float, float] = (0.85, 1.2)
    #: Subcutaneous fat thickness (mm).
    fat_mm: tuple[float, float] = (5.0, 35.0)
    #: Chest-wall muscle layer (mm, times the body size factor); the range is drawn as
    #: before, so the default generates the same cases.
    muscle_mm: tuple[float, float] = (9.0, 16.0)
    #: Lateral / AP offset of the patient from the scanner isocentre (mm).
    position_offset_mm: float = 25.0
    #: Mean lung parenchyma attenuation (HU).
    lung_hu: tuple[float, float] = (-880.0, -800.0)
    #: Normal heart size factor (cardiomegaly adds on top).
    heart_scale: tuple[float, float] = (0.88, 1.08)
    #: Generations of the vessel trees (airways use two fewer).
    vessel_generations: int = 8
    #: Posterior-minus-anterior lung density (HU; supine, gravity-dependent).
    lung_gradient_hu: tuple[float, float] = (15.0, 60.0)
    #: Parenchymal texture SD (HU) before the point-spread blur; (0, 0) = the smooth lung of
    #: the original generator (medassist/synth/parenchyma.py).
    parenchyma_texture_hu: tuple[float, float] = (0.0, 0.0)
    #: Extra density (HU) at the lung surface, decaying inwards, stronger posteriorly.
    parenchyma_subpleural_hu: tuple[float, float] = (0.0, 0.0)
    #: How far (mm) the lung surface is pulled in, unevenly, from the pleural cavity.
    parenchyma_relief_mm: tuple[float, float] = (0.0, 0.0)
    #: Right skew of the texture (medassist.synth.parenchyma.Parenchyma.texture_skew; 0 =
    #: symmetric, the first parenchyma generator).
    parenchyma_texture_skew: float = 0.0
    #: How far (mm) the rib centre-lines run outside the pleural cavity (7: ~3.5 mm of
    #: muscle between rib and pleura, the original generator; ~3.5: ribs against the pleura).
    rib_offset_mm: float = 7.0
    #: Chest-wall muscle (mm) inside the muscle layer, out to the pleural cavity; (14, 14) is
    #: the original generator's thick wall (medassist/synth/habitus.py).
    chest_wall_mm: tuple[float, float] = (14.0, 14.0)
    #: Soft tissue instead of fat above the thoracic inlet and below the diaphragm, a liver
    #: reaching past the midline, and clavicles (medassist/synth/habitus.py); False: the
    #: original generator.
    soft_tissue_fill: bool = False
    #: SD (HU) range of a fine (4-12 mm) texture of fat and soft tissue outside the lungs;
    #: (0, 0): none, the original generator (medassist/synth/habitus.py).
    soft_texture_hu: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        _range("anatomy.size_scale", self.size_scale, 0.5, 1.6)
        _range("anatomy.fat_mm", self.fat_mm, 0.0, 80.0)
        _range("anatomy.muscle_mm", self.muscle_mm, 2.0, 60.0)
        if not 0.0 <= self.position_offset_mm <= 60.0:
            raise SynthConfigError("anatomy.position_offset_mm must be in [0, 60]")
        _range("anatomy.lung_hu", self.lung_hu, -950.0, -600.0)
        _range("anatomy.heart_scale", self.heart_scale, 0.6, 1.2)
        if not 2 <= self.vessel_generations <= 9:
            raise SynthConfigError("anatomy.vessel_generations must be in [2, 9]")
        _range("anatomy.lung_gradient_hu", self.lung_gradient_hu, 0.0, 200.0)
        _range("anatomy.parenchyma_texture_hu", self.parenchyma_texture_hu, 0.0, 120.0)
        _range("anatomy.parenchyma_subpleural_hu", self.parenchyma_subpleural_hu, 0.0, 200.0)
        _range("anatomy.parenchyma_relief_mm", self.parenchyma_relief_mm, 0.0, 10.0)
        if not 2.0 <= self.rib_offset_mm <= 15.0:
            raise SynthConfigError(f"anatomy.rib_offset_mm must be in [2, 15], got "
                                   f"{self.rib_offset_mm}")
        _range("anatomy.chest_wall_mm", self.chest_wall_mm, 1.0, 30.0)
        _range("anatomy.soft_texture_hu", self.soft_texture_hu, 0.0, 80.0)
        if not 0.0 <= self.parenchyma_texture_skew <= 1.0:
            raise SynthConfigError("anatomy.parenchyma_texture_skew must be in [0, 1], got "
                                   f"{self.parenchyma_texture_skew}")


@dataclass(frozen=True)
class FindingsConfig:
    """How many findings a case has; the vocabulary itself is in ``configs/findings.yaml``."""

    #: Path of the vocabulary; a relative path is taken from the repository root.
    vocabulary: str = "configs/findings.yaml"
    normal_fraction: float = 0.4
    max_findings: int = 4
    #: Probability of each further finding after the first (geometric).
    extra_finding_probability: float = 0.35
    #: How much lung an emphysema occupies. "trace" (the original generator, kept so that
    #: earlier data and figures reproduce): 40 / 110 / 220 lucencies of ~4 mm for mild /
    #: moderate / severe, a median 0.18 % of the lung, below what 5 mm slices show (bench/
    #: finding_visibility.py). "fleischner": the share of the upper-zone lung that the
    #: Fleischner grades describe (mild 1-5 %, moderate 5-15 %, severe / confluent 15-30 %),
    #: with larger lucencies as the grade rises.
    emphysema_extent: str = "trace"
    #: Regional density drop (HU) of the lung around the lucencies of a severe emphysema:
    #: the alveolar walls between the lucencies are destroyed too, so the surrounding lung is
    #: less dense (what CT densitometry measures: LAA-950, Perc15).  Drawn per case from this
    #: range and scaled by grade (mild 0.35, moderate 0.65, severe 1); (0, 0): lucencies
    #: only (the original generator: its cases are unchanged).
    emphysema_destruction_hu: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.emphysema_extent not in ("trace", "fleischner"):
            raise SynthConfigError("findings.emphysema_extent must be 'trace' or 'fleischner', "
                                   f"got {self.emphysema_extent!r}")
        _range("findings.emphysema_destruction_hu", self.emphysema_destruction_hu, 0.0, 200.0)
        if not 0.3 <= self.normal_fraction < 1.0:
            raise SynthConfigError(
                f"findings.normal_fraction must be in [0.3, 1) (issue: >= 30% normal), "
                f"got {self.normal_fraction}"
            )
        if not 1 <= self.max_findings <= 8:
            raise SynthConfigError("findings.max_findings must be in [1, 8]")
        if not 0.0 <= self.extra_finding_probability < 1.0:
            raise SynthConfigError("findings.extra_finding_probability must be in [0, 1)")

    def vocabulary_path(self) -> Path:
        p = Path(self.vocabulary)
        if p.is_absolute():
            return p
        return Path(__file__).resolve().parents[2] / p


@dataclass(frozen=True)
class EMRConfig:
    """Clinical notes."""

    #: Fraction of cases with a long admission history (> long_min_tokens tokens).
    long_note_fraction: float = 0.05
    long_min_tokens: int = 16500
    contradiction_rate: float = 0.1
    injection_rate: float = 0.08
    other_mrn_rate: float = 0.08

    def __post_init__(self) -> None:
        for name in ("long_note_fraction", "contradiction_rate", "injection_rate",
                     "other_mrn_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SynthConfigError(f"emr.{name} must be in [0, 1], got {v}")
        if not 1000 <= self.long_min_tokens <= 200_000:
            raise SynthConfigError("emr.long_min_tokens must be in [1000, 200000]")


@dataclass(frozen=True)
class DicomConfig:
    """What is written as DICOM."""

    #: "explicit" (Explicit VR Little Endian) or "rle" (RLE Lossless).
    transfer_syntax: str = "explicit"
    localizer: bool = False
    second_kernel: bool = False
    #: Also write the finding label map (labels.npy.gz, uint8, value = finding index + 1).
    write_labels: bool = True

    def __post_init__(self) -> None:
        if self.transfer_syntax not in ("explicit", "rle"):
            raise SynthConfigError(
                f"dicom.transfer_syntax must be 'explicit' or 'rle', got {self.transfer_syntax!r}"
            )


@dataclass(frozen=True)
class FastPathConfig:
    """The model input grid of the tensor path: centred on the acquired volume, or with
    ``placement`` "lungs" placed along z as the DICOM path places it on a scan longer than the
    grid (:func:`medassist.synth.fast_path.placed_grid`; ``multimodal.config.CTStemConfig``'s
    ``placement`` and ``placement_max_loss``)."""

    shape: tuple[int, int, int] = (72, 128, 128)
    spacing_mm: tuple[float, float, float] = (5.0, 3.5, 3.5)
    pad_hu: float = -1024.0
    placement: str = "centre"
    placement_max_loss: float = 0.1

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(s < 4 or s > 1024 for s in self.shape):
            raise SynthConfigError(
                f"fast_path.shape must be 3 sizes in [4, 1024], got {self.shape}")
        if len(self.spacing_mm) != 3 or any(s <= 0.2 or s > 20 for s in self.spacing_mm):
            raise SynthConfigError("fast_path.spacing_mm must be 3 values in (0.2, 20]")
        if self.placement not in ("centre", "lungs"):
            raise SynthConfigError(
                f"fast_path.placement must be 'centre' or 'lungs', got {self.placement!r}")
        if not 0.0 <= self.placement_max_loss < 1.0:
            raise SynthConfigError(f"fast_path.placement_max_loss must be in [0, 1), got "
                                   f"{self.placement_max_loss!r}")


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of ``--cases`` written per split with ``--split all``."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if min(self.train, self.val, self.test) < 0 or abs(total - 1.0) > 1e-6:
            raise SynthConfigError(f"splits must be >= 0 and sum to 1, got {total}")


@dataclass(frozen=True)
class ShiftConfig:
    """Out-of-distribution settings used with ``--shift`` (replace the matching fields)."""

    model_names: tuple[str, ...] = ("SynthCT Legacy 16",)
    kvp: tuple[float, ...] = (80.0, 140.0)
    mas: tuple[float, float] = (25.0, 60.0)
    soft_kernels: tuple[str, ...] = ("FC13",)
    noise_scale: float = 1.6
    slice_thickness_mm: tuple[float, ...] = (3.0, 7.5)
    size_scale: tuple[float, float] = (1.15, 1.4)
    fat_mm: tuple[float, float] = (25.0, 55.0)

    def __post_init__(self) -> None:
        _choices("shift.model_names", self.model_names)
        _choices("shift.kvp", self.kvp)
        _range("shift.mas", self.mas, 5.0, 1000.0)
        _choices("shift.soft_kernels", self.soft_kernels)
        _choices("shift.slice_thickness_mm", self.slice_thickness_mm)
        _range("shift.size_scale", self.size_scale, 0.5, 1.6)
        _range("shift.fat_mm", self.fat_mm, 0.0, 80.0)
        if self.noise_scale < 0:
            raise SynthConfigError("shift.noise_scale must be >= 0")


#: the factor groups of the ``--shift`` split (:meth:`SynthConfig.shifted`)
SHIFT_GROUPS: tuple[str, ...] = ("scanner", "slices", "size", "fat")


@dataclass(frozen=True)
class SynthConfig:
    """All of the generator's configuration."""

    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    findings: FindingsConfig = field(default_factory=FindingsConfig)
    emr: EMRConfig = field(default_factory=EMRConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    fast_path: FastPathConfig = field(default_factory=FastPathConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)

    def shifted(self, groups: Sequence[str] = SHIFT_GROUPS) -> SynthConfig:
        """The configuration with the ``shift`` values applied, for the factor ``groups``
        (:data:`SHIFT_GROUPS`; all by default): "scanner" (model, kVp, mAs, soft kernels,
        noise), "slices" (slice thickness), "size" (anatomy size scale), "fat"."""
        unknown = sorted(set(groups) - set(SHIFT_GROUPS))
        if unknown:
            raise SynthConfigError(f"unknown shift groups {unknown}; choose from "
                                   f"{list(SHIFT_GROUPS)}")
        s, out = self.shift, self
        if "scanner" in groups:
            out = dataclasses.replace(out, scanner=dataclasses.replace(
                out.scanner, model_names=s.model_names, kvp=s.kvp, mas=s.mas,
                soft_kernels=s.soft_kernels, noise_scale=out.scanner.noise_scale * s.noise_scale))
        if "slices" in groups:
            out = dataclasses.replace(out, geometry=dataclasses.replace(
                out.geometry, slice_thickness_mm=s.slice_thickness_mm))
        if "size" in groups:
            out = dataclasses.replace(out, anatomy=dataclasses.replace(
                out.anatomy, size_scale=s.size_scale))
        if "fat" in groups:
            out = dataclasses.replace(out, anatomy=dataclasses.replace(
                out.anatomy, fat_mm=s.fat_mm))
        return out


def config_from_mapping(data: Mapping[str, Any]) -> SynthConfig:
    """Build a :class:`SynthConfig` from a nested mapping (unknown keys are errors)."""
    from dicom_io.config import from_mapping
    from dicom_io.errors import ConfigError

    body = data.get("synth", data)
    if not isinstance(body, Mapping):
        raise SynthConfigError("the 'synth' section must be a mapping")
    try:
        return from_mapping(SynthConfig, body)
    except ConfigError as exc:
        raise SynthConfigError(str(exc)) from exc


def load_config(path: str | Path | None = None) -> SynthConfig:
    """Load a YAML configuration file; ``None`` gives the defaults."""
    if path is None:
        return SynthConfig()
    from dicom_io.config import read_yaml
    from dicom_io.errors import ConfigError

    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        raise SynthConfigError(str(exc)) from exc
    return config_from_mapping(raw)
