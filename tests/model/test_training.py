"""Overfit, exact resume, checkpoints, and the train / eval / report commands."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from medassist.model_cli import ModelCLIError, TrainConfig, add_parser, make_report, train
from medassist.model_data import build_tokenizer, record_sample
from medassist.model_eval import evaluate
from multimodal.checkpoint import WEIGHTS, load_checkpoint
from multimodal.config import ModelConfig
from multimodal.errors import ModelConfigError
from multimodal.heads import FindingsHead
from multimodal.metrics import wilson
from multimodal.model import FusionModel
from multimodal.training import OptimConfig, predict, train_loop

ROOT = Path(__file__).resolve().parents[2]


def _tc(out: Path, **optim: Any) -> TrainConfig:
    base = {"seed": 0, "steps": 6, "batch_size": 4, "grad_accum": 2, "lr": 3e-3,
            "warmup_steps": 2, "checkpoint_every": 3, "log_every": 100}
    base.update(optim)
    return TrainConfig(model_config=str(ROOT / "configs/model/tiny.yaml"),
                       synth_config=str(ROOT / "configs/synth/small.yaml"), data_seed=3,
                       train_cases=6, max_emr_tokens=256, out=str(out), optim=base)


@pytest.mark.slow
def test_overfit_eight_cases_to_f1_one(tiny_cfg: ModelConfig, tiny_records: list[Any],
                                       tmp_path: Path) -> None:
    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    samples = [record_sample(r, tiny_cfg, tok, 512) for r in tiny_records]
    assert sum(s["present"].sum() for s in samples) >= 4  # not all normal
    torch.manual_seed(0)
    model = FusionModel(tiny_cfg)
    oc = OptimConfig(seed=0, steps=300, batch_size=8, lr=0.01, weight_decay=0.0,
                     warmup_steps=10, checkpoint_every=10_000)
    res = train_loop(model, tiny_cfg, "fusion", tok, samples, oc, tmp_path / "ck")
    assert res["history"][-1]["presence"] < res["history"][0]["presence"] / 5
    ev = evaluate(model, tiny_cfg, samples)
    assert ev["full"]["micro_f1"] == 1.0 and ev["full"]["macro_f1"] == 1.0
    assert ev["full"]["laterality_acc_tp"] == 1.0
    # without CT the model abstains on every image finding
    assert ev["ct_removed"]["n_predicted_present"] == 0


def test_resume_is_identical(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    train(_tc(tmp_path / "a"))
    train(_tc(tmp_path / "b"), stop_after=3)
    meta_b = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta_b["step"] == 3
    train(_tc(tmp_path / "b"), resume=True)
    wa, wb = load_file(str(tmp_path / "a" / WEIGHTS)), load_file(str(tmp_path / "b" / WEIGHTS))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = load_file(str(tmp_path / "a" / "optim.safetensors"))
    ob = load_file(str(tmp_path / "b" / "optim.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    # ... and training did change the weights
    torch.manual_seed(0)
    init = FusionModel(load_checkpoint(tmp_path / "a")[1]).state_dict()
    assert not all(torch.equal(init[k], wa[k]) for k in wa if k in init)


def test_calibration_samples_built_after_the_training_samples_are_let_go(
        tiny_cfg: ModelConfig, tiny_records: list[Any], tmp_path: Path) -> None:
    """``calibration`` as a function: called once, after the last step, when train_loop no
    longer holds the training samples (the caller kept none), and the run is the same as
    with the samples given up front: the same weights and calibration."""
    import gc
    import weakref

    from safetensors.torch import load_file

    class Samples(list):  # type: ignore[type-arg]  # a list that can be weakly referenced
        pass

    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    oc = OptimConfig(seed=0, steps=4, batch_size=4, lr=3e-3, warmup_steps=1,
                     checkpoint_every=100)
    cal = [record_sample(r, tiny_cfg, tok, 256, with_report=False) for r in tiny_records]
    runs = {}
    for how in ("list", "function"):
        torch.manual_seed(0)
        model = FusionModel(tiny_cfg)
        train = Samples(record_sample(r, tiny_cfg, tok, 256) for r in tiny_records)
        alive = weakref.ref(train)
        seen: list[bool] = []

        def built(alive: Any = alive, seen: list[bool] = seen) -> list[dict[str, Any]]:
            gc.collect()
            seen.append(alive() is None)
            return cal

        handover = [train]
        del train
        res = train_loop(model, tiny_cfg, "fusion", tok, handover.pop(), oc,
                         tmp_path / how, calibration=cal if how == "list" else built,
                         threshold_objective="micro_f1")
        assert seen == ([] if how == "list" else [True])
        runs[how] = res["calibration"], load_file(str(tmp_path / how / WEIGHTS))
    (cal_a, wa), (cal_b, wb) = runs["list"], runs["function"]
    assert cal_a == cal_b and cal_a
    # exactly equal, NaN where NaN (a label without positives has no validation AUROC)
    assert wa.keys() == wb.keys() and all(
        torch.allclose(wa[k], wb[k], rtol=0.0, atol=0.0, equal_nan=True) for k in wa)


def test_checkpoint_roundtrip_and_cli_train(tmp_path: Path, tiny_records: list[Any]) -> None:
    cfg_path = tmp_path / "train.yaml"
    out = tmp_path / "ck"
    cfg_path.write_text(json.dumps({"train": {
        "model_config": str(ROOT / "configs/model/tiny.yaml"),
        "synth_config": str(ROOT / "configs/synth/small.yaml"), "train_cases": 4,
        "val_cases": 3, "data_seed": 3, "out": str(out), "threshold_objective": "micro_f1",
        "optim": {"steps": 2, "batch_size": 2, "checkpoint_every": 2}}}))
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["train", "--config", str(cfg_path), "--device", "cpu"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert args.func(args) == 0
    summary = json.loads(buf.getvalue())
    assert summary["params"] > 0 and summary["final"]["step"] == 2
    for name in ("model.safetensors", "config.json", "vocab.json", "meta.json",
                 "optim.safetensors"):
        assert (out / name).is_file()
    model, cfg, kind, tok, meta = load_checkpoint(out)
    assert kind == "fusion" and meta["seed"] == 0 and meta["data"]["data_seed"] == 3
    cal = meta["calibration"]
    assert cal["n_cases"] == 3 and cal["nll_after"] <= cal["nll_before"]
    assert cal["threshold_objective"] == "micro_f1"
    with pytest.raises(ModelCLIError, match="threshold_objective"):
        TrainConfig(threshold_objective="macro_f1")
    with pytest.raises(ModelCLIError, match="min_call_auroc"):
        TrainConfig(min_call_auroc=1.5)
    assert float(model.get_submodule("findings").get_buffer("temperature")) == pytest.approx(
        cal["temperature"], abs=1e-4)
    samples = [record_sample(r, cfg, tok) for r in tiny_records[:3]]
    a = predict(model, samples)[0]
    b = predict(load_checkpoint(out)[0], samples)[0]
    assert torch.equal(a.presence_logits, b.presence_logits)
    # the prior (validation prevalence) is the probability stated without CT
    prior = model.get_submodule("findings").get_buffer("prior")
    assert prior.tolist() == pytest.approx(cal["prior"], abs=1e-4)
    assert all(0.0 <= p <= 1.0 for p in cal["prior"])
    no_ct = predict(model, samples, drop="ct")[0]
    assert torch.allclose(no_ct.presence_prob, prior.clamp(1e-4, 1 - 1e-4).expand(3, -1),
                          atol=1e-6)
    assert not no_ct.ct_used.any() and a.ct_used.all()
    # a checkpoint written before the prior existed loads, and keeps the network's output
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(out, old)
    state = load_file(str(old / "model.safetensors"))
    del state["findings.prior"]
    save_file(state, str(old / "model.safetensors"))
    m_old = load_checkpoint(old)[0]
    assert bool((m_old.get_submodule("findings").get_buffer("prior") < 0).all())
    o_old = predict(m_old, samples, drop="ct")[0]
    assert torch.equal(predict(m_old, samples)[0].presence_logits, a.presence_logits)
    assert not torch.allclose(o_old.presence_prob, no_ct.presence_prob)
    # the validation AUROC per label: NaN where the 3 cases hold too few positives to measure
    auc = model.get_submodule("findings").get_buffer("val_auroc")
    assert len(cal["val_auroc"]) == len(cfg.heads.labels)
    for got, want in zip(auc.tolist(), cal["val_auroc"], strict=True):
        assert (want is None and np.isnan(got)) or got == pytest.approx(want, abs=1e-4)
    # ... and a checkpoint written before it existed flags no label
    del state["findings.val_auroc"]
    save_file(state, str(old / "model.safetensors"))
    head_old = cast(FindingsHead, load_checkpoint(old)[0].get_submodule("findings"))
    assert bool((head_old.get_buffer("val_auroc") == -1).all())
    assert head_old.unreliable(cfg.heads.labels, 0.8) == frozenset()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {optim: {stepz: 3}}\n")
    with pytest.raises(Exception, match="unknown"):
        train(__import__("medassist.model_cli", fromlist=["x"]).load_train_config(bad))


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    cfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    root = tmp_path_factory.mktemp("synth")
    for i in (2, 3):
        write_case(make_case(cfg, vocab, 3, i, "test"), cfg, root / "test" / f"case_{i:05d}")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ck")
    train(_tc(out, steps=4, checkpoint_every=4))
    return out


def test_init_from_starts_a_run_from_a_checkpoints_weights_and_vocabulary(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Fine-tuning: with lr 1e-30 (an update below float32 resolution) the run's weights are
    the checkpoint's; the vocabulary is the checkpoint's even where the run's own cases
    (another data seed) would build another."""
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from multimodal.checkpoint import sha256_file

    tc = replace(_tc(tmp_path / "ft", steps=1, lr=1e-30, weight_decay=0.0, checkpoint_every=1),
                 data_seed=4, init_from=str(tiny_checkpoint))
    train(tc)
    init = load_file(str(tiny_checkpoint / WEIGHTS))
    got = load_file(str(tmp_path / "ft" / WEIGHTS))
    assert init.keys() == got.keys() and all(torch.equal(init[k], got[k]) for k in init)
    assert (tmp_path / "ft" / "vocab.json").read_bytes() == \
        (tiny_checkpoint / "vocab.json").read_bytes()
    meta = json.loads((tmp_path / "ft" / "meta.json").read_text())
    assert meta["init_from"] == {"checkpoint": str(tiny_checkpoint),
                                 "weights_sha256": sha256_file(tiny_checkpoint / WEIGHTS)}
    # without init_from the other data seed builds its own vocabulary
    train(replace(tc, init_from="", out=str(tmp_path / "scratch")))
    assert (tmp_path / "scratch" / "vocab.json").read_bytes() != \
        (tiny_checkpoint / "vocab.json").read_bytes()
    # a checkpoint of another kind, or whose weights do not fit the config, is refused
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    raw = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**raw, "kind": "late"}))
    with pytest.raises(ModelCLIError, match="is a 'late' checkpoint"):
        train(replace(tc, init_from=str(bad), out=str(tmp_path / "x")))
    (bad / "config.json").write_text(json.dumps(raw))
    save_file({k: v for k, v in init.items() if not k.startswith("decoder.")},
              str(bad / WEIGHTS))
    with pytest.raises(ModelCLIError, match="does not fit the model config"):
        train(replace(tc, init_from=str(bad), out=str(tmp_path / "y")))
    with pytest.raises(ModelCLIError, match="cannot read its checkpoint"):
        train(replace(tc, init_from=str(tmp_path / "missing"), out=str(tmp_path / "z")))


