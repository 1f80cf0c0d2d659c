"""Dictionary files: SAELens (the sae-lens package, a test dependency like maia2) loads our SAEs and
ReLU transcoders and computes exactly what ours compute; TopK transcoders it refuses unless taught;
a square W_skip keeps its orientation; folders of the older layout still load."""
import copy
import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file

from _games import lichess_store
from maia_adapt.model.activations import activation_batches
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter
from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder, load_sae, save_sae
from maia_adapt.dictionaries.transcoder import Transcoder, TranscoderConfig, load_transcoder, save_transcoder
from maia_adapt.errors import CheckpointError
from maia_adapt.model import load_model

SITE, IN, OUT = "blocks.1.hook_resid_post", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
SAELENS_CLASS = {"jumprelu": "JumpReLUSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "relu_l1": "StandardSAE"}


def _sae_lens():
    return pytest.importorskip("sae_lens", reason="the sae-lens package is the reference for the dictionary files")


@pytest.fixture(scope="module")
def acts(shared_data, tmp_path_factory):
    """Real activations of the shipped small model on real games: pooled residual stream, FFN in/out."""
    model = load_model(ASSETS / "maia2_small.safetensors")
    store = lichess_store(shared_data, tmp_path_factory.mktemp("df") / "s", GameFilter(max_games=40))
    idx = store.split_indices("train")[:1200]
    resid = torch.cat([b[SITE] for b in activation_batches(model, store, idx, [SITE], elo="random")])
    parts = list(activation_batches(model, store, idx[:150], [IN, OUT], elo="random", token_pooling="none"))
    return resid, torch.cat([p[IN] for p in parts]), torch.cat([p[OUT] for p in parts])


def _inputs(x):
    """Held-out real activations and Gaussian ones of the same scale, where the code looks different."""
    g = torch.Generator().manual_seed(1)
    return torch.cat([x[-256:], torch.randn(256, x.shape[1], generator=g) * x.std(0) + x.mean(0)])


def _train_sae(x, arch, steps=40):
    cfg = SAEConfig(architecture=arch, d_in=x.shape[1], dim=256, k=8, lr=2e-3, batch_size=128, steps=steps,
                    warmup_steps=5, sparsity_warmup_steps=10, site=SITE)
    sae = SparseAutoencoder(cfg)
    sae.init_from_data(x[:-256])
    trainer = DictionaryTrainer({"s": (sae, "x")}, steps, 128)
    for i in range(steps):
        j = (i * 128) % (len(x) - 384)
        trainer.train_step({"x": x[j : j + 128]})
    return sae.eval()


def _train_transcoder(x, y, k, skip, steps=30):
    t = Transcoder(TranscoderConfig(d_in=x.shape[1], d_out=y.shape[1], dim=256, k=k, skip=skip, steps=steps,
                                    warmup_steps=5, batch_size=256, site=IN, target_site=OUT))
    t.init_from_data(x, y)
    trainer = DictionaryTrainer({"t": (t, IN)}, steps, 256)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(0, len(x) - 256, (256,), generator=g)
        trainer.train_step({IN: x[rows], OUT: y[rows]})
    return t.eval()


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["jumprelu", "topk", "batchtopk", "relu_l1"])
def test_sae_lens_loads_each_architecture_and_computes_what_ours_does(acts, tmp_path, arch):
    sae_lens = _sae_lens()
    sae = _train_sae(acts[0], arch)
    assert float(sae.norm_scale) != 1.0  # the file has the normalisation folded in
    folder = save_sae(sae, tmp_path / arch, {"model_checkpoint": "x"})
    theirs = sae_lens.SAE.load_from_disk(folder)
    ours = load_sae(folder)
    assert type(theirs).__name__ == SAELENS_CLASS[arch]
    assert theirs.cfg.metadata.hook_name == SITE and theirs.cfg.normalize_activations == "none"
    x = _inputs(acts[0])
    z = ours.encode(x)
    with torch.no_grad():  # float32 rounding only: the two order their matmuls' sums as their BLAS does
        close = dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(theirs.encode(x), z, **close)
        assert torch.equal(theirs.encode(x) > 0, z > 0)  # the same latents fire
        torch.testing.assert_close(theirs.decode(z), ours.decode(z), **close)
        torch.testing.assert_close(theirs(x), ours(x), **close)
    # and the file is the trained SAE: folding the scale moves values by rounding only
    torch.testing.assert_close(ours(x), sae(x), atol=1e-4, rtol=1e-4)
    l0 = (z[:256] > 0).sum(1).float().mean()
    assert 0 < l0 < 256 and (arch != "topk" or l0 == 8)
    if arch == "batchtopk":  # SAELens saves its BatchTopK SAEs the same way: JumpReLU at the learned threshold
        # (folding rescales W_enc and b_dec only: the pre-activations, so the threshold, stay as they were)
        assert torch.equal(theirs.threshold, sae.inference_threshold.expand(256))


