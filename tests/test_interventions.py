"""Interventions: identity at strength 1, splicing without the error term, a known direction moves the
predicted move as expected, controls and steering vectors, and stage=intervention end to end."""
import json

import chess
import numpy as np
import pytest
import torch

from _app import run_app
from maia_adapt.config import ASSETS
from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder
from maia_adapt.dictionaries.evaluate import splice_fn
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.analysis.interventions import (BucketReport, add_direction, bootstrap_diff, matched_random_features, sae_amplify,
                                               skill_trend_stats, steering_vector)
from maia_adapt.model import load_model
from maia_adapt.model.inference import encode_fens

SITE = "blocks.1.hook_resid_post"
FENS = ["r1bqkb1r/pppp1ppp/2n2n2/4p2Q/2B1P3/8/PPPP1PPP/RNB1K1NR w KQkq - 4 4",
        "rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2",
        "8/5pk1/6p1/8/3Q4/6P1/5PKP/3r4 b - - 0 40"]


@pytest.fixture(scope="module")
def setup():
    model = load_model(ASSETS / "maia2_small.safetensors").eval()
    boards, legal, _ = encode_fens(FENS)
    elo = torch.tensor([3, 3, 3])
    _, cache = model.run_with_cache(boards, elo, elo, names=[SITE])
    sae = SparseAutoencoder(SAEConfig(architecture="topk", d_in=256, dim=512, k=32, site=SITE))
    sae.init_from_data(cache[SITE].mean(1).repeat(50, 1) + 0.1 * torch.randn(150, 256, generator=torch.Generator().manual_seed(0)))
    return model, boards, legal, elo, sae.eval()


