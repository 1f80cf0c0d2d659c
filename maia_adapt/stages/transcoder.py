"""stage=transcoder: sparse transcoders that imitate the FFN of one or more transformer blocks.

Per layer l: input blocks.l.hook_mlp_in, target blocks.l.hook_mlp_out, every token a sample, trained
from one forward pass over cached activations; saved as transcoders/layer_<l>/{sae_weights.safetensors,
cfg.json}. Evaluation: FVU, L0, dead fraction on test tokens; the transcoder spliced in place of the
FFN against the model and against a zero-ablated FFN (top-1 agreement, policy KL); the agreement on
the 11 x 11 (own, opponent) Elo grid and the win-probability correlation with a QQ plot.
`model=maia3` transcodes Maia-3's FFNs (its blocks are post-norm: hook_mlp_in is the normed residual).
transcoder.select=spliced_accuracy keeps, per layer, the weights of the best spliced move accuracy
(scored every transcoder.select_every steps), as the seed study chose its checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ..runtime import distributed
from ..model.activations import ActivationChunks, collect_activations
from ..data.preprocess import open_or_build_store
from ..dictionaries import DictionaryTrainer, train_dictionaries
from ..dictionaries.train import BestKeeper, DictionaryRunConfig, start_or_resume
from ..dictionaries.evaluate import evaluate_transcoder, spliced_move_accuracy
from ..dictionaries.transcoder import DECODER_NORMS, Transcoder, TranscoderConfig, save_transcoder
from ..errors import ConfigError
from ..layout import transcoder_folder
from ..reporting.plots import elo_grid_heatmap, qq_plot
from .common import fingerprint, frozen_model, skill_model, stage_device
from ..model.hooks import block_hook
from ..checks import FRACTION, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, check_section, elo, set_by_stage
from ..dictionaries.kernels import KERNELS


READS = ("layer",)  # transcoder.layers=null trains the top-level `layer`
# the model families it takes: Maia-2 only, and why not Maia-1 (the one-line error)
NOT_MAIA1 = "Maia-1 is a convolutional network with no transformer FFN (MLP) to transcode"


@dataclass
class TranscoderStageConfig(DictionaryRunConfig, TranscoderConfig):
    """stage=transcoder: transcoders of the FFNs of `layers` (null: the top-level `layer`)."""

    layers: Optional[list[int]] = None
    chunk_positions: int = 4096  # positions per chunk (x 8 tokens = samples)
    cache_positions: int = 16384  # activations of this many train positions computed once and reused
    eval_positions: int = 1000  # test positions for the spliced evaluation
    grid_positions: int = 200  # test positions for the 11 x 11 (self, opponent) agreement grid
    # the Elo conditioning of the training (and FVU test) activations: random (ours: a random bucket per
    # position) | data (the seed's: the game's own ratings) | a bucket 0..10
    elo: str = "random"
    # which weights each transcoder ends with: last (ours: the final step's) | spliced_accuracy (the
    # seed's: every select_every steps the model's top-1 accuracy against the human move with the
    # transcoder in place of its FFN, on select_positions positions of select_split; the best is kept)
    select: str = "last"
    select_every: int = 500  # the seed's: 500
    select_positions: int = 2000  # the seed's: the first 100,000 positions of the chunk just trained on
    # val (ours: validation positions) | train (the seed's: positions the transcoder trains on, those of
    # the activation cache; without one, train positions at random)
    select_split: str = "val"
    # per layer the stage sets these from `layers` and the model (saved in each cfg.json); setting
    # them here is an error (validate) rather than a silent no-op
    layer: Optional[int] = None
    site: Optional[str] = None
    target_site: Optional[str] = None
    d_in: Optional[int] = None
    d_out: Optional[int] = None


SCHEMA = TranscoderStageConfig  # cfg.transcoder
RULES = {**{k: POSITIVE_INT for k in ("dim", "batch_size", "steps", "chunk_positions", "cache_positions", "eval_positions",
                                    "select_every", "select_positions", "log_every", "checkpoint_every")},
         "aux_k": NON_NEGATIVE_INT, "k": NON_NEGATIVE_INT, "lr": POSITIVE, "dense_threshold": FRACTION,
         "elo": elo("data", "random"), "layer": set_by_stage("transcoder.layers (or layer=...)"),
         "site": set_by_stage("transcoder.layers: blocks.<l>.hook_mlp_in"),
         "target_site": set_by_stage("transcoder.layers: blocks.<l>.hook_mlp_out"),
         "d_in": set_by_stage("the model's width"), "d_out": set_by_stage("the model's width")}
CHOICES = {"kernel": KERNELS, "decoder_norm": DECODER_NORMS, "select": ("last", "spliced_accuracy"),
           "select_split": ("val", "train")}


def check(cfg) -> None:
    check_section(cfg, "transcoder", RULES, CHOICES)
    TranscoderConfig(k=cfg.transcoder.k, dim=cfg.transcoder.dim).validate()


def _config(tc, layer: int, d: int) -> TranscoderConfig:
    names = {f.name for f in dataclasses.fields(TranscoderConfig)}
    raw = OmegaConf.to_container(tc, resolve=True) if OmegaConf.is_config(tc) else dataclasses.asdict(tc)
    return TranscoderConfig(**{**{k: v for k, v in raw.items() if k in names}, "layer": layer, "d_in": d, "d_out": d,
                               "site": block_hook(layer, "hook_mlp_in"), "target_site": block_hook(layer, "hook_mlp_out")})


def _selection(cfg, model, store, make_chunk, dicts: dict, device):
    """(calibrate() scoring each transcoder spliced in, the positions it scores), or (None, 0) for
    transcoder.select=last; the seed scored the chunk it had just trained on (select_split=train)."""
    tc = cfg.transcoder
    if not (tc.select == "spliced_accuracy" and distributed.is_main()):
        return None, 0
    if tc.select_split == "train":
        pool = make_chunk.cache_idx if make_chunk.cache_idx is not None else store.split_indices("train")
    else:
        pool = store.split_indices("val")
        if not len(pool):
            raise ConfigError("transcoder.select_split=val: the data has no validation positions")
    sel_idx = np.sort(np.random.default_rng(cfg.seed + 3).permutation(pool)[: tc.select_positions])

    def calibrate() -> dict[str, float]:
        return {name: spliced_move_accuracy(model, store, sel_idx, t, t.cfg.layer, device=device)
                for name, (t, _) in dicts.items()}
    return calibrate, len(sel_idx)


_SUMMARY_KEYS = ("fvu", "l0", "dead_fraction_eval", "agreement", "kl", "zero/agreement", "grid_agreement_mean",
                 "win_correlation", "selected_spliced_accuracy", "selected_step")


def _layer_lines(l: int, res: dict, tc, n_sel: int, selected: bool, heat, qq) -> list[str]:
    corr = res["win_correlation"]
    return [f"## layer {l}", "", f"FVU {res['fvu']:.3f}, L0 {res['l0']:.1f}, dead {res['dead_fraction_eval']:.3f}; "
            f"spliced top-1 agreement {res['agreement']:.3f} (zero-ablated FFN {res['zero/agreement']:.3f}), policy KL "
            f"{res['kl']:.4f}; over the 11 x 11 Elo grid mean agreement {res['grid_agreement_mean']:.3f} (min "
            f"{res['grid_agreement_min']:.3f}); win-probability correlation {corr:.3f}.", "",
            *([f"Kept the step-{res['selected_step']} weights: spliced top-1 accuracy against the human move "
               f"{res['selected_spliced_accuracy']:.3f} on {n_sel} {tc.select_split} positions, the best "
               f"of every {tc.select_every} steps.", ""] if selected else []),
            f"![grid]({heat.name}) ![qq]({qq.name})", ""]


def _evaluate(cfg, frame, model, store, dicts: dict, selected: dict, n_sel: int, sites) -> tuple[dict, dict, list]:
    """(results.json, summary, results.md's sections): each transcoder saved and spliced in, on the CPU."""
    tc, tracker = cfg.transcoder, frame.tracker()
    ev_rng = np.random.default_rng(cfg.seed + 1)
    eval_idx = np.sort(ev_rng.permutation(store.split_indices("test"))[: tc.eval_positions])
    grid_idx = eval_idx[: tc.grid_positions]
    test_tokens = collect_activations(model, store, eval_idx, sites, batch_size=256, elo=tc.elo, token_pooling="none",
                                      seed=cfg.seed + 1, device=torch.device("cpu"))
    summary, results, lines = {}, {"layers": {}}, []
    for name, (t, _) in dicts.items():
        t.eval()
        l = t.cfg.layer
        folder = save_transcoder(t, transcoder_folder(frame.dir, l), {"model_checkpoint": str(cfg.model.checkpoint)})
        res, grid = evaluate_transcoder(model, store, eval_idx, grid_idx, t, test_tokens)
        res["folder"] = str(folder)
        if name in selected:
            res.update({"selected_spliced_accuracy": selected[name]["score"], "selected_step": selected[name]["step"]})
        wc, wh, corr = grid["win_clean"].numpy(), grid["win_hooked"].numpy(), res["win_correlation"]
        heat = elo_grid_heatmap(grid["agreement"].numpy(), frame.dir / f"agreement_grid_{name}.png",
                                f"layer {l}: top-1 agreement, transcoder spliced vs model")
        qq = qq_plot(wc, wh, frame.dir / f"win_qq_{name}.png", f"layer {l}: win probability (r = {corr:.3f})",
                     "model", "transcoder spliced")
        for png in (heat, qq):
            tracker.log_image(f"transcoder/{png.stem}", png)
        results["layers"][name] = res
        tracker.log({f"eval/{name}/{k}": v for k, v in res.items() if isinstance(v, float)})
        summary.update({f"{name}:{k}": res[k] for k in _SUMMARY_KEYS if k in res})
        lines += _layer_lines(l, res, tc, n_sel, name in selected, heat, qq)
    return results, summary, lines


def _model(cfg, device):
    """(the frozen model, its transformer blocks, their width): a Maia-2, or a Maia-3 (whose FFNs have the
    same two sites; the evaluation reads any SkillModel)."""
    if str(cfg.model.name) == "maia3":
        model = skill_model(cfg, "transcoder", device=device)
        return model, model.model.cfg.num_blocks, model.model.cfg.dim_vit
    model = frozen_model(cfg, "transcoder", NOT_MAIA1).to(device)
    return model, model.cfg.num_blocks_vit, model.cfg.dim_vit


def run(cfg, frame) -> dict:
    tc = cfg.transcoder
    layers = list(tc.layers) if tc.layers else [cfg.layer]
    device = stage_device(cfg, "transcoder")
    model, blocks, width = _model(cfg, device)
    for l in layers:
        if not 0 <= l < blocks:
            raise ConfigError(f"transcoder layer {l}: the model has blocks 0..{blocks - 1}")
    sites = [s for l in layers for s in (block_hook(l, "hook_mlp_in"), block_hook(l, "hook_mlp_out"))]
    store = distributed.main_first(lambda: open_or_build_store(cfg.data, cfg.paths.cache_dir))
    if not len(store.split_indices("train")) or not len(store.split_indices("test")):
        raise ConfigError("stage=transcoder needs train and test positions in the data")
    make_chunk = ActivationChunks(model, store, store.split_indices("train"), sites, chunk_positions=tc.chunk_positions,
                                  cache_positions=tc.cache_positions, seed=cfg.seed, elo=tc.elo, token_pooling="none",
                                  device=device, batch_size=256, verbose=False)
    dicts = {}
    for l in layers:
        t = Transcoder(_config(tc, l, width))
        cache = make_chunk.cache
        t.init_from_data(cache[block_hook(l, "hook_mlp_in")][:65536], cache[block_hook(l, "hook_mlp_out")][:65536])
        dicts[f"layer_{l}"] = (t, block_hook(l, "hook_mlp_in"))
    trainer = DictionaryTrainer(dicts, tc.steps, tc.batch_size, device=device, bf16=tc.bf16, compile=tc.compile)
    resumed = start_or_resume(trainer, fingerprint(cfg), frame.dir, tc.resume)
    tracker = frame.tracker(continues=resumed is not None)
    calibrate, n_sel = _selection(cfg, model, store, make_chunk, dicts, device)
    train_dictionaries(trainer, make_chunk, frame.dir, seed=cfg.seed, log_every=tc.log_every,
                       checkpoint_every=tc.checkpoint_every, tracker=tracker, resume=False,
                       calibrate=calibrate, calibrate_every=tc.select_every)
    if not distributed.is_main():
        return {}
    # with selection, the run's transcoders are the best-scoring ones, not the last step's
    selected = BestKeeper(frame.dir / "best", trainer).restore() if calibrate else {}
    model.to("cpu")  # the evaluation below runs on the CPU
    for t, _ in dicts.values():
        t.cpu()
    results, summary, lines = _evaluate(cfg, frame, model, store, dicts, selected, n_sel, sites)
    head = ["# Transcoders", "", f"model `{cfg.model.checkpoint}`, F={tc.dim}, k={tc.k or 'ReLU'}, skip {tc.skip}, "
            f"decoder norm {tc.decoder_norm}, checkpoint {tc.select}, activations at Elo {tc.elo}", ""]
    frame.report("\n".join(head + lines), results)
    return summary
