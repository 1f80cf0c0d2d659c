"""Transcoders on real FFN activations: they learn, splice better than zero-ablation, save exactly."""
import json

import numpy as np
import pytest
import torch

from _app import error_line, run_app
from maia_adapt.errors import ConfigError
from _games import lichess_store
from maia_adapt.model.activations import activation_batches
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter
from maia_adapt.dictionaries import DictionaryTrainer
from maia_adapt.dictionaries.evaluate import ablate_fn, spliced_metrics, spliced_move_accuracy, transcoder_splice_metrics
from maia_adapt.dictionaries.transcoder import (Transcoder, TranscoderConfig, load_transcoder, save_transcoder,
                                                splice_hooks)
from maia_adapt.model import load_model

IN, OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    model = load_model(ASSETS / "maia2_small.safetensors")
    store = lichess_store(shared_data, tmp_path_factory.mktemp("tc") / "s", GameFilter(max_games=120))
    idx = store.split_indices("train")[:3000]
    parts = list(activation_batches(model, store, idx, [IN, OUT], elo="random", token_pooling="none"))
    return model, store, torch.cat([p[IN] for p in parts]), torch.cat([p[OUT] for p in parts])


def _train(x, y, steps=300, **kw):
    t = Transcoder(TranscoderConfig(d_in=256, d_out=256, dim=1024, k=32, steps=steps, warmup_steps=10, layer=1,
                                    site=IN, target_site=OUT, **kw))
    t.init_from_data(x, y)
    trainer = DictionaryTrainer({"t": (t, IN)}, steps, 1024)
    g = torch.Generator().manual_seed(0)
    hist = []
    for _ in range(steps):
        rows = torch.randint(0, len(x), (1024,), generator=g)
        hist.append(trainer.train_step({IN: x[rows], OUT: y[rows]}))
    return t.eval(), hist


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_learns_the_ffn_and_beats_zero_ablation(data, skip):
    model, store, x, y = data
    t, hist = _train(x, y, skip=skip)
    # ReLU on the top-k: at most k=32 latents fire, fewer where pre-activations are negative (13-17 on
    # the shipped model's FFN), and the code has not collapsed to a handful of latents
    assert hist[-1]["t/fvu"] < 0.6 * hist[5]["t/fvu"] and 8 < hist[-1]["t/l0"] <= 32
    idx = store.split_indices("test")[:300]
    spliced = transcoder_splice_metrics(model, store, idx, t, 1)
    zero = spliced_metrics(model, store, idx, OUT, {"zero": ablate_fn(None)})
    assert spliced["agreement"] > zero["zero/agreement"] and spliced["kl"] < zero["zero/kl"]


def test_save_load_folds_normalisation_exactly(data, tmp_path):
    _, _, x, y = data
    t, _ = _train(x, y, steps=30, skip=True)
    folder = save_transcoder(t, tmp_path / "tc")
    back = load_transcoder(folder)
    assert float(back.in_scale) == 1.0 and back.cfg.skip
    torch.testing.assert_close(back(x[:500]), t(x[:500]), atol=1e-4, rtol=1e-4)
    assert json.loads((folder / "cfg.json").read_text())["hook_name_out"] == OUT


def test_splice_hooks_with_an_exact_ffn_copy_change_nothing(data):
    # a "transcoder" that calls the real FFN must reproduce the model exactly: the hooks are wired right
    model, store, _, _ = data
    b = store.batch(np.arange(64))
    clean = model(b["boards"], b["elo_self"], b["elo_oppo"])[0]

    class Exact(torch.nn.Module):
        def forward(self, h):
            net = model.transformer.elo_layers[1][1].net
            return net[5](net[4](net[3](net[2](net[1](h)))))

    with torch.no_grad(), model.hooks(splice_hooks(Exact(), 1)):
        out = model(b["boards"], b["elo_self"], b["elo_oppo"])[0]
    torch.testing.assert_close(out, clean, atol=1e-5, rtol=1e-5)


