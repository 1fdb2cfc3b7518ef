"""Frozen, validated configuration for :mod:`dicom_io`.

YAML files in ``configs/`` map onto these dataclasses with :func:`load_config`.
Precedence: explicit overrides (the CLI), then environment variables
(``MEDASSIST_DICOM__<SECTION>__<FIELD>``), then the file, then the defaults.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dicom_io.errors import ConfigError

ENV_PREFIX = "MEDASSIST_DICOM__"


class TiltPolicy(StrEnum):
    """What to do with a gantry-tilted series."""

    RESAMPLE = "resample"
    REFUSE = "refuse"


class SpacingPolicy(StrEnum):
    """What to do with uneven slice spacing."""

    RESAMPLE = "resample"
    REFUSE = "refuse"


@dataclass(frozen=True)
class SelectionConfig:
    """Rules that choose the diagnostic series of a study."""

    modality: str = "CT"
    require_original_primary: bool = True
    min_slices: int = 16
    #: Regular expressions (case-insensitive, searched in ConvolutionKernel) for a soft-tissue
    #: reconstruction: GE STANDARD/SOFT, Philips A/B/C, Siemens B/Br/I/J/Q 10-49, Canon FC0x-2x.
    soft_tissue_kernels: tuple[str, ...] = (
        r"^STANDARD", r"^SOFT", r"^STD", r"^[ABC]$", r"^(B|BR|BF|I|J|Q|HR)[1-4][0-9]",
        r"^FC[0-2][0-9]",
    )
    #: Regular expressions for a sharp (lung/bone) reconstruction, which is not preferred.
    sharp_kernels: tuple[str, ...] = (
        r"LUNG", r"BONE", r"SHARP", r"DETAIL", r"EDGE", r"^[DELY]$", r"^Y[A-D]$",
        r"^(B|BR|BL|I|J|Q|HR)[5-9][0-9]", r"^FC[5-9][0-9]",
    )
    prefer_soft_tissue_kernel: bool = True
    prefer_thinner_slices: bool = True
    #: Slices thinner than this are not preferred further (a 0.6 mm stack is not better than 1 mm).
    thinnest_useful_mm: float = 1.0

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ConfigError(f"selection.min_slices must be >= 1, got {self.min_slices}")
        if self.thinnest_useful_mm <= 0:
            raise ConfigError("selection.thinnest_useful_mm must be > 0")
        if not self.modality:
            raise ConfigError("selection.modality must not be empty")
        import re

        for pattern in (*self.soft_tissue_kernels, *self.sharp_kernels):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"selection kernel pattern {pattern!r} is invalid: {exc}") \
                    from None


@dataclass(frozen=True)
class AssemblyConfig:
    """How a series becomes a volume."""

    #: Strict: any anomaly that the policies below do not explicitly allow raises.
    #: Lenient: gaps are interpolated and exact duplicate slices merged, each with a flag.
    strict: bool = True
    tilt: TiltPolicy = TiltPolicy.RESAMPLE
    uneven_spacing: SpacingPolicy = SpacingPolicy.RESAMPLE
    #: Relative tolerance on slice spacing before it counts as uneven.
    spacing_rel_tol: float = 0.02
    #: Absolute tolerance (mm) on slice spacing before it counts as uneven.
    spacing_abs_tol_mm: float = 0.05
    #: Tolerance on direction cosines.
    orientation_tol: float = 1e-3
    #: Tilt angles (degrees) below this are treated as no tilt.
    tilt_tol_deg: float = 0.5
    #: HU used where a resampled grid lies outside the acquired slab.
    pad_hu: float = -1024.0
    #: Worker processes for compressed decoding (1 disables the pool).
    decode_workers: int = 2
    #: Largest Rows or Columns accepted (a guard against absurd allocations).
    max_matrix: int = 4096

    def __post_init__(self) -> None:
        object.__setattr__(self, "tilt", TiltPolicy(self.tilt))
        object.__setattr__(self, "uneven_spacing", SpacingPolicy(self.uneven_spacing))
        if not 0 <= self.spacing_rel_tol < 0.5:
            raise ConfigError("assembly.spacing_rel_tol must be in [0, 0.5)")
        if self.spacing_abs_tol_mm < 0:
            raise ConfigError("assembly.spacing_abs_tol_mm must be >= 0")
        if not 0 < self.orientation_tol < 0.1:
            raise ConfigError("assembly.orientation_tol must be in (0, 0.1)")
        if not 0 <= self.tilt_tol_deg < 45:
            raise ConfigError("assembly.tilt_tol_deg must be in [0, 45)")
        if self.decode_workers < 1:
            raise ConfigError("assembly.decode_workers must be >= 1")
        if not 16 <= self.max_matrix <= 65535:
            raise ConfigError("assembly.max_matrix must be in [16, 65535]")


@dataclass(frozen=True)
class DicomIOConfig:
    """All of :mod:`dicom_io`'s configuration."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)


T = TypeVar("T")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_mapping(tp, value, where=where)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list")
        return tuple(_coerce(v, item_tp, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{where}={value!r} is not one of: {allowed}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        truthy, falsy = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
        if isinstance(value, str) and value.lower() in truthy | falsy:
            return value.lower() in truthy
        raise ConfigError(f"{where}={value!r} is not a boolean")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} is not a valid {tp.__name__}") from None
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a nested mapping; unknown keys are errors."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {unknown} in {where or cls.__name__}; "
            f"allowed: {sorted(names)}"
        )
    kwargs = {
        k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration for {cls.__name__}: {exc}") from exc


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested overrides from ``PREFIX<SECTION>__<FIELD>=value`` environment variables."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(prefix):
            continue
        parts = [p.lower() for p in key[len(prefix):].split("__") if p]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if parts:
            node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a typed error naming the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", path=p) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=p) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("configuration file must hold a mapping at the top level", path=p)
    return data


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DicomIOConfig:
    """Load :class:`DicomIOConfig`: overrides > environment > file > defaults.

    A file may hold the sections at the top level or under a ``dicom_io`` key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        data = dict(raw.get("dicom_io", raw))
    data = _deep_merge(data, env_overrides(ENV_PREFIX, environ))
    if overrides:
        data = _deep_merge(data, overrides)
    return from_mapping(DicomIOConfig, data)
