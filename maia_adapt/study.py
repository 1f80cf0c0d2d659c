"""The whole study on one subject, in order: `python -m maia_adapt.study [--dry-run] [--only a,b] [override ...]`.

Runs the `experiment=*_study` presets one after another as app runs (each reads the fixed run
directories of the ones before it, for the same model), then writes `outputs/study/<model>/headline.md`
and `headline.json`: the numbers of the headline table in experiments/README.md for this subject.
Overrides go to every step (`model=maia2_small`, `data.max_games=...`). A step whose run directory
already holds a finished run (its `summary.json`) is skipped, so an interrupted study resumes where it
stopped; `--only` reruns the named steps (after changing an override, rerun the steps it touches);
`--report-only` writes the headline from the runs there are; `--ladder` runs the ladder from the seed's
protocol to ours instead (`experiment=seed_ladder`), and `protocol=seed_neurips` as an override runs the
whole study the seed's way in run directories of its own. The Maia-1 family (`model=maia1`) takes
its own steps: its networks' activation spaces are unrelated, so the SAE chain (SAE, threat detectors,
feature amplification) runs per network, on the weak and the strong end (maia-1100, maia-1900), and
the strong network's detectors are paired with the weak one's (experiments/README.md).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from .config import CONF_DIR
from .errors import ConfigError
from .io import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    run_dir: str = ""  # a run directory other than the preset's own: the name given to ${run_dir:...}


# In a step's arguments `{id}` is the model's run-directory name and `{dir:<step>}` the run directory
# of an earlier step, as plan() composed it.
MAIA2_STEPS = (
    Step("transitional", ("experiment=transitional_study",)),
    Step("probe", ("experiment=probe_study",)),
    Step("finetune_head", ("experiment=finetune_study", "finetune.trainable=policy_head")),
    Step("finetune_all", ("experiment=finetune_study", "finetune.lr=3e-5", "finetune.eval_every=10")),
    Step("sae", ("experiment=sae_study",)),
    Step("threats", ("experiment=threats_study",)),
    Step("threats_elo0", ("experiment=threats_study", "threats.elo=0", "threats.dashboards=0"), "threats_study_elo0"),
    Step("threats_elo10", ("experiment=threats_study", "threats.elo=10", "threats.dashboards=0",
                           "threats.compare_to={dir:threats_elo0}"), "threats_study_elo10"),
    Step("intervention_sae", ("experiment=intervention_study",)),
    Step("intervention_steering", ("experiment=intervention_study", "intervention.kind=steering")),
    Step("intervention_probe", ("experiment=intervention_study", "intervention.kind=probe")),
    # a reference for the three above: the model's own skill mechanism edited (block 0's skill heads)
    Step("intervention_elo_heads", ("experiment=intervention_study", "intervention.kind=elo_heads",
                                    "intervention.site=blocks.0.hook_elo_q", "intervention.strengths=[0.5,1.0,2.0]",
                                    "intervention.top_n=[1,2,3]")),
    Step("transcoder", ("experiment=transcoder_study",)),
    Step("circuits", ("experiment=circuits_study",)),
)
# Maia-3 (one network for every rating, as Maia-2) takes Maia-2's steps but the two built on Maia-2's
# Elo-query heads (the circuits and the elo_heads reference, which refuse it), and its fine-tunes have
# no side-info head to train (docs/maia3.md)
MAIA3_STEPS = tuple(Step(s.name, (*s.args, "finetune.side_info_weight=0") if s.name.startswith("finetune") else s.args,
                         s.run_dir) for s in MAIA2_STEPS if s.name not in ("circuits", "intervention_elo_heads"))
_M1 = ("intervention.site=blocks.5.hook_resid_post",)
# One SAE per end network (their activation spaces are unrelated): the last residual block, every
# square a sample (experiments/sae_study/README.md).
_M1_SAE = ("sae.k=16", "sae.dim=1024", "sae.sites=[blocks.5.hook_resid_post]", "sae.token_pooling=none",
           "sae.steps=2000", "sae.batch_size=4096", "sae.chunk_positions=2048", "sae.cache_positions=20000",
           "sae.calibrate_every=0", "sae.eval_positions=2000")
M1_NETWORKS = (1100, 1900)  # the weak and the strong end of the family


def _network_chain(rating: int, compare_to: int | None) -> tuple[Step, ...]:
    net = (f"model.rating={rating}",)
    cmp = (f"threats.compare_to={{dir:threats_{compare_to}}}",) if compare_to else ()
    return (Step(f"sae_{rating}", ("experiment=sae_study", *net, *_M1_SAE)),
            Step(f"threats_{rating}", ("experiment=threats_study", *net, "threats.families=[threat,study]",
                                       "threats.dashboards=12", *cmp)),
            Step(f"intervention_sae_{rating}", ("experiment=intervention_study", *net, *_M1)))


MAIA1_STEPS = (
    Step("transitional", ("experiment=transitional_study",)),
    Step("probe", ("experiment=probe_study", "probe.buckets=[1,2,3,4,5,6,7,8,9]",
                   "probe.sites=[blocks.2.hook_resid_post,blocks.5.hook_resid_post]")),
    Step("finetune_head", ("experiment=finetune_study", "finetune.trainable=policy_head", "finetune.side_info_weight=0")),
    Step("intervention_steering", ("experiment=intervention_study", "intervention.kind=steering", *_M1)),
    Step("intervention_probe", ("experiment=intervention_study", "intervention.kind=probe", *_M1)),
    *_network_chain(M1_NETWORKS[0], None),
    *_network_chain(M1_NETWORKS[1], M1_NETWORKS[0]),  # its threat detectors paired with the weak network's
)


# Stockfish 15.1's depth-8 answers for the quick study's transitional positions (its own searches,
# shipped): the quick study runs where no engine is installed; with another engine the answers are
# not used (they are keyed by the engine's name) and it searches
QUICK_ENGINE_ANSWERS = "${paths.assets}/engine_answers_lichess_5k.jsonl.zst"
# `--quick`: the study on the embedded real games (data=lichess_5k, so a fresh clone with no ../shared
# runs it) at sizes that finish in minutes on a 2-core CPU, in outputs/quick/ so that its runs are
# never taken for the full study's. Its intervals are wide: it shows the study, it does not settle it.
QUICK = ("data=lichess_5k", "data.max_games=2000", "paths.outputs=outputs/quick", "logger=none",
         "transitional.positions=300", f"transitional.engine_answers=[{QUICK_ENGINE_ANSWERS}]",
         "probe.sites=[blocks.1.hook_resid_post]", "probe.train_positions=2000", "probe.test_positions=1000",
         "probe.buckets=[0,10]", "probe.logit_lens=false", "probe.min_positives=10",
         "finetune.steps=30", "finetune.eval_every=10", "finetune.heldout_positions=200",
         "sae.sites=[blocks.1.hook_resid_post]", "sae.steps=300", "sae.dim=1024", "sae.k=32",
         "sae.cache_positions=8192", "sae.chunk_positions=4096", "sae.eval_positions=500", "sae.calibrate_every=0",
         "threats.positions=1500", "threats.families=[threat,study]", "threats.min_positives=10", "threats.n_null=10",
         "intervention.strengths=[2.0,4.0]", "intervention.top_n=[1,3]", "intervention.n_boot=300",
         "intervention.heldout_positions=200")
# `--gpu`: every stage's model (and the dictionaries' training) on the one GPU, bfloat16 autocast for the
# dictionaries, five times the positions of the CPU presets and 14 engine processes for the machine's
# cores (a 16-core GPU machine), in outputs/gpu/ (outputs/quick_gpu/ with --quick, which keeps its sizes)
GPU_DEVICES = tuple(f"{s}.device=cuda" for s in ("transitional", "probe", "finetune", "sae", "threats", "intervention",
                                                  "transcoder", "evaluate", "activations"))
GPU = ("paths.outputs=outputs/gpu", "transitional.positions=20000", "transitional.engine_workers=14",
       "threats.positions=20000", "probe.train_positions=20000", "probe.test_positions=10000",
       "sae.bf16=true", "transcoder.bf16=true", "finetune.heldout_positions=5000", "intervention.heldout_positions=5000")
# the steps of the headline's awareness / externalization questions; the transcoder, the circuits and
# the all-parameter fine-tune are the full study's
QUICK_STEPS = ("transitional", "probe", "finetune_head", "sae", "threats", "threats_elo0", "threats_elo10",
               "intervention_sae", "intervention_steering", "intervention_probe")


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def plan(overrides: list[str], quick: bool = False, gpu: bool = False) -> tuple[str, list[tuple[Step, list[str], Path]]]:
    """(the model's run-directory name, [(step, its full override list, its run directory)]); every
    step's config is composed here, so a bad override fails before anything runs. `quick`: the
    QUICK_STEPS at the QUICK sizes; `gpu`: every model on CUDA at the GPU sizes (with quick: the quick
    sizes, in outputs/quick_gpu/); the caller's overrides still win."""
    if gpu:
        overrides = [*GPU_DEVICES, *(("paths.outputs=outputs/quick_gpu",) if quick else GPU), *overrides]
    if quick:
        overrides = [*QUICK, *overrides]
    base = _compose(["experiment=probe_study", *overrides])
    model_id = Path(base.hydra.run.dir).name
    if base.model.name == "maia1" and base.model.get("rating") is not None:
        raise ConfigError("the study runs on the Maia-1 family as a whole (model=maia1, which also runs the SAE chain "
                          f"of maia-{M1_NETWORKS[0]} and maia-{M1_NETWORKS[1]}); another network's SAE chain is run "
                          "preset by preset (experiments/README.md)")
    steps = {"maia1": MAIA1_STEPS, "maia3": MAIA3_STEPS}.get(str(base.model.name), MAIA2_STEPS)
    if quick:
        if base.model.name == "maia1":
            raise ConfigError("--quick runs one network's steps (maia2_skill, maia2_small, maia3_tiny); the Maia-1 family's study "
                              "needs ../shared's networks and runs without --quick")
        steps = tuple(s for s in steps if s.name in QUICK_STEPS)
    out, dirs = [], {}
    for step in steps:
        args = [a.replace("{id}", model_id) for a in (*step.args, *overrides)]
        for name, d in dirs.items():
            args = [a.replace(f"{{dir:{name}}}", str(d)) for a in args]
        if step.run_dir:
            args.append(f"hydra.run.dir=${{run_dir:{step.run_dir}}}")
        dirs[step.name] = Path(_compose(args).hydra.run.dir)
        out.append((step, args, dirs[step.name]))
    return model_id, out


def _get(run_dir: Path, key: str):
    """`key` from the run's summary.json or results.json, with its `_ci95`/`_ci` interval."""
    for name in ("summary.json", "results.json"):
        path = run_dir / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        if key in data:
            return data[key], data.get(f"{key}_ci95", data.get(f"{key}_ci"))
    return None, None


def _fmt(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def headline(runs: dict[str, Path]) -> list[dict]:
    """The headline rows for one subject from its finished runs (missing runs give '-')."""
    rows = []
    if "transitional" in runs:
        rows.append(("does behaviour depend on skill?", "Stockfish's move, top minus bottom bucket",
                     _get(runs["transitional"], "skill_gain"), "transitional"))
    if "circuits" in runs:
        rows.append(("where does the skill dependence enter?",
                     "share of KL(top bucket || bottom bucket) closed by block 0's attention output from the top bucket",
                     _get(runs["circuits"], "skill_kl_closed_attn0"), "circuits"))
    probe = runs["probe"] / "results.json" if "probe" in runs else None
    if probe is not None and probe.is_file():
        for site, res in json.loads(probe.read_text())["sites"].items():
            rows.append(("is awareness flat across skill?", f"probe AUC, top minus bottom bucket ({site})",
                         (res.get("auc_gain_top_minus_bottom"), res.get("auc_gain_top_minus_bottom_ci95")), "probe"))
    strong, weak = (f"maia-{M1_NETWORKS[1]}", f"maia-{M1_NETWORKS[0]}")
    for step, what in (("threats_elo10", ">= 2000 minus < 1100"), (f"threats_{M1_NETWORKS[1]}", f"{strong} minus {weak}")):
        res_path = runs[step] / "results.json" if step in runs else None
        if res_path is None or not res_path.is_file():
            continue
        for site, res in json.loads(res_path.read_text())["sites"].items():
            c = res.get("compared", {}).get("threat")
            if c:
                rows.append(("do the weak settings represent threats?",
                             f"best feature AUC on threat squares, {what} ({site.split(' ')[0]})",
                             (c["auc_difference"], c["auc_difference_ci95"]), step))
    for step, what in (("finetune_head", "policy head"), ("finetune_all", "all parameters, lr 3e-5")):
        if step in runs:
            rows.append(("does fine-tuning move the transition points?", f"mean shift ({what})",
                         _get(runs[step], "mean_shift"), step))
    for step, what in (("intervention_steering", "steering vector"), ("intervention_probe", "probe direction"),
                       ("intervention_sae", "SAE features"),
                       ("intervention_elo_heads", "reference: block 0's skill heads given the top bucket's Elo"),
                       *((f"intervention_sae_{r}", f"SAE features, maia-{r}") for r in M1_NETWORKS)):
        if step in runs:
            rows.append(("does the intervention make them act?", f"correct-move accuracy minus control ({what})",
                         _get(runs[step], "effect_minus_control"), step))
    return [{"question": q, "measurement": m, "value": v, "ci95": ci, "text": _fmt(v, ci), "reading": _reading(v, ci),
             "n": _sample_size(runs[step])} for q, m, (v, ci), step in rows]


def _reading(value, ci) -> str:
    """Which side of zero the interval puts the number (a mechanical reading, not a conclusion)."""
    if value is None or not ci:
        return "-"
    return "above 0" if ci[0] > 0 else "below 0" if ci[1] < 0 else "0 inside the interval"


def _sample_size(run_dir: Path):
    """The positions behind a step's number: the rows it was judged on (test rows where it has them)."""
    for key in ("test_positions", "scored_rows", "positions"):
        value, _ = _get(run_dir, key)
        if value is not None:
            return value
    return None


_QUICK_GAMES = int(next(a for a in QUICK if a.startswith("data.max_games=")).split("=", 1)[1])
QUICK_NOTE = (f"**The quick study**: {_QUICK_GAMES:,} embedded lichess games, a few hundred positions per step, a small SAE "
              "trained for a few hundred steps. It shows every step of the study working on real games; with samples "
              "this small an interval that holds 0 says little (a real effect of a few points would often not show), "
              "and its numbers are not the study's. `python -m maia_adapt.study` runs the full study on ../shared "
              "(docs/study.md).", "")


def write_headline(model_id: str, runs: dict[str, Path], out_dir: Path, quick: bool = False) -> Path:
    rows = headline(runs)
    lines = [f"# The study on {model_id}" + (" (quick)" if quick else ""), "", *(QUICK_NOTE if quick else ()),
             ("Each number from the run directory of its step, with its 95% interval; n: the positions it was judged "
              "on. experiments/README.md has the full study's table for every subject, with what the numbers say."), "",
             "| question | measurement | value [95% CI] | reading | n |", "|---|---|---|---|---|"]
    lines += [f"| {r['question']} | {r['measurement']} | {r['text']} | {r['reading']} | {r['n'] if r['n'] is not None else '-'} |"
              for r in rows]
    lines += ["", "Run directories:", ""] + [f"- {name}: `{path}`" for name, path in runs.items()]
    atomic_write_json(out_dir / "headline.json", {"model": model_id, "quick": quick, "rows": rows, "runs": {k: str(v) for k, v in runs.items()}})
    return atomic_write_text(out_dir / "headline.md", "\n".join(lines) + "\n")


def _children_cpu() -> float:
    """CPU seconds of the finished step processes (a step's wall time depends on what else runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maia_adapt.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--only", default="", help="comma-separated steps to (re)run; the others are only read")
    p.add_argument("--report-only", action="store_true", help="write the headline from the runs there are")
    p.add_argument("--quick", action="store_true", help="the study on the embedded real games, in minutes on a "
                   "CPU (outputs/quick/; no ../shared needed)")
    p.add_argument("--gpu", action="store_true", help="every model on the GPU, at sizes for one GPU (outputs/gpu/; "
                   "with --quick, the quick sizes in outputs/quick_gpu/)")
    p.add_argument("--ladder", action="store_true", help="run the ladder from the seed's protocol to ours instead "
                   "(experiment=seed_ladder: experiments/seed_ladder/README.md)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if a.ladder:  # one app run: the ladder plans, runs and resumes its own steps
        extra = ["ladder.dry_run=true"] if a.dry_run else []
        return subprocess.run([sys.executable, "-m", "maia_adapt.run", "experiment=seed_ladder", *a.overrides, *extra],
                              check=False).returncode
    try:
        if a.gpu and not a.dry_run:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--gpu: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                                  "run without --gpu, or --dry-run to see the commands")
        model_id, steps = plan(a.overrides, quick=a.quick, gpu=a.gpu)
        only = {s for s in a.only.split(",") if s}
        unknown = only - {s.name for s, _, _ in steps}
        if unknown:
            raise ConfigError(f"--only {','.join(sorted(unknown))}: expected steps of "
                              f"{', '.join(s.name for s, _, _ in steps)}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:  # composing a step's config: the key, what was wrong
        from .run import config_error_line

        print(f"error: {config_error_line(e)}", file=sys.stderr)
        return 2
    runs, started = {}, time.monotonic()
    for i, (step, args, run_dir) in enumerate(steps, 1):
        cmd = [sys.executable, "-m", "maia_adapt.run", *args]
        runs[step.name] = run_dir
        todo = step.name in only if only else not (run_dir / "summary.json").is_file()
        if a.dry_run:
            print(("" if todo else "# done: ") + " ".join(cmd[1:]))
            continue
        if a.report_only or not todo:
            continue
        print(f"[{i}/{len(steps)}] {step.name}: {' '.join(args)}", flush=True)
        t0, cpu0 = time.monotonic(), _children_cpu()
        failed = subprocess.run(cmd, check=False).returncode != 0
        print(f"[{i}/{len(steps)}] {step.name}: {time.monotonic() - t0:.0f} s ({_children_cpu() - cpu0:.0f} CPU-s)", flush=True)
        if failed:
            print(f"error: study step '{step.name}' failed (its run directory: {run_dir}); fix it and run the "
                  f"same command again to resume there", file=sys.stderr)
            return 1
    if a.dry_run:
        return 0
    outputs = Path(steps[0][2]).parents[2]  # <paths.outputs>/<stage>/<preset>/<model id>
    md = write_headline(model_id, runs, outputs / "study" / model_id, quick=a.quick)
    print(md.read_text())
    print(f"headline: {md} ({time.monotonic() - started:.0f} s, {_children_cpu():.0f} CPU-s of steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
