"""One synthetic case: patient profile, acquisition, anatomy, findings, EMR and report.

Randomness comes only from :class:`numpy.random.SeedSequence` ``[seed, split, shift, index]``
spawned into independent streams (profile, anatomy, acquisition, findings, EMR, report,
noise), so the same seed gives the same case and changing one part does not move the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medassist.synth.config import SynthConfig
from medassist.synth.errors import GenerationError
from medassist.synth.findings import Bounds, Finding, Vocabulary, finding_weights, place_finding
from medassist.synth.phantom import Anatomy, Grid, Physics, sample_anatomy, with_cardiac_extra

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

FIRST_F = ("Anna", "Maria", "Sofia", "Elena", "Laura", "Julia", "Sarah", "Emma", "Clara",
           "Ines", "Grace", "Helen", "Ruth", "Nora", "Lucia", "Hannah", "Olivia", "Marta")
FIRST_M = ("James", "Peter", "Thomas", "Daniel", "Paul", "Martin", "David", "Jonas", "Lukas",
           "Samuel", "Henry", "Oscar", "Felix", "Victor", "Hugo", "Adam", "Karl", "Leon")
LAST = ("Smith", "Meyer", "Novak", "Garcia", "Rossi", "Jansen", "Kowalski", "Dubois", "Silva",
        "Larsen", "Nielsen", "Moreau", "Fischer", "Bauer", "Costa", "Ferrari", "Hughes",
        "Keller", "Lindqvist", "Moretti", "Brennan", "Okafor", "Tanaka", "Haddad")
INSTITUTIONS = ("St. Aldric General Hospital", "Northfield University Medical Center",
                "Riverside Community Hospital", "Lakeview Regional Clinic")
PRIMARIES = ("breast cancer", "colorectal cancer", "renal cell carcinoma", "melanoma",
             "head and neck squamous cell carcinoma")


def uid_from(*parts: object) -> str:
    """A deterministic DICOM UID under the 2.25 (UUID-derived) root."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big") >> 1)


def uuid_from(*parts: object) -> str:
    h = hashlib.sha256(("uuid/" + "/".join(str(p) for p in parts)).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


@dataclass(frozen=True)
class Profile:
    """Patient identity (synthetic PHI) and clinical facts the EMR carries."""

    given: str
    family: str
    sex: str
    birth_date: dt.date
    age: int
    mrn: str
    accession: str
    institution: str
    referring: str
    study_datetime: dt.datetime
    smoking: str
    pack_years: int
    known_primary: str | None
    heart_failure: bool
    ejection_fraction: int | None
    fever: bool
    wbc: float
    copd: bool
    hypertension: bool
    diabetes: bool
    trauma: bool

    @property
    def heavy_smoker(self) -> bool:
        return self.pack_years >= 30

    @property
    def leukocytosis(self) -> bool:
        return self.wbc > 11.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["birth_date"] = self.birth_date.isoformat()
        d["study_datetime"] = self.study_datetime.isoformat()
        d["wbc"] = round(self.wbc, 1)
        return d


def sample_profile(rng: np.random.Generator, seed_key: str) -> Profile:
    sex = "F" if rng.random() < 0.5 else "M"
    given = str(rng.choice(FIRST_F if sex == "F" else FIRST_M))
    family = str(rng.choice(LAST))
    age = int(np.clip(rng.normal(62, 13), 19, 95))
    study = dt.datetime(2019, 1, 1, 7, 0) + dt.timedelta(
        days=int(rng.integers(0, 5 * 365)), minutes=int(rng.integers(0, 12 * 60)),
        seconds=int(rng.integers(0, 60)))
    birth = study.date() - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    smoking = str(rng.choice(["never", "former", "current"], p=[0.45, 0.35, 0.2]))
    pack_years = 0 if smoking == "never" else int(np.clip(rng.lognormal(math.log(25), 0.6), 2, 120))
    known_primary = str(rng.choice(PRIMARIES)) if rng.random() < 0.15 else None
    hf = bool(rng.random() < 0.12 + 0.004 * max(0, age - 60))
    fever = bool(rng.random() < 0.15)
    wbc = float(rng.normal(13.5, 2.5) if (fever and rng.random() < 0.75) else rng.normal(7.5, 1.8))
    digest = hashlib.sha256(seed_key.encode()).hexdigest()
    return Profile(
        given=given, family=family, sex=sex, birth_date=birth, age=age,
        mrn=str(10_000_000 + int(digest[:12], 16) % 89_999_999),
        accession="A" + str(int(digest[12:24], 16) % 10**9).zfill(9),
        institution=str(rng.choice(INSTITUTIONS)),
        referring=f"{rng.choice(LAST)}^{rng.choice(FIRST_F + FIRST_M)}^^Dr.",
        study_datetime=study, smoking=smoking, pack_years=pack_years,
        known_primary=known_primary, heart_failure=hf,
        ejection_fraction=int(rng.integers(20, 45)) if hf else None, fever=fever,
        wbc=max(2.0, wbc), copd=bool(smoking != "never" and rng.random() < 0.3),
        hypertension=bool(rng.random() < 0.4), diabetes=bool(rng.random() < 0.2),
        trauma=bool(rng.random() < 0.06),
    )


@dataclass(frozen=True)
class Acquisition:
    """Scanner protocol and the DICOM grid."""

    grid: Grid
    model_name: str
    kvp: float
    mas: float
    thickness_mm: float
    kernel: str
    sharp_kernel: str
    contrast: bool
    fov_mm: float
    physics: Physics
    noise_sd_hu: float

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": {"origin_zyx": [round(x, 4) for x in self.grid.origin],
                     "spacing_zyx": [round(x, 6) for x in self.grid.spacing],
                     "shape_zyx": list(self.grid.shape)},
            "model_name": self.model_name, "kvp": self.kvp, "mas": round(self.mas, 1),
            "slice_thickness_mm": self.thickness_mm, "kernel": self.kernel,
            "sharp_kernel": self.sharp_kernel, "contrast": self.contrast,
            "fov_mm": round(self.fov_mm, 2),
            "noise_sd_hu": round(self.noise_sd_hu, 2),
        }


