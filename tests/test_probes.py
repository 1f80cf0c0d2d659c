"""Linear probes and the logit lens: planted directions are recovered, real board state is decodable
from the small model's residual stream (and shuffled labels are not), files round-trip, and the
last lens is the model's policy."""
import numpy as np
import pytest
import torch

from _app import ONE_THREAD, run_app
from _games import lichess_store
from maia_adapt.concepts import all_position_concepts
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.io import save_safetensors
from maia_adapt.model import load_model
from maia_adapt.model.inference import masked_probs
from maia_adapt.analysis.probes import (LinearProbe, evaluate_probes, load_probe, logit_lens, logit_lens_by_bucket, probes_per_bucket, save_probe, train_probes)

SITE = "blocks.1.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n=3000, d=32, seed=0):
    """x with very unequal feature scales (so standardisation matters) and labels from two planted
    raw-space directions, plus a concept that never occurs."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-0.5, 0.5, d)  # 0.3 .. 3
    x = torch.randn(n, d, generator=g) * scale + 3.0
    u = torch.randn(2, d, generator=g)
    u = u / u.norm(dim=1, keepdim=True)
    s = (x - 3.0) @ u.T
    s = s / s.std(0)
    y = torch.stack([s[:, 0] + 0.3 * torch.randn(n, generator=g) > 1.0,  # rare-ish (~16%)
                     s[:, 1] + 0.3 * torch.randn(n, generator=g) > 0.0,
                     torch.zeros(n, dtype=torch.bool)], dim=1)
    return x, y, u


def test_planted_directions_are_recovered():
    x, y, u = planted()
    probe = train_probes(x[:2000], y[:2000], names=["a", "b", "never"])
    for c in range(2):
        assert torch.dot(probe.direction(c), u[c]) > 0.9
        # the weights alone live in standardised space: they point elsewhere (cosine ~0.8 here)
        naive = probe.weight[:, c] / probe.weight[:, c].norm()
        assert torch.dot(probe.direction(c), u[c]) > torch.dot(naive, u[c]) + 0.05
    assert torch.allclose(probe.direction("a"), probe.direction(0))
    ev = evaluate_probes(probe, x[2000:], y[2000:])
    assert (ev["auc"][:2] > 0.95).all() and (ev["accuracy"][:2] > 0.85).all()
    # a concept without positives keeps zero weights; steering along it is refused, not a no-op
    assert probe.weight[:, 2].abs().max() == 0 and probe.bias[2] == 0
    assert torch.isnan(ev["auc"][2])
    with pytest.raises(MaiaAdaptError, match="never"):
        probe.direction("never")
    again = train_probes(x[:2000], y[:2000], names=["a", "b", "never"])
    assert torch.equal(again.weight, probe.weight)  # deterministic


def test_matches_sklearn_objective():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, _ = planted(n=1000, d=16)
    l2 = 1e-2
    probe = train_probes(x, y[:, :1], l2=l2)
    z = ((x - probe.mean) / probe.std).double().numpy()
    ref = sklearn.LogisticRegression(C=1 / (l2 * len(x)), class_weight="balanced", tol=1e-10, max_iter=10000)
    ref.fit(z, y[:, 0].numpy())
    np.testing.assert_allclose(probe.weight[:, 0].numpy(), ref.coef_[0], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(probe.bias.numpy(), ref.intercept_, rtol=2e-3, atol=2e-3)


def test_minibatch_adam_is_seeded_and_agrees():
    x, y, u = planted(n=2000, d=16)
    a = train_probes(x, y, epochs=15, batch_size=256, seed=3)
    b = train_probes(x, y, epochs=15, batch_size=256, seed=3)
    assert torch.equal(a.weight, b.weight)
    full = train_probes(x, y)
    for c in range(2):
        assert torch.dot(a.direction(c), u[c]) > 0.9
        assert torch.dot(a.direction(c), full.direction(c)) > 0.97


def test_save_load_round_trip_and_bad_files(tmp_path):
    x, y, _ = planted(n=500, d=8)
    probe = train_probes(x, y, names=["a", "b", "never"])
    path = save_probe(probe, tmp_path / "p.safetensors", {"site": SITE, "elo_bucket": 4})
    back = load_probe(path)
    for k in ("mean", "std", "weight", "bias"):
        assert torch.equal(getattr(back, k), getattr(probe, k))
    assert back.names == ["a", "b", "never"] and back.metadata == {"site": SITE, "elo_bucket": 4}
    assert torch.equal(back(x), probe(x))

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaiaAdaptError, match="junk.safetensors"):
        load_probe(tmp_path / "junk.safetensors")
    save_safetensors({"W_enc": torch.zeros(2, 2)}, tmp_path / "sae.safetensors")
    with pytest.raises(MaiaAdaptError, match="sae.safetensors"):
        load_probe(tmp_path / "sae.safetensors")
    with pytest.raises(MaiaAdaptError, match="missing.safetensors"):
        load_probe(tmp_path / "missing.safetensors")


def test_probe_rejects_inconsistent_shapes():
    with pytest.raises(MaiaAdaptError):
        LinearProbe(torch.zeros(4), torch.ones(4), torch.zeros(5, 2), torch.zeros(2))
    with pytest.raises(MaiaAdaptError):
        train_probes(torch.zeros(10, 4), torch.zeros(9, 2, dtype=torch.bool))


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("probes")
    store = lichess_store(shared_data, d / "store", GameFilter(max_games=120))
    model = load_model(ASSETS / "maia2_small.safetensors")
    return store, model


def test_board_state_probes_beat_shuffled_control(real):
    store, model = real
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.choice(store.split_indices("train"), 1500, replace=False))
    test_idx = np.sort(np.concatenate([store.split_indices("val"), store.split_indices("test")]))  # other games
    c_tr, c_te = all_position_concepts(store.fens(train_idx)), all_position_concepts(store.fens(test_idx))
    # the side to move's own pieces; both classes well represented in both sets
    keep = torch.tensor([n.startswith("own_") and "@" in n for n in c_tr.names])
    for lab in (c_tr.labels, c_te.labels):
        pos = lab.sum(0)
        keep &= (pos >= 20) & (len(lab) - pos >= 20)
    names = [n for n, k in zip(c_tr.names, keep.tolist()) if k]
    assert len(names) >= 20

    out = probes_per_bucket(model, store, train_idx, test_idx, SITE, c_tr.labels[:, keep], c_te.labels[:, keep],
                            names, buckets=[0, 10])
    c = len(names)
    for k in ("auc", "accuracy", "control_auc"):
        assert out[k].shape == (2, c)
    assert set(out["probes"]) == {0, 10} and out["probes"][10].names == names
    assert out["probes"][0].metadata == {"site": SITE, "elo_bucket": 0}
    auc, control = out["auc"].mean(1), out["control_auc"].mean(1)
    assert (auc > 0.9).all(), auc
    assert ((control > 0.35) & (control < 0.65)).all(), control
    assert (out["accuracy"].mean(1) > 0.8).all()
    # the Elo input moves the residual stream (by a fifth to a third of its spread over positions on
    # the repaired file), beyond a constant shift
    ch = out["activation_change"]
    assert 0.05 < ch["position_dependent"] <= ch["change"] < 1.0, ch


def test_activation_change_separates_a_shift_from_a_change_of_representation():
    from maia_adapt.analysis.probes import activation_change

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=g)
    assert activation_change(x, x) == {"change": 0.0, "position_dependent": 0.0}
    shifted = activation_change(x, x + 0.5)  # every position moved alike: what a probe's bias absorbs
    assert shifted["change"] > 0.3 and shifted["position_dependent"] < 1e-6
    moved = activation_change(x, x + 0.5 * torch.randn(500, 32, generator=g))
    assert moved["position_dependent"] == pytest.approx(moved["change"], rel=0.05) and 0.3 < moved["change"] < 0.7


def test_last_logit_lens_is_the_policy(real):
    store, model = real
    b = store.batch(np.arange(0, 2000, 10))
    model.train()  # the lens must switch dropout off itself, and restore the mode
    lens = logit_lens(model, b["boards"], b["elo_self"], b["elo_oppo"], b["legal"])
    assert model.training
    assert list(lens) == ["hook_tokens", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    model.eval()
    with torch.no_grad():
        policy = masked_probs(model(b["boards"], b["elo_self"], b["elo_oppo"])[0], b["legal"])
    torch.testing.assert_close(lens["blocks.1.hook_resid_post"], policy, atol=1e-5, rtol=0)
    for p in lens.values():
        assert p.shape == (200, 1880)
        torch.testing.assert_close(p.sum(1), torch.ones(200))
        assert (p[~b["legal"]] == 0).all()
    assert list(logit_lens(model, b["boards"], b["elo_self"], b["elo_oppo"], b["legal"], blocks=[0])) == [
        "hook_tokens", "blocks.0.hook_resid_post"]


def test_logit_lens_by_bucket_shapes(real):
    store, model = real
    idx = store.split_indices("test")[:150]
    out = logit_lens_by_bucket(model, store, idx, buckets=[2, 8], batch_size=64)
    assert out["lenses"] == ["hook_tokens", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert out["buckets"] == [2, 8]
    assert out["agreement"].shape == out["accuracy"].shape == (3, 2)
    assert (out["agreement"][-1] == 1).all()  # the last lens is the policy
    assert ((out["accuracy"] >= 0) & (out["accuracy"] <= 1)).all() and out["n_with_move"] > 0


@pytest.mark.slow
def test_stage_probe_end_to_end(shared_data, tmp_path):
    import json

    from maia_adapt.analysis.probes import load_probe

    r = run_app(["stage=probe", "data=lichess", "data.max_games=120", f"data.store_dir={tmp_path}/store",
                 "probe.train_positions=1000", "probe.test_positions=500", "probe.buckets=[0,10]",
                 "probe.families=[board-state]"], run_dir=tmp_path / "run", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    site = res["sites"]["blocks.1.hook_resid_post"]
    assert len(site["mean_auc_per_bucket"]) == 2 and min(site["mean_auc_per_bucket"]) > 0.75
    assert abs(site["mean_control_auc"] - 0.5) < 0.1
    lens = res["logit_lens"]
    assert lens["lenses"][-1] == "blocks.1.hook_resid_post" and all(a == 1.0 for a in lens["agreement"][-1])
    probe = load_probe(run / "probes" / "blocks_1_hook_resid_post" / "bucket_10.safetensors")
    assert probe.weight.shape[1] == len(res["concepts"])
    assert (run / "probe_auc_blocks_1_hook_resid_post.png").is_file() and (run / "logit_lens.png").is_file()


def test_maia1_conv_site_pools_to_one_vector_per_position(shared_models, tmp_path):
    import chess

    from maia_adapt.model.activations import collect_activations
    from maia_adapt.data.store import store_from_fens
    from maia_adapt.model.maia1 import load_maia1
    from maia_adapt.model.skill import Maia1Family

    fam = Maia1Family({1500: load_maia1(shared_models / "maia1" / "maia-1500.pb.gz")}, rating=1500)
    fens = [chess.STARTING_FEN, "rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2"]
    store = store_from_fens(fens, tmp_path / "s", 5, 5)
    site = "blocks.5.hook_resid_post"
    mean = collect_activations(fam, store, np.arange(2), [site], elo=5)[site]
    per_square = collect_activations(fam, store, np.arange(2), [site], elo=5, token_pooling="none")[site]
    _, cache = fam.run_with_cache(fam.inputs(store, np.arange(2)), 5, names=[site])
    assert mean.shape == (2, 64) and per_square.shape == (2 * 64, 64)
    # the mean over the 64 squares of the [B, C, 8, 8] map, and each square's C channels as a token
    assert torch.allclose(mean, cache[site].mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(per_square[64 + 9], cache[site][1, :, 1, 1], atol=1e-5)


@pytest.mark.slow
def test_stage_probe_maia1_on_real_games(shared_data, shared_models, tmp_path):
    import json

    r = run_app(["stage=probe", "model=maia1", "data=lichess", "data.max_games=120", f"data.store_dir={tmp_path}/store",
                 "probe.train_positions=600", "probe.test_positions=300", "probe.buckets=[1,9]",
                 "probe.families=[board-state]", "probe.sites=[blocks.5.hook_resid_post]"], run_dir=tmp_path / "run",
                env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    site = res["sites"]["blocks.5.hook_resid_post"]
    assert res["model"] == "maia1" and res["logit_lens"] is None
    assert site["activation_change"] is None  # nine networks: their activations are not comparable
    # board-state concepts are linearly readable from maia-1100 and maia-1900; shuffled labels are not
    assert min(site["mean_auc_per_bucket"]) > 0.65 and abs(site["mean_control_auc"] - 0.5) < 0.1
    md = (tmp_path / "run" / "results.md").read_text()
    assert "maia-1100" in md and "maia-1900" in md and "Skipped" in md
    assert (tmp_path / "run" / "probes" / "blocks_5_hook_resid_post" / "bucket_9.safetensors").is_file()


def test_awareness_trend_finds_a_trend_and_not_noise():
    from maia_adapt.analysis.probes import awareness_trend

    rng = np.random.default_rng(0)
    noise = 0.8 + 0.03 * rng.standard_normal((40, 9))
    flat = awareness_trend(noise, seed=1)
    lo, hi = flat["auc_gain_top_minus_bottom_ci95"]
    assert lo < 0 < hi and flat["concepts"] == 40
    rising = noise + 0.01 * np.arange(9)[None, :]
    up = awareness_trend(rising, seed=1)
    assert up["auc_slope_per_bucket"] == pytest.approx(flat["auc_slope_per_bucket"] + 0.01, abs=1e-9)
    assert up["auc_slope_per_bucket_ci95"][0] > 0 and up["auc_gain_top_minus_bottom_ci95"][0] > 0
    with_gap = np.vstack([rising, np.full((1, 9), np.nan)])  # a concept left out is not counted
    assert awareness_trend(with_gap, seed=1)["concepts"] == 40


# ---- the seed study's probe choices (ProbeOptions; experiments/probe_study/README.md "The seed's probes") ----

def sparse_planted(n=600, d=40, support=4, seed=0, scale=True):
    """x [n, d] (feature scales 0.3 .. 3 when `scale`) and labels from a planted direction on the first
    `support` features of the standardised x, plus label noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    w = torch.zeros(d)
    w[:support] = torch.tensor([2.0, -1.5, 1.0, 0.8, 1.2, -0.9][:support])
    y = (z @ w + 0.7 * torch.randn(n, generator=g) > 0.3)[:, None]
    x = z * torch.logspace(-0.5, 0.5, d) + 1.0 if scale else z
    return x, y, w


