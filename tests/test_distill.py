"""Distillation of the Maia-1 family into a Maia-2 (train.teacher=maia1): the split forward, the
teachers' targets (on the fly and cached agree), and a student that learns to differ by skill."""
from pathlib import Path

import numpy as np
import pytest
import torch

from maia_adapt.data import GameFilter, build_store
from maia_adapt.encoding.lc0 import unpack_lc0_planes
from maia_adapt.model import Maia2, Maia2Config, load_model
from maia_adapt.model.distill import Maia1Teacher, cache_teacher_targets, distill_losses, sparse_kl, teacher_planes
from maia_adapt.model.maia1 import load_maia1_family
from maia_adapt.model.losses import LossWeights

ASSETS = Path(__file__).resolve().parents[1] / "maia_adapt" / "assets"
TINY = Maia2Config(dim_cnn=16, num_blocks_cnn=1, dim_vit=64, elo_dim=16, heads=4, dim_head=16, dropout_cnn=0.0,
                   dropout_vit=0.0, dropout=0.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store([ASSETS / "selfplay.pgn.zst"], tmp_path_factory.mktemp("s") / "store",
                       GameFilter(rated_only=False, speeds=[], first_n_plies=0, max_games=6), workers=1)


@pytest.fixture(scope="module")
def teacher(shared_models):
    return Maia1Teacher(load_maia1_family(shared_models / "maia1"), "cpu", top_k=16)


def test_tokens_then_from_tokens_is_the_forward_pass(store):
    model = load_model(ASSETS / "maia2_small.safetensors")
    b = store.batch(np.arange(40))
    whole = model(b["boards"], b["elo_self"], b["elo_oppo"])
    split = model.from_tokens(model.tokens(b["boards"]), b["elo_self"], b["elo_oppo"])
    for x, y in zip(whole, split):
        assert torch.equal(x, y)


def test_teacher_targets_are_legal_normalised_and_the_same_cached_or_on_the_fly(store, teacher):
    rows = np.arange(0, len(store), 7)[:48]
    cached = cache_teacher_targets(store, teacher, rows)
    again = cache_teacher_targets(store, teacher, rows)  # read back from the store folder
    assert torch.equal(cached["moves"], again["moves"])
    planes = teacher_planes(store, workers=1)
    batch = store.batch(rows)
    batch["lc0"] = torch.from_numpy(np.ascontiguousarray(planes[rows]))
    buckets = torch.tensor([[0, 5, 10]] * len(rows))
    moves, probs = teacher.targets(batch, buckets)
    assert moves.shape == probs.shape == (len(rows), 3, 16)
    assert torch.allclose(probs.sum(-1), torch.ones(len(rows), 3), atol=1e-5)
    legal = batch["legal"]
    for r in range(len(rows)):
        for kk in range(3):
            m = moves[r, kk][probs[r, kk] > 0]
            assert legal[r, m].all()
    # bucket 0 and bucket 10 are different networks (maia-1100 and maia-1900): they disagree somewhere
    assert not torch.equal(probs[:, 0], probs[:, 2])
    # cached rows give the same targets as the on-the-fly path (float16 storage)
    cbatch = dict(batch, teacher_moves=cached["moves"], teacher_probs=cached["probs"].float())
    cm, cp = teacher.targets(cbatch, buckets)
    top = probs > 0.05  # ties among tiny probabilities may order differently
    assert torch.equal(cm.long()[..., 0], moves[..., 0]) and torch.allclose(cp[top], probs[top], atol=2e-3)
    # the packed planes are the ones lc0 encoding gives for these positions
    assert unpack_lc0_planes(batch["lc0"]).shape == (len(rows), 112, 8, 8)


def test_a_distilled_student_learns_to_play_each_bands_moves_at_its_bucket(store, teacher):
    torch.manual_seed(0)
    rows = np.arange(0, len(store), 3)[:96]
    t = cache_teacher_targets(store, teacher, rows)
    batch = store.batch(rows)
    batch.update(teacher_moves=t["moves"], teacher_probs=t["probs"].float())
    model = Maia2(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    w = LossWeights(0.0, 0.0)

    def kl_to(bucket_student: int, bucket_teacher: int) -> float:
        model.eval()
        with torch.no_grad():
            tok = model.tokens(batch["boards"])
            n = len(rows)
            logits = model.from_tokens(tok, torch.full((n,), bucket_student), batch["elo_oppo"])[0]
        m, p = teacher.targets(batch, torch.full((n, 1), bucket_teacher))
        return float(sparse_kl(logits, batch["legal"], m[:, 0], p[:, 0]).mean())

    gen = torch.Generator().manual_seed(0)
    first = None
    for step in range(100):
        model.train()
        out = distill_losses(model, teacher, batch, w, 2, 50.0, gen)
        first = first if first is not None else out["distill_loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["distill_loss"].item() < 0.5 * first
    # each conditioning is closer to its own band's network than to the other end's
    assert kl_to(0, 0) < kl_to(10, 0)
    assert kl_to(10, 10) < kl_to(0, 10)


def test_each_network_runs_on_its_rows_only_and_gives_every_rows_targets(store, teacher):
    """On the fly, a network runs only on the rows that drew one of its buckets: the targets at random
    per-row buckets are the ones all nine networks on every row give (the cached path)."""
    rows = np.arange(0, len(store), 11)[:40]
    batch = store.batch(rows)
    batch["lc0"] = torch.from_numpy(np.ascontiguousarray(teacher_planes(store, workers=1)[rows]))
    full = cache_teacher_targets(store, teacher, rows)
    buckets = torch.randint(0, 11, (len(rows), 4), generator=torch.Generator().manual_seed(3))
    moves, probs = teacher.targets(batch, buckets)
    cm, cp = teacher.targets(dict(batch, teacher_moves=full["moves"], teacher_probs=full["probs"].float()), buckets)
    assert moves.shape == cm.shape == (len(rows), 4, 16)
    top = probs > 0.05
    assert torch.equal(moves[..., 0], cm.long()[..., 0]) and torch.allclose(probs[top], cp[top], atol=2e-3)


def test_bfloat16_teachers_and_student_on_a_cpu(store, shared_models):
    """train.cpu_bf16: the teachers hold bfloat16 weights and mostly agree with float32 on the top move;
    the student's step under CPU autocast keeps float32 weights and gradients and a finite loss."""
    fam = load_maia1_family(shared_models / "maia1")
    t32 = Maia1Teacher(fam, "cpu", top_k=16)
    t16 = Maia1Teacher(load_maia1_family(shared_models / "maia1"), "cpu", top_k=16, cpu_bf16=True)
    assert all(p.dtype == torch.bfloat16 for n in t16.nets for p in n.parameters())
    rows = np.arange(0, len(store), 5)[:64]
    batch = store.batch(rows)
    planes = torch.from_numpy(np.ascontiguousarray(teacher_planes(store, workers=1)[rows]))
    buckets = torch.arange(11).repeat(len(rows), 1)
    m32, _ = t32.targets(dict(batch, lc0=planes), buckets)
    m16, p16 = t16.targets(dict(batch, lc0=planes), buckets)
    assert p16.dtype == torch.float32 and torch.allclose(p16.sum(-1), torch.ones(len(rows), 11), atol=1e-3)
    # measured: 98% of (position, network) top moves agree; a broken cast agrees on few
    assert (m16[..., 0] == m32[..., 0]).float().mean() > 0.9
    model = Maia2(TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distill_losses(model, t16, dict(batch, lc0=planes), LossWeights(1.0, 1.0), 2, 1.0,
                             torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in model.parameters())


def test_amplified_targets_exaggerate_what_sets_a_band_apart():
    """train.teacher_amplify: beta=0 leaves every network's targets as they are; beta>0 keeps the
    support and raises the share of the move one network prefers more than the others do."""
    from maia_adapt.model.distill import amplify_targets

    moves = torch.tensor([[[10, 20, 30], [10, 20, 30]]])  # two networks, the same three moves
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.5, 0.1, 0.4]]])
    assert torch.allclose(amplify_targets(moves, probs, 0.0), probs)
    amp = amplify_targets(moves, probs, 2.0)
    assert torch.allclose(amp.sum(-1), torch.ones(1, 2))
    assert amp[0, 0, 1] > probs[0, 0, 1] and amp[0, 1, 2] > probs[0, 1, 2]  # each network's own preference grows
    assert amp[0, 0, 2] < probs[0, 0, 2] and amp[0, 1, 1] < probs[0, 1, 1]  # the other's shrinks
    # a move outside a network's top k stays at zero
    probs0 = torch.tensor([[[0.6, 0.4, 0.0], [0.5, 0.1, 0.4]]])
    assert amplify_targets(moves, probs0, 2.0)[0, 0, 2] == 0


