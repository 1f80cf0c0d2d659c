"""Transition points, the Stockfish oracle, the seed positions and stage=transitional."""
import csv
import json

import chess
import numpy as np
import pytest
import torch

from _app import run_app
from maia_adapt.config import ASSETS
from maia_adapt.data.store import store_from_fens
from maia_adapt.errors import DataError
from maia_adapt.model import load_model
from maia_adapt.analysis.transitional import (NEVER, EngineOracle, build_transitional, find_engine, load_seed_positions, predictions_by_bucket, transition_points)


def test_transition_points_on_constructed_cases():
    c = np.array([[1] * 11, [0] * 11, [0, 0, 0] + [1] * 8, [0, 1, 0, 0] + [1] * 7, [1] * 10 + [0], [0] * 10 + [1]], bool)
    tp, mono = transition_points(c)
    assert tp.tolist() == [0, NEVER, 3, 4, NEVER, 10]
    assert mono.tolist() == [True, True, True, False, False, True]


@pytest.fixture(scope="module")
def model():
    return load_model(ASSETS / "maia2_small.safetensors")


def test_predictions_are_legal_moves_in_real_colours(model, tmp_path):
    fens = [chess.STARTING_FEN, "rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2"]
    store = store_from_fens(fens, tmp_path / "s", 5, 5)
    moves, probs = predictions_by_bucket(model, store, np.arange(2))
    assert len(moves) == 2 and all(len(m) == 11 for m in moves)
    for fen, row in zip(fens, moves):
        board = chess.Board(fen)
        assert all(chess.Move.from_uci(m) in board.legal_moves for m in row)
    assert ((probs > 0) & (probs <= 1)).all()


def test_model_oracle_never_gives_never(model, tmp_path):
    fens = ["r1bqkb1r/pppp1ppp/2n2n2/4p2Q/2B1P3/8/PPPP1PPP/RNB1K1NR w KQkq - 4 4",
            "rnbqkbnr/pppp1ppp/8/4p3/4P3/8/PPPP1PPP/RNBQKBNR w KQkq - 0 2"]
    store = store_from_fens(fens, tmp_path / "s", 5, 5)
    rows = build_transitional(model, store, np.arange(2), oracle="model")
    for r in rows:
        assert r["transition_point"] < NEVER and r["correct"] == [r["preds"][-1]]
        assert r["transitional"] == (r["transition_point"] > 0)


@pytest.mark.skipif(find_engine() is None, reason="Stockfish not installed (apt-get install stockfish)")
def test_engine_oracle_finds_mate_and_prices_blunders(model, tmp_path):
    # Scholar's mate available: Qxf7#; any other move is far worse
    fen = "r1bqkb1r/pppp1ppp/2n2n2/4p2Q/2B1P3/8/PPPP1PPP/RNB1K1NR w KQkq - 4 4"
    with EngineOracle(find_engine(), depth=8) as eng:
        best, losses = eng.analyse(fen, ["h5f7", "h5h4", "a2a3"])
        assert best == "h5f7" and losses["h5f7"] == 0
        assert losses["a2a3"] > 300 and losses["h5h4"] > 300
        store = store_from_fens([fen], tmp_path / "s", 5, 5)
        [row] = build_transitional(model, store, np.arange(1), oracle="engine", engine=eng, blunder_cp=150)
    assert row["correct"] == ["h5f7"]
    assert row["blunder"] == (row["cp_loss_low"] >= 150)
    assert row["accuracy_by_bucket"].tolist() == [p == "h5f7" for p in row["preds"]]


@pytest.mark.skipif(find_engine() is None, reason="Stockfish not installed (apt-get install stockfish)")
def test_engine_oracle_answers_do_not_depend_on_what_it_searched_before(shared_data):
    """The same positions in two orders give the same best moves and losses: each model's transitional
    run must be judged by the same oracle."""
    seed = load_seed_positions(shared_data / "transitional/seed_transitional_positions.json")
    fens, moves = seed["fens"][:150], seed["all_best_moves"][:150]

    def answers(order):
        with EngineOracle(find_engine(), depth=8) as eng:
            return {i: eng.analyse(fens[i], moves[i]) for i in order}

    forward = answers(range(len(fens)))
    assert answers(reversed(range(len(fens)))) == forward


