"""Config validation, transforms (missing modalities stay missing), tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from multimodal.config import (
    CTStemConfig,
    FusionConfig,
    HeadsConfig,
    LongEMRConfig,
    ModelConfig,
    from_mapping,
    load_model_config,
)
from multimodal.errors import ModalityError, ModelConfigError, MultimodalError, ShapeError
from multimodal.tokenizer import BOS, EOS, UNK, WordTokenizer
from multimodal.transforms import (
    Compose,
    MultiWindow,
    MultiWindowd,
    ResampleToGrid,
    ResampleToGridd,
    TokenizeTextd,
)

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_configs_load_and_match_findings() -> None:
    import yaml

    labels = tuple(yaml.safe_load((ROOT / "configs/findings.yaml").read_text())["findings"])
    names = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
    assert {"tiny", "demo"} <= set(names)
    for name in names:
        cfg = load_model_config(ROOT / "configs" / "model" / f"{name}.yaml")
        assert cfg.heads.labels == labels, name
        assert dataclasses.is_dataclass(cfg) and cfg.ct.n_patches > 0


def test_every_train_config_loads_with_its_model_and_generator_configs() -> None:
    """Each shipped experiment config (configs/train) names model and generator configs that
    exist and validate, so a documented rerun command does not fail on a stale path."""
    from medassist.model_cli import load_train_config
    from medassist.synth.config import load_config

    paths = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert paths
    for p in paths:
        tc = load_train_config(p)
        load_model_config(ROOT / tc.model_config)
        if tc.synth_config:
            load_config(ROOT / tc.synth_config)


@pytest.mark.parametrize("bad", [
    lambda: CTStemConfig(grid_shape=(16, 32, 30)),
    lambda: CTStemConfig(abs_pos="rope"),
    lambda: CTStemConfig(windows=((0.0, -1.0),)),
    lambda: LongEMRConfig(segment_len=16, window=32),
    lambda: FusionConfig(top_k=5, n_routed=4),
    lambda: HeadsConfig(labels=()),
    lambda: HeadsConfig(labels=("a", "a")),
    lambda: HeadsConfig(labels=("a",), locations=("lobe", "none")),
    lambda: ModelConfig(dim=30),
])
def test_invalid_configs_raise_typed_errors(bad: object) -> None:
    with pytest.raises(ModelConfigError) as ei:
        bad()  # type: ignore[operator]
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, MultimodalError)


def test_from_mapping_rejects_unknown_and_wrong_types() -> None:
    with pytest.raises(ModelConfigError, match="unknown"):
        from_mapping(ModelConfig, {"dimm": 3})
    with pytest.raises(ModelConfigError, match="integer"):
        from_mapping(ModelConfig, {"dim": "64"})
    cfg = from_mapping(ModelConfig, {"dim": 32, "fusion": {"moe": False},
                                     "heads": {"labels": ["x", "y"]}})
    assert cfg.fusion.moe is False and cfg.heads.labels == ("x", "y")


def test_resample_to_grid_physical_size() -> None:
    vol = np.full((10, 40, 40), -1000.0, np.float32)
    vol[4:6, 18:22, 18:22] = 100.0  # 10 mm x 8 mm x 8 mm block at the centre
    out = ResampleToGrid((5.0, 4.0, 4.0), (8, 24, 24))(vol, (5.0, 2.0, 2.0))
    assert out.shape == (8, 24, 24) and out.dtype == np.float32
    assert (out == -1024.0).any()  # padded
    hot = np.argwhere(out > 0)
    assert hot[:, 0].min() >= 2 and hot[:, 0].max() <= 5
    assert vol[5, 20, 20] == 100.0  # input untouched
    with pytest.raises(ShapeError):
        ResampleToGrid((1, 1, 1), (2, 2, 2))(np.zeros((2, 2)), (1, 1, 1))


def test_multiwindow_channels() -> None:
    hu = np.array([[[-1000.0, 40.0, 1000.0]]], np.float32)
    ch = MultiWindow(((-600, 1500), (40, 400), (400, 1800)))(hu)
    assert ch.shape == (3, 1, 1, 3) and ch.min() >= 0 and ch.max() <= 1
    assert ch[1, 0, 0, 1] == pytest.approx(0.5)  # soft tissue window centre


def test_dict_transforms_keep_missing_modality_missing() -> None:
    tok = WordTokenizer.build(["no fever today"], max_size=300)
    t = Compose([ResampleToGridd(["ct"], (5, 4, 4), (4, 8, 8), allow_missing_keys=True),
                 MultiWindowd(["ct"], ((40, 400),), allow_missing_keys=True),
                 TokenizeTextd(["emr"], tok, 100, allow_missing_keys=True)])
    only_emr = {"emr": "No fever today"}
    out = t(only_emr)
    assert "ct" not in out and "ct_spacing" not in out  # not zero-filled, not created
    assert out["emr_ids"].tolist()[0] != UNK
    assert only_emr == {"emr": "No fever today"}  # input not mutated
    out2 = t({"ct": None, "emr": None})
    assert out2["ct"] is None and "emr_ids" not in out2
    with pytest.raises(ModalityError):
        MultiWindowd(["ct"], ((40, 400),))({"emr": "x"})
    ct = {"ct": np.zeros((4, 8, 8), np.float32), "ct_spacing": (5, 4, 4)}
    assert t(ct)["ct"].shape == (1, 4, 8, 8)


def test_tokenizer_deterministic_roundtrip(tmp_path: Path) -> None:
    corpus = ["Pt w/ 12 mm nodule in the RUL.", "No pleural effusion. No fever."]
    a = WordTokenizer.build(corpus, max_size=400)
    b = WordTokenizer.build(list(corpus), max_size=400)
    assert a.vocab == b.vocab
    ids, spans = a.encode(corpus[0], bos=True, eos=True)
    assert ids[0] == BOS and ids[-1] == EOS and UNK not in ids
    assert corpus[0][spans[4][0]:spans[4][1]] == "12"
    assert a.decode(ids) == "pt w/12 mm nodule in the rul."
    a.save(tmp_path / "v.json")
    assert WordTokenizer.load(tmp_path / "v.json").vocab == a.vocab
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    with pytest.raises(MultimodalError):
        WordTokenizer.load(tmp_path / "bad.json")
