"""Convolutional CT stem, multiple-instance (per-patch) presence, attribute-loss weight,
AUROC."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from multimodal.config import ModelConfig
from multimodal.errors import ModelConfigError
from multimodal.heads import predict_findings
from multimodal.losses import Targets, compute_losses
from multimodal.metrics import auroc, findings_metrics
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput
from multimodal.stems import CTStem


def _mil_cfg(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(
        cfg, ct=dataclasses.replace(cfg.ct, conv_stem=(4, 8)),
        heads=dataclasses.replace(cfg.heads, mil=True), attr_weight=0.1)


def test_conv_stem_keeps_the_patch_grid(tiny_cfg: ModelConfig) -> None:
    cfg = _mil_cfg(tiny_cfg)
    assert cfg.ct.stem_strides() == [(2, 2, 2), (2, 2, 2)]
    stem = CTStem(cfg.ct, cfg.dim, 2)
    out = stem(torch.rand(2, 3, *cfg.ct.grid_shape))
    assert out.shape == (2, cfg.ct.n_patches, cfg.dim)
    assert len(stem.conv) == 6  # (conv, norm, GELU) x 2
    with pytest.raises(ModelConfigError):
        dataclasses.replace(cfg.ct, conv_stem=(0,))


def test_mil_patch_logits_shapes_masking_and_evidence(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    cfg = _mil_cfg(tiny_cfg)
    torch.manual_seed(0)
    model = FusionModel(cfg).eval()
    x = make_batch(b=3, ct=(True, False, True))
    out = model(x)
    n_f, n = len(cfg.heads.labels), cfg.ct.n_patches
    assert out.patch_logits is not None and out.patch_logits.shape == (3, n_f, n)
    # no CT: the MIL path contributes nothing and the head abstains
    assert bool((out.patch_logits[1] <= -1e4 + 1).all())
    # the case without CT is the same whatever its (masked) CT slot holds
    ct2 = x.ct.clone() if x.ct is not None else None
    assert ct2 is not None
    ct2[1] = torch.rand_like(ct2[1])
    out2 = model(dataclasses.replace(x, ct=ct2))
    torch.testing.assert_close(out2.presence_logits[1], out.presence_logits[1])
    # without CT the MIL path adds its bias only (the score of "no abnormal patch"), so the
    # presence of a case without CT stays on the scale the head was calibrated on
    with torch.no_grad():
        model.findings.mil_bias.sub_(50.0)
        out_b = model(x)
        model.findings.mil_bias.add_(50.0)
    torch.testing.assert_close(out_b.presence_logits[1], out.presence_logits[1] - 50.0)
    # evidence comes from the per-patch map when a finding is called present
    with torch.no_grad():
        head = model.findings
        assert isinstance(head.patch, torch.nn.Sequential)
        lin = head.patch[1]
        assert isinstance(lin, torch.nn.Linear)
        lin.weight.zero_()
        lin.bias.fill_(-8.0)
        head.mil_bias.fill_(0.0)
    out3 = model(x)
    assert out3.patch_logits is not None
    # make patch 0 of label 0 strongly positive for case 0 and read the box back
    out3.patch_logits[0, 0, 0] = 8.0
    out3.presence_logits[0, 0] = 8.0
    preds = predict_findings(out3, cfg.heads, cfg.ct)
    p = preds[0][0]
    assert p.present and p.box_voxels == (0, 0, 0, *(s - 1 for s in cfg.ct.patch))
    assert not any(fp.present for fp in preds[1])


def test_patch_loss_and_attribute_weight(tiny_cfg: ModelConfig,
                                         make_batch: Callable[..., ModelInput]) -> None:
    cfg = _mil_cfg(tiny_cfg)
    torch.manual_seed(0)
    model = FusionModel(cfg).eval()
    out = model(make_batch(b=2))
    n_f, n = len(cfg.heads.labels), cfg.ct.n_patches
    loc = torch.zeros(2, n_f, n)
    loc[0, 3, :5] = 1.0
    t = Targets(present=torch.zeros(2, n_f), laterality=torch.full((2, n_f), -100),
                location=torch.full((2, n_f), -100), size_mm=torch.full((2, n_f), float("nan")),
                loc_map=loc)
    t.present[0, 3] = 1.0
    t.laterality[0, 3] = 1
    t.location[0, 3] = 1
    t.size_mm[0, 3] = 20.0
    lo = compute_losses(out, t, cfg)
    assert float(lo["patch"].detach()) > 0
    attr = lo["laterality"] + lo["location"] + lo["size"]
    expected = (lo["presence"] + 0.1 * attr + cfg.patch_weight * lo["patch"]
                + cfg.loc_weight * lo["loc"] + cfg.lm_weight * lo["lm"]
                + cfg.align_weight * lo["align"] + cfg.fusion.balance_coef * lo["moe_balance"])
    torch.testing.assert_close(lo["total"], expected)


def test_auroc() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert auroc(np.array([0.2, 0.3]), np.array([1, 1])) is None
    prob = np.array([[0.9, 0.1], [0.2, 0.1]])
    truth = np.array([[1, 0], [0, 0]], bool)
    m = findings_metrics(["a", "b"], prob, prob > 0.5, truth, np.zeros((2, 2)),
                         np.full((2, 2), -100), np.zeros((2, 2)), np.full((2, 2), np.nan))
    assert m["per_finding"]["a"]["auroc"] == 1.0 and m["per_finding"]["b"]["auroc"] is None
    assert m["macro_auroc"] == 1.0


def test_laterality_per_finding() -> None:
    """The side is scored per label on its own true positives and overall on all of them."""
    labels = ["a", "b"]
    truth = np.array([[1, 1], [1, 0], [1, 1]], bool)
    pred = np.array([[1, 1], [1, 1], [1, 0]], bool)  # TPs: a in 3 cases, b in case 0 only
    lat_true = np.array([[1, 2], [2, -100], [1, 1]])
    lat_pred = np.array([[1, 1], [1, 2], [1, 1]])  # a: 2 of 3 right; b: wrong on its TP
    m = findings_metrics(labels, pred.astype(float), pred, truth, lat_pred, lat_true,
                         np.zeros((3, 2)), np.full((3, 2), np.nan))
    assert m["per_finding"]["a"]["laterality_acc_tp"] == 2 / 3
    assert m["per_finding"]["b"]["laterality_acc_tp"] == 0.0
    assert m["laterality_acc_tp"] == 2 / 4
    none = findings_metrics(labels, pred.astype(float), np.zeros_like(pred), truth, lat_pred,
                            lat_true, np.zeros((3, 2)), np.full((3, 2), np.nan))
    assert none["per_finding"]["a"]["laterality_acc_tp"] is None


def test_size_mae_per_finding() -> None:
    """Size error per label on its own true positives that have a reference size; the pooled
    nodule-and-mass MAE is over the same errors."""
    labels = ["lung_nodule", "lung_mass"]
    truth = np.array([[1, 1], [1, 0], [0, 1]], bool)
    pred = np.array([[1, 1], [1, 1], [1, 0]], bool)  # TPs: nodule cases 0, 1; mass case 0
    size_true = np.array([[6.0, 40.0], [10.0, np.nan], [np.nan, 30.0]])
    size_pred = np.array([[8.0, 30.0], [9.0, 50.0], [5.0, 20.0]])
    m = findings_metrics(labels, pred.astype(float), pred, truth, np.zeros((3, 2)),
                         np.zeros((3, 2)), size_pred, size_true)
    assert m["per_finding"]["lung_nodule"]["size_mae_mm_tp"] == 1.5
    assert m["per_finding"]["lung_mass"]["size_mae_mm_tp"] == 10.0
    assert m["size_mae_mm_nodule_mass"] == (2.0 + 1.0 + 10.0) / 3
    assert m["per_finding"]["lung_nodule"]["size_pairs_mm_tp"] == [[6.0, 8.0], [10.0, 9.0]]
    assert m["per_finding"]["lung_mass"]["size_pairs_mm_tp"] == [[40.0, 30.0]]
    none = findings_metrics(labels, pred.astype(float), np.zeros_like(pred), truth,
                            np.zeros((3, 2)), np.zeros((3, 2)), size_pred, size_true)
    assert none["per_finding"]["lung_mass"]["size_mae_mm_tp"] is None


def test_false_calls_with() -> None:
    """A label's false calls counted by the findings their cases do have; true positives and
    the label's own misses do not count; a case with nothing counts as "none"."""
    from multimodal.metrics import false_calls_with

    labels = ["lung_mass", "consolidation", "emphysema"]
    truth = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
    pred = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]], bool)
    got = false_calls_with(labels, 0, pred, truth)
    assert got == {"consolidation": 2, "emphysema": 1, "none": 1}
    assert list(got) == ["consolidation", "emphysema", "none"]  # most frequent first
    assert false_calls_with(labels, 2, pred, truth) == {}  # no false emphysema call
    m = findings_metrics(labels, pred.astype(float), pred, truth, np.zeros((6, 3)),
                         np.zeros((6, 3)), np.zeros((6, 3)), np.full((6, 3), np.nan))
    assert m["per_finding"]["lung_mass"]["false_calls_with"] == got
    with pytest.raises(ValueError, match="must both be"):
        false_calls_with(labels, 3, pred, truth)
    with pytest.raises(ValueError, match="must both be"):
        false_calls_with(labels, 0, pred[:, :2], truth[:, :2])


