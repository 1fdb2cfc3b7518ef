"""Body realism of the phantom outside the lungs (opt-in: ``anatomy.chest_wall_mm`` and
``anatomy.soft_tissue_fill``).

The original phantom's chest wall is thick (14 mm of muscle inside the sampled muscle layer)
and everything in the pleural cavity that is not lung, heart, vessel or organ is fat (-70 to
-105 HU): above the lung apices the thoracic inlet is an oval of fat, and below the diaphragm
the liver, spleen and stomach float in fat.  On a real chest CT (the shared Lung-PET-CT-Dx
A0001) the lungs reach the ribs through a thin wall, the thoracic inlet is muscle, thyroid
and vessels, and the upper abdomen is filled by a liver that reaches past the midline, and by
bowel with little fat.  A detector that has only seen the phantom takes large soft-tissue
regions where it learnt to expect fat for disease (``bench/dense_probe.py``; docs/model.md
"Twelfth round").  This module adds, per patient:

- ``wall_mm``: the chest-wall muscle inside the sampled muscle layer (drawn from
  ``anatomy.chest_wall_mm``; the lungs, which fill the cavity, grow as the wall thins);
- ``neck_hu``: the cavity above the thoracic inlet (from :data:`NECK_BELOW_APEX_MM` below the
  lung apex upwards) is soft tissue at the patient's muscle HU plus this offset; the lungs,
  trachea, oesophagus and vessels are painted over it;
- ``abdomen_hu``: the cavity below the diaphragm that no organ takes is filled at this HU
  (bowel and mesentery, from fatty to soft);
- ``liver_reach``: the liver's medial edge, as a fraction of the cavity half-width past the
  midline (:data:`LIVER_REACH`: the original liver);
- ``clavicle_mm``: the clavicles' radius; they run from the sternal notch out and up to the
  shoulders in front of the apices.

And, separately (``anatomy.soft_texture_hu``), a fine texture of the body outside the lungs:
random 4-12 mm waves of unit SD times a drawn amplitude, added to every voxel between -150
and 150 HU (fat and soft tissue) outside the lungs, as real muscle, fat septa and organ
parenchyma are not uniform (:class:`SoftTexture`).

The wall is drawn first and the rest last, and each only when its setting asks for it, so
cases generated without them are unchanged bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medassist.synth.parenchyma import FArr, random_waves, unit_waves

#: The original generator's chest-wall muscle inside the muscle layer (mm).
WALL_MM = 14.0
#: The original liver's medial edge (fraction of the cavity half-width).
LIVER_REACH = 0.25
#: The soft-tissue fill of the thoracic inlet starts this far (mm) below the lung apex.
NECK_BELOW_APEX_MM = 15.0


@dataclass(frozen=True)
class SoftFill:
    """One patient's soft-tissue fill of the thoracic inlet and upper abdomen, and clavicles."""

    neck_hu: float
    abdomen_hu: float
    liver_reach: float
    clavicle_mm: float

    def __post_init__(self) -> None:
        if not 0.0 < self.liver_reach < 1.0:
            raise ValueError(f"liver_reach must be in (0, 1), got {self.liver_reach}")
        if self.clavicle_mm <= 0:
            raise ValueError(f"clavicle_mm must be positive, got {self.clavicle_mm}")

    def to_json(self) -> dict[str, Any]:
        return {"neck_hu": round(self.neck_hu, 3), "abdomen_hu": round(self.abdomen_hu, 3),
                "liver_reach": round(self.liver_reach, 4),
                "clavicle_mm": round(self.clavicle_mm, 3)}


@dataclass(frozen=True)
class SoftTexture:
    """One patient's fine soft-tissue texture: ``hu`` times a unit-SD field of ``waves``
    (rows ku, kv, kz, phase in rad/mm)."""

    hu: float
    waves: FArr

    def field(self, u: FArr, v: FArr, za: FArr) -> FArr:
        return np.asarray(unit_waves(self.waves, u, v, za) * np.float32(self.hu),
                          dtype=np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"hu": round(self.hu, 3), "n_waves": int(self.waves.shape[0])}


#: Waves of the soft-tissue texture, and their wavelength range (mm).
N_SOFT_WAVES = 12
SOFT_WAVELENGTH_MM = (4.0, 12.0)


def sample_soft_texture(rng: np.random.Generator, soft_texture_hu: tuple[float, float]
                        ) -> SoftTexture | None:
    """One patient's soft-tissue texture; ``None`` (and no draws) for a zero range."""
    if soft_texture_hu[1] <= 0:
        return None
    return SoftTexture(hu=float(rng.uniform(*soft_texture_hu)),
                       waves=random_waves(rng, N_SOFT_WAVES, SOFT_WAVELENGTH_MM))


def sample_wall(rng: np.random.Generator, chest_wall_mm: tuple[float, float]) -> float:
    """The chest-wall muscle (mm); :data:`WALL_MM` and no draw for the original setting."""
    if tuple(chest_wall_mm) == (WALL_MM, WALL_MM):
        return WALL_MM
    return float(rng.uniform(*chest_wall_mm))


def sample_soft_fill(rng: np.random.Generator, enabled: bool, size: float) -> SoftFill | None:
    """One patient's fill; ``None`` (and no draws) when not enabled."""
    if not enabled:
        return None
    return SoftFill(neck_hu=float(rng.uniform(-15.0, 10.0)),
                    abdomen_hu=float(rng.uniform(-40.0, 35.0)),
                    liver_reach=float(rng.uniform(0.3, 0.5)),
                    clavicle_mm=float(rng.uniform(5.0, 7.0) * size))