@pytest.mark.reference
def test_batchtopk_without_a_threshold_is_saved_as_the_topk_it_encodes_with(acts, tmp_path):
    x = _inputs(acts[0])
    sae = SparseAutoencoder(SAEConfig(architecture="batchtopk", d_in=x.shape[1], dim=128, k=8)).eval()
    assert float(sae.inference_threshold) < 0  # never trained: eval encodes with per-sample top-k
    folder = save_sae(sae, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"], cfg["maia_adapt_architecture"]) == ("topk", 8, "batchtopk")
    back = load_sae(folder)
    assert back.cfg.architecture == "batchtopk" and torch.equal(back.encode(x), sae.encode(x))
    sae_lens = pytest.importorskip("sae_lens")
    assert torch.equal(sae_lens.SAE.load_from_disk(folder).encode(x), sae.encode(x))


@pytest.mark.reference
def test_our_loader_reads_a_folder_sae_lens_wrote(tmp_path):
    sae_lens = _sae_lens()
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=64, d_sae=128, k=5))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    theirs.save_model(tmp_path / "tl")
    ours = load_sae(tmp_path / "tl")
    x = torch.randn(300, 64)
    assert ours.cfg.architecture == "topk" and ours.cfg.k == 5
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def _legacy_save_sae(sae, folder):
    """What save_sae wrote before the SAELens layout (maia-adapt-sae-v1), for old run directories."""
    folded = copy.deepcopy(sae).cpu()
    folded.fold_normalisation()
    cfg = sae.cfg
    t = {"W_enc": folded.W_enc, "b_enc": folded.b_enc, "W_dec": folded.W_dec, "b_dec": folded.b_dec}
    if cfg.architecture == "jumprelu":
        t["threshold"] = folded.threshold
    if cfg.architecture == "batchtopk":
        t["threshold"] = folded.inference_threshold.expand(cfg.dim)
    folder.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in t.items()}, str(folder / "sae.safetensors"),
              {"format": "maia-adapt-sae-v1"})
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.dim, "k": cfg.k, "hook_name": cfg.site,
        "normalize_activations": "folded" if cfg.normalise else "none", "norm_scale_folded": float(sae.norm_scale),
        "apply_b_dec_to_input": True, "dtype": "float32", "training": cfg.to_dict()}))


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk", "relu_l1"])
def test_folders_of_the_older_layout_still_load(acts, tmp_path, arch):
    sae = _train_sae(acts[0], arch, steps=20)
    _legacy_save_sae(sae, tmp_path / "old" / "saes" / SITE)
    back = load_sae(tmp_path / "old" / "saes" / SITE)
    x = _inputs(acts[0])
    torch.testing.assert_close(back(x), sae(x), atol=1e-4, rtol=1e-4)
    assert back.cfg.architecture == arch
    # and saving it again gives the new layout with the same numbers
    new = load_sae(save_sae(back, tmp_path / "new"))
    assert torch.equal(new(x), back(x)) and not (tmp_path / "new" / "sae.safetensors").exists()


