"""EMR notes, robustness labels, EMR-aware impression rules and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np

from medassist.synth import cli
from medassist.synth.case import Profile, make_case
from medassist.synth.config import EMRConfig, SynthConfig
from medassist.synth.findings import Finding, Vocabulary
from medassist.synth.report import impression_items


def _profile(**kw: object) -> Profile:
    base = dict(given="Anna", family="Novak", sex="F", birth_date=dt.date(1960, 1, 1), age=64,
                mrn="12345678", accession="A000000001", institution="X", referring="Y^Z",
                study_datetime=dt.datetime(2024, 1, 1, 9), smoking="never", pack_years=0,
                known_primary=None, heart_failure=False, ejection_fraction=None, fever=False,
                wbc=7.0, copd=False, hypertension=False, diabetes=False, trauma=False)
    base.update(kw)
    return Profile(**base)  # type: ignore[arg-type]


def _finding(kind: str, **attrs: str) -> Finding:
    a = {"side": "right", "location": "right upper lobe", "lobe": "RUL", **attrs}
    return Finding(kind, 0, a, (0.0, 0.0, 0.0), (4.0, 4.0, 4.0), 8.0)


def codes(p: Profile, fs: list[Finding]) -> set[str]:
    return {i.code for i in impression_items(p, fs)}


def test_impression_rules_depend_on_the_emr() -> None:
    nod = _finding("lung_nodule", composition="solid", margin="spiculated")
    assert "metastatic_disease_suspected" in codes(_profile(known_primary="melanoma"), [nod])
    smoker = _profile(smoking="current", pack_years=40)
    c = codes(smoker, [nod])
    assert "primary_lung_malignancy_suspected" in c and any(x.startswith("fleischner") for x in c)
    assert "primary_lung_malignancy_suspected" not in codes(_profile(), [nod])
    cons = _finding("consolidation")
    assert "pneumonia" in codes(_profile(fever=True, wbc=15.0), [cons])
    assert "pneumonia" not in codes(_profile(fever=True, wbc=8.0), [cons])
    eff = _finding("pleural_effusion")
    assert "effusion_cardiogenic" in codes(_profile(heart_failure=True), [eff])
    assert "effusion_nonspecific" in codes(_profile(), [eff])
    assert codes(_profile(), []) == {"normal"}


def test_generated_reports_follow_the_rules(small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    seen = set()
    for i in range(150):
        case = make_case(small_cfg, vocab, 5, i, "train")
        p, kinds = case.profile, {f.kind for f in case.findings}
        text = case.report.text
        if "lung_nodule" in kinds and p.known_primary:
            assert "suspicious for metastatic disease" in text
            seen.add("meta")
        if "consolidation" in kinds and p.fever and p.leukocytosis:
            assert "pneumonia" in text
            seen.add("pneu")
        if "pleural_effusion" in kinds and p.heart_failure:
            assert "likely cardiogenic" in text
            seen.add("card")
        # injected instructions never change the reference report
        if any(lab.kind == "prompt_injection" for lab in case.emr.labels) and case.findings:
            assert "No acute cardiopulmonary abnormality." not in text
    assert len(seen) >= 2


def test_robustness_labels_have_exact_spans(small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    cfg = dataclasses.replace(small_cfg, emr=EMRConfig(contradiction_rate=1.0,
                                                       injection_rate=1.0, other_mrn_rate=1.0))
    kinds: set[str] = set()
    for i in range(20):
        case = make_case(cfg, vocab, 8, i, "train")
        for lab in case.emr.labels:
            assert case.emr.text[lab.start:lab.end] == lab.text
            kinds.add(lab.kind)
            if lab.kind == "other_patient_mrn":
                assert lab.detail["mrn"] != case.profile.mrn and lab.detail["mrn"] in lab.text
    assert kinds == {"contradiction", "prompt_injection", "other_patient_mrn"}


def test_notes_range_from_a_few_lines_to_long_histories(
        small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    long_cfg = dataclasses.replace(small_cfg, emr=EMRConfig(long_note_fraction=1.0))
    long_case = make_case(long_cfg, vocab, 1, 0, "train")
    assert long_case.emr.tokens > 16_000
    lengths = [make_case(small_cfg, vocab, 1, i, "train").emr.text.count("\n")
               for i in range(20)]
    assert min(lengths) <= 10 < max(lengths)
    short = next(make_case(small_cfg, vocab, 1, i, "train").emr for i in range(20)
                 if make_case(small_cfg, vocab, 1, i, "train").emr.kind != "short")
    assert "Denies" in short.text or "ROS" in short.text
    assert any(unit in short.text for unit in ("10*3/uL", "mg/dL", "mmol/L"))


def test_cli_writes_disjoint_splits(tmp_path: Path) -> None:
    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers())
    cfg = Path(__file__).resolve().parents[2] / "configs" / "synth" / "small.yaml"
    args = ap.parse_args(["synth", str(tmp_path / "o"), "--cases", "10", "--seed", "3",
                          "--config", str(cfg), "--split", "all"])
    assert args.func(args) == 0
    uids = {}
    for split in ("train", "val", "test"):
        cases = sorted((tmp_path / "o" / split).iterdir())
        assert cases
        for c in cases:
            t = json.loads((c / "truth.json").read_text())
            assert t["split"] == split
            uids[(split, c.name)] = t["study"]["study_instance_uid"]
            assert {"emr.txt", "emr_fhir.json", "truth.json", "report.txt"} <= {
                p.name for p in c.iterdir()}
    assert len(set(uids.values())) == len(uids)
    a = make_case(SynthConfig(), _vocab(), 3, 0, "train")
    b = make_case(SynthConfig(), _vocab(), 3, 0, "val")
    assert a.profile.mrn != b.profile.mrn
    bad = ap.parse_args(["synth", str(tmp_path / "o2"), "--cases", "0", "--seed", "3"])
    assert bad.func(bad) == 2


def test_shift_moves_the_distribution(small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    base = [make_case(small_cfg, vocab, 4, i, "test") for i in range(12)]
    shifted = [make_case(small_cfg, vocab, 4, i, "test", shift=True) for i in range(12)]
    assert np.mean([c.anatomy.size for c in shifted]) > np.mean([c.anatomy.size for c in base])
    assert {c.acquisition.thickness_mm for c in shifted} <= {3.0, 7.5}
    assert max(c.acquisition.mas for c in shifted) < min(c.acquisition.mas for c in base)


def _vocab() -> Vocabulary:
    from medassist.synth.findings import load_vocabulary

    return load_vocabulary(SynthConfig().findings.vocabulary_path())
