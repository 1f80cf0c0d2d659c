"""The on-disk activation cache: what is read back equals what the model and the SAE compute."""
import numpy as np
import pytest
import torch

from _games import lichess_store
from maia_adapt.analysis.activation_cache import ActivationCache, write_activation_cache
from maia_adapt.model.activations import activation_batches
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter
from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.model import load_model
from maia_adapt.model.inference import masked_probs

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    store = lichess_store(shared_data, d / "store", GameFilter(max_games=30))
    model = load_model(ASSETS / "maia2_small.safetensors")
    sae = SparseAutoencoder(SAEConfig(architecture="topk", d_in=256, dim=512, k=16, site=SITE))
    sae.init_from_data(torch.cat([b[SITE] for b in activation_batches(model, store, np.arange(512), [SITE])]))
    return store, model, sae, d


def test_cache_round_trip_equals_model_and_sae(setup):
    store, model, sae, d = setup
    idx = np.random.default_rng(0).choice(len(store), 300, replace=False)
    out = write_activation_cache(d / "c1", model, store, idx, [SITE, "blocks.0.hook_mlp_out"], ["data", 7],
                                 {"topk": sae}, shard_positions=128, batch_size=64)
    cache = ActivationCache(out)
    assert len(cache) == 600 and len(cache.manifest["shards"]) == 5
    acts = cache.column(SITE).float()
    ref = {e: torch.cat([b[SITE] for b in activation_batches(model, store, idx, [SITE], batch_size=300, elo=e)])
           for e in ("data", 7)}
    # rows: every position under 'data', then every position under bucket 7, in the given order
    want = torch.cat([ref["data"], ref[7]])
    torch.testing.assert_close(acts, want, atol=2e-2, rtol=2e-3)  # stored as float16
    codes = cache.column(f"{SITE}/topk")
    assert codes.shape == (600, 512) and ((codes > 0).sum(1) <= 16).all()
    torch.testing.assert_close(codes, sae.encode(want), atol=5e-2, rtol=1e-2)
    assert cache.fens()[:300] == store.fens(idx) and cache.column("index")[:300].tolist() == idx.tolist()
    assert (cache.column("elo_self")[300:] == 7).all()
    b = store.batch(np.sort(idx[:50]))
    logits, _, _ = model(b["boards"], b["elo_self"], b["elo_oppo"])
    top = masked_probs(logits, b["legal"]).argmax(-1)
    got = dict(zip(cache.column("index")[:300].tolist(), cache.column("pred.move")[:300].tolist()))
    assert [got[i] for i in np.sort(idx[:50]).tolist()] == top.tolist()
    with pytest.raises(MaiaAdaptError, match="no column 'nope'"):
        cache.column("nope")


def test_interrupted_cache_resumes_only_missing_shards(setup):
    store, model, sae, d = setup
    idx = np.arange(200)
    out = write_activation_cache(d / "c2", model, store, idx, [SITE], ["data"], shard_positions=64)
    shards = sorted(out.glob("shard_*.safetensors"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    full = ActivationCache(out).column(SITE)
    shards[2].unlink()
    write_activation_cache(d / "c2", model, store, idx, [SITE], ["data"], shard_positions=64)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard_*.safetensors"))}
    assert set(after) == set(before)
    assert [after[n] == before[n] for n in sorted(before)] == [True, True, False, True]
    torch.testing.assert_close(ActivationCache(out).column(SITE), full)


def test_cache_rejects_dictionary_of_another_site(setup):
    store, model, sae, d = setup
    with pytest.raises(MaiaAdaptError, match="not among the cached sites"):
        write_activation_cache(d / "c3", model, store, np.arange(10), ["blocks.0.hook_mlp_out"], ["data"], {"x": sae})
    with pytest.raises(MaiaAdaptError, match="not an activation cache"):
        ActivationCache(d)


def test_maia1_cache_equals_each_bands_network(setup, shared_models):
    from maia_adapt.model.maia1 import load_maia1
    from maia_adapt.model.skill import Maia1Family, lc0_store_planes

    store, _, _, d = setup
    nets = {r: load_maia1(shared_models / "maia1" / f"maia-{r}.pb.gz") for r in (1100, 1900)}
    fam = Maia1Family(nets)
    fam.rating_for_bucket = lambda b: 1100 if b <= 5 else 1900  # two loaded networks stand for all buckets
    idx = np.random.default_rng(1).choice(len(store), 120, replace=False)
    site = "blocks.5.hook_resid_post"
    cache = ActivationCache(write_activation_cache(d / "m1", fam, store, idx, [site], [1, 9], batch_size=50))
    acts, moves, value = cache.column(site).float(), cache.column("pred.move"), cache.column("pred.value")
    planes = lc0_store_planes(store, idx)  # with each position's game history
    for half, rating in ((slice(0, 120), 1100), (slice(120, 240), 1900)):
        (pol, wdl), ref = nets[rating].run_with_cache(planes, names=[site])
        # a conv map [B, 64, 8, 8] is cached as its mean over the 64 squares
        torch.testing.assert_close(acts[half], ref[site].mean(dim=(2, 3)), atol=2e-2, rtol=2e-3)
        p = wdl.float().softmax(-1)
        torch.testing.assert_close(value[half], p[:, 0] - p[:, 2], atol=1e-4, rtol=1e-4)
    assert (moves[:120] != moves[120:]).any()  # maia-1100 and maia-1900 disagree somewhere
    legal = store.batch(np.sort(idx))["legal"]
    row_of = {int(i): r for r, i in enumerate(np.sort(idx))}
    assert all(legal[row_of[int(i)], int(m)] for i, m in zip(cache.column("index")[:120], moves[:120]))
