"""Where the model runs: every stage that runs a model has a `<stage>.device` key, and the places where
a model's outputs meet tensors built on the CPU (batches, SAEs, masks) move them to the model's device.

No GPU is needed: PyTorch's `meta` device stands in for it. A meta tensor has a shape and no data, and
an operation that mixes it with a CPU tensor fails exactly as one mixing CUDA and CPU tensors does
("Tensor on device meta is not on the expected device cpu"), so a test that runs a model on `meta`
with CPU inputs fails wherever the code forgets to move something."""
import chess
import pytest
import torch
from hydra import compose, initialize_config_dir

from _app import error_line, run_app
from maia_adapt.analysis.calibration import calibration_loss
from maia_adapt.analysis.interventions import sae_amplify
from maia_adapt.config import CONF_DIR
from maia_adapt.dictionaries import SAEConfig, SparseAutoencoder
from maia_adapt.errors import ConfigError
from maia_adapt.model.maia2 import Maia2, Maia2Config
from maia_adapt.model.maia3 import Maia3, Maia3Config
from maia_adapt.model.maia3_skill import Maia3Skill
from maia_adapt.model.skill import as_skill_model
from maia_adapt.model.training import resolve_device
from maia_adapt.stages.common import skill_model

# the stages whose model used to run on the CPU only, and those that always had the key
NEW_KEYS = ("probe", "threats", "intervention", "finetune", "transitional", "activations")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no CUDA device")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_resolve_device_names_the_key_on_a_bad_device():
    assert resolve_device("cpu", "probe.device") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^probe.device='gpu': expected auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu", "probe.device")


@NO_CUDA
def test_cuda_where_there_is_none_is_one_line_naming_the_key():
    assert resolve_device("auto", "sae.device") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^finetune.device='cuda:1': torch sees no CUDA device here .* finetune.device=cpu$"):
        resolve_device("cuda:1", "finetune.device")


@pytest.mark.parametrize("stage", NEW_KEYS)
@pytest.mark.parametrize("model", ["maia2_skill", "maia3_tiny"])
def test_each_stage_loads_its_model_where_its_device_key_says(stage, model):
    cfg = _cfg(f"stage={stage}", f"model={model}", f"{stage}.device=meta")
    assert skill_model(cfg, stage).device == torch.device("meta")
    # the default, auto, is the CPU here; a stage's key leaves the others' alone
    assert skill_model(_cfg(f"stage={stage}", f"model={model}"), stage).device == torch.device(resolve_device("auto"))
    other = next(s for s in NEW_KEYS if s != stage)
    assert skill_model(_cfg(f"stage={stage}", f"model={model}", f"{other}.device=meta"), stage).device.type != "meta"


@NO_CUDA
def test_a_stage_run_with_cuda_where_there_is_none_stops_before_any_work(tmp_path):
    proc = run_app(["stage=transitional", "data=lichess_5k", "transitional.positions=10", "transitional.device=cuda"],
                   run_dir=tmp_path / "run", timeout=300)
    assert proc.returncode != 0
    assert "transitional.device='cuda': torch sees no CUDA device here" in error_line(proc)


def _maia2_batch(sm, n: int = 3) -> dict:
    boards = [chess.Board(), chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"),
              chess.Board("8/5k2/8/8/8/8/3K4/7R b - - 0 1")][:n]
    b = sm.inputs_from_boards(boards)
    b["elo_self"] = b["elo_oppo"] = torch.tensor([0, 5, 10][:n])
    b["move"] = torch.tensor([0, 1, 2][:n])
    b["side_info"] = torch.zeros(n, 141)
    return b


def test_the_fine_tune_loss_moves_its_cpu_batch_to_the_model():
    sm = as_skill_model(Maia2(Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=8, heads=2, dim_head=8)))
    side = sm.model(sm.inputs_from_boards([chess.Board()])["boards"], torch.tensor([0]), torch.tensor([0]))[1]
    batch = _maia2_batch(sm)
    batch["side_info"] = torch.zeros(3, side.shape[1])
    cpu_loss = calibration_loss(sm, batch, 1.0)
    assert cpu_loss.device.type == "cpu" and torch.isfinite(cpu_loss)
    sm.model.to("meta")
    loss = calibration_loss(sm, batch, 1.0)  # the batch stays on the CPU, as MoveSet.batch builds it
    assert loss.device.type == "meta"
    loss.backward()
    assert next(p for p in sm.model.parameters() if p.requires_grad).grad.device.type == "meta"


def test_the_fine_tune_loss_of_a_maia3_moves_its_cpu_batch_to_the_model():
    sm = Maia3Skill(Maia3(Maia3Config(dim_vit=32, head_hid_dim=32, num_heads=4, num_blocks=2)))
    boards = [chess.Board(), chess.Board("8/5k2/8/8/8/8/3K4/7R b - - 0 1")]
    batch = sm.inputs_from_boards(boards)
    batch["elo_self"] = batch["elo_oppo"] = torch.tensor([0, 10])
    batch["move"] = torch.tensor([0, 1])
    sm.model.to("meta")
    assert calibration_loss(sm, batch, 0.0).device.type == "meta"


def test_sae_amplification_follows_the_model_to_its_device():
    sm = as_skill_model(Maia2(Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=8, heads=2, dim_head=8)))
    site = "blocks.1.hook_resid_post"
    width = sm.site_dim(site)
    sae = SparseAutoencoder(SAEConfig(d_in=width, dim=64, k=4, site=site))  # loaded on the CPU, as load_sae does
    batch = _maia2_batch(sm)
    mask = torch.zeros(3, 64)
    mask[:, :5] = 1.0
    sm.model.to("meta")
    for error in ("keep", "drop", "replace"):
        with torch.no_grad(), sm.hooks([(site, sae_amplify(sae, mask, 4.0, error=error))]):
            assert sm.policy_logits(batch, 3, 3).device.type == "meta"
    assert next(sae.parameters()).device.type == "meta"


def test_the_gpu_study_puts_every_steps_model_on_cuda_in_its_own_run_directories(capsys):
    from maia_adapt import study

    for quick, root, positions in ((False, "outputs/gpu", 20000), (True, "outputs/quick_gpu", 300)):
        _, steps = study.plan(["model=maia3_tiny"], quick=quick, gpu=True)
        for step, args, run_dir in steps:
            cfg = _cfg(*[a for a in args if not a.startswith("hydra.")])
            stage = str(cfg.stage.name)
            assert cfg[stage].device == "cuda", step.name
            assert cfg.transitional.positions == positions
            assert f"/{root}/" in f"/{run_dir}/" or str(run_dir).startswith(root), (step.name, run_dir)
    # the user's override still wins, and the CPU study's run directories are others
    _, steps = study.plan(["model=maia3_tiny", "probe.device=cpu"], gpu=True)
    probe = next(args for s, args, _ in steps if s.name == "probe")
    assert _cfg(*[a for a in probe if not a.startswith("hydra.")]).probe.device == "cpu"
    _, cpu = study.plan(["model=maia3_tiny"])
    assert not {d for _, _, d in cpu} & {d for _, _, d in steps}
    if not torch.cuda.is_available():
        assert study.main(["--gpu", "model=maia3_tiny"]) == 2
        assert capsys.readouterr().err.startswith("error: --gpu: torch sees no CUDA device here")
