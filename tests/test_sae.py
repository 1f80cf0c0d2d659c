"""SAEs on real Maia-2 activations (the shipped small model on real games) and on synthetic data."""
import pytest
import torch

from _app import run_app
from _games import lichess_store
from maia_adapt.model.activations import activation_batches
from maia_adapt.model.maia2_sites import site_dim
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter
from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder, load_sae, save_sae, train_dictionaries
from maia_adapt.dictionaries.evaluate import ablate_fn, site_mean, spliced_metrics, splice_fn
from maia_adapt.model import load_model

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return load_model(ASSETS / "maia2_small.safetensors")


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("sae")
    return lichess_store(shared_data, d / "store", GameFilter(max_games=120))


@pytest.fixture(scope="module")
def acts(model, store):
    idx = store.split_indices("train")[:4096]
    return torch.cat([b[SITE] for b in activation_batches(model, store, idx, [SITE], elo="random")])


def _train(acts, steps=150, lr=2e-3, dim=512, **kw):
    cfg = SAEConfig(d_in=acts.shape[1], dim=dim, lr=lr, batch_size=256, steps=steps, warmup_steps=10,
                    sparsity_warmup_steps=20, site=SITE, **kw)
    sae = SparseAutoencoder(cfg)
    sae.init_from_data(acts)
    trainer = DictionaryTrainer({"s": (sae, "x")}, steps, cfg.batch_size)
    first = trainer.train_step({"x": acts[:256]})
    for i in range(steps - 1):
        j = (i * 256) % (len(acts) - 256)
        last = trainer.train_step({"x": acts[j : j + 256]})
    return sae, first, last


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu_l1"])
def test_each_architecture_learns_real_activations(acts, arch):
    sae, first, last = _train(acts, architecture=arch, k=16, l0_coefficient=1e-3, l1_coefficient=1.0)
    assert last["s/mse"] < 0.5 * first["s/mse"]
    assert last["s/fvu"] < 0.5
    if arch == "topk":
        assert last["s/l0"] == 16
    if arch == "batchtopk":
        assert abs(last["s/l0"] - 16) < 1e-6  # mean L0 over the batch is exactly k in training
        sae.eval()
        l0_eval = (sae.encode(acts[:1024]) > 0).sum(1).float().mean().item()
        assert 4 < l0_eval < 64  # the learned inference threshold keeps L0 near k


def _threshold_grads(sae, x):
    """(reconstruction, weighted L0) gradients of the log-thresholds on a batch."""
    out = sae.losses(x)
    g_mse = torch.autograd.grad(out["mse"], sae.log_threshold, retain_graph=True)[0]
    g_l0 = sae.cfg.l0_coefficient * torch.autograd.grad(out["l0_loss"], sae.log_threshold)[0]
    return g_mse, g_l0


def test_jumprelu_l0_term_has_a_substantial_share_of_the_threshold_gradient(acts):
    # with the default settings (coefficient 1) the sparsity term must be able to move the thresholds:
    # at the old default 1e-3 it gave 0.2% of their gradient and dominated for no latent
    sae = SparseAutoencoder(SAEConfig(architecture="jumprelu", d_in=acts.shape[1], dim=256))
    sae.init_from_data(acts)
    g_mse, g_l0 = _threshold_grads(sae, acts[:1024])
    assert (g_l0 <= 0).all()  # raising a threshold never raises L0
    assert g_l0.abs().sum() > 0.5 * g_mse.abs().sum()
    assert (g_l0.abs() > g_mse.abs()).float().mean() > 0.25
    weak = SparseAutoencoder(SAEConfig(architecture="jumprelu", d_in=acts.shape[1], dim=256, l0_coefficient=1e-3))
    weak.init_from_data(acts)
    g_mse, g_l0 = _threshold_grads(weak, acts[:1024])
    assert g_l0.abs().sum() < 0.01 * g_mse.abs().sum()


def test_jumprelu_l0_falls_as_the_coefficient_rises(acts):
    # Adam moves log-thresholds at about lr per step whatever the penalty's size, so a short test
    # needs a larger lr than the preset's for the coefficient's effect to show
    l0 = []
    for coefficient in (0.01, 0.1, 1.0, 10.0):
        sae, _, _ = _train(acts, architecture="jumprelu", l0_coefficient=coefficient, lr=1e-2, dim=256)
        sae.eval()
        with torch.no_grad():
            l0.append((sae.encode(acts[:2048]) > 0).sum(1).float().mean().item())
    assert all(a > b for a, b in zip(l0, l0[1:])), l0
    assert l0[-1] < 0.5 * l0[0], l0


