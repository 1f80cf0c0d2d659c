"""Calibration fine-tuning: what trains, what stays frozen, and that it learns the correct moves."""
import json

import pytest
import torch

from _app import run_app
from maia_adapt.config import ASSETS
from maia_adapt.errors import ConfigError
from maia_adapt.analysis.calibration import MoveSet, concept_rows, finetune, select_trainable, transition_report
from maia_adapt.model import load_model
from maia_adapt.analysis.transitional import load_seed_positions


@pytest.fixture(scope="module")
def seed_rows(shared_data):
    seed = load_seed_positions(shared_data / "transitional/seed_transitional_positions.json")
    return [{"fen": f, "correct": list(m), "threats": [], "split": "train"} for f, m in zip(seed["fens"], seed["all_best_moves"])]


def test_trainable_presets_and_frozen_elo():
    m = load_model(ASSETS / "maia2_small.safetensors")
    names = select_trainable(m, "policy_head")
    assert names and all(n.startswith("fc_1.") for n in names)
    names = select_trainable(m, "all", freeze_elo=True)
    assert not any(n.startswith("elo_embedding") for n in names) and any(n.startswith("chess_cnn") for n in names)
    with pytest.raises(ConfigError, match="matches no parameter"):
        select_trainable(m, "nope.")


def test_concept_rows_match_kind_or_square():
    rows = [{"threats": ["defensive@e4"]}, {"threats": ["offensive@e4"]}, {"threats": []}]
    assert concept_rows(rows, "defensive") == rows[:1] and concept_rows(rows, "offensive@e4") == rows[1:2]


def test_policy_head_finetune_learns_correct_moves_and_touches_nothing_else(seed_rows, tmp_path):
    model = load_model(ASSETS / "maia2_small.safetensors")
    rows = seed_rows[:48]
    train = MoveSet.build(rows, tmp_path / "train")
    before = transition_report(model, train)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc_1.")}
    select_trainable(model, "policy_head")
    fit = finetune(model, train, train, steps=60, lr=3e-3, batch_size=64, side_info_weight=1.0, eval_every=20, seed=0)
    after = transition_report(model, train)
    # memorising 48 positions through the policy head alone: every bucket gets better
    assert after["accuracy"].mean() > before["accuracy"].mean() + 0.2
    assert (after["accuracy"] >= before["accuracy"]).all()
    assert fit["best_step"] > 0 and fit["best_val_loss"] < fit["val_losses"][0][1]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # BatchNorm running stats included


@pytest.mark.slow
def test_stage_finetune_on_seed_transitional(shared_data, tmp_path):
    r = run_app(["stage=transitional", "transitional.position_set=seed"], run_dir=tmp_path / "tr")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_app(["stage=finetune", f"finetune.transitional={tmp_path}/tr", "finetune.concept=", "finetune.steps=20",
                 "finetune.eval_every=10", "finetune.trainable=heads", "finetune.heldout_positions=0"],
                run_dir=tmp_path / "ft")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert res["positions_train"] + res["positions_val"] + res["positions_test"] == 264
    assert len(res["accuracy_before"]) == 11 and res["best_step"] in (0, 10, 20)
    assert "| >=2000 |" in (tmp_path / "ft" / "results.md").read_text()
    tuned = load_model(tmp_path / "ft")
    base = load_model(ASSETS / "maia2_small.safetensors")
    assert torch.equal(tuned.elo_embedding.weight, base.elo_embedding.weight)
    r = run_app(["stage=finetune", f"finetune.transitional={tmp_path}/nope"], run_dir=tmp_path / "ft2")
    assert r.returncode == 1 and "transitional.csv" in r.stderr