def test_init_from_a_config_that_adds_parameters_training_the_decoder_alone(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The run's config adds the size conditioning (new parameters start fresh and are listed);
    ``trainable`` trains the decoder and its conditioning only: everything else, and so
    every finding decision, is the checkpoint's."""
    from dataclasses import replace

    import yaml
    from safetensors.torch import load_file

    raw = yaml.safe_load((ROOT / "configs/model/tiny.yaml").read_text())
    raw["model"]["decoder"]["condition_size"] = True
    cfg_path = tmp_path / "tiny_size.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    tc = replace(_tc(tmp_path / "dec", steps=2, lr=1e-2, checkpoint_every=2),
                 model_config=str(cfg_path), init_from=str(tiny_checkpoint),
                 trainable=["decoder.", "condition."])
    train(tc)
    meta = json.loads((tmp_path / "dec" / "meta.json").read_text())
    assert meta["init_from"]["new_parameters"] == ["condition.size.bias",
                                                   "condition.size.weight"]
    assert meta["trainable"] == ["decoder.", "condition."]
    init = load_file(str(tiny_checkpoint / WEIGHTS))
    got = load_file(str(tmp_path / "dec" / WEIGHTS))
    trained = [k for k in init if k.startswith(("decoder.", "condition."))]
    assert all(torch.equal(init[k], got[k]) for k in init if k not in trained)
    assert not all(torch.equal(init[k], got[k]) for k in trained)
    with pytest.raises(ModelCLIError, match="matches no parameter"):
        train(replace(tc, trainable=["nothing."], out=str(tmp_path / "none")))


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning",
                            "ignore:torch.quantize_per_tensor:UserWarning")
