"""Truth, label map, image and report agree, on 50 small (128^2, 5 mm) cases."""

from __future__ import annotations

import numpy as np
import pytest

from medassist.synth.case import Case, make_case
from medassist.synth.config import SynthConfig
from medassist.synth.findings import STATIONS, Finding, Vocabulary
from medassist.synth.phantom import LOBES, N_RIBS
from medassist.synth.report import _G as Grammar
from medassist.synth.report import finding_sentence
from medassist.synth.writer import render_case

N_CASES = 50
SEED = 2024
MEASURE_STEP_MM = 1.5  # grid on which the truth extents were measured


@pytest.fixture(scope="module")
def rendered(small_cfg: SynthConfig, vocab: Vocabulary) -> list[tuple[Case, np.ndarray,
                                                                     np.ndarray]]:
    out = []
    for i in range(N_CASES):
        case = make_case(small_cfg, vocab, SEED, i, "test")
        res = render_case(case)
        out.append((case, res.hu, res.labels))
    return out


def test_at_least_30_percent_normal(rendered: list[tuple[Case, np.ndarray, np.ndarray]]) -> None:
    normal = sum(1 for c, _h, _l in rendered if not c.findings)
    assert normal / len(rendered) >= 0.30
    assert normal < len(rendered)  # and some are abnormal


