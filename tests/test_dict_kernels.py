"""Sparse TopK kernels against the dense computation, compiled dictionaries against eager ones, and
the bfloat16 path (generated data: these are properties of the arithmetic, not of chess)."""
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder
from maia_adapt.dictionaries.kernels import row_crow, sparse_decode, topk_encode
from maia_adapt.dictionaries.train import FiringStats
from maia_adapt.dictionaries.transcoder import Transcoder, TranscoderConfig
from maia_adapt.errors import ConfigError


def _close(a, b, tol=1e-5):
    """Equal up to float32 rounding, relative to the size of the reference."""
    assert (a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0), (a - b).abs().max()


def test_topk_encode_and_sparse_decode_match_the_dense_layers_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    n, d, dim, k = 96, 48, 700, 13
    x = torch.randn(n, d, generator=g)
    params = [torch.randn(*s, generator=g, requires_grad=True) for s in ((d,), (d, dim), (dim,), (dim, d))]
    shift, w_enc, b_enc, w_dec = params
    grad_out = torch.randn(n, d, generator=g)

    vals, idx = topk_encode(x, shift, w_enc, b_enc, k, torch.float32)
    recon = sparse_decode(row_crow(n, k, x.device), idx.flatten(), vals.flatten(), w_dec)
    (recon * grad_out).sum().backward()
    sparse_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    pre = (x - shift) @ w_enc + b_enc
    top = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
    dense = z @ w_dec
    (dense * grad_out).sum().backward()

    assert torch.equal(idx, top.indices.sort(-1).values)  # same latents, sorted per sample
    _close(recon, dense)
    for name, a, p in zip(("shift", "W_enc", "b_enc", "W_dec"), sparse_grads, params):
        assert a.abs().sum() > 0, name
        _close(a, p.grad)


def test_sparse_decode_with_uneven_rows_and_empty_samples():
    """BatchTopK gives samples different numbers of latents, some none at all."""
    g = torch.Generator().manual_seed(1)
    n, d, dim = 7, 16, 50
    counts = torch.tensor([3, 0, 5, 1, 0, 9, 2])
    cols = torch.cat([torch.randperm(dim, generator=g)[:c].sort().values for c in counts.tolist()])
    crow = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    vals = torch.randn(len(cols), generator=g, requires_grad=True)
    w = torch.randn(dim, d, generator=g, requires_grad=True)
    out = sparse_decode(crow, cols, vals, w)
    grad_out = torch.randn(n, d, generator=g)
    (out * grad_out).sum().backward()
    gv, gw = vals.grad.clone(), w.grad.clone()
    vals.grad = w.grad = None

    rows = torch.repeat_interleave(torch.arange(n), counts)
    z = torch.zeros(n, dim).index_put((rows, cols), vals)
    ref = z @ w
    (ref * grad_out).sum().backward()
    _close(out, ref)
    assert out[1].abs().max() == 0 and out[4].abs().max() == 0
    _close(gv, vals.grad)
    _close(gw, w.grad)


def _make(arch: str, kernel: str, dim: int = 128, k: int = 8, **kw):
    common = dict(dim=dim, k=k, kernel=kernel, dead_after=1500, sparsity_warmup_steps=10, warmup_steps=5) | kw
    if arch == "transcoder":
        m = Transcoder(TranscoderConfig(d_in=32, d_out=24, site="x", target_site="y", **common))
    else:
        m = SparseAutoencoder(SAEConfig(architecture=arch, d_in=32, **common))
    with torch.no_grad():
        m.b_enc[:4] = -1e3  # four latents that never fire: AuxK switches on once they count as dead
    return m


def _batch(n=256):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 32, generator=g) @ torch.randn(32, 32, generator=g)
    return {"x": x, "y": x[:, :24].tanh()}


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "transcoder"])
def test_sparse_and_dense_kernels_train_the_same_dictionary(arch):
    batch = _batch()
    runs = {}
    for kernel in ("sparse", "dense"):
        m = _make(arch, kernel)
        trainer = DictionaryTrainer({"s": (m, "x")}, 12, 256)
        hist = [trainer.train_step(batch) for _ in range(12)]
        runs[kernel] = (m, hist)
    (a, ha), (b, hb) = runs["sparse"], runs["dense"]
    assert "s/aux_loss" in ha[-1]  # the run reached the AuxK phase (dead latents), both kernels
    for x, y in zip(ha, hb):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    for key, v in a.state_dict().items():
        _close(v, b.state_dict()[key], 1e-4)


def test_kernel_setting_is_checked():
    with pytest.raises(ConfigError, match="sae.kernel 'triton'"):
        SAEConfig(kernel="triton").validate()
    with pytest.raises(ConfigError, match="transcoder.kernel"):
        TranscoderConfig(kernel="x").validate()


