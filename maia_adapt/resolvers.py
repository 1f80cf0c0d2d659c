"""The OmegaConf resolvers the YAML configs use: ${repo_root:}, ${assets:}, ${model_id:...},
${run_dir:...} and --help's ${maia_help:}. Registered on import (maia_adapt.config imports this)."""
from __future__ import annotations

from omegaconf import OmegaConf

from .layout import ASSETS, project_root


if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(project_root()))
if not OmegaConf.has_resolver("assets"):
    OmegaConf.register_new_resolver("assets", lambda: str(ASSETS))
# what the study presets name a model's run directories by: `maia1` for the family, `maia1-1100` for
# one of its networks (model.rating), as SkillModel.name says; a protocol other than ours is appended
# (`maia2_skill@seed_neurips`), so that the seed's study and ours never share a run directory
def _model_id(name, rating=None, protocol="ours") -> str:
    return (name if rating is None else f"{name}-{rating}") + ("" if protocol in (None, "ours") else f"@{protocol}")


if not OmegaConf.has_resolver("model_id"):
    OmegaConf.register_new_resolver("model_id", _model_id)


# The one rule for a preset's fixed run directory, shared by the presets and the study runner so that
# runs which read each other agree: `${run_dir:sae_study}` is <paths.outputs>/sae/sae_study/<model id>
# (the stage's folder: the part before "_study"); `${run_dir:transitional_study,family}` names it by
# the model alone (one run for a whole Maia-1 family, whichever network model.rating picks)
def _run_dir(preset: str, per: str = "network", *, _root_) -> str:
    if per not in ("network", "family"):
        raise ValueError(f"run_dir:{preset},{per}: expected 'network' or 'family' after the preset")
    rating = None if per == "family" else _root_.model.get("rating")
    return f"{_root_.paths.outputs}/{preset.split('_study')[0]}/{preset}/{_model_id(_root_.model.name, rating, _root_.get('protocol'))}"


if not OmegaConf.has_resolver("run_dir"):
    OmegaConf.register_new_resolver("run_dir", _run_dir)


def _help_lists() -> str:
    from .helptext import for_hydra_template

    return for_hydra_template()


if not OmegaConf.has_resolver("maia_help"):  # --help's option lists (hydra.help.template in conf/config.yaml)
    OmegaConf.register_new_resolver("maia_help", _help_lists)
