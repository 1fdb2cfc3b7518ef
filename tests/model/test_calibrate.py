"""`medassist calibrate`: a checkpoint's calibration refitted, its weights unchanged."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medassist.cli import main as cli_main
from medassist.model_cli import ModelCLIError, TrainConfig, train
from multimodal.checkpoint import WEIGHTS, sha256_file

ROOT = Path(__file__).resolve().parents[2]
SYNTH = str(ROOT / "configs/synth/small.yaml")
CAL_BUFFERS = {"findings.temperature", "findings.thresholds", "findings.prior",
               "findings.val_auroc", "findings.bilateral_min"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "ck"
    train(TrainConfig(model_config=str(ROOT / "configs/model/tiny.yaml"), synth_config=SYNTH,
                      data_seed=3, train_cases=4, val_cases=4, out=str(out),
                      threshold_objective="micro_f1",
                      optim={"steps": 2, "batch_size": 2, "checkpoint_every": 2}))
    return out


def _calibrate(*argv: str) -> dict[str, object]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["calibrate", *argv])
    assert rc == 0
    result: dict[str, object] = json.loads(buf.getvalue())
    return result


def test_recalibration_reproduces_the_training_fit(tiny_checkpoint: Path,
                                                   tmp_path: Path) -> None:
    """On the validation cases the run itself was calibrated on (found from its meta.json),
    the refit gives the same calibration; nothing but the calibration buffers differs, the
    source is untouched, and the copy records where it came from."""
    before = (tiny_checkpoint / WEIGHTS).read_bytes()
    out = tmp_path / "re"
    res = _calibrate("--checkpoint", str(tiny_checkpoint), "--out", str(out))
    assert res["n_cases"] == 4
    assert (tiny_checkpoint / WEIGHTS).read_bytes() == before
    src_meta = json.loads((tiny_checkpoint / "meta.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    # nll_before is the NLL at the temperature it starts from: 1 in training, the fitted
    # one here
    drop = {"nll_before"}
    assert {k: v for k, v in meta["calibration"].items() if k not in drop} == \
        {k: v for k, v in src_meta["calibration"].items() if k not in drop}
    rec = meta["recalibrated"]
    assert rec["synth_config"] == SYNTH and rec["data_seed"] == 3 and rec["val_cases"] == 4
    assert Path(rec["from"]).resolve() == tiny_checkpoint.resolve()
    assert rec["weights_sha256"] == sha256_file(tiny_checkpoint / WEIGHTS)
    a, b = load_file(str(tiny_checkpoint / WEIGHTS)), load_file(str(out / WEIGHTS))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k not in CAL_BUFFERS)
    for name in ("config.json", "vocab.json"):
        assert (out / name).read_text() == (tiny_checkpoint / name).read_text()


def test_recalibration_options_and_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "lab"
    _calibrate("--checkpoint", str(tiny_checkpoint), "--out", str(out),
               "--threshold-objective", "label_f1", "--val-cases", "3", "--data-seed", "4")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["calibration"]["threshold_objective"] == "label_f1"
    assert meta["calibration"]["n_cases"] == 3 and meta["recalibrated"]["data_seed"] == 4
    from medassist.calibrate_cli import cmd_calibrate

    def run(*argv: str) -> None:
        import argparse

        from medassist.calibrate_cli import add_parser
        ap = argparse.ArgumentParser()
        add_parser(ap.add_subparsers(dest="cmd"))
        cmd_calibrate(ap.parse_args(["calibrate", "--checkpoint", str(tiny_checkpoint),
                                     *argv]))

    with pytest.raises(ModelCLIError, match="new or empty folder"):
        run("--out", str(out))  # not empty
    with pytest.raises(ModelCLIError, match="new or empty folder"):
        run("--out", str(tiny_checkpoint))
    with pytest.raises(ModelCLIError, match="no such folder"):
        run("--out", str(tmp_path / "x"), "--val-dir", str(tmp_path / "missing"))
    with pytest.raises(ModelCLIError, match="threshold-objective"):
        run("--out", str(tmp_path / "y"), "--threshold-objective", "macro")
    with pytest.raises(ModelCLIError, match="min-call-auroc"):
        run("--out", str(tmp_path / "z"), "--min-call-auroc", "2")


def test_recalibration_on_a_sites_own_cases(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``--val-dir``: cases written as DICOM (here by ``medassist synth``; a hospital's by
    ``medassist dataset import``), read with dicom_io; the copy records where they came from
    and is calibrated on all of them."""
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    cfg = load_config(SYNTH)
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    val = tmp_path / "val"
    for i in range(3):
        write_case(make_case(cfg, vocab, 5, i, "val"), cfg, val / f"case_{i:05d}")
    out = tmp_path / "site"
    res = _calibrate("--checkpoint", str(tiny_checkpoint), "--out", str(out),
                     "--val-dir", str(val))
    assert res["n_cases"] == 3
    rec = json.loads((out / "meta.json").read_text())["recalibrated"]
    assert rec["val_source"] == str(val) and rec["val_cases"] == 3
    assert "synth_config" not in rec