def test_strength_one_with_error_kept_changes_nothing(setup):
    model, boards, legal, elo, sae = setup
    clean = model(boards, elo, elo)
    mask = torch.ones(3, 512)
    with torch.no_grad(), model.hooks([(SITE, sae_amplify(sae, mask, 1.0, error="keep"))]):
        out = model(boards, elo, elo)
    for a, b in zip(clean, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_without_error_term_strength_one_is_the_splice(setup):
    model, boards, legal, elo, sae = setup
    with torch.no_grad(), model.hooks([(SITE, sae_amplify(sae, torch.zeros(3, 512), 1.0, error="drop"))]):
        ours = model(boards, elo, elo)[0]
    with torch.no_grad(), model.hooks([(SITE, splice_fn(sae, "mean"))]):
        spliced = model(boards, elo, elo)[0]
    torch.testing.assert_close(ours, spliced, atol=1e-5, rtol=0)


def test_amplifying_changes_only_through_the_chosen_features(setup):
    model, boards, legal, elo, sae = setup
    with torch.no_grad():
        _, cache = model.run_with_cache(boards, elo, elo, names=[SITE])
        z = sae.encode(cache[SITE].mean(1))
    active = z[0].nonzero()[0, 0].item()
    mask = torch.zeros(3, 512)
    mask[0, active] = 1.0  # only position 0, only one feature
    seen = {}

    def record(x, name):
        seen["x"] = x
        return x

    with torch.no_grad(), model.hooks([(SITE, sae_amplify(sae, mask, 5.0)), (SITE, record)]):
        model(boards, elo, elo)
    delta = (seen["x"] - cache[SITE]).mean(1)
    assert torch.allclose(delta[1:], torch.zeros_like(delta[1:]), atol=1e-6)
    expected = 4.0 * z[0, active] * sae.W_dec[active] / sae.norm_scale
    torch.testing.assert_close(delta[0], expected, atol=1e-4, rtol=1e-4)


def test_a_known_direction_moves_the_prediction_to_the_target_move(setup):
    model, boards, legal, elo, _ = setup
    b, l, e = boards[:1], legal[:1], elo[:1]
    _, cache = model.run_with_cache(b, e, e, names=[SITE])
    x = cache[SITE].mean(1).clone().requires_grad_(True)
    logits = model.fc_1(model.last_ln(model.transformer.norm(cache[SITE] - cache[SITE].mean(1, keepdim=True) + x[:, None]).mean(1)))
    masked = logits.masked_fill(~l, float("-inf"))
    first, second = masked[0].topk(2).indices.tolist()
    (logits[0, second] - logits[0, first]).backward()
    direction = x.grad[0] / x.grad[0].norm()
    moved = None
    for alpha in (0.5, 1, 2, 4, 8, 16, 32):
        with torch.no_grad(), model.hooks([(SITE, add_direction(direction, alpha))]):
            top = model(b, e, e)[0].masked_fill(~l, float("-inf")).argmax(-1).item()
        if top != first:
            moved = top
            break
    assert moved == second  # the first move the direction brings up is the one it points to


def test_controls_and_steering_vectors():
    rng = np.random.default_rng(0)
    freq = torch.linspace(0, 1, 1000)
    ctrl = matched_random_features(freq, [10, 500, 990], rng)
    assert all(c != f and abs(freq[c] - freq[f]) <= 0.05 for c, f in zip(ctrl, [10, 500, 990]))
    acts = torch.randn(200, 8)
    lab = torch.zeros(200, dtype=torch.bool)
    lab[:50] = True
    acts[:50, 3] += 2.0
    v = steering_vector(acts, lab)
    assert v.argmax() == 3 and v[3] > 1.5
    with pytest.raises(MaiaAdaptError, match="with and without"):
        steering_vector(acts, torch.ones(200, dtype=torch.bool))
    mean, lo, hi = bootstrap_diff(np.ones(100), np.zeros(100))
    assert mean == lo == hi == 1.0


def test_skill_trend_stats_see_which_end_gained():
    rng = np.random.default_rng(0)
    rep = lambda c: BucketReport(c.mean(0), c, np.zeros(len(c)))
    base = rng.random((600, 11)) < 0.4
    base[:, 10] |= rng.random(600) < 0.15  # the top bucket plays the correct move more often
    weak_gains = base.copy()
    weak_gains[:, 0] |= rng.random(600) < 0.15
    s = skill_trend_stats(rep(base), rep(weak_gains), rep(base), n_boot=300, seed=0)
    assert s["skill_trend_base_ci"][0] > 0 and s["skill_trend_base"] == pytest.approx(base[:, 10].mean() - base[:, 0].mean())
    assert s["minus_control_by_bucket_ci"][0][0] > 0 and s["minus_control_by_bucket"][1:] == [0.0] * 10
    lo, hi = s["skill_trend_change_minus_control_ci"]
    assert hi < 0 and s["skill_trend_change_minus_control"] == pytest.approx(-s["minus_control_by_bucket"][0])
    # the same gain at both ends leaves the trend where it was
    both = weak_gains.copy()
    both[:, 10] |= weak_gains[:, 0] & ~base[:, 0]
    s = skill_trend_stats(rep(base), rep(both), rep(base), n_boot=300, seed=0)
    assert abs(s["skill_trend_change_minus_control"]) < abs(s["minus_control_by_bucket"][0])


@pytest.mark.slow
def test_stage_intervention_steering_on_seed_positions(seed_transitional, tmp_path):
    tr = seed_transitional()
    r = run_app(["stage=intervention", "intervention.kind=steering", f"intervention.transitional={tr}",
                 "intervention.strengths=[1.0,4.0]", "intervention.n_boot=100", "data=lichess", "data.max_games=40",
                 f"data.store_dir={tmp_path}/store", "intervention.heldout_positions=200"], run_dir=tmp_path / "iv")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "iv" / "results.json").read_text())
    assert res["strength"] in (1.0, 4.0) and [g["strength"] for g in res["grid"]] == [None, 1.0, 4.0]
    assert res["train_positions"] > res["test_positions"] > 0 and len(res["per_bucket_settings"]) == 11
    lo, hi = res["effect_minus_control_ci"]
    assert lo <= res["effect_minus_control"] <= hi
    assert len(res["minus_control_by_bucket"]) == len(res["minus_control_by_bucket_ci"]) == 11
    assert all(a <= d <= b for d, (a, b) in zip(res["minus_control_by_bucket"], res["minus_control_by_bucket_ci"]))
    assert "Skill trend (>=2000 minus <1100)" in (tmp_path / "iv" / "results.md").read_text()
    assert 0 <= res["heldout_human_accuracy_intervened"] <= 1
    assert (tmp_path / "iv" / "transition_points.png").is_file()


