"""Bad input through the app: one `error:` line naming the key, file or value and what was expected,
exit status 1 and no traceback (the traceback with hydra.verbose=true). Plus fuzzing of the FEN
reader and of config values (the PGN fuzz test is in test_data.py)."""
import json
import math
import os
import resource
import signal
import socket
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _app import TINY_MODEL, error_line, run_app
from maia_adapt.config import ASSETS, CONF_DIR, validate
from maia_adapt.data import open_or_build_store
from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder, save_sae
from maia_adapt.errors import CheckpointError, MaiaAdaptError
from maia_adapt.model import Maia2, Maia2Config, infer_config, load_model, predict
from maia_adapt.model.checkpoint import CONFIG_KEY
from maia_adapt.model.inference import parse_fen
from maia_adapt.runtime.rundir import claim, release
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
    tiny = Maia2(Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=4, heads=2, dim_head=8))
    (d / "bad_meta.safetensors").write_bytes(safetensors.torch.save(tiny.state_dict(), metadata={
        "maia_adapt.model_config": '{"heads": 2,'}))
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
    "architecture record that is not JSON": (["stage=sae", "model.checkpoint={d}/bad_meta.safetensors"],
                                             "bad_meta.safetensors: metadata 'maia_adapt.model_config' is not JSON"),
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


@pytest.mark.parametrize("overrides, refused", [
    (["model.checkpoint=/nonexistent/maia2.pt"], True),  # exited 0 having trained from random weights
    (["model=maia2", "model.checkpoint=/x/rapid_model.pt"], True),
    (["model.checkpoint=/nonexistent/maia2.pt", "train.init_from_checkpoint=true"], False),  # used (or not found)
    ([], False),  # the preset's own trained copy, left unused by a run from scratch
    (["model=maia2_skill"], False),
    (["experiment=train_small"], False),
    (["model.checkpoint=null"], False),
])
def test_a_checkpoint_stage_train_would_not_use_is_refused_naming_both_keys(overrides, refused):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["stage=train", *overrides])
    if not refused:
        validate(cfg)
        return
    with pytest.raises(MaiaAdaptError, match=r"model.checkpoint='[^']+': stage=train starts from random weights unless "
                                             r"train.init_from_checkpoint=true, so the file would not be used"):
        validate(cfg)


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


def test_a_run_directory_that_cannot_be_created_is_one_error_line(tmp_path):
    (tmp_path / "a file").write_text("x")  # a path through a file fails as a read-only file system does: before Hydra
    line = _clean_error_line(run_app(TINY_TRAIN, run_dir=tmp_path / "a file" / "run", timeout=300))
    assert f"run directory {tmp_path}/a file/run cannot be created or written (Not a directory" in line


@pytest.mark.parametrize("multirun", [False, True])
def test_a_run_directory_in_use_by_another_process_is_one_error_line_naming_it(tmp_path, multirun):
    held = claim(tmp_path / "run")  # this test process is the other one
    try:
        if multirun:  # two sweeps given one sweep directory
            p = run_app(["-m", *TINY_TRAIN, "seed=0,1", f"hydra.sweep.dir={held}"], timeout=300)
        else:
            p = run_app(TINY_TRAIN, run_dir=held, timeout=300)
        line = _clean_error_line(p)
    finally:
        release(held)
    assert line == (f"error: run directory {held} is in use by process {os.getpid()} on {socket.gethostname()}: "
                    "wait for it to finish, or give this run another hydra.run.dir")
    assert not (held / ".hydra").exists() and not list(held.glob("*/.hydra"))  # Hydra wrote nothing there


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


# 80 examples: each composes the whole config with Hydra (~0.3 s), and 15 keys x 4 kinds of value are
# covered several times over; 200 made this one test 68 s of the suite
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# ---- checkpoints that must not load, or not load wrong ---------------------------------------

TINY = Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=4, heads=2, dim_head=8)
FENS = ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
        "rnbqkbnr/ppp1pppp/8/3pP3/8/8/PPPP1PPP/RNBQKBNR b KQkq - 0 2"]