def test_eval_summary_lines_state_what_false_calls_stand_for() -> None:
    from medassist.model_cli import per_finding_lines

    per = {"lung_mass": {"f1": 0.4, "tp": 5, "fp": 10, "fn": 5,
                         "false_calls_with": {"consolidation": 10, "none": 1}},
           "pleural_effusion": {"f1": 1.0, "tp": 12, "fp": 0, "fn": 0, "false_calls_with": {}}}
    assert per_finding_lines(per) == [
        "lung_mass: F1 0.40 (TP 5, FP 10, FN 5); false calls in cases with consolidation 10, "
        "none 1",
        "pleural_effusion: F1 1.00 (TP 12, FP 0, FN 0)"]
    # with the intervals (medassist eval since stop 50)
    per["pneumothorax"] = {"f1": 1.0, "tp": 3, "fp": 0, "fn": 0, "false_calls_with": {},
                           "f1_ci95": [1.0, 1.0], "recall_ci95": [0.4385, 1.0]}
    assert per_finding_lines(per)[-1] == (
        "pneumothorax: F1 1.00 (95 % CI 1.00-1.00) (TP 3, FP 0, FN 0); recall 3 of 3 "
        "(0.44-1.00)")
    from medassist.model_cli import evidence_line

    assert evidence_line({"tp": 62, "hit": 61, "coverage": 0.9948, "box_iou": 0.5076,
                          "box_ml": 1622.6}) == (
        "evidence boxes: 61 of 62 true positives hold their finding; median IoU 0.51, "
        "coverage 0.99, 1,623 mL")