def sample_acquisition(rng: np.random.Generator, cfg: SynthConfig, an: Anatomy) -> Acquisition:
    g, sc = cfg.geometry, cfg.scanner
    matrix = int(rng.choice(g.matrix))
    thick = float(rng.choice(g.slice_thickness_mm))
    width = 2 * an.body_a + abs(an.cx) * 2
    fov = float(np.clip(width + rng.uniform(*g.fov_margin_mm), *g.fov_mm))
    ps = fov / matrix
    coverage = float(rng.uniform(*g.coverage_mm))
    n = int(min(g.max_slices, max(8, round(coverage / thick))))
    top = an.z_carina + an.apex_z + float(rng.uniform(*g.top_margin_mm))
    z0 = round(top - (n - 1) * thick, 3)
    xy0 = -fov / 2 + ps / 2
    grid = Grid((z0, xy0, xy0), (thick, ps, ps), (n, matrix, matrix))
    kvp = float(rng.choice(sc.kvp))
    mas = float(rng.uniform(*sc.mas))
    base = Physics(kvp=kvp, mas=mas, thickness_mm=thick, kernel_sharp=False,
                   psf_fwhm_mm=sc.psf_fwhm_mm, noise_ref_hu=sc.noise_ref_hu,
                   noise_scale=sc.noise_scale, beam_hardening_hu=sc.beam_hardening_hu,
                   noise=sc.noise)
    return Acquisition(grid=grid, model_name=str(rng.choice(sc.model_names)), kvp=kvp, mas=mas,
                       thickness_mm=thick, kernel=str(rng.choice(sc.soft_kernels)),
                       sharp_kernel=str(rng.choice(sc.sharp_kernels)), contrast=an.contrast,
                       fov_mm=fov, physics=base, noise_sd_hu=base.noise_sd(an, ps))


def bounds_of(acq: Acquisition, an: Anatomy) -> Bounds:
    zs, ys, xs = acq.grid.axes()
    return Bounds((float(zs[0] - an.z_carina), float(zs[-1] - an.z_carina)),
                  (float(ys[0] - an.cy), float(ys[-1] - an.cy)),
                  (float(xs[0] - an.cx), float(xs[-1] - an.cx)))