def test_amplified_targets_on_the_fly_equal_the_cached_ones(store, teacher):
    rows = np.arange(0, len(store), 13)[:24]
    batch = store.batch(rows)
    batch["lc0"] = torch.from_numpy(np.ascontiguousarray(teacher_planes(store, workers=1)[rows]))
    full = cache_teacher_targets(store, teacher, rows)
    buckets = torch.randint(0, 11, (len(rows), 3), generator=torch.Generator().manual_seed(1))
    teacher.amplify = 2.0
    try:
        m, p = teacher.targets(batch, buckets)
        cm, cp = teacher.targets(dict(batch, teacher_moves=full["moves"], teacher_probs=full["probs"].float()), buckets)
    finally:
        teacher.amplify = 0.0
    assert torch.equal(m[..., 0], cm[..., 0]) and torch.allclose(p.sum(-1), torch.ones(len(rows), 3), atol=1e-4)
    assert torch.allclose(p[p > 0.05], cp[p > 0.05], atol=5e-3)


def test_target_accuracy_is_each_networks_own_accuracy_before_amplification(store, teacher):
    from maia_adapt.model.distill import target_accuracy
    from maia_adapt.model.skill import Maia1Family

    rows = np.arange(0, len(store), max(1, len(store) // 300))[:300]
    acc = target_accuracy(teacher, store, rows, betas=(0.0, 3.0), batch_size=128)
    # beta 0: the target's top move is the network's own top move, so its accuracy is the network's
    family = Maia1Family(dict(zip(teacher.ratings, teacher.nets)))
    inputs, legal = family.inputs(store, rows), store.batch(rows)["legal"]
    with torch.no_grad():
        own = [(family.policy_logits(inputs, b).masked_fill(~legal, float("-inf")).argmax(-1) == inputs["move"]).float().mean()
               for b in range(1, 10)]
    assert np.allclose(acc[0.0], [float(o) for o in own], atol=2 / len(rows))
    # amplified targets are other predictors, each still a legal move's accuracy in [0, 1]
    assert acc[3.0].shape == (9,) and (0 <= acc[3.0]).all() and (acc[3.0] <= 1).all()
    assert not np.allclose(acc[3.0], acc[0.0])


def test_the_contrast_loss_sees_only_what_the_conditionings_change():
    """train.teacher_contrast: zero when the student's differences between its conditionings are the
    targets', whatever the student gets wrong in common at all of them; positive when it halves them."""
    from maia_adapt.model.distill import contrast_loss

    g = torch.Generator().manual_seed(0)
    n, k, top, v = 6, 3, 5, 1880
    legal = torch.zeros(n, v, dtype=torch.bool)
    legal[:, :40] = True
    # each row's targets share most moves (in another order), as neighbouring bands' top moves do
    sets = [torch.randperm(40, generator=g)[:top + 1] for _ in range(n)]
    moves = torch.stack([torch.stack([s[torch.randperm(top + 1, generator=g)[:top]] for _ in range(k)]) for s in sets])
    probs = torch.rand(n, k, top, generator=g) + 0.05
    probs = probs / probs.sum(-1, keepdim=True)
    # a student whose log-probabilities on each target's moves are the target's, elsewhere low
    logits = torch.full((n, k, v), -8.0)
    logits.scatter_(2, moves, probs.log())
    assert contrast_loss(logits, legal, moves, probs).abs().max() < 1e-5
    shared = torch.randn(n, 1, v, generator=g) * 2  # the same error at every conditioning
    torch.testing.assert_close(contrast_loss(logits + shared, legal, moves, probs),
                               contrast_loss(logits, legal, moves, probs), atol=1e-4, rtol=0)
    half = logits.mean(1, keepdim=True) + (logits - logits.mean(1, keepdim=True)) / 2
    assert (contrast_loss(half, legal, moves, probs) > 1e-3).all()
    # the pairs with no move in common contribute nothing, and nothing is NaN
    disjoint = torch.stack([torch.arange(k * top).view(k, top)] * n)
    assert torch.isfinite(contrast_loss(logits, legal, disjoint, probs)).all()


def test_rating_line_targets_keep_what_changes_with_rating_and_drop_the_rest():
    """train.teacher_smooth: networks whose log-probabilities are a line in rating keep their targets;
    differences between them that are not a line in rating (separate trainings' noise) are removed;
    the gain exaggerates the line's slope."""
    from maia_adapt.model.distill import smooth_targets

    g = torch.Generator().manual_seed(0)
    ratings = list(range(1100, 2000, 100))
    x = torch.linspace(-1, 1, 9)
    moves = torch.tensor([[10, 20, 30, 40]]).expand(1, 9, 4).clone()
    logits = torch.randn(1, 1, 4, generator=g) + torch.randn(1, 1, 4, generator=g) * x.view(1, 9, 1)
    probs = logits.softmax(-1)
    m, p = smooth_targets(moves, probs, ratings)
    dense = lambda m, p: torch.zeros(1, 9, 1880).scatter_(2, m, p)
    torch.testing.assert_close(dense(m, p), dense(moves, probs), atol=1e-5, rtol=0)
    # noise orthogonal to (1, rating) across the nine networks
    noise = torch.randn(1, 9, 4, generator=g)
    basis = torch.stack([torch.ones(9), x], 1)
    noise = noise - basis @ torch.linalg.lstsq(basis, noise[0]).solution
    m2, p2 = smooth_targets(moves, (logits + noise).softmax(-1), ratings)
    torch.testing.assert_close(dense(m2, p2), dense(moves, probs), atol=1e-5, rtol=0)
    # a gain of 1 doubles the slope: the move the strongest network likes more than the weakest does
    # gains at the top and loses at the bottom
    m3, p3 = smooth_targets(moves, probs, ratings, gain=1.0)
    up = int((probs[0, -1] / probs[0, 0]).argmax())
    d3, d0 = dense(m3, p3), dense(moves, probs)
    assert d3[0, -1, moves[0, 0, up]] > d0[0, -1, moves[0, 0, up]] and d3[0, 0, moves[0, 0, up]] < d0[0, 0, moves[0, 0, up]]


def test_smooth_targets_and_the_contrast_term_in_a_training_step(store, teacher):
    """train.teacher_smooth / teacher_contrast on real teacher outputs: the smoothed targets are legal,
    normalised and keep most networks' top move; the step's loss adds contrast x contrast_loss."""
    rows = np.arange(0, len(store), 7)[:32]
    batch = store.batch(rows)
    batch["lc0"] = torch.from_numpy(np.ascontiguousarray(teacher_planes(store, workers=1)[rows]))
    buckets = torch.arange(11).repeat(len(rows), 1)
    raw_m, _ = teacher.targets(batch, buckets)
    teacher.smooth = True
    try:
        m, p = teacher.targets(batch, buckets)
        model = Maia2(TINY)
        args = (model, teacher, batch, LossWeights(1.0, 1.0), 3, 1.0)
        plain = distill_losses(*args, torch.Generator().manual_seed(0))
        with_c = distill_losses(*args, torch.Generator().manual_seed(0), contrast=0.5)
    finally:
        teacher.smooth = False
    legal = batch["legal"][:, None].expand(-1, 11, -1).gather(2, m)
    assert bool(legal[p > 0].all()) and torch.allclose(p.sum(-1), torch.ones(len(rows), 11), atol=1e-4)
    assert (m[..., 0] == raw_m[..., 0]).float().mean() > 0.6  # a line through nine networks keeps most top moves
    assert with_c["contrast_loss"] > 0 and "contrast_loss" not in plain
    torch.testing.assert_close(with_c["loss"], plain["loss"] + 0.5 * with_c["contrast_loss"])
    with_c["loss"].backward()
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)