def test_l1_recovers_a_planted_sparse_support_and_l2_does_not():
    x, y, w = sparse_planted()
    l1 = train_probes(x, y, penalty="l1", l1=0.05)
    on = w != 0
    assert (l1.weight[on, 0] != 0).all() and (l1.weight[~on, 0] == 0).all()  # exact zeros off the support
    assert (torch.sign(l1.weight[on, 0]) == torch.sign(w[on])).all()
    l2 = train_probes(x, y)  # today's L2 probe zeroes nothing
    assert (l2.weight[:, 0] != 0).all()


def test_l1_agrees_with_sklearn_liblinear():
    """The NeurIPS probe: LogisticRegression(penalty='l1', solver='liblinear', C) on raw activations,
    unweighted, the intercept penalised (liblinear's intercept is a feature with intercept_scaling=1):
    our l1 = 1 / (C n) with standardize=False, class_balance=False, penalize_bias=True."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, _ = sparse_planted(n=500, d=20)
    for c in (0.05, 0.3):
        ours = train_probes(x, y, penalty="l1", l1=1 / (c * len(x)), standardize=False, class_balance=False,
                            penalize_bias=True)
        assert torch.equal(ours.mean, torch.zeros(20)) and torch.equal(ours.std, torch.ones(20))
        ref = sklearn.LogisticRegression(l1_ratio=1, solver="liblinear", C=c, tol=1e-8, max_iter=100000)
        ref.fit(x.double().numpy(), y[:, 0].numpy())
        np.testing.assert_allclose(ours.weight[:, 0].numpy(), ref.coef_[0], atol=5e-3)
        np.testing.assert_allclose(ours.bias.numpy(), ref.intercept_, atol=5e-3)
        assert ((ours.weight[:, 0] == 0).numpy() == (ref.coef_[0] == 0)).mean() >= 0.95  # the same support
    # each of the three switches changes the solution (today's choices solve another problem)
    for kw in ({"standardize": True}, {"class_balance": True}, {"penalize_bias": False}):
        o = train_probes(x, y, penalty="l1", l1=1 / (c * len(x)),
                         **{"standardize": False, "class_balance": False, "penalize_bias": True, **kw})
        raw = o.weight[:, 0] / o.std
        assert (raw - torch.from_numpy(ref.coef_[0]).float()).abs().max() > 0.02, kw


def test_penalize_bias_takes_the_bias_to_zero_when_the_weights_are():
    x, y, _ = sparse_planted(n=400, d=10)
    y = y & (torch.arange(400) % 3 == 0)[:, None]  # a rarer class: its log-odds are far from 0
    rate = y.float().mean()
    free = train_probes(x, y, penalty="l1", l1=10.0, class_balance=False)
    taken = train_probes(x, y, penalty="l1", l1=10.0, class_balance=False, penalize_bias=True)
    assert (free.weight == 0).all() and (taken.weight == 0).all()
    assert float(free.bias) == pytest.approx(float(torch.log(rate / (1 - rate))), abs=1e-3)
    assert float(taken.bias) == 0.0


def test_strengths_map_c_as_documented():
    from maia_adapt.analysis.probes import ProbeOptions

    n = torch.tensor([100, 400])
    s = ProbeOptions(c_grid=(2.0, 0.5), c_scale="sum").strengths(n)
    torch.testing.assert_close(s, torch.tensor([[1 / 200, 1 / 50], [1 / 800, 1 / 200]], dtype=torch.float64))
    m = ProbeOptions(c_grid=(2.0, 0.5), c_scale="mean").strengths(n)
    torch.testing.assert_close(m, torch.tensor([[0.5, 2.0], [0.5, 2.0]], dtype=torch.float64))
    fixed = ProbeOptions(penalty="l1", l1=0.3).strengths(n)
    assert fixed.tolist() == [[0.3], [0.3]]


def test_c_chosen_on_val_is_the_right_order_of_magnitude():
    """Few rows, many noise features: the C that is best on a large held-out set is interior to the
    grid; the val choice lands within a factor 10 of it, and C=100 (the weakest) is not chosen."""
    from maia_adapt.analysis.probes import ProbeOptions, fit_and_select, probe_scores

    grid = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    x, y, _ = sparse_planted(n=120 + 400 + 4000, d=150, support=3, seed=1, scale=False)
    tr, va, te = slice(0, 120), slice(120, 520), slice(520, None)
    one = lambda t: t[None]
    opts = ProbeOptions(penalty="l1", c_grid=grid, select_by="auc")
    fit = fit_and_select(one(x[tr]), one(y[tr]), torch.ones(1, 120, dtype=torch.bool), opts, one(x[va]), one(y[va]),
                         torch.ones(1, 400, dtype=torch.bool))
    chosen = grid[int(fit["chosen"][0, 0])]
    test_auc = []
    for c in grid:  # the oracle: each C's probe judged on the large test set
        f = fit_and_select(one(x[tr]), one(y[tr]), torch.ones(1, 120, dtype=torch.bool),
                           ProbeOptions(penalty="l1", l1=1 / (c * 120)))
        z = (x[te] - f["mean"][0]) / f["std"][0]
        test_auc.append(float(probe_scores(z @ f["weight"][0] + f["bias"][0], y[te])["auc"][0]))
    best = grid[int(np.nanargmax(test_auc))]
    assert best not in (grid[0], grid[-1]), test_auc
    assert 0.1 <= chosen / best <= 10 and chosen != grid[-1], (chosen, best, test_auc)
    assert fit["lam"][0, 0] == pytest.approx(1 / (chosen * 120))
    # no grid: no choice
    assert (fit_and_select(one(x[tr]), one(y[tr]), torch.ones(1, 120, dtype=torch.bool), ProbeOptions())["chosen"]
            == -1).all()


def test_the_revisions_c_grid_collapses_its_strongest_probe():
    """c_scale=mean: C=0.01 is lambda=100 on the mean loss (the revision's un-normalised L1 term): every
    weight is zero, accuracy 0.5 on balanced val, so val selection never picks it; with sklearn's
    scale (sum) the same C on 400 rows is lambda=0.25, weaker still far from that."""
    from maia_adapt.analysis.probes import ProbeOptions, fit_and_select

    x, y, _ = sparse_planted(n=800, d=20, scale=False)
    one = lambda t: t[None]
    mask = torch.ones(1, 400, dtype=torch.bool)
    opts = ProbeOptions(penalty="l1", c_grid=(0.01, 0.1, 1.0, 10.0, 100.0), c_scale="mean", select_by="accuracy",
                        penalize_bias=True)
    collapsed = fit_and_select(one(x[:400]), one(y[:400]), mask, ProbeOptions(penalty="l1", l1=100.0,
                                                                                penalize_bias=True))
    assert (collapsed["weight"] == 0).all() and (collapsed["bias"] == 0).all()
    fit = fit_and_select(one(x[:400]), one(y[:400]), mask, opts, one(x[400:]), one(y[400:]), mask)
    assert int(fit["chosen"][0, 0]) > 0 and fit["lam"][0, 0] == pytest.approx(1 / opts.c_grid[int(fit["chosen"][0, 0])])


def test_select_by_decides_which_c_wins():
    """40 train rows, 60 features, a weak signal: the weakly penalised probe (C=1000, mean scale) overfits
    into confident mistakes (val R^2 < 0) yet ranks and classifies above chance; the collapsed one
    (C=0.001: lambda 1000, bias penalised: p = 0.5 everywhere) has R^2 0 and accuracy 0.5. Choosing by
    R^2 (the NeurIPS probes) keeps the empty probe, by accuracy (the revision) or AUC the other."""
    from maia_adapt.analysis.probes import ProbeOptions, fit_and_select

    g = torch.Generator().manual_seed(0)
    x = torch.randn(440, 60, generator=g)
    y = 0.6 * x[:, :1] + torch.randn(440, 1, generator=g) > 0
    one = lambda t: t[None]
    chosen = {}
    for by in ("accuracy", "r2", "auc"):
        opts = ProbeOptions(penalty="l1", c_grid=(0.001, 1000.0), c_scale="mean", select_by=by, penalize_bias=True,
                            class_balance=False)
        fit = fit_and_select(one(x[:40]), one(y[:40]), torch.ones(1, 40, dtype=torch.bool), opts, one(x[40:]),
                             one(y[40:]), torch.ones(1, 400, dtype=torch.bool))
        chosen[by] = int(fit["chosen"][0, 0])
        if chosen[by] == 0:
            assert (fit["weight"] == 0).all() and (fit["bias"] == 0).all()
    assert chosen == {"accuracy": 1, "r2": 0, "auc": 1}


def test_metrics_against_hand_computation():
    from maia_adapt.analysis.probes import probe_scores

    logits = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.5, -3.0], [-0.2, 0.0]])
    y = torch.tensor([[True, True], [False, True], [False, True], [True, True]])
    s = probe_scores(logits, y)
    assert s["accuracy"].tolist() == [0.5, 0.25]  # logit > 0 (p > 0.5); logit 0 counts as negative
    p = torch.sigmoid(logits[:, 0].double())
    t = y[:, 0].double()
    r2 = 1 - ((t - p) ** 2).sum() / ((t - 0.5) ** 2).sum()
    assert float(s["r2"][0]) == pytest.approx(float(r2), abs=1e-6)
    assert float(s["auc"][0]) == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered right
    assert torch.isnan(s["r2"][1]) and torch.isnan(s["auc"][1])  # one class only
    metrics = pytest.importorskip("sklearn.metrics")
    assert float(s["r2"][0]) == pytest.approx(metrics.r2_score(t.numpy(), p.numpy()), abs=1e-6)


def test_balanced_pool_parts_counts_and_seeded_split():
    from maia_adapt.analysis.probes import balanced_pool_parts

    n = 1000
    pool = np.arange(n) * 3 + 7  # store indices
    lab = torch.zeros(n, 3, dtype=torch.bool)
    lab[:300, 0] = True  # 300 positives, capped at 200
    lab[::2, 1] = True  # 500 / 500, capped at 200
    lab[:40, 2] = True  # 40 positives: too few for 20 per part
    out = balanced_pool_parts(pool, lab, ["a", "b", "rare"], max_per_class=200, fractions=(0.7, 0.1, 0.2), seed=3,
                              min_per_part=20)
    assert out["left_out"] == ["rare"] and list(out["parts"]) == ["a", "b"]
    for name, c in (("a", 0), ("b", 1)):
        parts = out["parts"][name]
        sizes = {p: (int(y.sum()), int((~y).sum())) for p, (_, y) in parts.items()}
        assert sizes == {"train": (140, 140), "val": (20, 20), "test": (40, 40)}  # exactly min(pos, cap) each
        rows = np.concatenate([idx for idx, _ in parts.values()])
        assert len(np.unique(rows)) == 400  # the parts are disjoint
        for idx, y in parts.values():  # labels are the pool's
            assert (lab[(idx - 7) // 3, c].numpy() == y).all()
    again = balanced_pool_parts(pool, lab, ["a", "b", "rare"], 200, (0.7, 0.1, 0.2), seed=3, min_per_part=20)
    other = balanced_pool_parts(pool, lab, ["a", "b", "rare"], 200, (0.7, 0.1, 0.2), seed=4, min_per_part=20)
    assert all(np.array_equal(again["parts"]["a"][p][0], out["parts"]["a"][p][0]) for p in ("train", "val", "test"))
    assert not np.array_equal(other["parts"]["a"]["train"][0], out["parts"]["a"]["train"][0])
    # a concept's sample depends on its name and the seed, not on the concepts probed with it
    alone = balanced_pool_parts(pool, lab[:, 1:2], ["b"], 200, (0.7, 0.1, 0.2), seed=3, min_per_part=20)
    assert np.array_equal(alone["parts"]["b"]["test"][0], out["parts"]["b"]["test"][0])
    # no cap: min(positives, negatives) of each
    uncapped = balanced_pool_parts(pool, lab, ["a", "b", "rare"], None, (0.7, 0.1, 0.2), seed=3, min_per_part=1)
    assert sum(int(y.sum()) for _, y in uncapped["parts"]["a"].values()) == 300
    assert sum(int(y.sum()) for _, y in uncapped["parts"]["rare"].values()) == 40


def test_balanced_split_parts_keeps_every_positive_within_each_split():
    from maia_adapt.analysis.probes import balanced_split_parts

    def pool(n, n_pos, offset):
        lab = torch.zeros(n, 1, dtype=torch.bool)
        lab[:n_pos] = True
        return np.arange(n) + offset, lab

    pools = {"train": pool(500, 120, 0), "val": pool(100, 60, 1000), "test": pool(200, 30, 2000)}
    out = balanced_split_parts(pools, ["a"], max_per_class=None, seed=0, min_per_part=20)
    sizes = {p: (int(y.sum()), int((~y).sum())) for p, (_, y) in out["parts"]["a"].items()}
    # every positive; as many negatives, or all of them when the positives outnumber them (val: 60 > 40)
    assert sizes == {"train": (120, 120), "val": (60, 40), "test": (30, 30)}
    assert out["parts"]["a"]["val"][0].min() >= 1000 and out["parts"]["a"]["test"][0].min() >= 2000
    capped = balanced_split_parts(pools, ["a"], max_per_class=50, seed=0, min_per_part=20)
    assert int(capped["parts"]["a"]["train"][1].sum()) == 50
    assert balanced_split_parts(pools, ["a"], None, 0, min_per_part=35)["left_out"] == ["a"]  # test has 30


def test_activations_by_bucket_equal_collect_activations(real):
    from maia_adapt.model.activations import collect_activations
    from maia_adapt.analysis.probes import activations_by_bucket

    store, model = real
    idx = store.split_indices("test")[:300]
    sites = ["hook_tokens", "blocks.0.hook_mlp_out", SITE]
    got = dict(activations_by_bucket(model, store, idx, sites, [0, 10], batch_size=128))
    assert list(got) == [0, 10]
    for b in (0, 10):
        ref = collect_activations(model, store, idx, sites, batch_size=128, elo=b)
        for s in sites:
            assert torch.equal(got[b][s], ref[s]), (b, s)
    assert not torch.equal(got[0][SITE], got[10][SITE])


def test_probes_balanced_on_real_positions(real):
    from maia_adapt.analysis.probes import ProbeOptions, balanced_pool_parts, probes_balanced
    from maia_adapt.concepts import position_concepts

    store, model = real
    pool = store.split_indices("train")[:3000]
    c = position_concepts(store.fens(pool), ["board-state"])
    keep = [j for j, n in enumerate(c.names) if n in ("own_pawn@e4", "opp_pawn@d5", "opp_queen@d8")]
    sample = balanced_pool_parts(pool, c.labels[:, keep], [c.names[j] for j in keep], 200, seed=0)
    names = list(sample["parts"])
    assert len(names) >= 3
    opts = ProbeOptions(penalty="l1", c_grid=(0.01, 1.0, 100.0), c_scale="mean", select_by="accuracy",
                        metric="accuracy", penalize_bias=True, standardize=False, class_balance=False)
    res = probes_balanced(model, store, sample["parts"], [SITE], [0, 10], opts, seed=0)[SITE]
    assert res["auc"].shape == res["accuracy"].shape == res["chosen_c"].shape == (2, len(names))
    assert (res["accuracy"] > 0.75).all() and (res["auc"] > 0.85).all()
    assert ((res["control_accuracy"] > 0.3) & (res["control_accuracy"] < 0.7)).all()
    assert set(res["chosen_c"].flatten().tolist()) <= {1.0, 100.0}  # C=0.01 (lambda 100) collapses
    probe = res["probes"][10]
    assert probe.names == names and torch.equal(probe.mean, torch.zeros(probe.weight.shape[0]))
    # the saved probe scores the test rows as the per-concept fit did (raw-space weights)
    idx, y = sample["parts"][names[0]]["test"]
    from maia_adapt.model.activations import collect_activations

    x = collect_activations(model, store, idx, [SITE], elo=10)[SITE]
    acc = ((probe(x)[:, 0] > 0).numpy() == y).mean()
    assert acc == pytest.approx(float(res["accuracy"][1, 0]), abs=1e-6)


@pytest.fixture(scope="module")
def stage_store(shared_data, tmp_path_factory):
    """The data overrides of the in-process stage tests, with their store built once for the module."""
    from hydra import compose, initialize_config_dir

    from maia_adapt.config import CONF_DIR
    from maia_adapt.data.preprocess import open_or_build_store

    data = ["data=lichess", "data.max_games=120", f"data.store_dir={tmp_path_factory.mktemp('stage') / 'store'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=data)
    open_or_build_store(cfg.data, cfg.paths.cache_dir)  # built here, reused by the stage (same fingerprint)
    return data


def _run_stage(overrides, run_dir):
    from hydra import compose, initialize_config_dir

    from maia_adapt.config import CONF_DIR
    from maia_adapt.run import execute

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["stage=probe", "logger=none", "probe.logit_lens=false", *overrides])
    return execute(cfg, run_dir)


def test_stage_probe_with_the_revisions_switches(stage_store, tmp_path):
    """stage=probe in process at toy size: balanced per-concept positions from one pool (the
    revision's), C chosen on val (its scale), accuracy as the metric; the report carries them. (L2
    here, which L-BFGS fits in a blink; the L1 fit and the other switches are tested above, and
    test_probe_options_follow_the_config checks that the stage hands them on.)"""
    import csv
    import json

    run = tmp_path / "run"
    summary = _run_stage([*stage_store, "probe.sampling=balanced", "probe.pool_positions=1000", "probe.max_per_class=50",
                          "probe.min_positives=5", "probe.families=[seed172:positional_structure]",
                          "probe.buckets=[0,10]", f"probe.sites=[{SITE}]", "probe.c_grid=[0.01,1,100]",
                          "probe.c_scale=mean", "probe.metric=accuracy", "probe.class_balance=false"], run)
    res = json.loads((run / "results.json").read_text())
    assert res["metric"] == "accuracy" and res["probe"]["sampling"] == "balanced" and res["probe"]["c_scale"] == "mean"
    site = res["sites"][SITE]
    names = res["concepts"]
    assert len(site["mean_accuracy_per_bucket"]) == 2 and min(site["mean_accuracy_per_bucket"]) > 0.6
    assert len(site["accuracy_gain_top_minus_bottom_ci95"]) == 2 and "auc_gain_top_minus_bottom" in site
    assert {c for row in site["chosen_c"] for c in row} <= {0.01, 1.0, 100.0}
    counts = res["sampling"]["positions_per_concept"]
    assert set(counts) == set(names) and all(c["train"] <= 70 and c["val"] == 10 for c in counts.values())
    assert isinstance(res["sampling"]["left_out"], list)
    slug = SITE.replace(".", "_")
    with open(run / f"probe_{slug}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"auc_<1100", "accuracy_<1100", "control_accuracy_>=2000", "c_<1100", "n_train"} <= set(rows[0])
    assert f"{slug}:accuracy_gain_top_minus_bottom" in summary
    assert "probe.metric=accuracy" in (run / "results.md").read_text()
    assert (run / f"probe_accuracy_{slug}.png").is_file()


def test_stage_positions_balanced_within_each_split(stage_store, tmp_path):
    """The NeurIPS probes' positions as the stage draws them (probe.sampling=balanced_splits): each
    concept's parts come from its own split of the store, every positive (here at most 40) and as
    many negatives; the fitting is the same as the revision's (test above)."""
    from hydra import compose, initialize_config_dir

    from maia_adapt.config import CONF_DIR
    from maia_adapt.data.preprocess import open_or_build_store
    from maia_adapt.stages.probe import _positions

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["stage=probe", *stage_store, "probe.sampling=balanced_splits",
                                           "probe.train_positions=800", "probe.val_positions=300",
                                           "probe.test_positions=300", "probe.max_per_class=40",
                                           "probe.families=[seed172:positional_structure]", "probe.min_positives=5"])
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    names, data, info, _ = _positions(cfg, store, np.random.default_rng(0))
    assert info["mode"] == "balanced_splits" and len(names) >= 3 and info["left_out"]
    split_of = {p: set(store.split_indices(p).tolist()) for p in ("train", "val", "test")}
    for n in names:
        for part, (idx, y) in data["parts"][n].items():
            assert set(idx.tolist()) <= split_of[part]  # the predefined split, not one pool
            assert 5 <= y.sum() <= 40 and (~y).sum() == y.sum()  # as many negatives (there are plenty)
            assert info["positions_per_concept"][n][part] == len(idx)


def test_probe_options_follow_the_config():
    from hydra import compose, initialize_config_dir

    from maia_adapt.analysis.probes import ProbeOptions
    from maia_adapt.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default = compose("config", overrides=["stage=probe"]).probe
        seed = compose("config", overrides=["stage=probe", "probe.penalty=l1", "probe.c_grid=[0.01,0.1,1,10,100]",
                                            "probe.c_scale=mean", "probe.metric=accuracy", "probe.penalize_bias=true",
                                            "probe.standardize=false", "probe.class_balance=false"]).probe
    assert ProbeOptions.from_config(default) == ProbeOptions() and ProbeOptions().todays_fit
    opts = ProbeOptions.from_config(seed)
    assert opts == ProbeOptions(penalty="l1", c_grid=(0.01, 0.1, 1.0, 10.0, 100.0), c_scale="mean",
                                select_by="accuracy", metric="accuracy", penalize_bias=True, standardize=False,
                                class_balance=False)
    assert not opts.todays_fit
