"""The ladder from the seed's protocol to ours (`stage=ladder`, `experiment=seed_ladder`).

Rung 0 runs the study the way the seed's code does (`ladder.protocol`, maia_adapt/conf/protocol); each
later rung switches the choices it names back to ours, keeping every earlier rung's switches, so the
last rung is our protocol. A rung names keys (`ladder.rungs[i].keys`); their values are read from our
study preset of the stage each key belongs to (experiment=<stage>_study, protocol=ours), so no value
is written twice. Every rung runs the chain transitional -> sae -> threats -> intervention and
transitional -> finetune; a step whose settings (and inputs) a rung leaves unchanged is the same
run, found by a hash of its settings, and runs once. Each step is an app run of its own under
`<ladder run>/runs/<stage>-<hash>/`, so an interrupted ladder resumes where it stopped and every
step's results.md can be read on its own.

The Maia-1 family (model=maia1) gets one SAE and one threats run per network (their activation
spaces are unrelated), and its intervention reads them through `{rating}` in intervention.saes and
intervention.threats; its site is the last residual block (it has no FFN to read).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError

PRESETS = {"transitional": "transitional_study", "sae": "sae_study", "threats": "threats_study",
           "intervention": "intervention_study", "finetune": "finetune_study"}
# what a step's hash covers besides its own section: the model, the data and the seed; an SAE also its sites
_SECTIONS = {"sae": ("sites", "layer")}
# the keys that hand one step's run directory to the next: set by the ladder, never by a rung
_LINKS = ("intervention.transitional", "intervention.saes", "intervention.threats", "threats.saes",
          "finetune.transitional", "sae.sites")


@dataclass
class Step:
    rung: str
    stage: str
    overrides: list[str]
    run_dir: Path
    rating: int | None = None  # a Maia-1 network's SAE chain


@dataclass
class Plan:
    rungs: list[dict]  # {name, what, keys, overrides}
    steps: list[Step] = field(default_factory=list)  # unique, in the order they run
    by_rung: dict = field(default_factory=dict)  # rung -> {stage: run directory}
    left_at_protocol: list[str] = field(default_factory=list)  # protocol keys no rung switches back


def _in_hydra(fn):
    """Run fn with Hydra's config search path set up once (inside the app it already is): composing
    one config costs about a second when each compose initialises Hydra anew."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from .layout import CONF_DIR

        if GlobalHydra.instance().is_initialized():
            return fn(*a, **kw)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return fn(*a, **kw)

    return wrapper


@_in_hydra
def _compose(overrides: list[str]):
    return _composed(tuple(overrides))


def _composed(overrides: tuple, _memo: dict = {}):  # noqa: B006 (a cache for one process: the same overrides, one compose)
    from hydra import compose

    if overrides not in _memo:
        _memo[overrides] = compose("config", overrides=list(overrides))
    return _memo[overrides]


def _value(v) -> str:
    """A config value as a Hydra override's right-hand side."""
    if OmegaConf.is_config(v):
        v = OmegaConf.to_container(v, resolve=True)
    if isinstance(v, str):
        return "'" + v.replace("'", "\\'") + "'" if any(c in v for c in " ,[]{}()=:'\"") else v
    return json.dumps(v)