def test_seed_positions_load_and_bad_file_is_named(shared_data, tmp_path):
    seed = load_seed_positions(shared_data / "transitional/seed_transitional_positions.json")
    assert len(seed["fens"]) == 264 and all(chess.Board(f).is_valid() for f in seed["fens"])
    assert seed["castling_rights_fixed"] >= 1
    for fen, moves in zip(seed["fens"], seed["all_best_moves"]):
        assert all(chess.Move.from_uci(m) in chess.Board(fen).legal_moves for m in moves)
        # in standard UCI: the file's two king-takes-rook castlings (e1h1, e1a1) come out as e1g1, e1c1
        assert all(chess.Board(fen).parse_uci(m).uci() == m for m in moves)
    assert sum(m in ("e1g1", "e1c1") for ms in seed["all_best_moves"] for m in ms) >= 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"filtered_special_fens": ["x"]}))
    with pytest.raises(DataError, match="bad.json"):
        load_seed_positions(bad)


@pytest.mark.slow
def test_stage_transitional_on_seed_positions(seed_transitional):
    run = seed_transitional()
    rows = list(csv.DictReader(open(run / "transitional.csv")))
    assert len(rows) == 264
    res = json.loads((run / "results.json").read_text())
    assert res["oracle"] == "accepted"
    tps = [int(r["transition_point"]) for r in rows]
    assert res["transitional"] == sum(0 < t < NEVER for t in tps) and res["never"] == tps.count(NEVER)
    for r in rows[:50]:
        preds = [r[f"pred_{k}"] for k in range(11)]
        ok = [p in r["correct_moves"].split() for p in preds]
        assert transition_points(np.array([ok]))[0][0] == int(r["transition_point"])
    assert (run / "transition_points.png").stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.skipif(find_engine() is None, reason="Stockfish not installed (apt-get install stockfish)")