def _write_state(path, state, cfg=None):
    """A .pt state dict, or a .safetensors file with the architecture record when `cfg` is given."""
    if path.suffix == ".pt":
        torch.save(state, path)
    else:
        meta = {CONFIG_KEY: json.dumps(cfg.to_dict())} if cfg is not None else {}
        path.write_bytes(safetensors.torch.save({k: v.contiguous() for k, v in state.items()}, metadata=meta))
    return path


def _one_line_error(path, **kw) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


DEFECTS = {
    "integer weights": lambda v: v.round().to(torch.int32) if v.is_floating_point() else None,
    "NaN": lambda v: v.clone().fill_(float("nan")) if v.is_floating_point() and v.numel() else None,
    "inf": lambda v: v.clone().fill_(float("-inf")) if v.is_floating_point() and v.numel() else None,
    "bool": lambda v: v != 0,
    "float counter": lambda v: v.float() if not v.is_floating_point() else None,
    "complex": lambda v: v.to(torch.complex64) if v.is_floating_point() else None,
}


@pytest.mark.usefixtures("one_thread")  # a 2-core machine shared with busy neighbours: threads spin
@settings(max_examples=40, deadline=None)
@given(defect=st.sampled_from(list(DEFECTS)), key_index=st.integers(0, 10**6), suffix=st.sampled_from([".pt", ".safetensors"]),
       at=st.integers(0, 10**6))
def test_fuzz_checkpoint_tensor_of_a_wrong_dtype_or_not_finite_is_refused_naming_the_key(defect, key_index, suffix, at):
    state = Maia2(TINY).state_dict()
    keys = [k for k in state if DEFECTS[defect](state[k]) is not None]
    key = keys[key_index % len(keys)]
    bad = DEFECTS[defect](state[key])
    if defect in ("NaN", "inf"):  # one value is enough
        bad = state[key].clone().flatten()
        bad[at % bad.numel()] = float("nan") if defect == "NaN" else float("inf")
        bad = bad.view(state[key].shape)
    state[key] = bad
    with tempfile.TemporaryDirectory() as d:
        path = _write_state(Path(d) / f"m{suffix}", state, TINY)
        msg = _one_line_error(path, attention=(TINY.heads, TINY.dim_head))
    assert f"key '{key}'" in msg and ("finite" in msg if defect in ("NaN", "inf") else "dtype" in msg), msg


def test_checkpoint_with_a_missing_or_extra_key_is_refused_naming_it(tmp_path):
    state = Maia2(TINY).state_dict()
    del state["fc_2.bias"]
    assert "key 'fc_2.bias' is missing" in _one_line_error(_write_state(tmp_path / "m.safetensors", state, TINY))
    state = {**Maia2(TINY).state_dict(), "fc_9.weight": torch.zeros(2)}
    assert "unknown key 'fc_9.weight'" in _one_line_error(_write_state(tmp_path / "x.pt", state), heads=2)


@pytest.mark.usefixtures("one_thread")  # a 2-core machine shared with busy neighbours: threads spin
@settings(max_examples=10, deadline=None)
@given(heads=st.sampled_from([1, 2, 4, 8]), dim_head=st.sampled_from([4, 8, 12]), elo_dim=st.sampled_from([2, 5]),
       blocks_vit=st.integers(1, 3), blocks_cnn=st.integers(1, 2), dim_cnn=st.sampled_from([4, 8]))