def protocol_keys(protocol: str) -> list[str]:
    """Every key a protocol file sets (dotted), except the protocol's own name."""
    from .layout import CONF_DIR

    path = CONF_DIR / "protocol" / f"{protocol}.yaml"
    if not path.is_file():
        raise ConfigError(f"ladder.protocol '{protocol}': no maia_adapt/conf/protocol/{protocol}.yaml")
    node = OmegaConf.load(path)
    parents = [d for d in node.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    keys: list[str] = [k for p in parents for k in protocol_keys(p)]

    def walk(n, prefix):
        for k, v in n.items():
            if OmegaConf.is_dict(v):
                walk(v, f"{prefix}{k}.")
            else:
                keys.append(f"{prefix}{k}")

    walk(node, "")
    return [k for k in dict.fromkeys(keys) if k != "protocol"]


def _stage_of(key: str) -> str | None:
    head = key.split(".", 1)[0]
    return head if head in PRESETS else ("sae" if head in ("sites", "layer") else None)


@_in_hydra
def rung_overrides(lc, user: list[str], family: str) -> tuple[list[dict], list[str]]:
    """[{name, what, keys, overrides, family}] with each rung's overrides cumulative (the keys of every
    rung up to it set to our presets' values) and the family's own from that rung on (applied after
    ladder.common, which they may override: a family's SAE rung trains its own budget), and the
    protocol keys no rung switches back."""
    proto = protocol_keys(lc.protocol)
    ours = {stage: _compose([f"experiment={preset}", "protocol=ours", *user]) for stage, preset in PRESETS.items()}
    family_extra = dict(lc.family_overrides.get(family) or {})
    family_what = dict(family_extra.pop("what", None) or {})  # a rung's switch in the family's own words
    names = [r["name"] for r in lc.rungs]
    for k in [*family_extra, *family_what]:
        if k != "all" and k not in names:
            raise ConfigError(f"ladder.family_overrides.{family}: '{k}' is not a rung: expected all, what or one of "
                              f"{', '.join(names)}")
    common = {o.split("=", 1)[0] for o in lc.common}
    switched: dict[str, str] = {}
    extra: list[str] = []
    out = []
    for r in lc.rungs:
        for k in r["keys"]:
            if k in common or k in _LINKS:
                raise ConfigError(f"ladder rung '{r['name']}': '{k}' is set by ladder.common or by the ladder itself")
            # a prefix names the protocol's keys under it, less those ladder.common fixes for every rung
            matched = [p for p in proto if p == k or (k.endswith(".") and p.startswith(k) and p not in common)]
            if not matched:
                raise ConfigError(f"ladder rung '{r['name']}': key '{k}' is not one the protocol {lc.protocol} sets "
                                  f"(its keys: {', '.join(proto)})")
            for key in matched:
                switched[key] = f"{key}={_value(OmegaConf.select(ours[_stage_of(key)], key))}"
        extra += list(family_extra.get(r["name"], []))
        # the family's facts (a Maia-1 has no FFN) hold at every rung, after ladder.common (_rung_args)
        out.append({"name": r["name"], "what": family_what.get(r["name"], r.get("what", "")), "keys": list(r["keys"]),
                    "overrides": list(switched.values()), "family": list(family_extra.get("all", [])) + extra})
    # what the ladder's steps read, no rung switches back and the protocol sets to another value than
    # ours (a transcoder or probe key is not theirs)
    seed = {stage: _compose([f"experiment={preset}", f"protocol={lc.protocol}", *user]) for stage, preset in PRESETS.items()}
    left = [k for k in proto if k not in switched and k not in common and _stage_of(k)
            and OmegaConf.select(seed[_stage_of(k)], k) != OmegaConf.select(ours[_stage_of(k)], k)]
    return out, left


# settings that do not change what a step computes
_NOT_HASHED = {"transitional": ("engine_cache", "engine_answers", "engine_workers", "engine_path")}
# a stage whose outputs changed for the same settings: its steps (and the steps that read them) run
# anew instead of being found done. transitional 2: transitional.csv carries each row's game history
_OUTPUT_VERSION = {"transitional": 2}


def _portable(v):
    """A value as the hash sees it: an existing file by its name and size, so that the same data read
    through another path (a moved checkout, $MAIA_ADAPT_DATA) is the same step."""
    if isinstance(v, dict):
        return {k: _portable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_portable(x) for x in v]
    if isinstance(v, str) and len(v) < 4096 and ("/" in v) and Path(v).is_file():
        return f"{Path(v).name}:{Path(v).stat().st_size}"
    return v


def _hash(cfg, stage: str, root: Path) -> str:
    keep = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in ("model", "data", "seed", stage, *_SECTIONS.get(stage, ()))}
    keep["model"] = {k: v for k, v in keep["model"].items() if k != "rating"}  # a network's SAE: the rating is the folder
    keep[stage] = {k: v for k, v in keep[stage].items() if k not in _NOT_HASHED.get(stage, ())}
    if stage in _OUTPUT_VERSION:  # absent for version 1: every other step keeps the hash it had
        keep["output_version"] = _OUTPUT_VERSION[stage]
    text = json.dumps(_portable(keep), sort_keys=True, default=str).replace(str(root), "<ladder>")  # links: relative
    if cfg.model.get("rating") is not None:  # a network's step reads its network's SAE: one folder for the family
        text = text.replace(f"{cfg.model.name}-{cfg.model.rating}", f"{cfg.model.name}-{{rating}}")
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _rung_args(rung: dict, lc, user: list[str]) -> list[str]:
    """A rung's overrides in the order that settles who wins: its switches, what every rung shares,
    the family's facts (more specific than ladder.common), the command line's."""
    return [*rung["overrides"], *lc.common, *rung["family"], *user]


