"""The shipped demo checkpoint (models/demo) loads, fits the issue's size budget, and its model
card names these weights and the run that made them (a card left behind after new weights
are copied in fails here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from multimodal.checkpoint import META, WEIGHTS, load_checkpoint, sha256_file

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def test_shipped_checkpoint_loads_and_matches_its_card() -> None:
    model, cfg, kind, tok, meta = load_checkpoint(DEMO)
    assert kind == "fusion"
    total = sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file())
    assert total <= 40 * 1024 * 1024
    card = (DEMO / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert sha256_file(DEMO / WEIGHTS) in card
    n_params = sum(p.numel() for p in model.parameters())
    assert f"{n_params:,}" in card
    # the run's seed, data and steps are recorded in meta.json and stated in the card
    assert (DEMO / META).is_file()
    assert meta["seed"] == meta["optim"]["seed"]
    assert f"seed {meta['seed']}" in card
    assert f"{meta['data']['train_cases']:,} cases" in card
    assert f"{meta['step']:,} steps" in card
    assert Path(meta["model_config"]).name in card
    # the card's quality-bar section exists, and the windows it states match the config
    assert "## Quality bars (issue 4)" in card
    assert f"({len(cfg.ct.windows) * len(cfg.ct.pool_stats)} channels" in card
    assert len(tok) > 0 and re.search(r"\bDRAFT\b", card)


def test_shipped_draft_of_the_real_chest_a0001(a0001: Path) -> None:
    """The issue's real-CT bar on the shipped weights: the left lung mass called, its
    evidence slices overlapping the annotated tumour (z -234 to -184 mm) and its box holding
    the annotated boxes' centres, no right-sided mass; and its side states the evidence it
    was read from, flagged where the two sides are near equal
    (``heads.min_side_odds_ratio``) and its sentences marked then."""
    from medassist.labeler import SIDE_UNCERTAIN
    from medassist.model_cli import make_report
    from multimodal.heads import side_is_uncertain

    rep = make_report(a0001, None, DEMO)
    cfg = load_checkpoint(DEMO)[1]
    mass = next(f for f in rep["findings"] if f["label"] == "lung_mass")
    assert mass["present"] and mass["laterality"] == "left"
    z0, z1 = mass["evidence"]["z_mm"]
    assert z0 <= -184.0 and z1 >= -234.0  # overlaps the annotated z range
    # the box shown (heads.evidence_box) holds the centre of every annotated box in-plane
    # (box_voxels: slice, row, column; bbox_pixels: column, row, column, row)
    _, r0, c0, _, r1, c1 = mass["evidence"]["box_voxels"]
    notes = json.loads((a0001.parent / "annotations-A0001.json").read_text(encoding="utf-8"))
    for b in notes["boxes"]:
        x0, y0, x1, y1 = b["bbox_pixels"]
        assert c0 <= (x0 + x1) / 2 <= c1 and r0 <= (y0 + y1) / 2 <= r1, b["file"]
    assert not any(f["present"] and f["laterality"] in ("right", "bilateral")
                   and f["label"] in ("lung_mass", "lung_nodule") for f in rep["findings"])
    for f in rep["findings"]:
        if not (f["present"] and "side_evidence" in f):
            continue
        ev = f["side_evidence"]
        uncertain = side_is_uncertain(f["laterality"], ev["left"], ev["right"],
                                      cfg.heads.min_side_odds_ratio)
        assert ("side_uncertain" in f["flags"]) == uncertain, f["label"]
        assert (SIDE_UNCERTAIN in f["sentence"]) == uncertain, f["label"]