def test_sae_presets_state_only_what_differs_from_the_defaults():
    # one source of truth: a preset restating an SAEConfig default would hide a later change of it
    import dataclasses
    from pathlib import Path

    from omegaconf import OmegaConf

    defaults = {f.name: f.default for f in dataclasses.fields(SAEConfig)}
    presets = sorted((Path(__file__).resolve().parents[1] / "maia_adapt" / "conf" / "sae").glob("*.yaml"))
    assert {p.stem for p in presets} == {"topk", "batchtopk", "jumprelu", "relu_l1"}
    for p in presets:
        for key, value in OmegaConf.to_container(OmegaConf.load(p)).items():
            assert key in defaults, f"{p.name}: unknown key {key}"
            assert key == "architecture" or value != defaults[key], f"{p.name}: {key}={value} restates the default"


def test_save_load_round_trip_and_folding(acts, tmp_path):
    sae, _, _ = _train(acts, architecture="jumprelu", steps=40)
    sae.eval()
    assert float(sae.norm_scale) != 1.0
    before = sae(acts[:300])
    save_sae(sae, tmp_path / "a")
    loaded = load_sae(tmp_path / "a")
    assert float(loaded.norm_scale) == 1.0
    assert torch.allclose(loaded(acts[:300]), before, atol=1e-4, rtol=1e-4)
    save_sae(loaded, tmp_path / "b")
    again = load_sae(tmp_path / "b")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert (tmp_path / "a" / "cfg.json").read_text().count('"hook_name": "blocks.1.hook_resid_post"') == 1


def test_resume_is_exact(acts, tmp_path):
    def make(seed=0):
        cfg = SAEConfig(architecture="topk", d_in=acts.shape[1], dim=128, k=8, lr=1e-3, batch_size=128, steps=30,
                        warmup_steps=3, seed=seed)
        s = SparseAutoencoder(cfg)
        s.init_from_data(acts)
        return s

    chunk = lambda r: {"x": acts[(r % 4) * 1024 : (r % 4 + 1) * 1024]}
    a = make()
    train_dictionaries(DictionaryTrainer({"s": (a, "x")}, 30, 128), chunk, tmp_path / "a", checkpoint_every=10, log_every=5)
    class Kill:  # the process dies at step 20, after the checkpoint of step 10
        def log(self, metrics, step):
            if step == 20:
                raise KeyboardInterrupt

    b = make()
    with pytest.raises(KeyboardInterrupt):
        train_dictionaries(DictionaryTrainer({"s": (b, "x")}, 30, 128), chunk, tmp_path / "b", checkpoint_every=10,
                           log_every=5, tracker=Kill())
    c = make(seed=5)  # a fresh process: different random init, all state comes from the checkpoint
    tc = DictionaryTrainer({"s": (c, "x")}, 30, 128)
    train_dictionaries(tc, chunk, tmp_path / "b", checkpoint_every=10, log_every=5)
    assert tc.step == 30
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k