def _elo_heads_setup(tmp_path, n=60):
    from types import SimpleNamespace

    from maia_adapt.analysis.calibration import MoveSet
    from maia_adapt.model.skill import Maia2Skill

    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):  # positions from random play, the first legal move standing in as "correct"
        b = chess.Board()
        for _ in range(int(rng.integers(4, 30))):
            moves = list(b.legal_moves)
            if not moves or b.is_game_over():
                break
            b.push(moves[int(rng.integers(len(moves)))])
        if not b.is_game_over():
            rows.append({"fen": b.fen(), "correct": [next(iter(b.legal_moves)).uci()], "threats": []})
    train = MoveSet.build(rows, tmp_path / "train")
    ic = SimpleNamespace(site="blocks.0.hook_elo_q", elo_to=10, top_n=[1, 2], strengths=[1.0])
    return model, train, ic


def test_elo_heads_edit_the_skill_heads_only(tmp_path):
    from maia_adapt.analysis.interventions import EloHeadIntervention
    from maia_adapt.analysis.patching import head_patching
    from maia_adapt.errors import ConfigError

    model, train, ic = _elo_heads_setup(tmp_path)
    method = EloHeadIntervention(ic, model, train, seed=0)
    inputs = model.inputs(train.store, np.arange(len(train.rows)))
    with torch.no_grad():
        ranked = head_patching(model, inputs, 0, n_boot=0)["heads"]
        assert method.order[:2] == sorted(range(len(ranked)), key=lambda h: -ranked[h]["kl_closed"])[:2]
        top, ctrl = method.heads(2, False), method.heads(2, True)
        assert len(ctrl) == 2 and not set(ctrl) & set(top) and ctrl == method.heads(2, True)
        pos = np.arange(len(train.rows))
        run = lambda bucket, setting=None, control=False: model.policy_logits(inputs, bucket, bucket) if setting is None else \
            _with(model, ic.site, method.make(train.rows, setting, control)(pos, bucket), inputs, bucket)
        # the target bucket already has its own Elo: nothing changes there; strength 0 changes nothing anywhere
        assert torch.allclose(run(10, (1.0, 2)), run(10), atol=1e-5)
        assert torch.allclose(run(0, (0.0, 2)), run(0), atol=1e-6)
        # in block 0 (Elo-blind input) strength 1 is exchanging those heads' outputs with the >= 2000 run's
        _, hi = model.run_with_cache(inputs, 10, 10, names=["blocks.0.hook_attn_heads"])

        def heads_from_hi(x, name):
            x = x.clone()
            x[:, :, top] = hi["blocks.0.hook_attn_heads"][:, :, top]
            return x

        assert torch.allclose(run(0, (1.0, 2)), _with(model, "blocks.0.hook_attn_heads", heads_from_hi, inputs, 0), atol=1e-4)
        # and it moves bucket 0 toward bucket 10 more than the control heads do
        p = lambda logits: torch.softmax(logits.masked_fill(~inputs["legal"], -1e9), -1)
        kl = lambda a: (p(run(10)) * (p(run(10)).clamp_min(1e-12).log() - p(a).clamp_min(1e-12).log())).sum(-1).mean()
        assert kl(run(0, (1.0, 2))) < 0.5 * kl(run(0)) and kl(run(0, (1.0, 2), True)) > kl(run(0, (1.0, 2)))
    with pytest.raises(ConfigError, match="blocks.<block>.hook_elo_q"):
        EloHeadIntervention(type(ic)(**{**vars(ic), "site": "blocks.0.hook_attn_out"}), model, train, 0)
    with pytest.raises(ConfigError, match="control needs"):
        EloHeadIntervention(type(ic)(**{**vars(ic), "top_n": [8]}), model, train, 0)