def test_detection_by_size() -> None:
    from multimodal.metrics import detection_by_size

    # 5 cases of one label: a 4 mm positive missed (prob below every negative), a 12 mm one
    # found, a 25 mm one found; two negatives
    prob = np.array([[0.1], [0.9], [0.8], [0.3], [0.2]])
    truth = np.array([[1], [1], [1], [0], [0]], bool)
    size = np.array([[4.0], [12.0], [25.0], [np.nan], [np.nan]])
    rows = detection_by_size(["nod"], prob, prob > 0.5, truth, size, ["nod"])["nod"]
    assert [r["support"] for r in rows] == [1, 0, 1, 1]
    assert [r["tp"] for r in rows] == [0, 0, 1, 1]
    assert rows[0]["recall"] == 0.0 and rows[0]["auroc"] == 0.0
    assert rows[1]["recall"] is None and rows[1]["auroc"] is None
    assert rows[2]["auroc"] == 1.0 and rows[3]["max_mm"] is None
    assert detection_by_size(["a"], prob, prob > 0.5, truth, size, ["b"]) == {}


def test_evidence_localisation_scores_the_box_against_the_labelled_voxels() -> None:
    """``medassist eval``'s ``evidence_localisation``: on true positives with labelled voxels,
    whether the box holds some (hit), the share it holds (coverage), its IoU with the
    nearest lesion's bounding box and its volume; false positives, and lesions too small to
    keep a voxel, are not scored."""
    from medassist.model_data import CaseRecord
    from medassist.model_eval import box_iou, evidence_localisation
    from multimodal.outputs import FindingPrediction

    lab = np.zeros((10, 20, 20), np.uint8)
    lab[2:4, 2:6, 2:6] = 1  # finding 1 (a mass): 2 x 4 x 4 voxels
    lab[6:8, 10:12, 10:12] = 2  # finding 2 (another mass): 2 x 2 x 2
    findings: list[dict[str, object]] = [
        {"kind": "lung_mass", "label_value": 1}, {"kind": "lung_mass"},
        {"kind": "lung_nodule", "label_value": 3}]  # no voxel left on the grid
    rec = CaseRecord(case_id="c", hu=None, label_map=lab, findings=findings, emr=None,
                     report_text="")

    def pred(label: str, box: tuple[int, int, int, int, int, int]) -> FindingPrediction:
        return FindingPrediction(label=label, present=True, probability=0.9, laterality=None,
                                 location=None, size_mm=None, slices=(box[0], box[3]),
                                 box_voxels=box, emr_token_spans=())

    labels = ("lung_mass", "lung_nodule", "consolidation")
    preds = [[pred("lung_mass", (2, 2, 2, 3, 5, 5)), pred("lung_nodule", (0, 0, 0, 9, 19, 19)),
              pred("consolidation", (0, 0, 0, 1, 1, 1))]]
    truth = np.array([[True, True, False]])
    res = evidence_localisation(labels, preds, truth, [rec], (5.0, 2.0, 2.0))
    # the box is finding 1's own bounding box: 32 of the 40 labelled voxels, IoU 1, 32 x 20 mm3
    assert res["lung_mass"] == {"tp": 1, "hit": 1, "coverage": 0.8, "box_iou": 1.0,
                                "box_ml": 0.6}
    assert set(res) == {"lung_mass", "all"} and res["all"]["tp"] == 1
    assert box_iou((0, 0, 0, 1, 1, 1), (1, 1, 1, 2, 2, 2)) == pytest.approx(1 / 15)
    missed = [[pred("lung_mass", (0, 15, 15, 1, 19, 19)), *preds[0][1:]]]
    assert evidence_localisation(labels, missed, truth, [rec], (5.0, 2.0, 2.0))[
        "lung_mass"] == {"tp": 1, "hit": 0, "coverage": 0.0, "box_iou": 0.0, "box_ml": 1.0}