def test_spliced_sae_beats_ablation(model, store, acts):
    sae, _, _ = _train(acts, architecture="topk", k=32, steps=200)
    sae.eval()
    idx = store.split_indices("test")[:400]
    m = spliced_metrics(model, store, idx, SITE, {"clean": None, "sae": splice_fn(sae, "mean"), "zero": ablate_fn(None)})
    assert m["clean/agreement"] == 1.0 and m["clean/kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["sae/agreement"] > m["zero/agreement"] + 0.1
    assert m["sae/kl"] < m["zero/kl"]
    assert 0 < m["sae/kl_recovered_vs_zero"] <= 1


def _token_mean(site_mean):
    """The average over positions of the token mean, from `site_mean`'s [T, ...] mean activation."""
    return site_mean.flatten(1).mean(0)


def test_ablation_baselines_ablate_what_the_mean_pooled_splice_replaces(model, store):
    idx = store.split_indices("test")[:200]
    mean = site_mean(model, store, idx, SITE)
    mu = _token_mean(mean)
    baselines = {"clean": None, "zero": ablate_fn(None, "mean"), "mean": ablate_fn(mean, "mean"),
                 "zero_whole": ablate_fn(None), "mean_whole": ablate_fn(mean)}
    # a perfect dictionary recovers everything
    exact = spliced_metrics(model, store, idx, SITE, {**baselines, "sae": splice_fn(lambda m: m, "mean")})
    assert exact["sae/kl"] == pytest.approx(0.0, abs=1e-6)
    assert exact["sae/kl_recovered_vs_zero"] == pytest.approx(1.0) and exact["sae/kl_recovered_vs_mean"] == pytest.approx(1.0)
    # a dictionary that reconstructs every token mean as zero (or as its average) *is* the matched
    # zero- (mean-) ablation, so it recovers nothing; against whole-activation baselines, which also
    # remove the tokens' deviations, it would seem to recover a good part
    zero = spliced_metrics(model, store, idx, SITE, {**baselines, "sae": splice_fn(torch.zeros_like, "mean")})
    assert zero["sae/kl_recovered_vs_zero"] == pytest.approx(0.0, abs=1e-4)
    assert 1 - zero["sae/kl"] / zero["zero_whole/kl"] > 0.1  # what the whole-activation baseline reported
    average = spliced_metrics(model, store, idx, SITE, {**baselines, "sae": splice_fn(lambda m: mu.expand_as(m), "mean")})
    assert average["sae/kl_recovered_vs_mean"] == pytest.approx(0.0, abs=1e-4)
    assert 1 - average["sae/kl"] / average["mean_whole/kl"] > 0.01
    # pooling none: the splice and the baselines replace every token
    x = torch.randn(3, 8, 256)
    assert torch.equal(ablate_fn(None, "none")(x, SITE), torch.zeros_like(x))
    assert torch.allclose(ablate_fn(mean, "none")(x, SITE), mean.expand_as(x))


def test_calibration_scores_the_encoder_that_is_saved(acts, tmp_path):
    from maia_adapt.stages.sae import calibration_codes

    sae, _, _ = _train(acts, architecture="batchtopk", k=16, steps=60)
    assert sae.training
    x = acts[:1000]
    codes = calibration_codes(sae, x, len(x))
    assert sae.training  # the trainer's mode is left as it was
    saved = load_sae(save_sae(sae, tmp_path / "s")).encode(x)
    assert ((codes > 0) != (saved > 0)).float().mean() < 1e-4  # folding the scale moves values by rounding only
    assert torch.allclose(codes, saved, atol=1e-3)
    # training's batch-level top-k (what was scored before) is another encoder: it differs on about 2%
    # of the active codes here, far beyond what the check above lets through
    assert ((sae.encode(x) > 0) != (saved > 0)).sum() > 0.005 * (saved > 0).sum()


def test_synthetic_features_are_recovered():
    torch.manual_seed(0)
    d, n_atoms = 32, 64
    atoms = torch.randn(n_atoms, d)
    atoms /= atoms.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(1)
    idx = torch.rand(8192, n_atoms, generator=g).argsort(1)[:, :3]
    x = ((torch.rand(8192, 3, generator=g) * 2 + 0.5)[..., None] * atoms[idx]).sum(1) + 1.0
    sae, _, _ = _train(x, architecture="topk", k=3, steps=600)
    w = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    assert ((atoms @ w.t()).max(1).values > 0.9).float().mean() > 0.95
    assert site_dim(load_model(ASSETS / "maia2_small.safetensors").cfg, "blocks.0.hook_attn_heads") == 256


def test_calibration_score_rises_with_training(model, store, acts):
    from maia_adapt.stages.sae import calibration_set, summed_best_auc
    from maia_adapt.stages.sae import SAEStageConfig

    sc = SAEStageConfig(calibration_positions=600, calibration_min_positives=10, elo="random")
    idx = store.split_indices("val")[:600]
    cal, labels, names = calibration_set(model, store, idx, [SITE], sc, seed=0)
    assert len(names) > 50 and labels.shape == (len(idx), len(names))
    untrained = SparseAutoencoder(SAEConfig(d_in=acts.shape[1], dim=512, k=32, site=SITE))
    untrained.init_from_data(acts)
    trained, _, _ = _train(acts, architecture="topk", k=32, steps=200)
    before, after = summed_best_auc(untrained, cal[SITE], labels), summed_best_auc(trained, cal[SITE], labels)
    assert after > before
    assert 0.5 * len(names) < after <= len(names)


@pytest.mark.slow
def test_stage_sae_then_threats_end_to_end(shared_data, seed_transitional, tmp_path):
    import json

    r = run_app(["stage=sae", "data=lichess", "data.max_games=80", f"data.store_dir={tmp_path}/store", "sae=jumprelu",
                 "site=study", "sae.dim=256", "sae.steps=40", "sae.batch_size=128", "sae.chunk_positions=2048",
                 "sae.calibrate_every=20", "sae.calibration_positions=300", "sae.calibration_min_positives=5",
                 "sae.calibration_concepts=all", "sae.eval_positions=200", "sae.log_every=10"], run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())["sites"]
    assert len(res) == 3  # residual (FFN output), attention heads, true residual stream
    for site, m in res.items():
        assert m["calibration_step"] in (20, 40) and m["calibration_score"] > 0
        assert m["sae/agreement"] > m["zero/agreement"]
        sae = load_sae(m["folder"])
        assert sae.cfg.site == site and sae.cfg.architecture == "jumprelu"
    assert (run / "results.md").read_text().count("calibrated: best summed AUC") == 3
    assert " all concepts at step" in (run / "results.md").read_text()
    assert sorted(p.name for p in (run / "best").iterdir()) == sorted(f"{s.replace('.', '_')}.safetensors" for s in res)

    # stage=threats reads the three SAEs of that run
    r = run_app(["stage=threats", "data=lichess", "data.max_games=80", f"data.store_dir={tmp_path}/store",
                 f"threats.saes={run}", "threats.positions=600", "threats.n_boot=20", "threats.n_null=5",
                 "threats.min_positives=5"], run_dir=tmp_path / "thr")
    assert r.returncode == 0, r.stderr[-2000:]
    thr = json.loads((tmp_path / "thr" / "results.json").read_text())
    assert len(thr["sites"]) == 3 and 300 < thr["positions"] <= 600  # 80 games have fewer test positions
    for site in thr["sites"].values():
        assert site["features"] == 256 and 0 <= site["defensive_detected"] <= 64
        assert site["best"][0]["auc_heldout"] > 0.7
    assert len(list((tmp_path / "thr").glob("detection_*.csv"))) == 3
    assert len(list((tmp_path / "thr").glob("threat_auc_*.png"))) == 3
    pages = list((tmp_path / "thr").glob("dashboards_*/feature_*.html"))
    assert len(list((tmp_path / "thr").glob("dashboards_*/index.html"))) == 3 and len(pages) >= 3
    assert pages[0].read_text().count("<svg") >= 5

    # stage=intervention amplifies the resid_post SAE's top threat features on the seed positions
    tr = seed_transitional()
    r = run_app(["stage=intervention", f"intervention.transitional={tr}", f"intervention.saes={run}",
                 f"intervention.threats={tmp_path}/thr", "intervention.strengths=[1.0,3.0]", "intervention.top_n=[2]",
                 "intervention.n_boot=50", "intervention.heldout_positions=0"], run_dir=tmp_path / "iv")
    assert r.returncode == 0, r.stderr[-2000:]
    iv = json.loads((tmp_path / "iv" / "results.json").read_text())
    assert iv["kind"] == "sae" and [g["strength"] for g in iv["grid"]] == [None, 1.0, 3.0]
    # strength 1 with the error kept is the identity: it scores exactly what no intervention scores
    assert iv["grid"][1]["train_accuracy"] == iv["grid"][0]["train_accuracy"]


def test_an_unconstrained_decoder_leaves_its_rows_free_and_ours_keeps_them_unit():
    """sae.decoder_norm=none (the seed's SAE had no constraint) against ours (unit rows, the gradient's
    component along each row removed)."""
    from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder

    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0)) * 3
    norms = {}
    for norm in ("latent", "none"):
        sae = SparseAutoencoder(SAEConfig(architecture="jumprelu", d_in=16, dim=32, decoder_norm=norm, normalise=False,
                                          init_threshold=0.1))
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            sae.losses(x)["loss"].backward()
            sae.project_decoder_grad()
            opt.step()
            sae.normalise_decoder()
        norms[norm] = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms["latent"], torch.ones(32), atol=1e-5, rtol=0)
    assert (norms["none"] - 1).abs().max() > 1e-2