def test_eval_and_report_on_written_cases(synth_folder: Path, tiny_checkpoint: Path) -> None:
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="cmd", required=True))

    def eval_args(*extra: str) -> argparse.Namespace:
        return ap.parse_args(["eval", "--checkpoint", str(tiny_checkpoint), "--data",
                              str(synth_folder), *extra])

    def eval_json(*extra: str) -> dict[str, Any]:
        args = eval_args("--json", *extra)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert args.func(args) == 0
        out: dict[str, Any] = json.loads(buf.getvalue())
        return out

    ev = eval_json()
    for k in ("full", "emr_removed", "ct_removed"):
        assert 0.0 <= ev[k]["micro_f1"] <= 1.0 and 0.0 <= ev[k]["ece"] <= 1.0
        assert set(ev[k]["per_finding"]) >= {"lung_nodule", "rib_fracture"}
    assert ev["ct_removed"]["n_predicted_present"] == 0
    full = ev["full"]
    assert 0.0 <= full["bleu4"] <= 100.0 and 0.0 <= full["rouge_l"] <= 1.0
    # the sizes scored are the ones the draft states (measured on the CT where that succeeds)
    assert "size_mae_mm_nodule_mass_head" in full
    for lab, n in full["size_measured"].items():
        # lesions measured for their diameter, cardiomegaly for its cardiothoracic ratio, a
        # pericardial effusion for its thickness (found on the CT)
        assert lab in ("lung_nodule", "lung_mass", "cardiomegaly", "pericardial_effusion")
        assert 0 <= n["measured"] <= n["called"] and 0 <= n["tp_measured"] <= n["tp"] <= n[
            "called"]
        assert 0 <= n["tp_found_on_ct"] <= n["found_on_ct"] <= n["called"]
    assert 0.0 <= full["injection_identical"]["cases"] <= full["injection_identical"][
        "labels"] <= 1.0
    # 95 % intervals (since stop 50): each holds its figure; the note's removal paired
    for k in ("micro_f1", "macro_f1", "ece"):
        lo, hi = full["ci95"][k]
        assert 0.0 <= lo <= full[k] <= hi <= 1.0, k
    lo, hi = full["text_micro_f1_ci95"]
    assert lo <= full["text_micro_f1"] <= hi
    for v in full["per_finding"].values():
        assert v["f1_ci95"][0] <= v["f1"] <= v["f1_ci95"][1]
        assert (v["recall_ci95"] is None) == (v["support"] == 0)
    n_id = round(full["injection_identical"]["cases"] * full["n_cases"])
    assert full["injection_identical"]["cases_ci95"] == wilson(n_id, full["n_cases"])
    drop = ev["emr_removed"]["micro_f1_drop"]
    assert drop["difference"] == pytest.approx(full["micro_f1"] - ev["emr_removed"][
        "micro_f1"], abs=1e-6)
    assert drop["ci95"][0] <= drop["difference"] <= drop["ci95"][1]
    n_dep = full["n_emr_dependent"]
    assert (full["impression_acc_emr_dependent_ci95"] is None) == (n_dep == 0)
    lobes = full["lobe_agreement"]
    assert 0 <= lobes["head_right"] <= lobes["head_tp"]
    assert 0 <= lobes["text_right"] <= lobes["text_sentences"]
    assert 0 <= lobes["text_agree_head"] <= lobes["text_sentences"]
    # (the tiny vocabulary turns most reference words into [UNK], which repeat: no 0 here)
    assert 0 <= full["looping_texts"] <= full["n_cases"] and 0 <= full["looping_refs"] <= 2
    assert ev["int8"] is False
    # the int8 model is evaluated as `report --int8` runs it
    ev8 = eval_json("--int8")
    assert ev8["int8"] is True and ev8["full"]["n_cases"] == full["n_cases"]
    # noise matching (multimodal/noise.py) and the search for a missed mass (multimodal/
    # islands.py) off as the checkpoint has them, or set for the run; bad values refused
    assert ev["noise_max_index"] == 0.0 and ev["island_labels"] == []
    assert ev["fluid_box"] == "band"
    for flag, value, key, echoed in (("--noise-max-index", "1", "noise_max_index", 1.0),
                                     ("--island-labels", "lung_mass", "island_labels",
                                      ["lung_mass"]),
                                     ("--fluid-box", "sac", "fluid_box", "sac")):
        evo = eval_json(flag, value)
        assert evo[key] == echoed and evo["full"]["n_cases"] == full["n_cases"]
    for flag, value, key in (("--noise-max-index", "-1", "noise_max_index"),
                             ("--island-labels", "pleural_effusion", "island_labels")):
        bad = eval_args(flag, value)
        with pytest.raises(ModelCLIError, match=key):
            bad.func(bad)
    # without --json: one summary line per mode, with the size MAE where there is one
    args_txt = eval_args()
    buf_txt = io.StringIO()
    with contextlib.redirect_stdout(buf_txt):
        assert args_txt.func(args_txt) == 0
    all_lines = buf_txt.getvalue().splitlines()
    lines = [ln for ln in all_lines if not ln.startswith("  ")]
    assert [ln.split(":")[0] for ln in lines] == ["full", "emr_removed", "ct_removed"]
    assert ("size MAE" in lines[0]) == (full["size_mae_mm_nodule_mass"] is not None)
    # under the full line, one indented line per finding: F1, counts, what its false calls
    # stand for
    per = all_lines[1:1 + len(full["per_finding"])]
    assert sorted(ln.strip().split(":")[0] for ln in per) == sorted(full["per_finding"])
    for ln in per:
        lab = ln.strip().split(":")[0]
        v = full["per_finding"][lab]
        assert f"(TP {v['tp']}, FP {v['fp']}, FN {v['fn']})" in ln
        assert ("false calls in cases with" in ln) == bool(v["false_calls_with"]), lab
    case = synth_folder / "test" / "case_00003"
    rep = make_report(case / "dicom", case / "emr.txt", tiny_checkpoint, threshold=0.0)
    _check_contract(rep)
    # what the note changed: its "without" probabilities are those of the draft without it
    bare = make_report(case / "dicom", None, tiny_checkpoint, threshold=0.0)
    _check_contract(bare)
    assert "note_effect" not in bare
    bare_prob = {f["label"]: f["probability"] for f in bare["findings"]}
    eff = rep["note_effect"]
    for c in [*eff["changed"], eff["largest"]]:
        assert c["without_note"] == pytest.approx(bare_prob[c["label"]], abs=1e-4)
    truth = json.loads((case / "truth.json").read_text())
    assert rep["inputs"]["series_uid"] == truth["study"]["main_series_instance_uid"]
    assert "kVp" in rep["sections"]["technique"]
    f0 = rep["findings"][0]
    assert f0["present"] and f0["evidence"]["box_mm"] is not None  # threshold 0: all present
    z0, z1 = f0["evidence"]["z_mm"]
    assert z0 <= z1
    assert f0["evidence"]["slices"] == list(range(f0["evidence"]["box_voxels"][0],
                                                  f0["evidence"]["box_voxels"][3] + 1))
    q = make_report(case / "dicom", case / "emr.txt", tiny_checkpoint, threshold=0.0, int8=True)
    _check_contract(q)
    diffs = [abs(a["probability"] - b["probability"])
             for a, b in zip(rep["findings"], q["findings"], strict=True)]
    assert max(diffs) < 0.05 and q["model"]["name"].endswith("+int8")
    no_emr = make_report(case / "dicom", None, tiny_checkpoint)
    assert no_emr["modality_weights"]["emr"] == 0.0 and no_emr["inputs"]["emr_sha256"] is None