def test_stage_transitional_on_games_with_stockfish(shared_data, tmp_path):
    r = run_app(["stage=transitional", "data=lichess", "data.max_games=40", f"data.store_dir={tmp_path}/store",
                 "transitional.positions=20", "transitional.depth=6"], run_dir=tmp_path / "run", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["oracle"] == "engine" and res["positions"] == 60  # 20 from each split
    rows = list(csv.DictReader(open(tmp_path / "run" / "transitional.csv")))
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert all(r["cp_loss_low"] != "" for r in rows)
    assert sum(int(r["blunder"]) for r in rows) == res["blunders"]


# ---- the Maia-1 family through the SkillModel interface ----------------------------------------------

def test_maia1_predictions_are_each_bands_network(shared_models, tmp_path):
    from maia_adapt.encoding import NUM_BUCKETS
    from maia_adapt.model.inference import masked_probs
    from maia_adapt.model.maia1 import load_maia1_family
    from maia_adapt.model.skill import Maia1Family, maia1_rating_for_bucket

    nets = load_maia1_family(shared_models / "maia1")
    fam = Maia1Family(nets)
    fens = ["r1bqkb1r/pppp1ppp/2n2n2/4p2Q/2B1P3/8/PPPP1PPP/RNB1K1NR w KQkq - 4 4",
            "rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2"]
    store = store_from_fens(fens, tmp_path / "s", 5, 5)
    moves, probs = predictions_by_bucket(fam, store, np.arange(2))
    assert len(fam.conditions()) == 9 and probs.shape == (2, NUM_BUCKETS)
    for b in range(NUM_BUCKETS):  # each bucket's probabilities are its band's network alone
        r = maia1_rating_for_bucket(b)
        one = Maia1Family({r: nets[r]}, rating=r)
        inputs = one.inputs(store, np.arange(2))
        p = masked_probs(one.policy_logits(inputs, b), inputs["legal"])
        assert np.allclose(probs[:, b], p.max(-1).values.numpy(), atol=1e-5)
    for i, fen in enumerate(fens):
        assert moves[i][0] == moves[i][1] and moves[i][9] == moves[i][10]  # one network, copied
        assert all(chess.Move.from_uci(m) in chess.Board(fen).legal_moves for m in moves[i])
    assert moves[0][9] == "h5f7"  # maia-1900 finds the mate


@pytest.mark.slow
def test_stage_transitional_maia1_on_seed_positions(shared_models, seed_transitional):
    run = seed_transitional("model=maia1")
    res = json.loads((run / "results.json").read_text())
    rows = list(csv.DictReader(open(run / "transitional.csv")))
    assert res["model"] == "maia1" and len(rows) == 264
    # buckets 0,1 are both maia-1100 and 9,10 both maia-1900: same move, so no transition point 1 or 10
    assert all(r["pred_0"] == r["pred_1"] and r["pred_9"] == r["pred_10"] for r in rows)
    assert {int(r["transition_point"]) for r in rows}.isdisjoint({1, 10})
    # the nine networks, weakest to strongest, find more of the seed study's accepted moves
    assert res["accuracy_bucket_9"] > res["accuracy_bucket_2"] + 0.1
    assert "maia-1500" in (run / "results.md").read_text()


def test_skill_stats_by_game_bootstrap():
    from maia_adapt.analysis.transitional import skill_stats

    rng = np.random.default_rng(0)
    n = 600
    # a skill-dependent set: bucket k right with probability 0.3 + 0.04 k, monotone by construction
    u = rng.random(n)[:, None]
    correct = u < (0.3 + 0.04 * np.arange(11))[None, :]
    games = np.repeat(np.arange(100), 6)
    st = skill_stats(correct, games, n_boot=400, seed=1)
    assert st["skill_gain"] == pytest.approx(correct[:, 10].mean() - correct[:, 0].mean())
    lo, hi = st["skill_gain_ci95"]
    assert 0 < lo <= st["skill_gain"] <= hi
    assert st["non_monotone_share"] == 0 and st["non_monotone_share_ci95"] == [0, 0]
    assert st["transitional_share"] == pytest.approx(((correct[:, 10]) & ~correct[:, 0]).mean())
    # a set every bucket plays alike has no gain, and its interval says so exactly
    flat = np.repeat(correct[:, :1], 11, axis=1)
    assert skill_stats(flat, games, n_boot=100)["skill_gain_ci95"] == [0, 0]
    # whole games resampled: six identical positions per game widen the interval over 100 independent ones
    same = np.repeat(correct[::6], 6, axis=0)
    by_game = np.diff(skill_stats(same, games, n_boot=400)["accuracy_bucket_5_ci95"])[0]
    by_pos = np.diff(skill_stats(same, np.arange(n), n_boot=400)["accuracy_bucket_5_ci95"])[0]
    assert by_game > 1.8 * by_pos


# ---- the seed's protocol: acceptance, blunder and row rules, the engine's answers kept -----------------
from maia_adapt.analysis.transitional import MATE, EngineCache, accepted_moves, is_blunder, required, seed_terms  # noqa: E402


def test_multipv_acceptance_keeps_lines_strictly_within_the_window():
    pv = [("e2e4", 40), ("d2d4", 11), ("g1f3", 10), ("c2c4", -200)]
    assert accepted_moves(pv, "best") == ["e2e4"]
    # the seed's `abs(cp - best_cp) < 30`: 29 below the best is correct, 30 below is not
    assert accepted_moves(pv, "multipv", 30) == ["e2e4", "d2d4"]
    assert accepted_moves(pv, "multipv", 31) == ["e2e4", "d2d4", "g1f3"]


def test_the_seed_blunder_rule_reproduces_its_sign_bug_and_ours_prices_the_loss():
    # a +100 position where the bottom bucket's move keeps +100: no loss, but the seed's two `.relative`
    # evals have opposite signs, so it reads |100 - (-100)| = 200 > 150
    assert not is_blunder(100, 100, "e2e4", "d2d4", "loss", 150)
    assert is_blunder(100, 100, "e2e4", "d2d4", "seed", 150)
    # a real 300 cp loss in a level position: both rules see it (|0 + (-300)| = 300)
    assert is_blunder(0, -300, "e2e4", "a2a3", "loss", 150) and is_blunder(0, -300, "e2e4", "a2a3", "seed", 150)
    # the best move itself loses nothing; the seed's rule still searches it and can flag it
    assert not is_blunder(120, 120, "e2e4", "e2e4", "loss", 150) and is_blunder(120, 120, "e2e4", "e2e4", "seed", 150)
    # a mate score on either side is never a seed blunder (its `.score()` is None there)
    assert not is_blunder(MATE - 3, -400, "h5f7", "a2a3", "seed", 150)
    assert is_blunder(MATE - 3, -400, "h5f7", "a2a3", "loss", 150)


def _row(correct_by_bucket, blunder):
    c = np.array(correct_by_bucket, bool)
    tp, mono = transition_points(c[None])
    return {"transition_point": int(tp[0]), "monotone": bool(mono[0]), "transitional": bool(0 < tp[0] < NEVER),
            "blunder": blunder, "correct": ["x"]}


def test_require_keeps_the_seeds_transitional_rows_and_their_blunders():
    rows = [_row([0] * 3 + [1] * 8, True), _row([0] * 3 + [1] * 8, False), _row([1] * 11, True),
            _row([0] * 11, True), _row([0, 1, 0] + [1] * 8, True), _row([0] * 10 + [1], True)]
    assert required(rows, "none") == rows
    assert required(rows, "monotone") == [rows[0], rows[1], rows[5]]  # non-monotone, always and never dropped
    assert required(rows, "monotone_blunder") == [rows[0], rows[5]]
    t = seed_terms(rows)
    assert t["share_all_correct"] == pytest.approx(1 / 6) and t["share_transitional"] == pytest.approx(3 / 6)
    assert t["share_non_monotone"] == pytest.approx(1 / 6) and t["share_never_correct"] == pytest.approx(1 / 6)


@pytest.mark.skipif(find_engine() is None, reason="Stockfish not installed (apt-get install stockfish)")
def test_engine_answers_are_kept_on_disk_and_two_engines_give_the_same_answers(tmp_path):
    fens = ["r1bqkb1r/pppp1ppp/2n2n2/4p2Q/2B1P3/8/PPPP1PPP/RNB1K1NR w KQkq - 4 4", chess.STARTING_FEN,
            "rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2"]
    cache = tmp_path / "engine" / "answers.jsonl"
    with EngineOracle(find_engine(), depth=6, workers=1) as one:
        plain = [one.lines(chess.Board(f), 3) for f in fens]
    with EngineOracle(find_engine(), depth=6, workers=2, cache=cache) as two:
        assert two.map(lambda f: two.lines(chess.Board(f), 3), fens) == plain
    assert len(cache.read_text().splitlines()) == len(fens)
    with open(cache, "a") as f:
        f.write('["cut short by a kill')  # a killed run's last line: skipped, searched again if needed
    kept = EngineCache(cache)
    assert len(kept.answers) == len(fens)
    with EngineOracle(find_engine(), depth=6, cache=cache) as again:
        again._idle = None  # an answer read from the cache needs no engine: any search would fail here
        assert [again.lines(chess.Board(f), 3) for f in fens] == plain
        again.depth = 7  # another limit is another answer: a search, which finds no engine
        with pytest.raises(AttributeError):
            again.lines(chess.Board(fens[0]), 3)


def test_shipped_answers_stand_in_for_a_missing_engine_and_a_position_without_one_is_left_out(model, tmp_path):
    import zstandard

    from maia_adapt.analysis.transitional import NoEngineAnswer

    # White in check with one legal move (Kxe2), after which only the kings are left: no search is
    # needed after the bottom bucket's move, whichever it is
    only = "4k3/8/8/8/8/8/4q3/4K3 w - - 0 1"
    key = lambda fen: f"Stockfish 15.1|depth=8|time=None|nodes=None|multipv=1|{fen}"
    shipped = tmp_path / "answers.jsonl.zst"
    shipped.write_bytes(zstandard.ZstdCompressor().compress((json.dumps([key(only), [["e1e2", 0]]]) + "\n").encode()))
    before = shipped.read_bytes()
    with EngineOracle(None, depth=8, shipped=(shipped,)) as eng:
        assert eng.name == "Stockfish 15.1" and eng.lines(chess.Board(only)) == [("e1e2", 0)]
        with pytest.raises(NoEngineAnswer):
            eng.lines(chess.Board())
        store = store_from_fens([chess.STARTING_FEN, only], tmp_path / "s", 5, 5)
        rows = build_transitional(model, store, np.arange(2), oracle="engine", engine=eng)
    assert [r["fen"] for r in rows] == [only] and rows[0]["correct"] == ["e1e2"]
    assert rows[0]["accuracy_by_bucket"].tolist() == [True] * 11
    # answers only, but from two engines: which one stands in is not guessed
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps([key(only), [["e1e2", 0]]]) + "\n" + json.dumps([key(only).replace("15.1", "16"), [["e1e2", 0]]]) + "\n")
    with pytest.raises(Exception, match="from 2 engines"):
        EngineOracle(None, depth=8, shipped=(two,)).__enter__()
    assert shipped.read_bytes() == before  # a shipped file is read, never written


