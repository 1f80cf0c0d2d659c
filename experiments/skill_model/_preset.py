"""What the scripts beside this file share: the `experiment=skill_model` config, its store of the real
games, and the nine Maia-1 networks as its teacher (bfloat16 on the CPU)."""
from hydra import compose, initialize_config_dir

from maia_adapt.config import CONF_DIR
from maia_adapt.data.preprocess import open_or_build_store
from maia_adapt.model.distill import Maia1Teacher
from maia_adapt.model.maia1 import load_maia1_family


def preset_store_and_teacher():
    """(cfg, store, teacher) of the skill_model preset."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=skill_model"])
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    teacher = Maia1Teacher(load_maia1_family(f"{cfg.paths.models_root}/maia1"), "cpu", top_k=cfg.train.teacher_top_k,
                           cpu_bf16=True)
    return cfg, store, teacher