def test_pt_state_dict_of_any_shape_loads_as_the_same_model_or_asks_for_the_heads(heads, dim_head, elo_dim, blocks_vit,
                                                                                  blocks_cnn, dim_cnn):
    cfg = Maia2Config(dim_cnn=dim_cnn, num_blocks_cnn=blocks_cnn, dim_vit=16, num_blocks_vit=blocks_vit, elo_dim=elo_dim,
                      heads=heads, dim_head=dim_head)
    torch.manual_seed(0)
    model = Maia2(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.pt"
        torch.save({"model_state_dict": model.state_dict()}, path)
        msg = _one_line_error(path)  # the head count is in no shape: never guessed
        assert f"attention width is {heads * dim_head}" in msg and "heads" in msg
        # a hint that does not multiply to the width is no answer either
        assert "does not match" in _one_line_error(path, attention=(heads * dim_head + 1, 1))
        for kw in (dict(heads=heads), dict(attention=(heads, dim_head))):
            loaded = load_model(path, **kw)
            assert {k: v for k, v in loaded.cfg.to_dict().items() if not k.startswith("dropout")} == \
                   {k: v for k, v in cfg.to_dict().items() if not k.startswith("dropout")}
            for a, b in zip(predict(model, FENS, 1500, 1600), predict(loaded, FENS, 1500, 1600)):
                assert a.move_probs == b.move_probs


@pytest.mark.usefixtures("one_thread")  # a 2-core machine shared with busy neighbours: threads spin
def test_the_shipped_model_saved_as_pt_is_refused_unless_its_heads_are_given_and_official_shapes_are_16_heads(tmp_path):
    shipped = load_model(ASSETS / "maia2_small.safetensors")
    path = tmp_path / "small.pt"
    torch.save(shipped.state_dict(), path)
    assert "attention width is 256" in _one_line_error(path)
    # the app passes model.heads and model.dim_head: the maia2_small preset's 8 x 32 is the file's model
    loaded = load_model(path, attention=(8, 32))
    assert [p.move_probs for p in predict(loaded, FENS, 1500, 1600)] == \
           [p.move_probs for p in predict(shipped, FENS, 1500, 1600)]
    # the official checkpoints (every shape the published model's) are 16 heads of 64
    with torch.device("meta"):
        official = Maia2(Maia2Config()).state_dict()
    assert infer_config(official) == Maia2Config()
    assert infer_config(official, attention=(8, 32)) == Maia2Config()


BAD_RECORDS = {
    "not JSON": ('{"heads": 8,', "is not JSON"),
    "a JSON list": ("[18, 64]", "is a JSON list"),
    "an unknown field": ({"rotary": True}, "unknown field 'rotary' (written by a newer maia-adapt?)"),
    "a missing field": ({"heads": None}, "lacks the field 'heads'"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_damaged_or_newer_architecture_record_is_one_error_naming_it(tmp_path, case):
    change, expected = BAD_RECORDS[case]
    record = dict(TINY.to_dict())
    if isinstance(change, dict):
        record.update(change)
        record = {k: v for k, v in record.items() if v is not None}
    text = change if isinstance(change, str) else json.dumps(record)
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors.torch.save(Maia2(TINY).state_dict(), metadata={CONFIG_KEY: text}))
    assert expected in _one_line_error(path)


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from([f for f in TINY.to_dict()]),
       value=st.one_of(st.text(max_size=4), st.booleans(), st.none(), st.integers(-3, 0), st.floats(allow_nan=True),
                       st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)))
def test_fuzz_architecture_record_of_a_wrong_type_is_one_error_naming_the_field(field, value):
    if field.startswith("dropout") and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return  # a valid dropout rate
    record = {**TINY.to_dict(), field: value}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        path.write_bytes(safetensors.torch.save(Maia2(TINY).state_dict(), metadata={CONFIG_KEY: json.dumps(record)}))
        msg = _one_line_error(path)
    assert f"field '{field}'" in msg, msg


class _RunsCode:
    """A pickle that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpicklable_pt_is_one_line_that_never_advises_weights_only_false(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model_state_dict": Maia2(TINY).state_dict(), "hook": _RunsCode(marker)}, tmp_path / "evil.pt")
    msg = _one_line_error(tmp_path / "evil.pt")
    assert "holds pickled Python objects (posix.system)" in msg and "weights_only" not in msg
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip" + bytes(range(256)))
    assert "could not be read by torch.load" in _one_line_error(tmp_path / "junk.pt")
