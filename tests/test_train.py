"""stage=train and the training loop on real games: learning, exact resume, the app end to end."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from maia_adapt.data import GameFilter, build_store
from maia_adapt.model import Maia2, Maia2Config
from maia_adapt.model.training import evaluate, train_model

ROOT = Path(__file__).resolve().parents[1]
TINY = Maia2Config(dim_cnn=16, num_blocks_cnn=1, dim_vit=64, elo_dim=8, heads=4, dim_head=16, dropout_cnn=0.0)
PGN = "lichess/lichess_rated_rapid_58k.pgn.zst"


def _cfg(**kw):
    base = dict(device="cpu", side_info_coefficient=1.0, value_coefficient=1.0, lr=3e-3, weight_decay=0.0,
                eval_positions=500, bf16=False, compile=False, max_steps=30, warmup_steps=5, lr_schedule="cosine",
                min_lr_ratio=0.1, batch_size=64, grad_clip=1.0, log_every=10, eval_every=1000, checkpoint_every=10)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory):
    return build_store([shared_data / PGN], tmp_path_factory.mktemp("s") / "store", GameFilter(max_games=150), workers=1)


def test_training_lowers_the_loss_and_raises_accuracy(store, tmp_path):
    torch.manual_seed(0)
    model = Maia2(TINY)
    idx = store.split_indices("val")[:400]
    before = evaluate(model, store, idx)
    after = train_model(model, store, _cfg(max_steps=150, eval_every=150, checkpoint_every=1000), tmp_path)
    assert after["policy_loss"] < before["policy_loss"] - 1.0
    assert after["accuracy"] > before["accuracy"] + 0.015


def test_resume_from_a_checkpoint_gives_the_same_weights(store, tmp_path):
    torch.manual_seed(0)
    straight = Maia2(TINY)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    train_model(straight, store, _cfg(max_steps=20), tmp_path / "a", seed=3)
    # an interrupted run: same start, stopped after 10 steps, then resumed by a fresh process state
    first = Maia2(TINY)
    first.load_state_dict(init)
    train_model(first, store, _cfg(max_steps=20, checkpoint_every=10), tmp_path / "b", seed=3)
    ckpt = sorted((tmp_path / "b" / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpt] == ["step_0000010", "step_0000020"]
    resumed = Maia2(TINY)
    train_model(resumed, store, _cfg(max_steps=20), tmp_path / "c", seed=3, resume_from=ckpt[0])
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
