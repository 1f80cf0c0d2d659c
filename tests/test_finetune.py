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
def test_stage_finetune_on_seed_transitional(seed_transitional, tmp_path):
    tr = seed_transitional()
    r = run_app(["stage=finetune", f"finetune.transitional={tr}", "finetune.concept=", "finetune.steps=20",
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


# ---- the seed study's switches (experiments/finetune_study/README.md, "The seed's protocol") ----------------
# A tiny random Maia-2 and a few generated positions: each switch is checked where its behaviour is known.
import chess
import numpy as np

from maia_adapt.analysis import calibration
from maia_adapt.analysis.calibration import (finetune_rows, pair_batches, seed_summary, select_concept, shift_summary,
                                             steps_per_epoch)
from maia_adapt.analysis.transitional import seed_tp_from_ours, seed_transition_points, transition_points
from maia_adapt.encoding import NUM_BUCKETS
from maia_adapt.model.maia2 import Maia2, Maia2Config


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """The tiny-model tests below run 5-10x faster on one thread of a shared 2-core machine."""
    if "tiny_moves" not in request.fixturenames:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny():
    torch.manual_seed(0)
    return Maia2(Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=8, heads=2, dim_head=8))


@pytest.fixture(scope="module")
def tiny_moves(tmp_path_factory):
    """7 positions of a short random game, each labelled with its first legal move (sorted UCI)."""
    board, rows, rng = chess.Board(), [], np.random.default_rng(0)
    for _ in range(7):
        legal = sorted(m.uci() for m in board.legal_moves)
        rows.append({"fen": board.fen(), "correct": [legal[0]], "threats": [], "split": "train"})
        board.push_uci(legal[int(rng.integers(len(legal)))])
    return MoveSet.build(rows, tmp_path_factory.mktemp("moves") / "train")


def _fit(moves, model=None, **kw):
    model = model or _tiny()
    select_trainable(model, kw.pop("trainable", "all"))
    args = dict(steps=3, lr=1e-3, batch_size=8, side_info_weight=0.0, eval_every=1, seed=0) | kw
    return model, finetune(model, moves, moves, **args)


def _scripted_validation(monkeypatch, losses=None):
    """The validation loss returns these values in turn (step 0 first): a known loss curve (None: 1.0
    always, where the test is about something else and the validation would only cost time)."""
    it = iter(losses) if losses is not None else None
    monkeypatch.setattr(calibration, "all_bucket_loss", lambda *a, **k: next(it) if it else 1.0)


def test_weight_decay_shrinks_the_weights(tiny_moves, monkeypatch):
    _scripted_validation(monkeypatch)
    norms = {wd: _fit(tiny_moves, steps=5, weight_decay=wd, trainable="policy_head", keep="last")[0].fc_1.weight.norm()
             for wd in (0.0, 50.0)}
    # AdamW's decoupled decay: each step multiplies the weights by (1 - lr * wd) = 0.95
    assert norms[50.0] < 0.8 * norms[0.0]


def test_all_each_epoch_visits_every_position_at_every_bucket_once_per_epoch(tiny_moves, monkeypatch):
    _scripted_validation(monkeypatch)
    seen = []
    train = MoveSet(tiny_moves.store, tiny_moves.rows)
    real = train.batch
    monkeypatch.setattr(train, "batch", lambda pos, bk, model=None: (seen.append((pos.copy(), bk.copy())),
                                                                     real(pos, bk, model))[1])
    n, bs = len(train.rows), 8
    per = steps_per_epoch(n, bs)
    assert per == 10  # ceil(7 x 11 / 8): the last batch of a pass holds the 5 pairs left
    model = _tiny()
    select_trainable(model, "all")
    fit = finetune(model, train, tiny_moves, steps=3, lr=1e-3, batch_size=bs, side_info_weight=0.0, eval_every=1,
                   seed=0, epochs=2, buckets="all_each_epoch")
    assert fit["steps_run"] == 2 * per and len(seen) == 2 * per
    every = sorted((p, b) for p in range(n) for b in range(NUM_BUCKETS))
    for epoch in (seen[:per], seen[per:]):
        pairs = sorted((int(p), int(b)) for pos, bk in epoch for p, b in zip(pos, bk))
        assert pairs == every
    # our default draws buckets at random: some pair comes twice in the same number of draws
    rnd = pair_batches(n, bs, "random", np.random.default_rng(0))
    drawn = [(int(p), int(b)) for _ in range(per) for p, b in zip(*next(rnd))]
    assert len(set(drawn)) < len(drawn)


def test_patience_stops_after_that_many_validations_without_a_new_best(tiny_moves, monkeypatch):
    bs = 40  # two steps an epoch (7 x 11 = 77 pairs)
    per = steps_per_epoch(len(tiny_moves.rows), bs)
    assert per == 2
    _scripted_validation(monkeypatch, [2.0, 1.0, 1.1, 1.2, 1.3, 0.1, 0.1, 0.1, 0.1])
    _, fit = _fit(tiny_moves, epochs=8, patience=3, batch_size=bs, trainable="policy_head")
    # epoch 1 is the best, epochs 2-4 do not improve on it: stopped after epoch 4 (validated once an epoch)
    assert fit["stopped_early"] and fit["steps_run"] == 4 * per and fit["best_step"] == per
    _scripted_validation(monkeypatch, [2.0, 1.0, 1.1, 1.2, 1.3, 0.1, 0.2, 0.3, 0.4])
    _, fit = _fit(tiny_moves, epochs=8, batch_size=bs, trainable="policy_head")  # no patience: every epoch runs
    assert not fit["stopped_early"] and fit["steps_run"] == 8 * per and fit["best_step"] == 5 * per


def test_keep_last_and_best_end_with_different_weights(tiny_moves, monkeypatch):
    def weights(**kw):
        return {k: v.clone() for k, v in _fit(tiny_moves, **kw)[0].state_dict().items()}

    after_one = weights(steps=1)
    _scripted_validation(monkeypatch, [2.0, 1.0, 1.5, 1.6])  # best after step 1 of 3
    best = weights(keep="best")
    _scripted_validation(monkeypatch, [2.0, 1.0, 1.5, 1.6])
    last = weights(keep="last")
    assert all(torch.equal(best[k], after_one[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)


def test_the_untouched_model_is_a_candidate_only_with_the_switch(tiny_moves, monkeypatch):
    untouched = {k: v.clone() for k, v in _tiny().state_dict().items()}
    _scripted_validation(monkeypatch, [0.5, 1.0, 1.1, 1.2])  # every trained step is worse than step 0
    model, fit = _fit(tiny_moves)
    assert fit["best_step"] == 0 and all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())
    _scripted_validation(monkeypatch, [0.5, 1.0, 1.1, 1.2])
    model, fit = _fit(tiny_moves, untouched_is_candidate=False)  # the seed's: best starts at infinity
    assert fit["best_step"] == 1 and fit["best_val_loss"] == 1.0
    # and patience counts from the first trained validation, not from the untouched model
    _scripted_validation(monkeypatch, [0.5, 1.0, 0.9, 0.8, 0.7])
    _, fit = _fit(tiny_moves, steps=4, patience=1, untouched_is_candidate=False)
    assert not fit["stopped_early"] and fit["best_step"] == 4
    _scripted_validation(monkeypatch, [0.5, 1.0, 0.9, 0.8, 0.7])
    _, fit = _fit(tiny_moves, steps=4, patience=1)
    assert fit["stopped_early"] and fit["steps_run"] == 1 and fit["best_step"] == 0


@pytest.mark.parametrize("mode,dropout,batchnorm", [("frozen_batchnorm", True, False), ("train", True, True),
                                                     ("eval", False, False)])
def test_train_mode_sets_dropout_and_batchnorm(tiny_moves, monkeypatch, mode, dropout, batchnorm):
    seen = []
    real = calibration.calibration_loss

    def spy(model, batch, w):
        mods = list(calibration.as_skill_model(model).module.modules())
        seen.append((next(m for m in mods if isinstance(m, torch.nn.Dropout)).training,
                     next(m for m in mods if isinstance(m, torch.nn.BatchNorm2d)).training))
        return real(model, batch, w)

    monkeypatch.setattr(calibration, "calibration_loss", spy)
    _scripted_validation(monkeypatch)
    model = _tiny()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mean0 = bn.running_mean.clone()
    _fit(tiny_moves, model=model, steps=1, eval_every=5, train_mode=mode, keep="last")
    assert (dropout, batchnorm) in seen  # the training step (the validations run in eval mode)
    assert torch.equal(bn.running_mean, mean0) != batchnorm  # only PyTorch's train mode updates the statistics


def test_seed_transition_points_and_the_10_vs_11_convention():
    R, W = True, False
    correct = np.array([
        [R] * 11,                  # ours 0, seed 0
        [W] * 11,                  # ours 11 (never), seed 10
        [W] * 10 + [R],            # ours 10 (right at the top only), seed 10 too
        [W] * 4 + [R] * 7,         # ours 4, seed 4
        [R, W] + [R] * 9,          # non-monotone, final run from 2: ours 2, seed 2 (kept)
        [R] * 5 + [W] * 6,         # wrong at the top, right below: ours 11, seed -1 (dropped)
    ])
    ours, mono = transition_points(correct)
    assert ours.tolist() == [0, 11, 10, 4, 2, 11]
    assert seed_transition_points(correct).tolist() == [0, 10, 10, 4, 2, -1]
    assert seed_tp_from_ours(ours, mono).tolist() == [0, 10, 10, 4, 2, -1]  # what a transitional.csv's columns give


def test_seed_metric_averages_each_side_over_its_own_rows():
    # before: the dataset's (seed convention); after: recomputed. Rows 0-3 transitional before.
    before = np.array([2, 4, 6, 8, 0, 10, -1, 10])
    after = np.array([1, 10, -1, 0, 3, 10, 5, 9])
    s = seed_summary(before, after)
    # before over rows 0-3 (5.0); after over rows 0, 4, 6, 7 (1, 3, 5, 9 -> 4.5): rows 1-3 broke (10, -1, 0)
    # and leave the mean, rows 4, 6, 7 join it
    assert s["seed_tp_before"] == 5.0 and s["seed_rows_before"] == 4
    assert s["seed_tp_after"] == 4.5 and s["seed_rows_after"] == 4 and s["seed_rows_in_both"] == 1
    assert s["seed_shift"] == -0.5 and s["seed_dropped_before"] == 1 and s["seed_dropped_after"] == 1
    assert s["seed_tp_before_with_0_10"] == pytest.approx(40 / 7)


def test_score_rows_transitional_restricts_the_headline_shift():
    tb, ta = np.array([0, 11, 3, 5, 11]), np.array([0, 11, 1, 2, 4])

    def report(tp):
        c = np.zeros((len(tp), 11), dtype=bool)
        return {"transition_points": tp, "correct": c, "accuracy": c.mean(0)}

    every = shift_summary(report(tb), report(ta), n_boot=50)
    trans = shift_summary(report(tb), report(ta), n_boot=50, score_rows="transitional")
    assert every["mean_shift"] == pytest.approx(-12 / 5) and every["scored_rows"] == 5
    assert trans["mean_shift"] == pytest.approx(-2.5) and trans["scored_rows"] == 2
    assert trans["mean_transition_point_before"] == 4.0 and trans["mean_shift_all"] == every["mean_shift"]
    assert every["mean_shift_of_transitional"] == trans["mean_shift"]


def _csv_row(tp, mono, blunder, preds, correct="e2e4"):
    return {"fen": chess.STARTING_FEN, "correct": [correct], "transition_point": tp, "monotone": str(int(mono)),
            "transitional": str(int(0 < tp < 11)), "blunder": str(int(blunder)), "threats": [], "split": "train",
            **{f"pred_{k}": m for k, m in enumerate(preds)}}


def test_row_filter_and_target():
    rows = [_csv_row(3, True, True, ["a2a3"] * 3 + ["e2e4"] * 8),
            _csv_row(3, True, False, ["a2a3"] * 3 + ["e2e4"] * 8),
            _csv_row(4, False, True, ["e2e4"] + ["a2a3"] * 3 + ["e2e4"] * 7),  # non-monotone: not the seed's
            _csv_row(11, True, True, ["a2a3"] * 11)]
    assert len(finetune_rows(rows)) == 4
    assert len(finetune_rows(rows, "transitional")) == 2 and len(finetune_rows(rows, "blundered_transitional")) == 1
    assert [r["dataset_seed_tp"] for r in finetune_rows(rows)] == [3, 3, 4, 10]
    top = finetune_rows(rows, target="top_bucket")
    # the target is the model's own bucket-10 move, and the dataset's transition point is the one against it
    assert [r["correct"] for r in top] == [["e2e4"], ["e2e4"], ["e2e4"], ["a2a3"]]
    assert [r["transition_point"] for r in top] == [3, 3, 4, 0] and top[3]["dataset_seed_tp"] == 0
    with pytest.raises(ConfigError, match="finetune.target=top_bucket"):
        finetune_rows([{k: v for k, v in rows[0].items() if k != "pred_10"}], target="top_bucket")


def test_select_concept_reads_threats_or_computes_any_concept_from_the_fen():
    fork = "4k3/8/8/2r1q3/8/3N4/8/4K3 w - - 0 1"  # the knight on d3 attacks c5 and e5 (rook and queen)
    rows = [{"fen": fork, "threats": ["defensive@d3"]}, {"fen": chess.STARTING_FEN, "threats": []}]
    assert select_concept(rows, "defensive") == rows[:1] and select_concept(rows, "") == rows
    assert select_concept(rows, "seed172_own_knight_fork") == rows[:1]
    assert select_concept(rows, "knight_fork_mine") == rows[:1]  # the seed's name of the same concept
    with pytest.raises(ConfigError, match="finetune.concept='nope'"):
        select_concept(rows, "nope")


@pytest.mark.slow
def test_a_concept_below_min_train_rows_is_skipped_and_a_multirun_goes_on(tmp_path):
    import csv

    fields = ["fen", "split", "game_id", "correct_moves", "transition_point", "transitional", "monotone", "blunder",
              "cp_loss_low", "threats"]
    with open(tmp_path / "transitional.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for i, split in enumerate(["train", "train", "val", "test"]):
            w.writerow({"fen": chess.STARTING_FEN, "split": split, "game_id": i, "correct_moves": "e2e4",
                        "transition_point": 3, "transitional": 1, "monotone": 1, "blunder": 0, "cp_loss_low": "",
                        "threats": "defensive@e4 defensive@d5" if i else "defensive@e4"})
    # the seed's revision per concept: one job per concept, those with too few train positions skipped
    r = run_app(["-m", "stage=finetune", f"finetune.transitional={tmp_path}", "finetune.min_train_rows=3",
                 "finetune.concept=defensive@e4,defensive@d5", f"hydra.sweep.dir={tmp_path}/sweep"], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [(x["skipped"], x["concept"], x["positions_train"]) for x in res] == [(True, "defensive@e4", 2),
                                                                                 (True, "defensive@d5", 1)]
    assert "fewer than finetune.min_train_rows=3" in (tmp_path / "sweep" / "1" / "results.md").read_text()