def test_spliced_move_accuracy_with_an_exact_ffn_copy_is_the_models_own(data):
    # the seed's checkpoint score: top-1 against the recorded move with the FFN replaced
    model, store, _, _ = data
    idx = np.arange(48)
    b = store.batch(idx)
    with torch.no_grad():
        logits = model(b["boards"], b["elo_self"], b["elo_oppo"])[0]
    own = float((logits.masked_fill(~b["legal"], float("-inf")).argmax(-1) == b["move"]).float().mean())

    class Exact(torch.nn.Module):
        def forward(self, h):
            net = model.transformer.elo_layers[1][1].net
            return net[5](net[4](net[3](net[2](net[1](h)))))

    assert spliced_move_accuracy(model, store, idx, Exact(), 1, batch_size=20) == pytest.approx(own)


@pytest.mark.parametrize("norm", ["latent", "output", "none"])
def test_decoder_norm_keeps_the_named_axis_at_unit_norm(norm, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 16, generator=g), torch.randn(256, 16, generator=g) * 3
    t = Transcoder(TranscoderConfig(d_in=16, d_out=16, dim=64, k=8, lr=0.05, warmup_steps=0, aux_k=0, decoder_norm=norm,
                                    site=IN, target_site=OUT))
    t.init_from_data(x, y)
    trainer = DictionaryTrainer({"t": (t, IN)}, 5, 256)
    for _ in range(5):
        trainer.train_step({IN: x, OUT: y})
    rows, cols = t.W_dec.norm(dim=1), t.W_dec.norm(dim=0)  # W_dec [latents, d_out]: a row is a latent's vector
    one = lambda v: torch.allclose(v, torch.ones_like(v), atol=1e-5)
    # latent: each latent's decoder vector; output (the seed's dim=1 of nn.Linear's [d_out, latents]
    # weight): each output dimension's weights across the latents; none: neither
    assert (one(rows), one(cols)) == {"latent": (True, False), "output": (False, True), "none": (False, False)}[norm]
    assert load_transcoder(save_transcoder(t, tmp_path / "tc")).cfg.decoder_norm == norm
    with pytest.raises(ConfigError, match="transcoder.decoder_norm='rows'"):
        TranscoderConfig(decoder_norm="rows").validate()


@pytest.mark.slow
def test_stage_transcoder_end_to_end(shared_data, tmp_path):
    # with the seed's checkpoint choice: the best spliced move accuracy of steps 20 and 40
    r = run_app(["stage=transcoder", "data=lichess", "data.max_games=80", f"data.store_dir={tmp_path}/store",
                 "transcoder.steps=40", "transcoder.dim=512", "transcoder.k=16", "transcoder.cache_positions=1500",
                 "transcoder.eval_positions=150", "transcoder.grid_positions=8", "transcoder.layers=[0,1]",
                 "transcoder.select=spliced_accuracy", "transcoder.select_every=20", "transcoder.select_positions=60",
                 "transcoder.elo=data"],
                run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())["layers"]
    assert set(res) == {"layer_0", "layer_1"}
    assert "activations at Elo data" in (tmp_path / "run" / "results.md").read_text()
    for name, m in res.items():
        assert m["selected_step"] in (20, 40) and 0 <= m["selected_spliced_accuracy"] <= 1
        grid = np.array(m["grid_agreement"])
        assert grid.shape == (11, 11) and ((grid >= 0) & (grid <= 1)).all()
        assert m["l0"] <= 16 and -1 <= m["win_correlation"] <= 1
        assert load_transcoder(tmp_path / "run" / "transcoders" / name).cfg.layer == int(name[-1])
        assert (tmp_path / "run" / f"agreement_grid_{name}.png").is_file()


@pytest.mark.parametrize("stage,why", [("transcoder", "no transformer FFN"), ("circuits", "transcoders")])
def test_maia1_is_refused_in_one_line(stage, why, tmp_path):
    p = run_app([f"stage={stage}", "model=maia1"], run_dir=tmp_path / "run", timeout=300)
    assert p.returncode == 1
    line = error_line(p)
    assert f"stage={stage} does not take model=maia1" in line and why in line
