"""`python -m maia_adapt.run --help`: the stages, experiment presets, protocols and the other groups'
options, each with what it does, read from the first comment of its YAML file under maia_adapt/conf
(so that a new option documents itself where it is defined). conf/config.yaml's hydra.help.template
calls this through the `maia_help` resolver."""
from __future__ import annotations

import re
from pathlib import Path

from .layout import CONF_DIR

# (group, heading) in the order a reader needs them
GROUPS = (("stage", "Stages (stage=NAME)"), ("experiment", "Experiment presets (experiment=NAME)"),
          ("protocol", "Protocols (protocol=NAME): whose choices every stage makes"),
          ("model", "Models (model=NAME)"), ("data", "Data (data=NAME)"), ("site", "Hook-site presets (site=NAME)"),
          ("sae", "SAE architectures (sae=NAME)"), ("logger", "Loggers (logger=NAME)"),
          ("debug", "Debug (debug=default: any stage in seconds)"))


def describe(path: Path, width: int = 110) -> str:
    """The first sentence of a YAML file's leading comment (after `# @package`), at most `width` long."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            if words or line.strip():
                break
            continue
        text = line.lstrip("#").strip()
        if text.startswith("@package") or (not text and not words):
            continue
        if not text:
            break
        words.append(text)
    text = " ".join(words)
    # a sentence ends at . ! or ? before a capital (not at "maia-1100 ... maia-1900" or "e.g. x")
    first = re.split(r"(?<=[^.][.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."


def group_text(group: str, conf_dir: Path = CONF_DIR) -> str:
    files = sorted((conf_dir / group).glob("*.yaml"))
    width = max((len(f.stem) for f in files), default=0)
    return "\n".join(f"  {f.stem:<{width}}  {describe(f)}" for f in files)


def help_text(conf_dir: Path = CONF_DIR) -> str:
    parts = [f"== {heading} ==\n{group_text(group, conf_dir)}" for group, heading in GROUPS
             if (conf_dir / group).is_dir()]
    return "\n\n".join(parts)


def for_hydra_template() -> str:
    """help_text with `$` doubled: Hydra fills its help template with string.Template, to which a
    description's `$MAIA_ADAPT_DATA` would be a placeholder."""
    return help_text().replace("$", "$$")
