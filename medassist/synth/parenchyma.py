"""Lung-parenchyma realism of the phantom (opt-in, ``anatomy.parenchyma_*`` settings).

The original phantom's lung is smooth: on the model grid its local HU standard deviation is
about a fifth of a real chest CT's, its posterior-anterior (gravity) gradient under half, and
its density hardly rises towards the pleura, which in real lungs it does (subpleural and
dependent density).  The lung surface is a smooth super-ellipse.  ``bench/lung_realism.py``
measures all of these against the shared real series.  This module adds, per patient:

- a parenchymal texture: a sum of random band-limited waves (wavelength 7 to 20 mm, so the
  model grid resolves them), unit SD, scaled to ``texture_hu``;
- subpleural density: ``subpleural_hu`` at the lung surface, decaying inwards over
  ``SUBPLEURAL_DECAY_MM``, stronger posteriorly (dependent lung);
- pleural relief: the lung surface pulled inwards by up to ``relief_mm`` in a smooth uneven
  pattern (the gap fills with the extrapleural fat already painted there).

Every value is drawn from the anatomy generator *after* everything else, and only when the
settings are non-zero, so cases generated without them are unchanged bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FArr = npt.NDArray[np.floating[Any]]

#: Texture waves per patient (more waves: closer to a Gaussian field, slower rendering).
N_TEXTURE_WAVES = 12
#: Low-frequency waves of the pleural relief.
N_RELIEF_WAVES = 4
#: e-folding depth (mm) of the subpleural density.
SUBPLEURAL_DECAY_MM = 8.0


@dataclass(frozen=True)
class Parenchyma:
    """One patient's parenchymal texture, subpleural density and pleural relief."""

    texture_hu: float
    subpleural_hu: float
    relief_mm: float
    #: Texture waves, rows (ku, kv, kz, phase) in rad/mm.
    texture_waves: FArr = field(repr=False)
    #: Relief waves, rows (ku, kv, kz, phase) in rad/mm.
    relief_waves: FArr = field(repr=False)
    #: Right skew of the texture (0: symmetric).  Lung HU is bounded below by air and has a
    #: long dense tail (vessels, interstitium), so real parenchyma's low tail is short: with
    #: skew k the unit field w becomes the standardised log-normal (exp(k w) - exp(k^2 / 2)) /
    #: sqrt((exp(k^2) - 1) exp(k^2)), bounded below at about -1 / k SD for small k.
    texture_skew: float = 0.0

    def texture(self, u: FArr, v: FArr, za: FArr) -> FArr:
        """Texture in HU (zero mean, SD ~ ``texture_hu``) at anatomy coordinates."""
        if self.texture_hu <= 0:
            return np.zeros(np.broadcast_shapes(u.shape, v.shape, za.shape), dtype=np.float32)
        w = unit_waves(self.texture_waves, u, v, za)
        k = self.texture_skew
        if k > 0:
            w = ((np.exp(np.float32(k) * w) - np.float32(math.exp(k * k / 2)))
                 / np.float32(math.sqrt((math.exp(k * k) - 1) * math.exp(k * k))))
        return np.asarray(w * np.float32(self.texture_hu), dtype=np.float32)

    def relief(self, u: FArr, v: FArr, za: FArr) -> FArr:
        """How far (mm, >= 0) the lung surface is pulled in from the pleural cavity."""
        if self.relief_mm <= 0:
            return np.zeros(np.broadcast_shapes(u.shape, v.shape, za.shape), dtype=np.float32)
        w = unit_waves(self.relief_waves, u, v, za)  # ~ unit SD
        return np.asarray(np.clip(0.5 + 0.35 * w, 0.0, 1.0) * np.float32(self.relief_mm))

    def subpleural(self, sd_lung: FArr, posterior: FArr) -> FArr:
        """Extra HU at depth ``-sd_lung`` (mm) below the lung surface; ``posterior`` in [0, 1]
        (0 anterior, 1 posterior) weights it towards the dependent lung."""
        if self.subpleural_hu <= 0:
            return np.zeros(np.broadcast_shapes(sd_lung.shape, posterior.shape),
                            dtype=np.float32)
        depth = np.clip(-sd_lung, 0.0, None)
        out = (np.float32(self.subpleural_hu) * np.exp(-depth / SUBPLEURAL_DECAY_MM)
               * (0.35 + 0.65 * posterior))
        return np.asarray(out, dtype=np.float32)

    def to_json(self) -> dict[str, float]:
        return {"texture_hu": round(self.texture_hu, 3),
                "subpleural_hu": round(self.subpleural_hu, 3),
                "relief_mm": round(self.relief_mm, 3),
                **({"texture_skew": round(self.texture_skew, 3)} if self.texture_skew else {})}


def wave_terms(waves: FArr, u: FArr, v: FArr, za: FArr) -> Iterator[FArr]:
    """One separable product sin(kz za + ph) sin(kv v + ph / 2) sin(ku u + 1.7 ph) per row
    (ku, kv, kz, ph) of ``waves``: the phantom's low-frequency texture and this module's waves."""
    for ku, kv, kz, ph in waves:
        yield (np.sin(kz * za + ph) * np.sin(kv * v + 0.5 * ph)) * np.sin(ku * u + 1.7 * ph)


def unit_waves(waves: FArr, u: FArr, v: FArr, za: FArr) -> FArr:
    """Sum of :func:`wave_terms`, normalised to unit SD."""
    out: FArr | None = None
    for t in wave_terms(waves, u, v, za):
        out = t if out is None else out + t
    if out is None:
        raise ValueError("no waves")
    # each product of three independent sines has SD (1/sqrt 2)^3
    return (out / np.float32(math.sqrt(len(waves)) * 2 ** -1.5)).astype(np.float32)


def random_waves(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]) -> FArr:
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    # |k| per axis at least a quarter of the total so that each separable factor varies
    k = 2 * math.pi / rng.uniform(*wavelength_mm, size=(n, 1))
    kk = np.sign(direction) * np.maximum(np.abs(direction), 0.25) * k
    return np.column_stack([kk, rng.uniform(0, 2 * math.pi, size=n)])


def sample_parenchyma(rng: np.random.Generator, texture_hu: tuple[float, float],
                      subpleural_hu: tuple[float, float],
                      relief_mm: tuple[float, float],
                      texture_skew: float = 0.0) -> Parenchyma | None:
    """Draw one patient's parenchyma; ``None`` (and no draws) when every range is zero.
    ``texture_skew`` is a constant (no draw)."""
    if max(texture_hu[1], subpleural_hu[1], relief_mm[1]) <= 0:
        return None
    return Parenchyma(
        texture_hu=float(rng.uniform(*texture_hu)),
        subpleural_hu=float(rng.uniform(*subpleural_hu)),
        relief_mm=float(rng.uniform(*relief_mm)),
        texture_waves=random_waves(rng, N_TEXTURE_WAVES, (7.0, 20.0)),
        relief_waves=random_waves(rng, N_RELIEF_WAVES, (40.0, 120.0)),
        texture_skew=float(texture_skew),
    )