@_in_hydra
def plan(lc, user: list[str], ladder_dir: Path, family: str, ratings: list[int]) -> Plan:
    """Every step of every rung, composed here (a bad override fails before anything runs)."""
    rungs, left = rung_overrides(lc, user, family)
    base = [f"protocol={lc.protocol}"]
    p = Plan(rungs, left_at_protocol=left)
    seen: set[Path] = set()

    def step(rung, stage, args, rating=None) -> tuple[Path, str]:
        """(its run directory, the name of its folder in the run directory of a network's step)"""
        ov = [f"experiment={PRESETS[stage]}", *base, *_rung_args(rung, lc, user), *args]
        if rating is not None:
            ov.append(f"model.rating={rating}")
        cfg = _compose(ov)
        folder = ladder_dir / "runs" / f"{stage}-{_hash(cfg, stage, ladder_dir)}"
        run_dir = folder / f"{cfg.model.name}-{rating}" if rating is not None else folder
        if run_dir not in seen:
            seen.add(run_dir)
            p.steps.append(Step(rung["name"], stage, ov, run_dir, rating))
        return run_dir, f"{cfg.model.name}-{{rating}}"

    for rung in rungs:
        t, _ = step(rung, "transitional", [])
        dirs = {"transitional": t}
        site = _compose(["experiment=intervention_study", *base, *_rung_args(rung, lc, user)]).intervention.site
        for rating in ratings or [None]:
            sae, name = step(rung, "sae", [f"sae.sites=[{site}]"], rating)
            threats, _ = step(rung, "threats", [f"threats.saes={_value(str(sae))}"], rating)
            # the family's intervention reads each network's SAE and detectors through {rating}
            dirs["saes"], dirs["threats"] = (sae, threats) if rating is None else (sae.parent / name, threats.parent / name)
        dirs["intervention"], _ = step(rung, "intervention", [
            f"intervention.transitional={_value(str(t))}", f"intervention.saes={_value(str(dirs['saes']))}",
            f"intervention.threats={_value(str(dirs['threats']))}"])
        if "finetune" in lc.chains:
            dirs["finetune"], _ = step(rung, "finetune", [f"finetune.transitional={_value(str(t))}"])
        p.by_rung[rung["name"]] = dirs
    return p


def execute(p: Plan, dry_run: bool = False) -> None:
    """Run each step not finished yet (its summary.json), one app process at a time."""
    todo = [s for s in p.steps if not (s.run_dir / "summary.json").is_file()]
    for i, s in enumerate(todo, 1):
        cmd = [sys.executable, "-m", "maia_adapt.run", *s.overrides, f"hydra.run.dir={s.run_dir}"]
        print(f"[ladder {i}/{len(todo)}] rung {s.rung}: {s.stage}" + (f" (maia-{s.rating})" if s.rating else "")
              + f" -> {s.run_dir}", flush=True)
        if dry_run:
            print("  " + " ".join(cmd[1:]))
            continue
        if subprocess.run(cmd, check=False).returncode != 0:
            raise ConfigError(f"ladder step {s.stage} of rung {s.rung} failed (its run directory: {s.run_dir}); fix it "
                              "and run the same command again to resume there")