def _with(model, site, fn, inputs, bucket):
    with model.hooks([(site, fn)]):
        return model.policy_logits(inputs, bucket, bucket)


@pytest.mark.slow
def test_stage_intervention_elo_heads_on_seed_positions(seed_transitional, tmp_path):
    tr = seed_transitional("model=maia2_skill")
    r = run_app(["stage=intervention", "model=maia2_skill", "intervention.kind=elo_heads", "intervention.site=blocks.0.hook_elo_q",
                 f"intervention.transitional={tr}", "intervention.strengths=[0.5,1.0]", "intervention.top_n=[1,2]",
                 "intervention.n_boot=100", "intervention.heldout_positions=0"], run_dir=tmp_path / "iv")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "iv" / "results.json").read_text())
    assert [(g["strength"], g["top_n"]) for g in res["grid"][1:]] == [(0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]
    assert sorted(res["heads_ranked"]) == list(range(8)) and set(res["control_heads"]) == {"1", "2"}
    assert res["heads_kl_closed_ranked"] == sorted(res["heads_kl_closed_ranked"], reverse=True)
    # the >= 2000 bucket is given its own Elo: its accuracy cannot move
    acc = res["accuracy_by_bucket"]
    assert acc["intervened"][10] == acc["base"][10] == acc["control"][10]
    lo, hi = res["effect_minus_control_ci"]
    assert lo <= res["effect_minus_control"] <= hi
    assert "Heads by the share of KL" in (tmp_path / "iv" / "results.md").read_text()
    r = run_app(["stage=intervention", "model=maia2_skill", "intervention.kind=elo_heads", f"intervention.transitional={tr}"],
                run_dir=tmp_path / "bad")
    assert r.returncode != 0 and "hook_elo_q" in r.stderr


# ---- the seed's protocol as switches ------------------------------------------------------------------
from types import SimpleNamespace  # noqa: E402

from maia_adapt.analysis.interventions import (assemble_cells, choose_settings, intervention_rows, judge,  # noqa: E402
                                               seed_tp_summary, uniform_random_features)
from maia_adapt.analysis.transitional import seed_transition_points  # noqa: E402
from maia_adapt.concepts import threat_concepts  # noqa: E402
from maia_adapt.concepts.squares import threat_resolved  # noqa: E402

# White's knight on e5 attacked by the d6 pawn, undefended; Black's bishop on b4 hanging to the a3 pawn
HANGING = "4k3/8/3p4/4N3/1b6/P7/8/7K w - - 0 1"


def test_a_move_resolves_a_threat_only_if_it_ends_it():
    th = threat_concepts([HANGING])
    active = {n for n, v in zip(th.names, th.labels[0].tolist()) if v}
    assert {"defensive@e5", "offensive@b4"} <= active  # the family agrees the threats hold
    assert threat_resolved(HANGING, "e5c4", "defensive@e5")  # the knight leaves
    assert not threat_resolved(HANGING, "h1h2", "defensive@e5")  # the knight stays hanging
    assert threat_resolved(HANGING, "a3b4", "offensive@b4")  # the hanging bishop is taken
    assert not threat_resolved(HANGING, "a3b4", "defensive@d4")  # no threat there to resolve
    # the same position with Black to move, mirrored: Black's knight on e4 (named e5 from Black's side)
    black = chess.Board(HANGING).mirror().fen()
    assert threat_resolved(black, "e4c5", "defensive@e5") and not threat_resolved(black, "h8g8", "defensive@e5")
    with pytest.raises(MaiaAdaptError):
        threat_resolved(HANGING, "e5c4", "in_check")


def test_intervention_rows_use_the_top_buckets_move_and_one_row_per_resolved_square():
    row = {"fen": HANGING, "correct": ["h1h2"], "threats": ["defensive@e5", "offensive@b4"], "split": "train",
           "preds": ["h1g1"] * 10 + ["e5c4"]}
    assert intervention_rows([row], "defensive") == [row]
    assert intervention_rows([row], "defensive", "resolves_square") == []  # h1h2 resolves nothing
    [unit] = intervention_rows([row], "defensive", "resolves_square", "top_bucket")
    assert unit["correct"] == ["e5c4"] and unit["threats"] == ["defensive@e5"]
    both = {**row, "correct": ["e5c4"], "fen": HANGING}
    with pytest.raises(MaiaAdaptError, match="pred_0"):
        intervention_rows([{**both, "preds": None}], "defensive", correct="top_bucket")


def test_replacing_writes_one_reconstruction_into_every_token_and_the_plain_relu_ignores_the_threshold(setup):
    model, boards, legal, elo, sae = setup
    clean = model(boards, elo, elo)[0]
    seen = {}

    def spy(x, name):
        seen["x"] = x
        return x

    with torch.no_grad(), model.hooks([(SITE, sae_amplify(sae, torch.zeros(3, 512), 1.0, error="replace")), (SITE, spy)]):
        replaced = model(boards, elo, elo)[0]
    assert torch.allclose(seen["x"], seen["x"][:, :1].expand_as(seen["x"]))  # every token the same vector
    assert not torch.allclose(replaced, clean, atol=1e-4)  # strength 1 is not the identity when replacing
    jump = SparseAutoencoder(SAEConfig(architecture="jumprelu", d_in=256, dim=512, init_threshold=1e6, site=SITE)).eval()
    mask = torch.ones(3, 512)
    with torch.no_grad():
        with model.hooks([(SITE, sae_amplify(jump, mask, 5.0, error="keep", threshold=True))]):
            gated = model(boards, elo, elo)[0]
        with model.hooks([(SITE, sae_amplify(jump, mask, 5.0, error="keep", threshold=False))]):
            relu = model(boards, elo, elo)[0]
    torch.testing.assert_close(gated, clean, atol=1e-5, rtol=0)  # nothing clears a huge threshold: no change
    assert not torch.allclose(relu, clean, atol=1e-3)  # the ReLU codes fire and are amplified


def _rep(correct):
    from maia_adapt.analysis.transitional import transition_points as tpf

    c = np.asarray(correct, bool)
    return BucketReport(c.mean(0), c, tpf(c)[0])


def test_a_setting_per_cell_follows_each_cell_and_a_cell_without_train_rows_takes_its_buckets():
    rows = [{"threats": ["defensive@a1"]}] * 2 + [{"threats": ["defensive@b2"]}] * 2
    a, b = np.zeros((4, 11), bool), np.zeros((4, 11), bool)
    a[:2] = True  # setting 0 right on the a1 rows
    b[2:] = True  # setting 1 right on the b2 rows
    b[0, :] = True  # and on one a1 row: overall setting 1 is better (3 rows of 4)
    reports = [_rep(a), _rep(b)]
    grid = [{"train_accuracy": 0.0, "train_accuracy_by_bucket": [0.0] * 11}] + [
        {"strength": s, "top_n": 1, "train_accuracy": float(r.accuracy.mean()), "train_accuracy_by_bucket": r.accuracy.tolist()}
        for s, r in zip((2.0, 5.0), reports)]
    test = [{"threats": ["defensive@a1"]}, {"threats": ["defensive@b2"]}, {"threats": ["defensive@c3"]}]
    cell = choose_settings(grid, reports, rows, "cell", "defensive")
    assert cell.assignment(test)[:, 0].tolist() == [0, 1, 1]  # c3 unseen: its bucket's best, setting 1
    assert choose_settings(grid, reports, rows, "bucket", "defensive").assignment(test)[:, 0].tolist() == [1, 1, 1]
    tie = [_rep(a), _rep(a)]
    assert choose_settings(grid, tie, rows, "cell", "defensive").assignment(test)[0, 0] == 0  # ties: the first
    picked = assemble_cells({0: _rep(np.ones((3, 11))), 1: _rep(np.zeros((3, 11)))}, cell.assignment(test))
    assert picked.correct[:, 0].tolist() == [True, False, False]


def test_the_seeds_intervention_transition_point_reads_buckets_0_to_9_and_drops_each_arms_own_rows():
    c = np.array([[1] * 11, [0] * 11, [0, 0, 0] + [1] * 8, [0, 1, 0, 0] + [1] * 7, [1] * 9 + [0, 0], [0] * 10 + [1]], bool)
    # buckets 0..9 only: the last row is wrong at all ten levels (10); the fifth is wrong at 9 alone and
    # right below: dropped; the non-monotone fourth row keeps the start of its final run, as the seed
    assert seed_transition_points(c, levels=10).tolist() == [0, 10, 3, 4, -1, 10]
    s = seed_tp_summary({"base": _rep(c), "intervened": _rep(np.ones_like(c))})
    assert s["seed_tp_rows_base"] == 5 and s["seed_mean_tp_base"] == pytest.approx(27 / 5)
    assert s["seed_tp_rows_intervened"] == 6 and s["seed_mean_tp_intervened"] == 0


def test_judging_without_a_control_reports_the_effect_alone():
    rows = [{"threats": ["defensive@a1"]}] * 6
    base = np.zeros((6, 11), bool)
    edited = base.copy()
    edited[:, :3] = True  # the weak end gains
    method = SimpleNamespace(make=lambda rows, setting, control: "control" if control else "edit")
    ev = lambda moves, hook=None: _rep({None: base, "edit": edited, "control": base}[hook])
    choice = choose_settings([{}, {"strength": 2.0, "top_n": 1, "train_accuracy": 1.0, "train_accuracy_by_bucket": [1.0] * 11}],
                             [_rep(edited)], rows, "bucket", "defensive")
    test = SimpleNamespace(rows=rows)
    alone = judge(method, ev, test, choice, n_boot=100, seed=0, control=False)["summary"]
    assert "effect_minus_control" not in alone and alone["effect"] == pytest.approx(3 / 11)
    assert alone["skill_trend_change"] == pytest.approx(-1.0)
    full = judge(method, ev, test, choice, n_boot=100, seed=0, control=True)["summary"]
    assert full["effect_minus_control"] == pytest.approx(3 / 11) and full["skill_trend_change_minus_control"] == pytest.approx(-1.0)


def test_the_uniform_control_draws_distinct_features_from_the_whole_dictionary():
    rng = np.random.default_rng(0)
    drawn = uniform_random_features(16384, [3, 4, 5], rng)
    assert len(set(drawn)) == 3 and all(0 <= f < 16384 for f in drawn)
    assert uniform_random_features(16384, [], rng) == []


def test_hooks_inside_the_transformer_share_one_trunk_pass_and_give_the_whole_forwards_moves(setup, tmp_path):
    from maia_adapt.analysis.transitional import predictions_by_bucket
    from maia_adapt.data.store import store_from_fens
    from maia_adapt.model.inference import masked_probs

    model, boards, legal, elo, sae = setup
    store = store_from_fens(FENS, tmp_path / "s", 5, 5)
    hook = lambda pos, k: [(SITE, sae_amplify(sae, torch.ones(len(pos), 512), 1.0 + k, error="replace"))]
    shared, probs = predictions_by_bucket(model, store, np.arange(3), hooks_for=hook)
    for k in range(11):  # the whole forward of every bucket, the hook active throughout
        e = torch.full((3,), k)
        with torch.no_grad(), model.hooks(hook(np.arange(3), k)):
            p = masked_probs(model(boards, e, e)[0], legal)
        top = p.max(-1)
        for i in range(3):
            assert chess.Move.from_uci(shared[i][k]) in chess.Board(FENS[i]).legal_moves
            assert probs[i, k] == pytest.approx(float(top.values[i]), abs=1e-5)
