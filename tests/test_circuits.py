"""Circuits: connections equal the explicit product, batched attributions equal the loop, stage end to end."""
import json

import numpy as np
import pytest
import torch

from _app import run_app
from maia_adapt.analysis.circuits import attributions, attributions_loop, circuit_edges, connections, skill_relevance
from maia_adapt.dictionaries.transcoder import Transcoder, TranscoderConfig


def _tc(seed, d=6, f=5):
    t = Transcoder(TranscoderConfig(d_in=d, d_out=d, dim=f, k=0, seed=seed))
    t.in_scale.fill_(1.7)
    t.out_scale.fill_(0.6)
    return t


def test_connections_equal_the_explicit_product():
    t0, t1 = _tc(0), _tc(1)
    gamma = torch.linspace(0.5, 1.5, 6)
    conn = connections(t0, t1, gamma)
    w_dec, w_enc = t0.W_dec.detach(), t1.W_enc.detach()
    for i in range(5):
        for j in range(5):
            # one unit of feature i adds W_dec0[i] / out_scale0 to the stream; feature j reads
            # (LN-scaled stream * in_scale1) . W_enc1[:, j]
            explicit = sum(float(w_dec[i, k]) / 0.6 * float(gamma[k]) * 1.7 * float(w_enc[k, j]) for k in range(6))
            assert abs(float(conn[i, j]) - explicit) < 1e-5


def test_batched_attributions_equal_the_loop():
    g = torch.Generator().manual_seed(0)
    z0 = torch.relu(torch.randn(300, 20, generator=g))
    z1 = torch.relu(torch.randn(300, 15, generator=g) - 0.5)
    conn = torch.randn(20, 15, generator=g)
    fast = attributions(z0, z1, conn)
    up, down = [0, 3, 7, 19], [1, 2, 14]
    slow = attributions_loop(z0, z1, conn, up, down)
    torch.testing.assert_close(fast[up][:, down], slow, atol=1e-5, rtol=1e-5)
    edges = circuit_edges(fast, up, down, per_node=2)
    assert len(edges) == 6
    for j in down:  # the two kept edges into j are its strongest
        kept = {u for u, jj, _ in edges if jj == j}
        weakest_kept = min(abs(float(fast[u, j])) for u in kept)
        assert all(abs(float(fast[u, j])) <= weakest_kept for u in up if u not in kept)
    means = torch.zeros(11, 3)
    means[:, 1] = torch.linspace(0, 1, 11)
    assert skill_relevance(means).argmax() == 1 and skill_relevance(means, means + 0.5).tolist() == [5.5] * 3


@pytest.mark.slow
def test_stage_circuits_end_to_end(shared_data, tmp_path):
    base = ["data=lichess", "data.max_games=60", f"data.store_dir={tmp_path}/store"]
    r = run_app([*base, "stage=transcoder", "transcoder.steps=30", "transcoder.dim=256", "transcoder.k=16",
                 "transcoder.cache_positions=800", "transcoder.eval_positions=60", "transcoder.grid_positions=4",
                 "transcoder.layers=[0,1]"], run_dir=tmp_path / "tc")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_app([*base, "stage=circuits", f"circuits.transcoders={tmp_path}/tc", "circuits.positions=120",
                 "circuits.top_down=4", "circuits.top_up=10", "circuits.patching_positions=150"], run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(res["selected_layer1"]) == 4
    assert len(res["edges"]) == 12
    assert (tmp_path / "run" / "circuit.png").stat().st_size > 5000
    assert (tmp_path / "run" / "dashboards" / "index.html").is_file()
    assert np.isfinite(res["strongest_edge"])
    # where skill enters: the first block's attention carries the shipped model's skill dependence
    patch = json.loads((tmp_path / "run" / "patching.json").read_text())
    assert patch["positions"] == 150 and len(patch["heads"]["0"]["heads"]) == 8
    assert patch["sites"]["blocks.1.hook_resid_post"]["kl_closed"] > 1 - 1e-4
    lo, hi = res["skill_kl_closed_attn0_ci95"]
    assert lo <= res["skill_kl_closed_attn0"] <= hi and res["skill_kl_closed_attn0"] > 0.5
    assert res["skill_kl_closed_attn0"] == pytest.approx(patch["heads"]["0"]["all"]["kl_closed"], abs=1e-5)
    assert (tmp_path / "run" / "patching_heads.png").stat().st_size > 5000
    # the Elo's entry into block 0 is its whole attention output; the top head moves its attention
    assert patch["sites"]["blocks.0.hook_elo_q"]["kl_closed"] == pytest.approx(res["skill_kl_closed_attn0"], abs=1e-5)
    assert 0 < res["skill_kl_closed_elo1"] < res["skill_kl_closed_attn0"]
    moved = patch["attention_shift"]["0"]["moved"]
    assert len(moved) == 8 and res["skill_top_head0_attention_moved"] == moved[res["skill_top_head0"]] > np.median(moved)
    assert "## Where the skill dependence enters" in (tmp_path / "run" / "results.md").read_text()
