"""Bad input through the app: one `error:` line naming the key, file or value and what was expected,
exit status 1 and no traceback (the traceback with hydra.verbose=true). Plus fuzzing of the FEN
reader and of config values (the PGN fuzz test is in test_data.py)."""
import math
import os
import resource
import signal

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _app import TINY_MODEL, error_line, run_app
from maia_adapt.config import CONF_DIR, validate
from maia_adapt.data import open_or_build_store
from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder, save_sae
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.model.inference import parse_fen
from maia_adapt.run import config_error_line

TINY_TRAIN = ["stage=train", *TINY_MODEL, "train.max_steps=4", "train.batch_size=16", "train.checkpoint_every=2",
              "train.eval_positions=50"]


def _clean_error_line(p) -> str:
    """The app's one-line error, with exit status 1 and no traceback."""
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    return error_line(p)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.pgn.zst").write_bytes(os.urandom(5000))
    (d / "binary.pgn").write_bytes(bytes(range(256)) * 20)
    (d / "no_elo.pgn").write_text('[Event "casual"]\n[White "a"]\n[Black "b"]\n\n1. e4 e5 1-0\n\n')
    (d / "pgn_dir").mkdir()
    sae = SparseAutoencoder(SAEConfig(d_in=256, dim=64, k=4, site="blocks.1.hook_resid_post"))
    save_sae(sae, d / "sae")
    (d / "puzzles.csv").write_text("PuzzleId,FEN,Moves,Rating,Themes\n"
                                   "p1,r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3,f1b5 a7a6,1500,opening\n"
                                   "p2,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKKNR w - - 0 1,e2e4 e7e5,1500,opening\n"
                                   "p3,8/8/8/8/8/8/8/K6k w - - 0 1,a1a2 h1h2,1500,endgame\n")
    return d


CASES = {
    "config typo": (["stage=train", "train.lrr=3"], "train.lrr: Key 'lrr' not in 'TrainConfig'"),
    "wrong type": (["stage=train", "train.batch_size=abc"], "train.batch_size: Value 'abc'"),
    "unknown option": (["stage=nope"], "Could not find 'stage/nope': available options in 'stage': activations"),
    "non-finite value": (["stage=train", "train.lr=nan"], "train.lr=nan: expected a finite number > 0"),
    "unknown hook site": (["stage=sae", "sae.sites=[blocks.9.hook_foo]"],
                          "unknown hook site 'blocks.9.hook_foo': expected one of hook_cnn_out"),
    "Elo out of range": (["stage=threats", "threats.elo=12"], "threats.elo='12': expected an Elo bucket 0..10"),
    "Elo out of range in a list": (["stage=probe", "probe.buckets=[3,11]"], "probe.buckets=11: expected an Elo bucket"),
    "missing checkpoint": (["stage=sae", "model.checkpoint=/nonexistent/maia2.pt"],
                           "checkpoint /nonexistent/maia2.pt not found"),
    "checkpoint of another architecture": (["stage=sae", "model.checkpoint={d}/sae/sae_weights.safetensors"],
                                           "sae_weights.safetensors: not a Maia-2 state dict"),
    "PGN path is a directory": ([*TINY_TRAIN, "data.pgn=[{d}/pgn_dir]"], "pgn_dir is a directory: expected a .pgn"),
    "unreadable compressed file": ([*TINY_TRAIN, "data.pgn=[{d}/garbage.pgn.zst]"],
                                   "(empty position set): {d}/garbage.pgn.zst: compressed stream is corrupt"),
    "binary file as PGN": ([*TINY_TRAIN, "data.pgn=[{d}/binary.pgn]"], "empty position set"),
    "empty position set": ([*TINY_TRAIN, "data.pgn=[{d}/no_elo.pgn]"], "no_elo.pgn'] pass the data filters (empty position set)"),
    "comparison run that did not score the site": (["stage=threats", "threats.sites=[blocks.1.hook_resid_post]",
                                                     "threats.compare_to={d}"],
                                                    ("threats.compare_to: {d}/detection_blocks_1_hook_resid_post.csv not found "
                                                     "(expected a stage=threats run that scored blocks.1.hook_resid_post)")),
    "FEN that is not legal chess": (["stage=threats", "threats.sites=[blocks.1.hook_resid_post]", "threats.position_set=puzzles",
                                     "threats.puzzles_path={d}/puzzles.csv"],
                                    "puzzles.csv:3: FEN 'rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKKNR w - - 0 1' "
                                    "is not a legal chess position"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, bad_files, tmp_path):
    args, expected = CASES[case]
    line = _clean_error_line(run_app([a.format(d=bad_files) for a in args], run_dir=tmp_path / "run", timeout=300))
    assert expected.format(d=bad_files) in line, line


def test_disk_full_is_one_error_line_and_leaves_no_partial_checkpoint(tmp_path):
    def small_disk():  # writes past 100 kB fail as on a full disk (EFBIG instead of ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    # the position store is built first without the limit: on a fresh checkout it is not cached yet, and the
    # first write past 100 kB would be the store's, not the checkpoint's
    args = [*TINY_TRAIN, f"data.store_dir={tmp_path}/store"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args)
    open_or_build_store(cfg.data, cfg.paths.cache_dir)
    line = _clean_error_line(run_app(args, run_dir=tmp_path / "run", timeout=300, preexec_fn=small_disk))
    assert "could not write checkpoint" in line and "step_0000002" in line and "File too large" in line
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


def test_verbose_shows_the_traceback(tmp_path):
    p = run_app(["stage=sae", "sae.sites=[blocks.9.hook_foo]", "hydra.verbose=true"], run_dir=tmp_path / "run",
                timeout=300)
    assert p.returncode == 1 and "Traceback" in p.stderr and "unknown hook site" in p.stderr


# ---- fuzzing ---------------------------------------------------------------------------------

VALID = ["rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1",
         "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
         "8/8/4k3/8/8/4K3/4P3/8 b - - 0 60"]


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(VALID), cut=st.integers(0, 80), junk=st.text(max_size=12), pos=st.integers(0, 80))
def test_fuzz_fen_reader_accepts_legal_positions_or_names_the_fen(base, cut, junk, pos):
    fen = base[:pos] + junk + base[pos:cut] if cut > pos else junk + base
    try:
        board = parse_fen(fen)
    except MaiaAdaptError as e:
        assert repr(fen) in str(e) and "\n" not in str(e)
        return
    assert board.is_valid() and any(board.generate_legal_moves())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["train.lr", "train.batch_size", "train.max_steps", "sae.k", "sae.dim", "sae.architecture",
                            "threats.elo", "data.val_fraction", "model.dropout", "transcoder.k", "probe.buckets",
                            "train.lr_schedule", "seed", "layer", "train.bf16"]),
       value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(alphabet="abcxyz0123456789.-_[],'= ", max_size=12), st.booleans()))
def test_fuzz_config_values_fail_with_one_line_naming_the_key(key, value):
    text = repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)
    override = f"{key}={text}"
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[override])
    except Exception as e:  # Hydra's and OmegaConf's composition errors: reported as one line
        line = config_error_line(e)
        assert line and "\n" not in line
        return
    try:
        validate(cfg)
    except MaiaAdaptError as e:
        # one line naming the key; a constraint between two keys (sae.k <= sae.dim) names both
        assert key in str(e) and "\n" not in str(e), str(e)