def _anat(case: Case, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = case.acquisition.grid.index_to_world(idx)
    an = case.anatomy
    return w[:, 2] - an.cx, w[:, 1] - an.cy, w[:, 0] - an.z_carina


def _check_finding(case: Case, hu: np.ndarray, labels: np.ndarray, f: Finding) -> None:
    an = case.anatomy
    grid = case.acquisition.grid
    mask = labels == f.index + 1
    assert mask.any(), f"{f.kind} has no labelled voxels"
    idx = np.argwhere(mask)
    u, v, z = _anat(case, idx)
    cu, cv, cz = float(u.mean()), float(v.mean()), float(z.mean())
    med = float(np.median(hu[mask]))
    # side, by patient coordinates (LPS: patient's left is +x)
    if f.side == "right":
        assert cu < an.mid_u, f"{f.kind} stated right but centroid is left of midline"
    elif f.side == "left":
        assert cu > an.mid_u, f"{f.kind} stated left but centroid is right of midline"
    elif f.side == "midline":
        assert abs(cu - an.mid_u) < 40.0
    elif f.side == "bilateral":
        assert (u < an.mid_u).any() and (u > an.mid_u).any()
    # size: labelled extent along each axis within one voxel (+ the truth measuring step)
    if f.kind != "emphysema":
        measured = (idx.max(0) - idx.min(0) + 1) * np.asarray(grid.spacing)
        tol = np.asarray(grid.spacing) + MEASURE_STEP_MM + 0.01
        # a slice is labelled when the finding covers any point of its slab (sub-samples at
        # +-thickness/4), so along z the labelled extent may exceed by half a slice more
        tol[0] += 0.5 * grid.spacing[0]
        if f.kind in ("pneumothorax", "rib_fracture"):
            # thin curved regions (a tapering rim, a rib segment): their extreme points need
            # not fall on voxel centres in the other two axes, so one more voxel is allowed
            tol = tol + np.asarray(grid.spacing)
        axes = [0] if f.kind == "pneumothorax" else [0, 1, 2]
        # a pneumothorax rim only a few mm thick runs along the lateral wall, parallel to y:
        # a 3 mm grid can miss whole stretches of it in-plane, so only z is compared
        diff = np.abs(measured - np.asarray(f.extent_mm))[axes]
        assert np.all(diff <= tol[axes]), (f.kind, measured, f.extent_mm)
    # location and image content
    k = f.kind
    lung = an.lung_hu
    if k in ("lung_nodule", "lung_mass", "consolidation"):
        lobe = an.lobe_index(u, v, z)
        # a 5 mm slab straddles the oblique fissures: most, not all, voxels are in the lobe
        assert np.mean(lobe == LOBES.index(f.attrs["lobe"])) >= 0.7, (k, f.attrs["lobe"])
        if k != "consolidation" and f.attrs.get("composition") == "ground_glass":
            assert med > lung + 60
        else:
            assert med > lung + 150
    elif k == "pleural_effusion":
        assert cv > 0.0  # layering posteriorly (dependent, supine)
        assert -200 < med < 120
    elif k == "pneumothorax":
        assert cv < 0.3 * an.cav_b0  # non-dependent (anterior)
        assert med < lung - 50
    elif k == "emphysema":
        assert med < lung - 20  # small low-attenuation areas, partial volume at 5 mm
        assert cz > an.dia_r
    elif k == "mediastinal_lymphadenopathy":
        su, sv, sz = STATIONS[f.attrs["station"]]
        assert np.hypot(cu - su * an.size, cv - sv * an.size) < 20 and abs(cz - sz) < 25
        assert med > -40
    elif k in ("pericardial_effusion", "cardiomegaly"):
        c, _r = an.heart_geometry(an.cardiac_extra)
        assert np.hypot(cu - c[0], cv - c[1]) < 20
        if k == "cardiomegaly":
            width = (idx[:, 2].max() - idx[:, 2].min() + 1) * grid.spacing[2]
            ctr = width / f.extra["thoracic_width_mm"]
            assert abs(ctr - f.size_mm) <= (grid.spacing[2] + 0.01) / f.extra[
                "thoracic_width_mm"]
            assert med > 0
        else:
            assert -80 < med < 90
    elif k == "liver_lesion":
        liver = an.hu["liver"]
        assert (med < liver - 10) if f.attrs["density"] == "hypodense" else (med > liver + 10)
    elif k == "rib_fracture":
        _dr, phi, _am, _hp = an.rib_frame(np.asarray(cu), np.asarray(cv), np.asarray(cz))
        seg = "posterior" if phi < 0.33 else ("lateral" if phi < 0.66 else "anterior")
        assert seg == f.attrs["segment"]
        dz = [abs(float(an.rib_centre_z(i, phi)) - cz) for i in range(N_RIBS)]
        assert int(np.argmin(dz)) + 1 == int(f.attrs["rib"])
        assert med < an.hu["bone"] - 100


def test_truth_labels_and_image_agree(
        rendered: list[tuple[Case, np.ndarray, np.ndarray]]) -> None:
    checked = 0
    kinds = set()
    for case, hu, labels in rendered:
        for f in case.findings:
            _check_finding(case, hu, labels, f)
            checked += 1
            kinds.add(f.kind)
        # nothing is labelled that the truth does not list
        assert set(np.unique(labels)) <= {0} | {f.index + 1 for f in case.findings}
    assert checked >= 20 and len(kinds) >= 6


def test_report_states_every_finding_and_negatives(
        rendered: list[tuple[Case, np.ndarray, np.ndarray]]) -> None:
    for case, _hu, _labels in rendered:
        text = case.report.text
        for sec in ("INDICATION:", "TECHNIQUE:", "FINDINGS:", "IMPRESSION:"):
            assert sec in text
        kinds = {f.kind for f in case.findings}
        for f in case.findings:
            if f.side in ("right", "left"):
                assert f.side in case.report.findings.lower()
            if f.kind in ("lung_nodule", "lung_mass", "consolidation", "liver_lesion"):
                assert f.location.lower() in case.report.findings.lower()
        if "pleural_effusion" not in kinds:
            assert "No pleural effusion." in text
        if "pneumothorax" not in kinds:
            assert "No pneumothorax." in text
        if not case.findings:
            assert "No acute cardiopulmonary abnormality." in text


def test_grammar_varies_phrasing(rendered: list[tuple[Case, np.ndarray, np.ndarray]]) -> None:
    f = next(f for c, _h, _l in rendered for f in c.findings)
    phrasings = {finding_sentence(_G(np.random.default_rng(s)), f) for s in range(20)}
    assert len(phrasings) >= 2


def _G(rng: np.random.Generator) -> Grammar:
    return Grammar(rng)
