"""stage=evaluate and the SkillModel interface: metric code on hand-made predictions, the Maia-2
adapter, the Maia-1 family's bucket -> network mapping and routing, the store's game histories, and
the stage end to end on real games (strict JSON with the documented keys)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from _app import TINY_MODEL, error_line, run_app
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter, build_store
from maia_adapt.encoding import NUM_BUCKETS
from maia_adapt.analysis.evaluation import json_safe, sample_positions, skill_hits, skill_metrics
from maia_adapt.model import load_model
from maia_adapt.model.skill import Maia2Skill, SkillModel, maia1_rating_for_bucket

ROOT = Path(__file__).resolve().parents[1]


def _models_root() -> Path:
    env = os.environ.get("MAIA_ADAPT_MODELS")
    return Path(env) if env else ROOT.parent / "shared" / "models"


def _maia1_available() -> str | None:
    """Why the Maia-1 tests cannot run, or None."""
    try:
        import maia_adapt.encoding.lc0  # noqa: F401
        import maia_adapt.model.maia1  # noqa: F401
    except ImportError:
        return "maia_adapt.model.maia1 / maia_adapt.encoding.lc0 not in this checkout"
    if not (_models_root() / "maia1" / "maia-1100.pb.gz").is_file():
        return f"Maia-1 networks not found in {_models_root()}/maia1 (set MAIA_ADAPT_MODELS)"
    return None


needs_maia1 = pytest.mark.skipif(_maia1_available() is not None, reason=str(_maia1_available()))


@pytest.fixture(scope="module")
def selfplay_store(tmp_path_factory):
    return build_store([ASSETS / "selfplay.pgn.zst"], tmp_path_factory.mktemp("s") / "store",
                       GameFilter(rated_only=False, speeds=[], first_n_plies=0, max_games=30), workers=1)


# ---- metric code, on predictions whose answers are known exactly ----------------------------------

def _synthetic():
    """Bucket-0 players: 6 positions in 3 games; bucket-10 players: 4 positions in 2 games; 2 in bucket 5.
    Column 0 gets every bucket-0 position right and half the bucket-10 ones; column 10 the reverse."""
    bucket = np.array([0, 0, 0, 0, 0, 0, 10, 10, 10, 10, 5, 5])
    game = np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    hits = np.zeros((12, NUM_BUCKETS), dtype=bool)
    hits[:6, 0] = True                     # bucket 0 at its own column: 6/6
    hits[:3, 10] = True                    # bucket 0 at column 10: 3/6
    hits[6:10, 10] = [1, 1, 1, 0]          # bucket 10 at its own column: 3/4
    hits[6:10, 0] = [1, 0, 0, 0]           # bucket 10 at column 0: 1/4
    hits[10:, 5] = [1, 0]                  # bucket 5 at its own column: 1/2
    return hits, bucket, game


def test_metrics_on_hand_checkable_predictions():
    hits, bucket, game = _synthetic()
    m = skill_metrics(hits, bucket, game, n_boot=300)
    assert m["top1"] == pytest.approx((6 + 3 + 1) / 12)
    assert m["top1_bucket_0"] == 1.0 and m["top1_bucket_10"] == 0.75 and m["top1_bucket_5"] == 0.5
    assert m["top1_macro"] == pytest.approx((1.0 + 0.75 + 0.5) / 3)  # buckets without positions left out
    assert np.isnan(m["top1_bucket_3"]) and m["top1_bucket_3_ci95"] is None and m["count_bucket_3"] == 0
    assert m["skill_gap_low"] == pytest.approx(1.0 - 0.5)
    assert m["skill_gap_high"] == pytest.approx(0.75 - 0.25)
    assert m["matrix"][0, 0] == 1.0 and m["matrix"][0, 10] == 0.5 and m["matrix"][10, 0] == 0.25
    assert m["positions"] == 12 and m["games"] == 6
    # every interval holds its point estimate; bucket 0 is always 6/6, so its interval is the point
    for k in ("top1", "top1_macro", "skill_gap_low", "skill_gap_high", "top1_bucket_10"):
        lo, hi = m[f"{k}_ci95"]
        assert lo <= m[k] <= hi, k
    assert m["top1_bucket_0_ci95"] == [1.0, 1.0]
    # paired over games: per game the bucket-0 gap is 0 (game 1), 1/2 (game 2) and 1 (game 3), so every
    # resample's gap lies in [0, 1] and the interval spreads around 1/2
    lo, hi = m["skill_gap_low_ci95"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0


def test_hits_flip_when_the_gap_reverses():
    hits, bucket, game = _synthetic()
    m = skill_metrics(hits[:, ::-1], bucket, game, n_boot=50)  # column c <-> column 10 - c
    assert m["skill_gap_low"] == pytest.approx(-0.5) and m["skill_gap_high"] == pytest.approx(-0.5)


def test_json_safe_writes_null_for_nan():
    hits, bucket, game = _synthetic()
    m = skill_metrics(hits, bucket, game, n_boot=20)
    text = json.dumps(json_safe({k: v for k, v in m.items()}), allow_nan=False)
    assert json.loads(text)["top1_bucket_3"] is None


# ---- the interface on Maia-2 ------------------------------------------------------------------------

def test_maia2_adapter_satisfies_the_interface(selfplay_store):
    model = Maia2Skill(load_model(ASSETS / "maia2_small.safetensors"), name="maia2_small")
    assert isinstance(model, SkillModel)
    assert model.conditions() == [(b, [b]) for b in range(NUM_BUCKETS)]
    idx = np.arange(0, len(selfplay_store), 97)[:16]
    inputs = model.inputs(selfplay_store, idx)
    es, eo = torch.arange(16) % NUM_BUCKETS, torch.full((16,), 4)
    with torch.no_grad():
        logits = model.policy_logits(inputs, es, eo)
        direct = model.model(inputs["boards"], es, eo)[0]
        _, cache = model.run_with_cache(inputs, es, eo, names=["hook_final"])
    assert logits.shape == (16, 1880) and torch.equal(logits, direct)
    assert cache["hook_final"].shape[0] == 16
    # a scalar bucket means that bucket for every row; buckets change the output
    with torch.no_grad():
        a, b = model.policy_logits(inputs, 0, 0), model.policy_logits(inputs, 10, 10)
    assert not torch.allclose(a, b)
    # hooks reach the wrapped network: zeroing the final representation changes the policy
    with torch.no_grad(), model.hooks([("hook_final", lambda x, name: x * 0)]):
        zeroed = model.policy_logits(inputs, es, eo)
    assert not torch.allclose(zeroed, logits)
    # every condition from one trunk pass is the condition's own forward pass
    pairs = [(0, 0), (10, 10), (es, eo), (3, eo)]
    with torch.no_grad():
        shared = list(model.policy_logits_by_condition(inputs, pairs))
        for (a, b), got in zip(pairs, shared):
            assert torch.allclose(got, model.policy_logits(inputs, a, b), atol=1e-5)
    assert len(shared) == 4 and torch.allclose(shared[2], logits, atol=1e-5)


def test_skill_hits_diagonal_is_the_data_conditioned_accuracy(selfplay_store):
    model = Maia2Skill(load_model(ASSETS / "maia2_small.safetensors"))
    idx = sample_positions(selfplay_store, "all", 300, seed=1)
    h = skill_hits(model, selfplay_store, idx, batch_size=128)
    batch = selfplay_store.batch(idx)
    with torch.no_grad():
        logits = model.model(batch["boards"], batch["elo_self"], batch["elo_oppo"])[0]
    pred = logits.masked_fill(~batch["legal"], float("-inf")).argmax(-1)
    own = h["hits"][np.arange(len(idx)), h["bucket"]]
    assert np.array_equal(own, (pred == batch["move"]).numpy())


# ---- history in the store -----------------------------------------------------------------------------

def test_store_history_replays_every_position(selfplay_store):
    idx = np.random.default_rng(0).permutation(len(selfplay_store))[:400]
    fens = selfplay_store.fens(idx)
    for (start_fen, moves, ply), fen in zip(selfplay_store.history(idx), fens):
        board = chess.Board(start_fen) if start_fen else chess.Board()
        for m in moves:
            board.push_uci(m)
        assert board.fen() == fen and len(moves) == ply  # standard-start games: ply counts the moves


def test_store_history_of_a_game_with_a_start_fen(tmp_path):
    start = "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 20"
    pgn = tmp_path / "g.pgn"
    pgn.write_text(f'[Event "x"]\n[Site "s1"]\n[WhiteElo "1500"]\n[BlackElo "1500"]\n[Result "1-0"]\n'
                   f'[SetUp "1"]\n[FEN "{start}"]\n\n20. O-O O-O-O 21. a3 a6 22. Kh1 1-0\n')
    store = build_store([pgn], tmp_path / "st", GameFilter(rated_only=False, speeds=[], first_n_plies=0), workers=1)
    hist = store.history(np.arange(len(store)))
    # (the stored ply may count from the game's first move or from the standard start; the moves may not)
    assert hist[0][:2] == (start, []) and hist[-1][1] == ["e1g1", "e8c8", "a2a3", "a7a6"]
    board = chess.Board(start)
    for m in hist[-1][1]:
        board.push_uci(m)
    # pieces, side to move, castling and en passant (the move counters are the pgn-api branch's concern)
    assert board.fen().split()[:4] == store.fens([len(store) - 1])[0].split()[:4]


# ---- the Maia-1 family --------------------------------------------------------------------------------

def test_bucket_to_network_mapping():
    assert [maia1_rating_for_bucket(b) for b in range(NUM_BUCKETS)] == [
        1100, 1100, 1200, 1300, 1400, 1500, 1600, 1700, 1800, 1900, 1900]
    with pytest.raises(ValueError, match="0..10"):
        maia1_rating_for_bucket(11)


@needs_maia1
def test_maia1_family_routes_rows_to_their_networks(selfplay_store):
    from maia_adapt.encoding.lc0 import lc0_policy_to_maia2
    from maia_adapt.model.maia1 import load_maia1_family
    from maia_adapt.model.skill import Maia1Family

    nets = load_maia1_family(_models_root() / "maia1")
    family = Maia1Family(nets)
    assert isinstance(family, SkillModel)
    assert [(family.label(rep), g) for rep, g in family.conditions()][:2] == [("maia-1100", [0, 1]), ("maia-1200", [2])]
    assert len(family.conditions()) == 9 and family.conditions()[-1] == (9, [9, 10])
    idx = np.arange(0, len(selfplay_store), 53)[:22]
    inputs = family.inputs(selfplay_store, idx)
    buckets = torch.arange(22) % NUM_BUCKETS  # every bucket twice, mixed in one batch
    with torch.no_grad():
        mixed = family.policy_logits(inputs, buckets, 0)
        for i, b in enumerate(buckets.tolist()):
            net = nets[maia1_rating_for_bucket(b)]
            x = inputs["lc0"][i : i + 1]
            direct = lc0_policy_to_maia2(net(x)[0], x)
            legal = inputs["legal"][i]
            p_family = mixed[i].masked_fill(~legal, float("-inf")).softmax(-1)
            p_direct = direct[0].masked_fill(~legal, float("-inf")).softmax(-1)
            assert torch.allclose(p_family, p_direct, atol=1e-5), b
    # one network: every bucket uses it
    single = Maia1Family({1500: nets[1500]}, rating=1500)
    assert single.conditions() == [(0, list(range(NUM_BUCKETS)))]
    with torch.no_grad():
        assert torch.allclose(single.policy_logits(inputs, buckets), family.policy_logits(inputs, 5), atol=1e-6)
        for got, b in zip(family.policy_logits_by_condition(inputs, [(0, 0), (buckets, 0)]), (0, buckets)):
            assert torch.allclose(got, family.policy_logits(inputs, b), atol=1e-6)


@needs_maia1
def test_maia1_history_changes_the_inputs(selfplay_store):
    from maia_adapt.model.skill import lc0_store_planes

    idx = np.arange(len(selfplay_store))[selfplay_store.column("ply")[:] > 10][:50]
    with_h, without = lc0_store_planes(selfplay_store, idx, True), lc0_store_planes(selfplay_store, idx, False)
    # the current position's pieces, castling, side to move and fifty-move counter are the same
    assert torch.equal(with_h[:, :12], without[:, :12]) and torch.equal(with_h[:, 104:], without[:, 104:])
    assert not torch.equal(with_h[:, 13:104], without[:, 13:104])  # the 7 earlier slots are not
    # grouped replay = encoding each position's board (with its move stack) on its own
    from maia_adapt.encoding.lc0 import lc0_planes

    for row in (0, 17, 49):
        start_fen, moves, _ = selfplay_store.history([idx[row]])[0]
        board = chess.Board(start_fen) if start_fen else chess.Board()
        for m in moves:
            board.push_uci(m)
        assert torch.equal(with_h[row], torch.from_numpy(lc0_planes(board)))


# ---- the stage, end to end ----------------------------------------------------------------------------

KEYS = ["top1", "top1_macro", *(f"top1_bucket_{k}" for k in range(NUM_BUCKETS)), "skill_gap_low", "skill_gap_high"]


def _evaluate(args, run_dir, tmp_path):
    p = run_app(["stage=evaluate", "data=lichess", "data.max_games=150", f"data.store_dir={tmp_path}/store",
                 "evaluate.positions=600", "evaluate.n_boot=200", *args], run_dir=run_dir, logger=None)
    assert p.returncode == 0, p.stderr[-3000:]
    text = (run_dir / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for k in KEYS:
        assert k in summary and f"{k}_ci95" in summary, k
    for name in ("results.md", "skill_matrix.csv", "skill_matrix.png"):
        assert (run_dir / name).is_file(), name
    return summary


@pytest.mark.slow
def test_stage_evaluate_maia2_on_real_games(shared_data, tmp_path):
    s = _evaluate(["model=maia2_small"], tmp_path / "run", tmp_path)
    assert s["positions"] == 600 and 0.1 < s["top1"] < 0.6
    assert s["top1_ci95"][0] <= s["top1"] <= s["top1_ci95"][1]
    header = (tmp_path / "run" / "skill_matrix.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["player_bucket", "positions", "<1100"] and len(header) == 2 + NUM_BUCKETS


@pytest.mark.slow
@needs_maia1
def test_stage_evaluate_maia1_on_real_games(shared_data, tmp_path):
    s = _evaluate(["model=maia1", "evaluate.history=true"], tmp_path / "run", tmp_path)
    assert s["history"] is True and 0.35 < s["top1"] < 0.7  # ~52% on thousands of positions
    header = (tmp_path / "run" / "skill_matrix.csv").read_text().splitlines()[0].split(",")
    assert header[2:] == [f"maia-{r}" for r in range(1100, 2000, 100)]


def test_missing_maia1_folder_is_one_line(tmp_path):
    p = run_app(["stage=evaluate", "model=maia1"], run_dir=tmp_path / "run",
                env={"MAIA_ADAPT_MODELS": str(tmp_path / "nowhere")}, timeout=300)
    assert p.returncode == 1
    line = error_line(p)
    assert str(tmp_path / "nowhere" / "maia1") in line and "MAIA_ADAPT_MODELS" in line


def test_maia1_rating_must_be_a_band(tmp_path):
    p = run_app(["stage=evaluate", "model=maia1", "model.rating=1550"], run_dir=tmp_path / "run", timeout=300)
    assert p.returncode == 1 and "model.rating=1550" in p.stderr and "1900" in p.stderr


@pytest.mark.slow
def test_stage_train_reports_the_evaluate_numbers(tmp_path):
    run_dir = tmp_path / "run"
    p = run_app(["stage=train", *TINY_MODEL, "train.max_steps=2", "train.batch_size=16", "train.eval_positions=200",
                 "evaluate.n_boot=50", f"data.store_dir={tmp_path}/store", "data.max_games=60"], run_dir=run_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    for k in KEYS:
        assert k in summary and f"{k}_ci95" in summary, k
    # the same test positions as the training stage's own accuracy
    assert summary["top1"] == pytest.approx(summary["test_accuracy"]) and summary["positions"] == summary["test_positions"]
    assert (run_dir / "skill_matrix.png").is_file() and (run_dir / "results.md").is_file()