def test_the_shipped_engine_answers_are_stockfish_depth_8_on_the_embedded_games():
    from maia_adapt.analysis.transitional import EngineCache

    kept = EngineCache(None, [ASSETS / "engine_answers_lichess_5k.jsonl.zst"])
    assert kept.engines() == {"Stockfish 15.1"} and len(kept.answers) > 1000
    for k, lines in list(kept.answers.items())[:50]:
        assert "|depth=8|" in k and chess.Board(k.rsplit("|", 1)[1]).is_valid()
        assert chess.Move.from_uci(lines[0][0]) in chess.Board(k.rsplit("|", 1)[1]).legal_moves


def test_a_datasets_rows_carry_their_game_history_to_the_models_that_read_it(model, tmp_path):
    """stage=transitional judges Maia-1 and Maia-3 on a store position with its game history; the
    intervention and fine-tune stages rebuild the positions from transitional.csv, and must give them
    the same inputs (a bare FEN is another input for those models)."""
    from maia_adapt.analysis.calibration import MoveSet
    from maia_adapt.analysis.transitional import flat_rows, history_text, parse_history, read_transitional
    from maia_adapt.data import GameFilter, build_store
    from maia_adapt.io import atomic_write_csv
    from maia_adapt.model.maia3_skill import maia3_store_tokens
    from maia_adapt.model.skill import lc0_store_planes

    store = build_store([ASSETS / "selfplay.pgn.zst"], tmp_path / "games",
                        GameFilter(rated_only=False, speeds=[], first_n_plies=0, max_games=4), workers=1)
    plies = np.asarray(store.column("ply"))
    idx = np.sort(np.random.default_rng(0).choice(np.flatnonzero(plies >= 10), 12, replace=False))
    rows = build_transitional(model, store, idx, oracle="model")
    assert all(r["history"].startswith("startpos moves ") for r in rows)
    atomic_write_csv(tmp_path / "transitional.csv", flat_rows(rows))
    read = read_transitional(tmp_path / "transitional.csv")
    moves = MoveSet.build(read, tmp_path / "rebuilt")
    here = np.arange(len(idx))
    assert torch.equal(lc0_store_planes(moves.store, here), lc0_store_planes(store, idx))
    assert torch.equal(maia3_store_tokens(moves.store, here), maia3_store_tokens(store, idx))
    # what the rows gave before: the bare FEN, which these models read differently
    bare = MoveSet.build([{**r, "history": None} for r in read], tmp_path / "bare")
    assert not torch.equal(lc0_store_planes(bare.store, here), lc0_store_planes(store, idx))
    # a history that does not lead to its row's FEN is refused, naming the position
    wrong = [{**r, "history": read[(i + 1) % len(read)]["history"]} for i, r in enumerate(read)]
    with pytest.raises(DataError, match=r"position 0\): its history replays to"):
        MoveSet.build(wrong, tmp_path / "wrong")
    # a start FEN of four fields (as the seed's are written) is written whole; no move before: no history
    start = "4k3/8/8/8/8/8/4P3/4K3 w - -"
    assert parse_history(history_text(start, ["e2e4"])) == ("4k3/8/8/8/8/8/4P3/4K3 w - - 0 1", ["e2e4"])
    assert history_text(None, []) == history_text(start, []) == "" and parse_history("") is None
    text = (tmp_path / "transitional.csv").read_text().replace("startpos moves", "startpos mvs", 1)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=r"bad\.csv, line 2: .*expected 'moves' after the start position"):
        read_transitional(tmp_path / "bad.csv")