@pytest.mark.reference
@pytest.mark.parametrize("skip", [False, True])
def test_sae_lens_loads_relu_transcoders_and_computes_what_ours_does(acts, tmp_path, skip):
    sae_lens = _sae_lens()
    _, x, y = acts
    t = _train_transcoder(x, y, k=0, skip=skip)
    folder = save_transcoder(t, tmp_path / "tc")
    theirs = sae_lens.SAE.load_from_disk(folder)
    ours = load_transcoder(folder)
    assert type(theirs).__name__ == ("SkipTranscoder" if skip else "Transcoder")
    xs = _inputs(x)
    with torch.no_grad():
        assert torch.equal(theirs.encode(xs), ours.encode(xs))
        torch.testing.assert_close(theirs(xs), ours(xs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(xs), t(xs), atol=1e-4, rtol=1e-4)


@pytest.mark.reference
def test_sae_lens_refuses_a_topk_transcoder_until_taught_it(acts, tmp_path, monkeypatch):
    sae_lens = _sae_lens()
    from sae_lens.registry import SAE_CLASS_REGISTRY

    from maia_adapt.dictionaries.saelens import register

    _, x, y = acts
    t = _train_transcoder(x, y, k=4, skip=True)
    folder = save_transcoder(t, tmp_path / "tc")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "topk_skip_transcoder"
    # a ReLU transcoder with these weights fires many times more latents than the k=4 it was trained with
    relu = (torch.relu(x[-256:] @ t.W_enc * t.in_scale + t.b_enc) > 0).sum(1).float().mean()
    assert relu > 8
    for name in ("topk_transcoder", "topk_skip_transcoder"):  # as in a fresh process
        monkeypatch.delitem(SAE_CLASS_REGISTRY, name, raising=False)
    with pytest.raises(KeyError, match="topk_skip_transcoder"):
        sae_lens.SAE.load_from_disk(folder)
    register()
    theirs = sae_lens.SAE.load_from_disk(folder)
    ours = load_transcoder(folder)
    xs = _inputs(x)
    with torch.no_grad():
        z = theirs.encode(xs)
        assert torch.equal(z, ours.encode(xs)) and (z > 0).sum(1).max() <= 4
        torch.testing.assert_close(theirs(xs), ours(xs), atol=1e-5, rtol=1e-5)


def _square_transcoder():
    t = Transcoder(TranscoderConfig(d_in=16, d_out=16, dim=32, k=4, skip=True))
    g = torch.Generator().manual_seed(3)
    t.init_from_data(torch.randn(500, 16, generator=g) * 3, torch.randn(500, 16, generator=g) / 2)
    with torch.no_grad():
        t.W_skip.copy_(torch.randn(16, 16, generator=g))  # far from symmetric: a transposed read shows
        t.b_enc.add_(1.0)
    return t.eval(), torch.randn(300, 16, generator=g) * 3


def test_a_square_skip_matrix_round_trips_in_sae_lens_orientation(tmp_path):
    t, x = _square_transcoder()
    folder = save_transcoder(t, tmp_path / "tc")
    stored = load_file(str(folder / "sae_weights.safetensors"))["W_skip"]
    ratio = float(t.in_scale / t.out_scale)
    torch.testing.assert_close(stored, t.W_skip.detach().t() * ratio)  # [d_out, d_in]: y += x @ W_skip.T
    back = load_transcoder(folder)
    torch.testing.assert_close(back(x), t(x), atol=1e-5, rtol=1e-5)
    # the read orientation matters here: the transposed matrix gives another function
    with torch.no_grad():
        back.W_skip.copy_(back.W_skip.t().clone())
    assert (back(x) - t(x)).abs().max() > 0.1


def test_an_older_transcoder_folder_keeps_its_skip_orientation(tmp_path):
    t, x = _square_transcoder()
    folded = copy.deepcopy(t)
    folded.fold_normalisation()
    (tmp_path / "old").mkdir()
    # the layout before: transcoder.safetensors, W_skip as [d_in, d_out]
    save_file({k: getattr(folded, k).detach().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")},
              str(tmp_path / "old" / "transcoder.safetensors"), {"format": "maia-adapt-transcoder-v1"})
    (tmp_path / "old" / "cfg.json").write_text(json.dumps({"architecture": "transcoder", "d_in": 16, "d_out": 16,
                                                           "d_sae": 32, "k": 4, "training": asdict(t.cfg)}))
    torch.testing.assert_close(load_transcoder(tmp_path / "old")(x), t(x), atol=1e-5, rtol=1e-5)


def test_a_skip_matrix_of_the_wrong_shape_is_refused_naming_file_and_key(tmp_path):
    t = Transcoder(TranscoderConfig(d_in=16, d_out=24, dim=32, k=4, skip=True)).eval()
    folder = save_transcoder(t, tmp_path / "tc")
    file = folder / "sae_weights.safetensors"
    w = load_file(str(file))
    save_file({**w, "W_skip": w["W_skip"].t().contiguous()}, str(file))  # [d_in, d_out], the old orientation
    with pytest.raises(CheckpointError, match=r"sae_weights.safetensors: key 'W_skip' has shape \(16, 24\), "
                                              r"cfg.json implies \(24, 16\)"):
        load_transcoder(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda w: {k: v for k, v in w.items() if k != "threshold"}, "key 'threshold' missing"),
    (lambda w: {**w, "scaling_factor": torch.ones(8)}, "unexpected key 'scaling_factor'"),
    (lambda w: {**w, "threshold": -w["threshold"]}, "key 'threshold' has negative entries"),
    (lambda w: {**w, "W_dec": w["W_dec"].clone().index_fill_(0, torch.tensor([3]), float("nan"))},
     "key 'W_dec' holds 8 NaN or infinite values"),
    (lambda w: {**w, "b_enc": w["b_enc"].round().long()}, "key 'b_enc' has dtype torch.int64: expected floating-point"),
])
def test_damaged_sae_files_are_refused_in_one_line(tmp_path, damage, message):
    folder = save_sae(SparseAutoencoder(SAEConfig(architecture="jumprelu", d_in=8, dim=8)), tmp_path / "s")
    file = folder / "sae_weights.safetensors"
    save_file(damage(load_file(str(file))), str(file))
    with pytest.raises(CheckpointError, match=message) as e:
        load_sae(folder)
    assert "\n" not in str(e.value) and str(file) in str(e.value)


def test_a_run_directory_names_its_sae_or_says_which(tmp_path):
    from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder, load_sae, save_sae
    from maia_adapt.errors import CheckpointError
    from maia_adapt.layout import sae_folder

    sae = SparseAutoencoder(SAEConfig(architecture="topk", d_in=8, dim=16, k=2, site="blocks.0.hook_mlp_out"))
    save_sae(sae, sae_folder(tmp_path / "run", "blocks.0.hook_mlp_out"))
    x = torch.randn(5, 8)
    assert torch.allclose(load_sae(tmp_path / "run").encode(x), sae.eval().encode(x), atol=1e-5)
    save_sae(sae, sae_folder(tmp_path / "run", "blocks.1.hook_mlp_out"))
    with pytest.raises(CheckpointError, match="2 SAEs in this run directory .blocks_0_hook_mlp_out, blocks_1_hook_mlp_out"):
        load_sae(tmp_path / "run")