def test_image_pass_drafts_the_text_from_the_ct(synth_folder: Path, tiny_checkpoint: Path,
                                               tmp_path: Path) -> None:
    """decoder.image_pass: the draft's text, and the locations and sizes it states, come from
    the pass without the note: a case drafted with its note and with another note states the
    same text where the two drafts make the same decisions; the decisions, probabilities and
    modality weights are still the pass with the note's."""
    import dataclasses

    from medassist.drafting import infer, load_model, prepare

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    on = dataclasses.replace(lm, cfg=dataclasses.replace(lm.cfg, decoder=dataclasses.replace(
        lm.cfg.decoder, image_pass=True)))
    other = tmp_path / "other.txt"
    other.write_text("Patient with a long history of heavy smoking and weight loss. " * 20,
                     encoding="utf-8")
    notes = [prepare(case / "dicom", n, lm.cfg) for n in (case / "emr.txt", other)]
    first = infer(lm, notes[:1], threshold=0.0)[0]
    a, b = (infer(on, [p], threshold=0.0)[0] for p in notes)
    for d in (a, b):
        _check_contract(d)
    # the pass with the note decides and weighs, as without the image pass
    assert [f["probability"] for f in a["findings"]] == \
        [f["probability"] for f in first["findings"]]
    assert a["modality_weights"] == first["modality_weights"] and a["modality_weights"]["emr"] > 0
    # the two notes lead to the same decisions here (threshold 0, the same sides) ...
    assert [(f["present"], f["laterality"]) for f in a["findings"]] == \
        [(f["present"], f["laterality"]) for f in b["findings"]]
    # ... so the text, the locations and the sizes are the same
    assert (a["sections"]["findings"], a["sections"]["impression"]) == \
        (b["sections"]["findings"], b["sections"]["impression"])
    assert [(f["location"], f["size_mm"]) for f in a["findings"]] == \
        [(f["location"], f["size_mm"]) for f in b["findings"]]
    # from the pass with the note they are not: the other note reaches them
    other_first = infer(lm, notes[1:], threshold=0.0)[0]
    assert [(f["location"], f["size_mm"]) for f in first["findings"]] != \
        [(f["location"], f["size_mm"]) for f in other_first["findings"]]
    # the image pass is the pass without the note: its locations are those of the draft
    # without a note, finding by finding where the side agrees
    bare = infer(lm, [prepare(case / "dicom", None, lm.cfg)], threshold=0.0)[0]
    same_side = [(fa, fn) for fa, fn in zip(a["findings"], bare["findings"], strict=True)
                 if fa["present"] and fn["present"] and fa["laterality"] == fn["laterality"]]
    assert same_side
    assert all((fa["location"], fa["size_mm"]) == (fn["location"], fn["size_mm"])
               for fa, fn in same_side)


def test_unreliable_detector_flag(synth_folder: Path, tiny_checkpoint: Path) -> None:
    """A label the checkpoint did not detect reliably on its validation cases (AUROC below
    heads.min_reliable_auroc, or not measurable) is flagged in every draft, present or not;
    the decisions are unchanged."""
    import dataclasses
    import re

    from medassist.drafting import infer, load_model, prepare

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    labels = lm.cfg.heads.labels
    head = lm.model.get_submodule("findings")
    auc = torch.full((len(labels),), 0.95)
    auc[0], auc[1] = 0.55, float("nan")
    head.get_buffer("val_auroc").copy_(auc)
    assert head.unreliable(labels, 0.0) == frozenset()  # off
    assert head.unreliable(labels, 0.8) == {labels[0], labels[1]}
    prep = prepare(case / "dicom", case / "emr.txt", lm.cfg)
    off = infer(lm, [prep], threshold=0.0)[0]
    cfg = dataclasses.replace(lm.cfg, heads=dataclasses.replace(lm.cfg.heads,
                                                                min_reliable_auroc=0.8))
    on = infer(dataclasses.replace(lm, cfg=cfg), [prep], threshold=0.0)[0]
    _check_contract(on)
    for a, b in zip(off["findings"], on["findings"], strict=True):
        assert "unreliable_detector" not in a["flags"]
        assert ("unreliable_detector" in b["flags"]) == (b["label"] in labels[:2])
        assert a["present"] == b["present"] and a["probability"] == b["probability"]
    # the Findings text's sentences about those labels are marked, not stated as fact
    from medassist.labeler import label_text

    said = [re.sub(r"^\[UNVERIFIED[^\]]*\]\s*", "", t.text)
            for t in label_text(off["sections"]["findings"]) if set(t.labels) & set(labels[:2])]
    assert said, off["sections"]["findings"]
    for sent in said:
        assert f"reliably] {sent}" in on["sections"]["findings"], sent
    # ... and so are the Impression's, which is checked against the findings head too
    from medassist.drafting import _draft
    from multimodal.batching import collate
    from multimodal.heads import predict_findings
    from multimodal.training import make_sample

    sample = make_sample(cfg, lm.tok, hu=prep.study.hu, emr=prep.emr)
    with torch.no_grad():
        out = lm.model(collate([sample])[0])
    preds = predict_findings(out, cfg.heads, cfg.ct, 0.0)[0]  # threshold 0: all present
    # the nodule where the text puts it (another lobe would be flagged as well)
    preds = [dataclasses.replace(p, location="RLL", laterality="right")
             if p.label == "lung_nodule" else p for p in preds]
    text = ("findings: a 7 mm nodule in the right lower lobe. impression: 1. pulmonary "
            "nodule in the right lower lobe. 2. no pleural effusion.")
    d = _draft(lm, prep, sample, text, preds, out.modality_weights[0],
               frozenset({"lung_nodule"}))
    assert d["sections"]["impression"] == (
        "1. [UNVERIFIED: the model does not detect lung nodule reliably] Pulmonary nodule in "
        "the right lower lobe.\n2. [UNVERIFIED: contradicts the findings head "
        "(pleural effusion)] No pleural effusion.")
    flags = {f["label"]: f["flags"] for f in d["findings"]}
    assert "text_contradicts_head" in flags["pleural_effusion"]
    assert "unreliable_detector" in flags["lung_nodule"]
    absent = infer(dataclasses.replace(lm, cfg=cfg), [prep], threshold=0.999)[0]
    assert "unreliable_detector" in absent["findings"][0]["flags"]
    assert not absent["findings"][0]["present"]
    with pytest.raises(ValueError, match="min_reliable_auroc"):
        dataclasses.replace(lm.cfg.heads, min_reliable_auroc=1.5)