COMPILE_CASES = [("jumprelu", "dense"), ("topk", "sparse"), ("topk", "dense"),
                 pytest.param("relu_l1", "dense", marks=pytest.mark.slow),
                 pytest.param("batchtopk", "sparse", marks=pytest.mark.slow),
                 pytest.param("batchtopk", "dense", marks=pytest.mark.slow),
                 pytest.param("transcoder", "sparse", marks=pytest.mark.slow),
                 pytest.param("transcoder", "dense", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch,kernel", COMPILE_CASES)
def test_compiled_losses_compile_once_per_phase_and_match_eager(arch, kernel):
    """The sparsity scale ramps and the lr warms up and decays every step; before the fix dynamo
    guarded on the scale's value and recompiled each step. Now: one graph before the first dead
    latent and one after (AuxK on), no graph breaks, the eager losses. aot_eager traces exactly what
    inductor would be given (dynamo guards, autograd, the custom ops' fake kernels) without the C++
    build, so this runs in seconds; test_inductor_matches_eager compiles for real."""
    batch, steps = _batch(), 20
    torch._dynamo.reset()
    counters.clear()
    compiled = DictionaryTrainer({"s": (_make(arch, kernel), "x")}, steps, 256)
    compiled.loss_fns = {n: torch.compile(f, backend="aot_eager") for n, f in compiled.loss_fns.items()}
    eager = DictionaryTrainer({"s": (_make(arch, kernel), "x")}, steps, 256)
    for _ in range(steps):
        a, b = compiled.train_step(batch), eager.train_step(batch)
        assert a["s/loss"] == pytest.approx(b["s/loss"], rel=1e-5)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    aux = arch != "jumprelu" and arch != "relu_l1"
    assert counters["stats"]["unique_graphs"] == (2 if aux else 1)
    assert ("s/aux_loss" in a) == aux


@pytest.mark.slow
@pytest.mark.parametrize("arch,kernel", [("jumprelu", "dense"), ("topk", "sparse")])
def test_inductor_matches_eager(arch, kernel):
    batch, steps = _batch(), 6
    torch._dynamo.reset()
    counters.clear()
    compiled = DictionaryTrainer({"s": (_make(arch, kernel, dead_after=10**9), "x")}, steps, 256, compile=True)
    eager = DictionaryTrainer({"s": (_make(arch, kernel, dead_after=10**9), "x")}, steps, 256)
    for _ in range(steps):
        a, b = compiled.train_step(batch), eager.train_step(batch)
        assert a["s/loss"] == pytest.approx(b["s/loss"], rel=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    for key, v in compiled.dicts["s"][0].state_dict().items():
        _close(v, eager.dicts["s"][0].state_dict()[key], 1e-4)


@pytest.mark.parametrize("arch", ["jumprelu", "relu_l1", "topk"])
def test_bf16_autocast_keeps_float32_weights_gradients_and_losses(arch):
    """Under bfloat16 autocast the [B, F] pre-activations are bfloat16 (the matmul runs there) while
    the loss, its reductions, the L0 counts and the gradients of the float32 weights stay float32."""
    torch.manual_seed(0)
    dim = 1024
    sae = SparseAutoencoder(SAEConfig(architecture=arch, d_in=32, dim=dim, k=300, kernel="dense", init_threshold=1e-4))
    x = _batch(64)["x"]
    ref = sae.losses(x)
    seen = {}
    orig = sae.pre_acts
    sae.pre_acts = lambda v: seen.setdefault("pre", orig(v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.losses(x)
    assert seen["pre"].dtype == torch.bfloat16
    assert out["loss"].dtype == out["mse"].dtype == out["l0"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=2e-2)
    # L0 counts are whole numbers above 256 (where bfloat16 would round them)
    assert out["l0"].item() > 256 and out["fired"].sum().item() == pytest.approx(out["l0"].item() * 64)
    if arch == "jumprelu":
        assert out["l0_loss"].dtype == torch.float32 and out["l0_loss"].item() == out["l0"].item()
    out["loss"].backward()
    for name, p in sae.named_parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32), name


def test_firing_stats_mark_dead_latents_only_once_they_can_be():
    st = FiringStats(4)
    fired = torch.tensor([3, 0, 1, 0])
    st.update(fired, 100)
    assert st.dead(150) is None  # 100 samples seen: nothing can have gone 150 without firing
    st.update(torch.tensor([0, 0, 2, 0]), 100)
    assert st.dead(150).tolist() == [False, True, False, True]
    assert st.dead(250) is None
    assert st.window_fires.tolist() == [3, 0, 3, 0] and st.window_samples == 200