def _read(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _ci(v, ci, fmt="+.3f") -> str:
    if v is None or ci is None:
        return "-"
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _sae_quality(saes) -> tuple[float | None, float | None]:
    """(variance explained, L0) of a rung's SAE on its held-out positions, the mean over its sites (and
    over the networks of a Maia-1 family, whose SAE folder is named through {rating}): a dictionary
    trained on a small budget reconstructs less, and the `error` rung's effect depends on it."""
    folders = sorted(Path(str(saes)).parent.glob("*/")) if "{rating}" in str(saes) else [Path(str(saes))]
    sites = [v for f in folders for v in (_read(f).get("sites") or {}).values()]
    vals = [(v.get("variance_explained"), v.get("l0")) for v in sites if v.get("variance_explained") is not None]
    if not vals:
        return None, None
    return sum(a for a, _ in vals) / len(vals), sum(b for _, b in vals) / len(vals)


def ladder_rows(p: Plan) -> list[dict]:
    """One row per rung: the transitional dataset, the intervention's and the fine-tune's effects."""
    rows, prev = [], None
    for rung in p.rungs:
        d = p.by_rung[rung["name"]]
        t, iv, ft = _read(d["transitional"]), _read(d["intervention"]), _read(d.get("finetune", ""))
        sae_ve, sae_l0 = _sae_quality(d.get("saes", ""))
        has_control = "effect_minus_control" in iv
        head = "effect_minus_control" if has_control else "effect"
        row = {"rung": rung["name"], "what": rung["what"], "dataset_rows": t.get("positions"),
               "intervention_rows_test": iv.get("test_positions"), "headline": head,
               "intervention_effect": iv.get(head), "intervention_effect_ci": iv.get(f"{head}_ci"),
               "effect_vs_none": iv.get("effect"), "effect_vs_none_ci": iv.get("effect_ci"),
               "bottom_bucket_change": (iv.get("minus_control_by_bucket") or iv.get("effect_by_bucket") or [None])[0],
               "bottom_bucket_change_ci": (iv.get("minus_control_by_bucket_ci") or iv.get("effect_by_bucket_ci") or [None])[0],
               "skill_trend_change": iv.get("skill_trend_change_minus_control" if has_control else "skill_trend_change"),
               "skill_trend_change_ci": iv.get("skill_trend_change_minus_control_ci" if has_control else "skill_trend_change_ci"),
               "transition_point_shift": iv.get("transition_point_shift"),
               "transition_point_shift_ci": iv.get("transition_point_shift_ci"),
               "seed_tp": (iv.get("seed_mean_tp_base"), iv.get("seed_mean_tp_intervened")),
               "sae_variance_explained": sae_ve, "sae_l0": sae_l0,
               "finetune_shift": ft.get("mean_shift"), "finetune_shift_ci": ft.get("mean_shift_ci"),
               "finetune_seed_tp": (ft.get("seed_tp_before"), ft.get("seed_tp_after"))}
        if prev is not None and row["intervention_effect"] is not None and prev["intervention_effect"] is not None:
            row["intervention_change_from_previous"] = row["intervention_effect"] - prev["intervention_effect"]
        rows.append(row)
        prev = row
    return rows


def _pair(t) -> str:
    a, b = t
    return "-" if a is None or b is None else f"{a:.2f} -> {b:.2f}"


def _sae_cell(r) -> str:
    v, l0 = r.get("sae_variance_explained"), r.get("sae_l0")
    return "-" if v is None else f"{v:.2f} ({l0:.0f})"


def ladder_markdown(model: str, lc, p: Plan, rows: list[dict]) -> list[str]:
    lines = [f"# The ladder from the seed's protocol to ours ({model})", "",
             f"Rung 0 is `protocol={lc.protocol}`; each rung switches the keys it names to our presets' values and keeps "
             "the switches above it, so the last rung is our protocol. Intervention: the headline is the effect "
             "minus its control where the rung has one, else the effect against no intervention (the seed's had no "
             "control); the bottom bucket's change and the skill-trend change (top minus bottom bucket) are against the "
             "same reference; negative trend changes mean the weak end gained more. Fine-tune: our paired mean "
             "transition-point shift over the test rows; the seed's unpaired numbers beside each. 95% bootstrap "
             "intervals over test rows. SAE: its variance explained and L0 on held-out positions.", "",
             "| rung | switched to ours | dataset rows | test rows | intervention headline | vs none | < 1100 | "
             "skill-trend change | seed's TP (none -> edited) | fine-tune shift | seed's fine-tune TP | SAE var. expl. (L0) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = ("minus control " if r["headline"] == "effect_minus_control" else "vs none ") + _ci(r["intervention_effect"], r["intervention_effect_ci"])
        lines.append(f"| {r['rung']} | {r['what']} | {r['dataset_rows'] or '-'} | {r['intervention_rows_test'] or '-'} | {head} | "
                     f"{_ci(r['effect_vs_none'], r['effect_vs_none_ci'])} | {_ci(r['bottom_bucket_change'], r['bottom_bucket_change_ci'])} | "
                     f"{_ci(r['skill_trend_change'], r['skill_trend_change_ci'])} | {_pair(r['seed_tp'])} | "
                     f"{_ci(r['finetune_shift'], r['finetune_shift_ci'], '+.2f')} | {_pair(r['finetune_seed_tp'])} | "
                     f"{_sae_cell(r)} |")
    missing = [s for s in p.steps if not (s.run_dir / "summary.json").is_file()]
    if missing:
        lines += ["", f"{len(missing)} of {len(p.steps)} steps have not run yet (first: rung {missing[0].rung}, "
                  f"{missing[0].stage}); their cells show '-'. The same command resumes there."]
    if p.left_at_protocol:
        lines += ["", "Keys of the protocol no rung switches back (the last rung keeps the seed's value): "
                  + ", ".join(f"`{k}`" for k in p.left_at_protocol) + "."]
    lines += ["", "![ladder](ladder.png)", "", "Run directories of each rung's steps:", ""]
    for r in p.rungs:
        lines.append(f"- {r['name']}: " + ", ".join(f"{s} `{d}`" for s, d in p.by_rung[r["name"]].items()))
    return lines