def test_label_with_a_size_limit_says_so_when_absent(synth_folder: Path,
                                                     tiny_checkpoint: Path) -> None:
    """A checkpoint whose nodule losses left out nodules below 10 mm (presence_min_mm): an
    absent nodule's sentence says nodules of 10 mm or more are absent and smaller ones not
    assessed (flag small_not_assessed); the other labels are drafted as before."""
    import dataclasses

    from medassist.drafting import infer, load_model, prepare

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    prep = prepare(case / "dicom", case / "emr.txt", lm.cfg)
    plain = infer(lm, [prep], threshold=1.01)[0]  # nothing called
    lm.cfg = dataclasses.replace(lm.cfg, presence_min_mm=(("lung_nodule", 10.0),))
    rep = infer(lm, [prep], threshold=1.01)[0]
    _check_contract(rep)
    by = {f["label"]: f for f in rep["findings"]}
    nod = by["lung_nodule"]
    assert not nod["present"] and "small_not_assessed" in nod["flags"]
    assert nod["sentence"] == ("No lung nodule of 10 mm or more; smaller ones are not "
                               "assessed by this model.")
    for f, g in zip(rep["findings"], plain["findings"], strict=True):
        if f["label"] != "lung_nodule":
            assert f["sentence"] == g["sentence"] and f["flags"] == g["flags"]
    called = infer(lm, [prep], threshold=0.0)[0]  # a called nodule has no such flag
    assert all("small_not_assessed" not in f["flags"] for f in called["findings"])


def test_a_called_cardiomegaly_carries_its_measured_ratio(synth_folder: Path,
                                                          tiny_checkpoint: Path) -> None:
    """A called cardiomegaly on a generated chest: its cardiothoracic ratio is measured on
    the CT and travels as the number ``ratio`` (the SR and FHIR exports code it), the same
    one its sentence states; ``size_mm`` stays empty and no other finding has a ratio."""
    from medassist.draft import ReportDraft
    from medassist.drafting import infer, load_model, prepare

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    prep = prepare(case / "dicom", case / "emr.txt", lm.cfg)
    rep = infer(lm, [prep], threshold=0.0)[0]  # every finding called
    _check_contract(rep)
    by = {f["label"]: f for f in rep["findings"]}
    heart = by["cardiomegaly"]
    assert heart["present"] and "ratio_measured" in heart["flags"]
    assert 0.3 <= heart["ratio"] <= 0.85 and heart["size_mm"] is None
    assert f"cardiothoracic ratio {heart['ratio']:.2f} measured on the CT" in heart["sentence"]
    assert [lab for lab, f in by.items() if "ratio" in f] == ["cardiomegaly"]
    assert ReportDraft.from_dict(rep).findings[list(by).index("cardiomegaly")].ratio == \
        heart["ratio"]
    none = infer(lm, [prep], threshold=1.01)[0]  # not called: no ratio
    assert all("ratio" not in f for f in none["findings"])


def test_never_called_label_is_not_assessed(synth_folder: Path, tiny_checkpoint: Path) -> None:
    """A label whose fitted threshold is NEVER (threshold objective "micro_f1": its calls
    lowered the validation micro-F1) is not called, and the draft says it was not assessed
    instead of "absent"; a threshold given by the caller overrides it."""
    from medassist.drafting import infer, load_model, prepare
    from multimodal.training import NEVER

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    labels = lm.cfg.heads.labels
    head = lm.model.get_submodule("findings")
    thr = torch.zeros(len(labels))
    thr[0] = NEVER
    head.get_buffer("thresholds").copy_(thr)
    assert head.never_called(labels) == {labels[0]}
    prep = prepare(case / "dicom", case / "emr.txt", lm.cfg)
    rep = infer(lm, [prep])[0]
    _check_contract(rep)
    first, rest = rep["findings"][0], rep["findings"][1:]
    assert first["label"] == labels[0] and not first["present"]
    assert "not_assessed" in first["flags"] and "not assessed" in first["sentence"]
    assert first["sentence"].lower() != f"no {labels[0].replace('_', ' ')}."
    # every other label is called at threshold 0, but a mass the CT took back (its box holds
    # air bronchograms inside the called consolidation: multimodal.bronchogram)
    assert all((f["present"] or "air_bronchograms" in f["flags"])
               and "not_assessed" not in f["flags"] for f in rest)
    given = infer(lm, [prep], threshold=0.0)[0]
    assert given["findings"][0]["present"]
    assert all("not_assessed" not in f["flags"] for f in given["findings"])
    assert [f["probability"] for f in given["findings"]] == \
        [f["probability"] for f in rep["findings"]]


def _nothing_called(synth_folder: Path, tiny_checkpoint: Path
                    ) -> tuple[Any, Any, dict[str, Any], list[Any]]:
    """The loaded model, a prepared test case, its sample and one absent prediction per label
    (p 0.01): the draft inputs the tests below change one finding of."""
    from medassist.drafting import load_model, prepare
    from multimodal.outputs import FindingPrediction
    from multimodal.training import make_sample

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    prep = prepare(case / "dicom", case / "emr.txt", lm.cfg)
    sample = make_sample(lm.cfg, lm.tok, hu=prep.study.hu, emr=prep.emr)
    preds = [FindingPrediction(label=lab, present=False, probability=0.01, laterality=None,
                               location=None, size_mm=None, slices=None, box_voxels=None,
                               emr_token_spans=()) for lab in lm.cfg.heads.labels]
    return lm, prep, sample, preds


