"""stage=sae: sparse autoencoders on model activations at one or more hook sites (one forward pass).

`model=maia1 model.rating=R` trains on one Maia-1 network (its conv maps as 64 square tokens of 64
channels: token_pooling=none makes every square a sample); the family's nine networks have unrelated
activation spaces, so one SAE per network (`-m model.rating=1100,1500,1900`).

Writes into the run directory: saes/<site>/{sae_weights.safetensors,cfg.json} (SAELens layout, normalisation folded in),
checkpoints/ (resumable), results.md and results.json (spliced evaluation against zero- and
mean-ablation, per Elo bucket), feature_density.png, metrics.jsonl.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ..runtime import distributed
from ..model.activations import ActivationChunks, collect_activations, position_codes
from ..data.preprocess import data_fingerprint, open_or_build_store
from ..dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder, save_sae, train_dictionaries
from ..dictionaries.evaluate import evaluate_dictionary
from ..encoding import BUCKET_NAMES, NUM_BUCKETS
from ..errors import ConfigError
from ..concepts import all_position_concepts, best_auc_per_concept, piece_square_concepts, roc_auc_matrix, threat_concepts
from ..dictionaries.train import BestKeeper, DictionaryRunConfig, start_or_resume
from ..layout import sae_folder, site_slug
from ..reporting.plots import feature_density
from ..checks import FRACTION, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, check_section, elo, set_by_stage
from ..dictionaries.kernels import KERNELS
from ..dictionaries.sae import ARCHITECTURES
from .common import fingerprint, skill_model, stage_device


@dataclass
class SAEStageConfig(DictionaryRunConfig, SAEConfig):
    """stage=sae: the SAE hyper-parameters plus where its activations come from."""

    sites: list[str] = "${sites}"  # the site preset's (site=...); a list here overrides it
    chunk_positions: int = 8192  # positions per activation chunk (shuffled, cut into batches)
    # the model's forward pass, not the SAE, is the cost on a CPU: run it once over this many train
    # positions, keep their activations in memory and draw every chunk from them. 0: a fresh forward
    # pass per chunk (every position seen once; for long runs on a GPU)
    cache_positions: int = 32768
    eval_positions: int = 2000  # test-split positions for the spliced evaluation
    # calibration (the study's checkpoint choice): every N steps score the features against a
    # concept set on validation positions; the best summed AUC is the SAE that is saved. 0: off
    calibrate_every: int = 0
    # board: own/opponent piece on each square (768); threats: the study's 128 square-wise threat
    # concepts; all: every concept of maia_adapt.concepts (1158: the study family's 13 and the seed172
    # family's 172 included, which repeat some concepts of the others, e.g. its 128 square threats)
    calibration_concepts: str = "board"
    calibration_positions: int = 2000
    calibration_min_positives: int = 20  # concepts with fewer positive (or negative) positions are left out
    # a folder where the cache_positions' activations are kept, named by all they depend on (model,
    # its file, data, sites, positions, seed, Elo, pooling): the jobs of a sweep over the SAE's own
    # settings share one forward pass (experiment=sae_sweep sets it); null: each run computes its own
    shared_activations: Optional[str] = None
    # each SAE's site and input width come from `sites` and the model: these two only exist in the
    # saved cfg.json, and setting them here is an error (validate) rather than a silent no-op
    site: Optional[str] = None
    d_in: Optional[int] = None


SCHEMA = SAEStageConfig  # cfg.sae
RULES = {**{k: POSITIVE_INT for k in ("dim", "batch_size", "steps", "chunk_positions", "eval_positions", "log_every",
                                    "checkpoint_every")},
         **{k: NON_NEGATIVE_INT for k in ("cache_positions", "calibrate_every", "aux_k")},
         "lr": POSITIVE, "dense_threshold": FRACTION, "elo": elo("data", "random"),
         "site": set_by_stage("sae.sites (or site=...)"), "d_in": set_by_stage("the model's width at each site")}
CHOICES = {"architecture": ARCHITECTURES, "kernel": KERNELS, "b_dec_init": ("mean", "median", "zeros"),
           "token_pooling": ("mean", "none"), "calibration_concepts": ("board", "threats", "all")}


def check(cfg) -> None:
    check_section(cfg, "sae", RULES, CHOICES)
    SAEConfig(architecture=cfg.sae.architecture, k=cfg.sae.k, dim=cfg.sae.dim).validate()


def _sae_config(stage_cfg, site: str, d_in: int) -> SAEConfig:
    names = {f.name for f in dataclasses.fields(SAEConfig)}
    raw = OmegaConf.to_container(stage_cfg, resolve=True) if OmegaConf.is_config(stage_cfg) else dataclasses.asdict(stage_cfg)
    return SAEConfig(**{**{k: v for k, v in raw.items() if k in names}, "site": site, "d_in": d_in})


def calibration_set(model, store, idx, sites, sc, seed: int, device="cpu"):
    """(activations {site: [N, d] or [N*T, d]}, concept labels [N, C], concept names)."""
    kinds = {"board": None, "threats": threat_concepts, "all": all_position_concepts}
    if sc.calibration_concepts not in kinds:
        raise ConfigError(f"sae.calibration_concepts '{sc.calibration_concepts}': expected one of {', '.join(kinds)}")
    acts = collect_activations(model, store, idx, sites, batch_size=512, elo=sc.elo, token_pooling=sc.token_pooling, seed=seed,
                               device=device)
    acts = {s: v.to(device) for s, v in acts.items()}
    fn = kinds[sc.calibration_concepts]
    concepts = (fn(store.fens(idx)) if fn else piece_square_concepts(store.batch(idx)["boards"])).keep(sc.calibration_min_positives)
    if not concepts.names:
        raise ConfigError(f"no concept has {sc.calibration_min_positives} positive calibration positions: "
                          "raise sae.calibration_positions or lower sae.calibration_min_positives")
    return acts, concepts.labels, concepts.names


@torch.no_grad()
def calibration_codes(sae, acts: torch.Tensor, n_positions: int) -> torch.Tensor:
    """Position codes of the encoder that is saved: the SAE in eval mode (BatchTopK: its learned
    inference threshold, not training's batch-level top-k, whose codes depend on the batch)."""
    was_training = sae.training
    sae.eval()
    try:
        return position_codes(sae, acts, n_positions)
    finally:
        sae.train(was_training)


def summed_best_auc(sae, acts: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over concepts of the best feature's AUC (per position: a token-level SAE's feature
    counts with its largest activation over the position's tokens)."""
    z = calibration_codes(sae, acts, len(labels)).cpu()
    best, _ = best_auc_per_concept(roc_auc_matrix(z, labels))
    return float(torch.nan_to_num(best).sum())


def _site_report(s: str, m: dict, calibration_concepts: str) -> list[str]:
    """results.md's section for the SAE at site s."""
    lines = [f"## {s}", "",
             f"L0 {m['l0']:.1f}, variance explained {m['variance_explained']:.3f}, dead {m['dead_fraction_eval']:.3f}, "
             f"dense {m['dense_fraction_eval']:.3f}", "",
             *([f"calibrated: best summed AUC {m['calibration_score']:.1f} over {m['calibration_concepts']} {calibration_concepts} "
                f"concepts at step {m['calibration_step']} (the saved SAE)", ""] if "calibration_score" in m else []),
             "| model | top-1 agreement with clean | policy KL | move accuracy |", "|---|---|---|---|"]
    for v in ("clean", "sae", "mean", "zero"):
        lines.append(f"| {v} | {m[f'{v}/agreement']:.3f} | {m[f'{v}/kl']:.4f} | {m[f'{v}/accuracy']:.3f} |")
    lines += ["", "| Elo bucket | clean accuracy | spliced accuracy | spliced agreement |", "|---|---|---|---|"]
    for i in range(NUM_BUCKETS):
        if f"clean/accuracy_bucket_{i}" in m:
            lines.append(f"| {BUCKET_NAMES[i]} | {m[f'clean/accuracy_bucket_{i}']:.3f} | "
                         f"{m[f'sae/accuracy_bucket_{i}']:.3f} | {m[f'sae/agreement_bucket_{i}']:.3f} |")
    return lines + [""]


def _sites(cfg, model, store) -> list[str]:
    sites = list(cfg.sae.sites)
    if not sites:
        raise ConfigError("sae.sites is empty: expected at least one hook name")
    for s in sites:
        model.check_hook_name(s)
    if len(store.split_indices("train")) == 0:
        raise ConfigError("the position store has no training positions")
    return sites


def _calibration(cfg, model, store, saes: dict, device):
    """(calibrate() for the trainer, the concepts' names), or (None, []) with sae.calibrate_every=0."""
    sc = cfg.sae
    if not (sc.calibrate_every and distributed.is_main()):
        return None, []
    val_idx = store.split_indices("val")
    cal_idx = np.sort(np.random.default_rng(cfg.seed + 2).permutation(val_idx)[: sc.calibration_positions])
    cal_acts, cal_labels, cal_names = calibration_set(model, store, cal_idx, list(sc.sites), sc, cfg.seed + 2, device)
    print(f"calibration: {len(cal_names)} board concepts on {len(cal_idx)} validation positions")

    def calibrate() -> dict[str, float]:
        return {name: summed_best_auc(sae, cal_acts[s], cal_labels) for name, (sae, s) in saes.items()}
    return calibrate, cal_names


def _evaluate(cfg, frame, model, store, saes: dict, step: int, final: dict, calibrated: dict, cal_names) -> tuple[dict, list]:
    """(results.json, results.md's lines): each SAE saved, spliced into the model on test positions."""
    sc, tracker = cfg.sae, frame.tracker()
    rng = np.random.default_rng(cfg.seed + 1)
    eval_idx = np.sort(rng.permutation(store.split_indices("test"))[: sc.eval_positions])
    results: dict = {"sites": {}}
    lines = ["# SAE results", "", f"model: `{model.name}` (`{cfg.model.checkpoint}`), {len(eval_idx)} test positions, "
             f"architecture {sc.architecture}, F={sc.dim}, pooling {sc.token_pooling}", "",
             "Baselines: zero / mean ablate what the splice replaces: " + (
                 "the token mean, set to zero / to its average over positions, each token keeping its deviation"
                 if sc.token_pooling == "mean" else "every token's activation, set to zero / to its mean"), ""]
    for name, (sae, s) in saes.items():
        sae.eval()
        folder = save_sae(sae, sae_folder(frame.dir, s), {"model_checkpoint": str(cfg.model.checkpoint), "model_name": model.name})
        m, freq = evaluate_dictionary(model, store, eval_idx, s, sae, sc.token_pooling, sc.dense_threshold)
        png = feature_density(freq, frame.dir / f"feature_density_{name}.png", f"{s}: feature firing frequency")
        tracker.log_image(f"eval/{name}/feature_density", png)
        tracker.log({f"eval/{name}/{k}": v for k, v in m.items()}, step=step)
        if cfg.logger.log_checkpoints:
            tracker.log_artifact(folder, name=f"sae-{name}", type="sae")
        if name in calibrated:
            m.update({"calibration_score": calibrated[name]["score"], "calibration_step": calibrated[name]["step"],
                      "calibration_concepts": len(cal_names)})
        results["sites"][s] = {"folder": str(folder), **m,
                               **{f"train_{k.split('/')[-1]}": v for k, v in final.items() if k.startswith(name + "/")}}
        lines += _site_report(s, m, sc.calibration_concepts)
    return results, lines


_SUMMARY_KEYS = ("l0", "variance_explained", "dead_fraction_eval", "sae/agreement", "sae/kl", "zero/agreement",
                 "mean/agreement", "sae/kl_recovered_vs_zero", "sae/kl_recovered_vs_mean", "calibration_score",
                 "calibration_step")


def _shared_activations(cfg, sites) -> Path | None:
    """sae.shared_activations' file for this run's cached activations (None: not shared; under
    torchrun each rank holds its share, so there is nothing one file could hold)."""
    sc = cfg.sae
    if not sc.shared_activations or not sc.cache_positions or distributed.world_size() > 1:
        return None
    ckpt = Path(str(cfg.model.checkpoint)) if cfg.model.checkpoint else None
    key = {"model": OmegaConf.to_container(cfg.model, resolve=True), "data": data_fingerprint(cfg.data),
           "file": [ckpt.stat().st_size, ckpt.stat().st_mtime_ns] if ckpt and ckpt.exists() else None,
           "sites": list(sites), "positions": sc.cache_positions, "seed": cfg.seed, "elo": sc.elo,
           "pooling": sc.token_pooling}
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(sc.shared_activations) / f"activations-{name}.safetensors"


def run(cfg, frame) -> dict:
    sc = cfg.sae
    device = stage_device(cfg, "sae")
    model = skill_model(cfg, "sae", device=device)
    if len(model.spaces()) > 1:
        raise ConfigError(f"stage=sae on {model.name}: its networks have unrelated activation spaces and an SAE reads one; "
                          "train one SAE per network with model.rating=R (e.g. -m model.rating=1100,1500,1900)")
    store = distributed.main_first(lambda: open_or_build_store(cfg.data, cfg.paths.cache_dir))
    sites = _sites(cfg, model, store)
    make_chunk = ActivationChunks(model, store, store.split_indices("train"), sites, chunk_positions=sc.chunk_positions,
                                  cache_positions=sc.cache_positions, seed=cfg.seed, elo=sc.elo,
                                  token_pooling=sc.token_pooling, device=device, shared=_shared_activations(cfg, sites))
    saes = {site_slug(s): (SparseAutoencoder(_sae_config(sc, s, model.site_dim(s))), s) for s in sites}
    first = make_chunk(0)
    for sae, s in saes.values():
        sae.init_from_data(first[s])
    trainer = DictionaryTrainer(saes, sc.steps, sc.batch_size, device=device, bf16=sc.bf16, compile=sc.compile)
    resumed = start_or_resume(trainer, fingerprint(cfg), frame.dir, sc.resume)
    tracker = frame.tracker(continues=resumed is not None)
    calibrate, cal_names = _calibration(cfg, model, store, saes, device)
    final = train_dictionaries(trainer, lambda r: first if r == 0 else make_chunk(r), frame.dir, seed=cfg.seed,
                               log_every=sc.log_every, checkpoint_every=sc.checkpoint_every, tracker=tracker,
                               resume=False, calibrate=calibrate, calibrate_every=sc.calibrate_every)
    if not distributed.is_main():
        return {}
    model.to("cpu")  # the evaluation below runs on the CPU
    for sae, _ in saes.values():
        sae.cpu()
    # with calibration, the run's SAEs are the calibration's best, not the last step's
    calibrated = BestKeeper(frame.dir / "best", trainer).restore() if calibrate else {}
    results, lines = _evaluate(cfg, frame, model, store, saes, trainer.step, final, calibrated, cal_names)
    frame.report("\n".join(lines), results)
    return {f"{s}:{k}": m[k] for s, m in results["sites"].items() for k in _SUMMARY_KEYS if k in m}
