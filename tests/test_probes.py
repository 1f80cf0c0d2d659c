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

    from maia_adapt.analysis.activations import collect_activations
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