def test_an_effusion_decided_on_the_ct_is_drafted_so(synth_folder: Path,
                                                      tiny_checkpoint: Path) -> None:
    """A label the fitted threshold never calls (pericardial effusion on the demo checkpoint)
    that the CT measurement decided (multimodal.pericardium): found, it is present with flags
    found_on_ct and size_measured, its sentence states the measured thickness and the text's
    own number for it is replaced by that; decided absent, it reads "No pericardial
    effusion." (not "not assessed"); undecided (no heart found), it stays not assessed."""
    import dataclasses

    from medassist.drafting import _draft

    lm, prep, sample, base = _nothing_called(synth_folder, tiny_checkpoint)
    labels = lm.cfg.heads.labels
    i = labels.index("pericardial_effusion")
    found = list(base)
    found[i] = dataclasses.replace(
        base[i], present=True, present_source="image", size_source="image", size_mm=12.0,
        laterality="none", location="pericardium", slices=(4, 9),
        box_voxels=(4, 10, 12, 9, 20, 22))
    absent = list(base)
    absent[i] = dataclasses.replace(base[i], present_source="image")
    never = frozenset({"pericardial_effusion"})
    text = ("Findings: Pericardial effusion measuring up to 9 mm in thickness. "
            "Impression: Pericardial effusion.")
    w = torch.tensor([1.0, 0.0])
    d = _draft(lm, prep, sample, text, found, w, frozenset(), never)
    _check_contract(d)
    f = d["findings"][i]
    assert f["present"] and f["size_mm"] == 12.0
    assert {"found_on_ct", "size_measured", "text_size_restated"} <= set(f["flags"])
    assert "not_assessed" not in f["flags"]
    assert f["sentence"] == "Pericardial effusion, 12 mm thick, measured on the CT."
    assert "12 mm" in d["sections"]["findings"] and "9 mm" not in d["sections"]["findings"]
    assert f["evidence"]["slices"] and f["evidence"]["box_mm"] is not None
    assert all("found_on_ct" not in g["flags"] for j, g in enumerate(d["findings"]) if j != i)
    no = _draft(lm, prep, sample, "Findings: Normal. Impression: Normal.", absent, w,
                frozenset(), never)["findings"][i]
    assert not no["present"] and no["sentence"] == "No pericardial effusion."
    assert not {"not_assessed", "found_on_ct"} & set(no["flags"])
    left = _draft(lm, prep, sample, "Findings: Normal. Impression: Normal.", base, w,
                  frozenset(), never)["findings"][i]
    assert "not_assessed" in left["flags"] and "not assessed" in left["sentence"]


def test_a_mass_call_taken_back_for_air_bronchograms_is_drafted_so(
        synth_folder: Path, tiny_checkpoint: Path) -> None:
    """A mass call measure_findings took back (its box holds air bronchograms inside a called
    consolidation: multimodal.bronchogram): absent, flag air_bronchograms, and a sentence
    that says why, read by the labeler as the consolidation and no mass."""
    import dataclasses

    from medassist.drafting import _draft
    from medassist.labeler import label_sentence

    lm, prep, sample, preds = _nothing_called(synth_folder, tiny_checkpoint)
    labels = lm.cfg.heads.labels
    m, c = labels.index("lung_mass"), labels.index("consolidation")
    box = (4, 10, 12, 9, 20, 22)
    preds[m] = dataclasses.replace(preds[m], probability=0.6, present_source="image",
                                   location="RUL", size_mm=45.0, slices=(4, 9), box_voxels=box)
    preds[c] = dataclasses.replace(preds[c], present=True, probability=0.9, laterality="right",
                                   location="RUL", size_mm=50.0, slices=(4, 9), box_voxels=box)
    text = "Findings: There is airspace consolidation in the right upper lobe. Impression: " \
        "Consolidation."
    d = _draft(lm, prep, sample, text, preds, torch.tensor([1.0, 0.0]), frozenset(),
               frozenset())
    _check_contract(d)
    f = d["findings"][m]
    assert not f["present"] and "air_bronchograms" in f["flags"]
    assert f["sentence"] == ("Air bronchograms in the opacity (RUL): consolidation, not a "
                             "lung mass.")
    assert label_sentence(f["sentence"]) == {"consolidation": True, "lung_mass": False}
    assert all("air_bronchograms" not in g["flags"] for j, g in enumerate(d["findings"])
               if j != m)
    # a mass the head did not call has no such flag
    plain = dataclasses.replace(preds[m], present_source="head")
    e = _draft(lm, prep, sample, text, [plain if j == m else p for j, p in enumerate(preds)],
               torch.tensor([1.0, 0.0]), frozenset(), frozenset())["findings"][m]
    assert "air_bronchograms" not in e["flags"] and e["sentence"] == "No lung mass."


def test_a_mass_found_on_the_ct_is_drafted_so(synth_folder: Path,
                                              tiny_checkpoint: Path) -> None:
    """A mass the head did not call that measure_findings found on the CT (an island of
    tissue the lung surrounds: multimodal.islands): present with flags found_on_ct and
    size_measured, its probability the head's (low), its sentence the measured size and
    axes, read by the labeler as a mass; the text's own other size for it is replaced."""
    import dataclasses

    from medassist.drafting import _draft
    from medassist.labeler import label_sentence

    lm, prep, sample, preds = _nothing_called(synth_folder, tiny_checkpoint)
    labels = lm.cfg.heads.labels
    m = labels.index("lung_mass")
    preds[m] = dataclasses.replace(
        preds[m], present=True, probability=0.04, present_source="image", size_source="image",
        laterality="left", location="LLL", size_mm=38.4, size_axes_mm=(36.0, 31.0, 38.0),
        slices=(4, 9), box_voxels=(4, 10, 12, 9, 20, 22))
    text = "Findings: Left lower lobe mass measuring 5.1 cm. Impression: Lung mass."
    d = _draft(lm, prep, sample, text, preds, torch.tensor([1.0, 0.0]), frozenset(),
               frozenset())
    _check_contract(d)
    f = d["findings"][m]
    assert f["present"] and f["probability"] == 0.04 and f["laterality"] == "left"
    assert {"found_on_ct", "size_measured"} <= set(f["flags"])
    assert f["sentence"] == ("Left lung mass (LLL), 38 mm measured on the CT (axial 36 x 31 "
                             "mm, craniocaudal 38 mm).")
    assert label_sentence(f["sentence"])["lung_mass"] is True
    assert "5.1 cm" not in d["sections"]["findings"]
    assert f["evidence"]["slices"] and f["evidence"]["box_mm"] is not None
    assert all("found_on_ct" not in g["flags"] for j, g in enumerate(d["findings"]) if j != m)