def sample_findings(rng: np.random.Generator, cfg: SynthConfig, vocab: Vocabulary,
                    an: Anatomy, bounds: Bounds, profile: Profile,
                    ) -> tuple[list[Finding], Anatomy]:
    """Normal with probability ``normal_fraction``; otherwise 1..max findings.

    Frequencies depend on the profile (EMR facts): a known primary makes nodules likelier,
    heavy smoking nodules, masses and emphysema, heart failure effusion and cardiomegaly,
    fever consolidation, trauma rib fractures and pneumothorax.
    """
    fc = cfg.findings
    if rng.random() < fc.normal_fraction:
        return [], an
    n = 1
    while n < fc.max_findings and rng.random() < fc.extra_finding_probability:
        n += 1
    boosts = {
        "lung_nodule": 2.0 if profile.known_primary else (1.5 if profile.heavy_smoker else 1.0),
        "lung_mass": 2.0 if profile.heavy_smoker else 1.0,
        "emphysema": 3.0 if profile.heavy_smoker else 1.0,
        "pleural_effusion": 3.0 if profile.heart_failure else 1.0,
        "cardiomegaly": 3.0 if profile.heart_failure else 1.0,
        "consolidation": 3.0 if profile.fever else 1.0,
        "rib_fracture": 5.0 if profile.trauma else 1.0,
        "pneumothorax": 3.0 if profile.trauma else 1.0,
        "liver_lesion": 2.0 if profile.known_primary else 1.0,
    }
    specs, w = finding_weights(vocab, boosts)
    unique = {"cardiomegaly", "pericardial_effusion", "emphysema", "pneumothorax",
              "pleural_effusion"}
    chosen: list[Any] = []
    attempts = 0
    while len(chosen) < n and attempts < 4 * n + 4:
        attempts += 1
        spec = specs[int(rng.choice(len(specs), p=w))]
        if spec.name in unique and any(c.name == spec.name for c in chosen):
            continue
        chosen.append(spec)
    # cardiomegaly changes the heart and so the lungs: place it first, then the rest
    chosen.sort(key=lambda sp: sp.name != "cardiomegaly")
    placed: list[Finding] = []
    for spec in chosen:
        side_attr = spec.attribute("side")
        sides: list[str | None] = [None]
        if spec.name == "pleural_effusion" and side_attr is not None:
            side = side_attr.sample(rng)
            sides = ["right", "left"] if side == "bilateral" else [side]
        for side_hint in sides:
            f = place_finding(rng, an, spec, len(placed), bounds, placed, side_hint=side_hint,
                              emphysema_extent=cfg.findings.emphysema_extent,
                              emphysema_destruction_hu=cfg.findings.emphysema_destruction_hu)
            if f is None:
                continue
            if side_hint is not None and len(sides) == 2:
                f.attrs["bilateral"] = "yes"
            placed.append(f)
            if f.kind == "cardiomegaly":
                an = with_cardiac_extra(an, f.extra["cardiac_scale"])
    # if no finding fits this anatomy and coverage, the case stays normal
    return placed, an


@dataclass(frozen=True)
class Case:
    """Everything about one case except the rendered pixels."""

    case_id: str
    seed: int
    split: str
    shift: bool
    index: int
    profile: Profile
    anatomy: Anatomy
    acquisition: Acquisition
    findings: tuple[Finding, ...]
    emr: Any  # medassist.synth.emr.Note
    report: Any  # medassist.synth.report.Report
    noise_seed: tuple[int, ...]

    def uid(self, *parts: object) -> str:
        return uid_from("medassist-synth", self.seed, self.split, int(self.shift), self.index,
                        *parts)

    def noise_rng(self, series: int = 0) -> np.random.Generator:
        return np.random.default_rng([*self.noise_seed, series])


def make_case(cfg: SynthConfig, vocab: Vocabulary, seed: int, index: int, split: str = "train",
              shift: bool = False) -> Case:
    """Sample case ``index`` of ``split`` for ``seed`` (no pixels yet)."""
    from medassist.synth.emr import make_note
    from medassist.synth.report import make_report

    if split not in SPLITS:
        raise GenerationError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    if seed < 0 or index < 0:
        raise GenerationError("seed and index must be >= 0")
    ccfg = cfg.shifted() if shift else cfg
    ss = np.random.SeedSequence([seed, SPLITS[split], int(shift), index])
    r_prof, r_anat, r_acq, r_find, r_emr, r_rep, r_noise = (
        np.random.default_rng(c) for c in ss.spawn(7))
    key = f"{seed}/{split}/{int(shift)}/{index}"
    profile = sample_profile(r_prof, key)
    ac = ccfg.anatomy
    contrast = bool(r_acq.random() < ccfg.scanner.contrast_probability)
    an = sample_anatomy(r_anat, ac.size_scale, ac.fat_mm, ac.position_offset_mm, ac.lung_hu,
                        ac.heart_scale, ac.vessel_generations, contrast,
                        lung_gradient_hu=ac.lung_gradient_hu,
                        texture_hu=ac.parenchyma_texture_hu,
                        subpleural_hu=ac.parenchyma_subpleural_hu,
                        relief_mm=ac.parenchyma_relief_mm,
                        texture_skew=ac.parenchyma_texture_skew,
                        rib_offset_mm=ac.rib_offset_mm, chest_wall_mm=ac.chest_wall_mm,
                        soft_tissue_fill=ac.soft_tissue_fill, muscle_mm=ac.muscle_mm,
                        soft_texture_hu=ac.soft_texture_hu)
    acq = sample_acquisition(r_acq, ccfg, an)
    bounds = bounds_of(acq, an)
    findings, an = sample_findings(r_find, ccfg, vocab, an, bounds, profile)
    note = make_note(r_emr, ccfg.emr, profile, findings, acq, key)
    report = make_report(r_rep, profile, findings, acq, note)
    noise_seed = tuple(int(x) for x in r_noise.integers(0, 2**32, size=4))
    return Case(case_id=f"case_{index:05d}", seed=seed, split=split, shift=shift, index=index,
                profile=profile, anatomy=an, acquisition=acq, findings=tuple(findings),
                emr=note, report=report, noise_seed=noise_seed)