def test_a_scan_read_smoothed_is_said_so_in_the_technique(synth_folder: Path,
                                                           tiny_checkpoint: Path) -> None:
    """With ct.noise_max_index below a scan's noise (multimodal.noise), the model reads it
    smoothed and the technique says so, with both figures; off or above the scan's noise,
    nothing is said and the model reads the scan as it is."""
    import dataclasses

    from medassist.drafting import infer, load_model, noise_text, prepare
    from multimodal.noise import noise_index

    case = synth_folder / "test" / "case_00003"
    lm = load_model(tiny_checkpoint)
    prep = prepare(case / "dicom", case / "emr.txt", lm.cfg)
    assert prep.study.noise_index is None  # the level is off: not measured
    idx = noise_index(prep.study.hu)
    assert idx is not None
    plain = infer(lm, [prep])[0]
    assert "Image noise" not in plain["sections"]["technique"]
    low = dataclasses.replace(lm, cfg=dataclasses.replace(
        lm.cfg, ct=dataclasses.replace(lm.cfg.ct, noise_max_index=idx / 2)))
    prep_low = prepare(case / "dicom", case / "emr.txt", low.cfg)
    assert prep_low.study.noise_index == idx  # measured once, at load, where the level is on
    smoothed = infer(low, [prep_low])[0]
    _check_contract(smoothed)
    tech = smoothed["sections"]["technique"]
    assert tech.startswith(plain["sections"]["technique"])
    assert f"Image noise ({idx:.1f} HU" in tech and f"({idx / 2:g} HU)" in tech
    # what the model read changed, so its probabilities did
    assert [f["probability"] for f in smoothed["findings"]] != \
        [f["probability"] for f in plain["findings"]]
    assert noise_text(idx, idx * 2) == "" and noise_text(idx, 0.0) == ""
    assert noise_text(None, 1.0) == ""


def _check_contract(rep: dict[str, Any]) -> None:
    # with a note (and the CT), what the note changed in the head's calls (since stop 50)
    # (a draft built here from hand-made predictions, by _draft, has none)
    noted = rep["inputs"]["emr_sha256"] is not None
    base = {"status", "disclaimer", "sections", "findings", "modality_weights", "model",
            "inputs", "coverage"}
    assert base <= set(rep) <= base | ({"note_effect"} if noted else set())
    if "note_effect" in rep:
        eff = rep["note_effect"]
        prob = {f["label"]: f["probability"] for f in rep["findings"]}
        calls = [*eff["changed"], *([eff["largest"]] if eff["largest"] else [])]
        assert eff["largest"] is not None and calls
        for c in calls:  # the draft's own probability is the one with the note
            assert c["with_note"] == pytest.approx(prob[c["label"]], abs=1e-4)
        for c in eff["changed"]:
            assert c["present_with_note"] != c["present_without_note"]
        gap = abs(eff["largest"]["with_note"] - eff["largest"]["without_note"])
        assert all(abs(c["with_note"] - c["without_note"]) <= gap for c in calls)
    assert rep["status"] == "DRAFT" and isinstance(rep["disclaimer"], str)
    cov = rep["coverage"]  # a study read from DICOM: how much of the lungs was seen
    assert set(cov) == {"lung_in_model_grid", "scan_cuts_lung"}
    assert 0.0 <= cov["lung_in_model_grid"] <= 1.0
    assert set(cov["scan_cuts_lung"]) <= {"inferior", "superior"}
    assert set(rep["sections"]) == {"indication", "technique", "findings", "impression"}
    assert all(isinstance(v, str) for v in rep["sections"].values())
    # the decoder writes lower case; the draft reads as a report (medassist.textcase): each
    # line of the Findings and the Impression begins, past its marks and list number, with a
    # capital, and no text outside the marks is the tokenizer's "ct"
    from medassist.labeler import ANNOTATION

    for sec in ("findings", "impression"):
        for line in rep["sections"][sec].splitlines():
            plain = re.sub(r"^(?:\d+\.|-)?\s*", "", ANNOTATION.sub("", line).strip())
            assert not plain or not plain[0].isalpha() or plain[0].isupper(), line
        assert not re.search(r"\bct\b", ANNOTATION.sub("", rep["sections"][sec]))
    assert set(rep["model"]) == {"name", "version", "checkpoint_sha256"}
    assert len(rep["model"]["checkpoint_sha256"]) == 64
    assert set(rep["inputs"]) == {"series_uid", "dicom_sha256", "emr_sha256"}
    w = rep["modality_weights"]
    assert set(w) == {"ct", "emr"} and abs(w["ct"] + w["emr"] - 1) < 1e-3
    for f in rep["findings"]:
        # "ratio" (optional): a measured cardiothoracic ratio, with its flag; "size_axes_mm"
        # (optional): a measured nodule's or mass's axial axes and craniocaudal extent
        assert set(f) - {"ratio", "size_axes_mm"} == {
            "label", "present", "probability", "laterality", "location", "size_mm",
            "sentence", "evidence", "flags"}
        assert ("ratio" in f) == ("ratio_measured" in f["flags"])
        # a measured nodule or mass states its axes; a measured effusion's size is a thickness
        assert ("size_axes_mm" in f) == ("size_measured" in f["flags"] and f["label"] in (
            "lung_nodule", "lung_mass"))
        # a finding the CT measurement called has its size from that measurement
        assert "found_on_ct" not in f["flags"] or (
            f["present"] and "size_measured" in f["flags"])
        assert isinstance(f["present"], bool) and 0 <= f["probability"] <= 1
        assert f["laterality"] in ("left", "right", "bilateral", "none", None)
        assert set(f["evidence"]) == {"slices", "z_mm", "box_voxels", "box_mm", "emr_spans"}
        for s in f["evidence"]["emr_spans"]:
            assert 0 <= s[0] < s[1]
    # the Findings section states every present finding (the decoder's sentence, or the
    # structured one appended and flagged)
    from medassist.labeler import text_findings

    said = text_findings(rep["sections"]["findings"], [f["label"] for f in rep["findings"]])
    for f in rep["findings"]:
        if f["present"]:
            assert said[f["label"]], f["label"]
        if "text_omitted_finding" in f["flags"]:
            assert f["present"] and ("[ADDED FROM THE FINDINGS LIST] " + f["sentence"]
                                     in rep["sections"]["findings"])
        # a called finding's size (but the cardiothoracic ratio, a pericardial band's
        # thickness): measured on the CT, or an estimate, and said so; the text's number for
        # it, where the CT gave none, is marked
        if f["present"] and f["size_mm"] and f["label"] != "cardiomegaly" and not (
                f["label"] == "pericardial_effusion" and "size_measured" in f["flags"]):
            measured = "size_measured" in f["flags"]
            dims = "" if "size_axes_mm" not in f else (
                " (axial {:.0f} x {:.0f} mm, craniocaudal {:.0f} mm)".format(
                    *f["size_axes_mm"]))
            assert f["sentence"].endswith(f"mm measured on the CT{dims}." if measured
                                          else "(estimated, not measured on the CT).")
        if "text_size_unmeasured" in f["flags"]:
            assert f["present"] and "size_measured" not in f["flags"]
            assert "[UNVERIFIED: size not measured on the CT]" in " ".join(
                rep["sections"].values())
        # a size the CT did not give: the text states the list's estimate (and marks it)
        if f["present"] and f["size_mm"] and "size_measured" not in f["flags"] \
                and f["label"] != "cardiomegaly":
            from medassist.labeler import label_text, stated_sizes_mm

            for sec in ("findings", "impression"):
                for s in label_text(rep["sections"][sec]):
                    stated = stated_sizes_mm(s.text)
                    if [k for k, pos in s.labels.items() if pos] == [f["label"]] \
                            and len(stated) == 1 and "[ADDED FROM THE FINDINGS LIST]" not in s.text:
                        assert abs(stated[0] - f["size_mm"]) <= 0.5 or (
                            round(stated[0] / 10, 1) == round(f["size_mm"] / 10, 1)), s.text
                        assert "text_size_unmeasured" in f["flags"]
    json.dumps(rep)


def test_report_on_real_ct(a0001: Path, tiny_checkpoint: Path) -> None:
    rep = make_report(a0001, None, tiny_checkpoint, threshold=0.0)
    _check_contract(rep)
    f0 = rep["findings"][0]
    z = np.asarray(f0["evidence"]["z_mm"])
    from dicom_io.volume import load_volume

    vol = load_volume(a0001)
    zs = vol.index_to_lps([[0, 0, 0], [vol.shape[0] - 1, 0, 0]])[:, 2]
    # the evidence box lies inside the scanned slab and maps to the same slices
    assert zs.min() - 1e-3 <= z[0] <= z[1] <= zs.max() + 1e-3
    k = f0["evidence"]["slices"]
    kz = sorted(vol.index_to_lps([[k[0], 0, 0], [k[-1], 0, 0]])[:, 2])
    assert np.allclose(kz, z, atol=1e-2)
    assert rep["sections"]["technique"].startswith("CT of the chest")


def test_cli_train_out_overrides_the_config(tmp_path: Path) -> None:
    cfg_path, in_cfg, given = tmp_path / "train.yaml", tmp_path / "from_config", tmp_path / "cli"
    cfg_path.write_text(json.dumps({"train": {
        "model_config": str(ROOT / "configs/model/tiny.yaml"),
        "synth_config": str(ROOT / "configs/synth/small.yaml"), "train_cases": 2,
        "data_seed": 3, "out": str(in_cfg), "optim": {"steps": 4, "batch_size": 2}}}))
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["train", "--config", str(cfg_path), "--stop-after", "1",
                          "--out", str(given)])
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        assert args.func(args) == 0
    assert json.loads(buf.getvalue())["out"] == str(given)
    assert json.loads((given / "meta.json").read_text())["step"] == 1
    assert not in_cfg.exists()


def test_train_late_fusion_baseline(tmp_path: Path) -> None:
    import dataclasses

    tc = dataclasses.replace(_tc(tmp_path / "late", steps=2, checkpoint_every=2),
                             model_kind="late", train_cases=4)
    res = train(tc)
    model, _cfg, kind, _tok, _meta = load_checkpoint(tmp_path / "late")
    assert kind == "late" and type(model).__name__ == "LateFusionModel"
    assert res["final"]["step"] == 2 and res["final"]["moe_balance"] == 0.0


def test_chunked_samples_equal_the_whole_cache(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Training from the case cache builds its samples one chunk of volumes at a time; they
    equal the samples of all records loaded at once."""
    import dataclasses

    import medassist.model_data as md
    from medassist.model_cli import load_records, training_samples
    from multimodal.config import load_model_config

    monkeypatch.setattr(md, "CACHE_CHUNK", 2)
    tc = dataclasses.replace(_tc(tmp_path / "o"), train_cases=5, cache_dir=str(tmp_path / "c"))
    cfg = load_model_config(tc.model_config)
    texts = md.cached_synth_records(tc.cache_dir, tc.synth_config, cfg, tc.data_seed,
                                    tc.train_cases, images=False)  # fills the cache
    tok = build_tokenizer(texts, cfg.emr.vocab_size)
    whole = load_records(tc, cfg)
    assert tok.vocab == build_tokenizer(whole, cfg.emr.vocab_size).vocab
    a = training_samples(tc, cfg, tok, None)
    b = training_samples(tc, cfg, tok, whole)
    assert not whole and len(a) == len(b) == 5  # the records were consumed
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            same = np.array_equal(sa[k], sb[k], equal_nan=True) if sa[k] is not None else None
            assert (sa[k] is None and sb[k] is None) or same, k


def test_optim_amp_is_validated() -> None:
    assert OptimConfig().amp == "bf16" and OptimConfig(amp="off").amp == "off"
    with pytest.raises(ModelConfigError, match="amp"):
        OptimConfig(amp="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_report_device_cuda_without_gpu_is_a_clear_error(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from medassist.cli import main

    assert main(["report", str(tmp_path), "--device", "cuda"]) != 0
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--device", "cuda", "--db",
                 f"sqlite:///{tmp_path / 'x.db'}"]) != 0
    assert "drop --device cuda or --db" in capsys.readouterr().err


def test_cli_reports_model_errors_without_a_traceback(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """multimodal errors (here a checkpoint folder without weights) are translated at the CLI
    boundary: one line naming the type and the file, exit status 2."""
    from medassist.cli import main

    assert main(["report", str(tmp_path), "--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medassist: error: CheckpointError:") and "model.safetensors" in err


_FREED_MEMORY = """
import ctypes, ctypes.util, gc, json
import numpy as np
from multimodal.training import release_freed_memory

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: a few-MB array comes from the heap, as
libc.mallopt(-1, 1 << 40)   # once a volume raised it; M_TRIM_THRESHOLD: no automatic trim

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

held, kept = [], []
for i in range(160):  # 250 MB, each followed by something that stays (as in training)
    held.append(np.full((12, 32, 64, 64), i % 255, np.uint8))
    kept.append(np.zeros(50_000, np.uint8))
before = rss()
del held
gc.collect()
without = before - rss()
release_freed_memory()
print(json.dumps({"without": without, "with": before - rss(), "kept": len(kept)}))
"""


def test_freed_memory_goes_back_to_the_system() -> None:
    """Arrays of the training samples' size, freed between arrays that stay, leave their
    pages with the process until :func:`release_freed_memory` hands them back (glibc). Run in
    a fresh interpreter with glibc's thresholds set, so the rest of the suite's allocations
    (which move glibc's dynamic mmap threshold) do not decide where the arrays come from."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FREED_MEMORY], check=True,
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["kept"] == 160
    assert got["without"] < 50_000_000  # freed, but still the process's
    assert got["with"] > 200_000_000
