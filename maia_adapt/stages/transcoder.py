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
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ..runtime import distributed
from ..analysis.activations import ActivationChunks, collect_activations
from ..data.preprocess import open_or_build_store
from ..dictionaries import DictionaryTrainer, train_dictionaries
from ..dictionaries.train import BestKeeper, start_or_resume
from ..dictionaries.evaluate import evaluate_transcoder, spliced_move_accuracy
from ..dictionaries.transcoder import Transcoder, TranscoderConfig, save_transcoder
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text
from ..layout import transcoder_folder
from ..reporting.plots import elo_grid_heatmap, qq_plot
from ..runtime.resume import mark_done
from ..model.training import resolve_device
from ..runtime.tracking import Tracker
from .common import frozen_model, skill_model
from ..model.hooks import block_hook


def _config(tc, layer: int, d: int) -> TranscoderConfig:
    names = {f.name for f in dataclasses.fields(TranscoderConfig)}
    raw = OmegaConf.to_container(tc, resolve=True) if OmegaConf.is_config(tc) else dataclasses.asdict(tc)
    return TranscoderConfig(**{**{k: v for k, v in raw.items() if k in names}, "layer": layer, "d_in": d, "d_out": d,
                               "site": block_hook(layer, "hook_mlp_in"), "target_site": block_hook(layer, "hook_mlp_out")})


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    tc = cfg.transcoder
    layers = list(tc.layers) if tc.layers else [cfg.layer]
    device = resolve_device(tc.device)
    if str(cfg.model.name) == "maia3":  # its FFNs have the same two sites; the evaluation reads any SkillModel
        model = skill_model(cfg, "transcoder", device=device)
        blocks, width = model.model.cfg.num_blocks, model.model.cfg.dim_vit
    else:
        model = frozen_model(cfg, "transcoder").to(device)
        blocks, width = model.cfg.num_blocks_vit, model.cfg.dim_vit
    for l in layers:
        if not 0 <= l < blocks:
            raise ConfigError(f"transcoder layer {l}: the model has blocks 0..{blocks - 1}")
    sites = [s for l in layers for s in (block_hook(l, "hook_mlp_in"), block_hook(l, "hook_mlp_out"))]
    store = distributed.main_first(lambda: open_or_build_store(cfg.data, cfg.paths.cache_dir))
    train_idx, test_idx = store.split_indices("train"), store.split_indices("test")
    if not len(train_idx) or not len(test_idx):
        raise ConfigError("stage=transcoder needs train and test positions in the data")

    make_chunk = ActivationChunks(model, store, train_idx, sites, chunk_positions=tc.chunk_positions,
                                  cache_positions=tc.cache_positions, seed=cfg.seed, elo=tc.elo, token_pooling="none",
                                  device=device, batch_size=256, verbose=False)
    cache = make_chunk.cache

    def tokens(idx, seed) -> dict[str, torch.Tensor]:
        return collect_activations(model, store, idx, sites, batch_size=256, elo=tc.elo, token_pooling="none",
                                   seed=seed, device=device)

    dicts = {}
    for l in layers:
        t = Transcoder(_config(tc, l, width))
        t.init_from_data(cache[block_hook(l, "hook_mlp_in")][:65536], cache[block_hook(l, "hook_mlp_out")][:65536])
        dicts[f"layer_{l}"] = (t, block_hook(l, "hook_mlp_in"))
    trainer = DictionaryTrainer(dicts, tc.steps, tc.batch_size, device=device, bf16=tc.bf16, compile=tc.compile)
    resumed = start_or_resume(trainer, cfg, run_dir, tc.resume)
    tracker = Tracker(cfg, run_dir, job_type="transcoder", continues=resumed is not None)
    summary, results = {}, {"layers": {}}
    lines = ["# Transcoders", "", f"model `{cfg.model.checkpoint}`, F={tc.dim}, k={tc.k or 'ReLU'}, skip {tc.skip}, "
             f"decoder norm {tc.decoder_norm}, checkpoint {tc.select}, activations at Elo {tc.elo}", ""]
    calibrate, selected = None, {}
    if tc.select == "spliced_accuracy" and distributed.is_main():
        # the seed's checkpoint choice; it scored the chunk it had just trained on (select_split=train)
        if tc.select_split == "train":
            pool = make_chunk.cache_idx if make_chunk.cache_idx is not None else train_idx
        else:
            pool = store.split_indices("val")
            if not len(pool):
                raise ConfigError("transcoder.select_split=val: the data has no validation positions")
        sel_idx = np.sort(np.random.default_rng(cfg.seed + 3).permutation(pool)[: tc.select_positions])

        def calibrate() -> dict[str, float]:
            return {name: spliced_move_accuracy(model, store, sel_idx, t, t.cfg.layer, device=device)
                    for name, (t, _) in dicts.items()}
    try:
        train_dictionaries(trainer, make_chunk, run_dir, seed=cfg.seed, log_every=tc.log_every,
                           checkpoint_every=tc.checkpoint_every, tracker=tracker, resume=False,
                           calibrate=calibrate, calibrate_every=tc.select_every)
        if not distributed.is_main():
            return {}
        if calibrate:  # the run's transcoders are the best-scoring ones, not the last step's
            selected = BestKeeper(run_dir / "best", trainer).restore()
        model.to("cpu")  # the evaluation below runs on the CPU
        device = torch.device("cpu")
        for t, _ in dicts.values():
            t.cpu()
        ev_rng = np.random.default_rng(cfg.seed + 1)
        eval_idx = np.sort(ev_rng.permutation(test_idx)[: tc.eval_positions])
        grid_idx = eval_idx[: tc.grid_positions]
        test_tokens = tokens(eval_idx, cfg.seed + 1)
        for name, (t, _) in dicts.items():
            t.eval()
            l = t.cfg.layer
            folder = save_transcoder(t, transcoder_folder(run_dir, l), {"model_checkpoint": str(cfg.model.checkpoint)})
            res, grid = evaluate_transcoder(model, store, eval_idx, grid_idx, t, test_tokens)
            res["folder"] = str(folder)
            if name in selected:
                res.update({"selected_spliced_accuracy": selected[name]["score"], "selected_step": selected[name]["step"]})
            wc, wh, corr = grid["win_clean"].numpy(), grid["win_hooked"].numpy(), res["win_correlation"]
            heat = elo_grid_heatmap(grid["agreement"].numpy(), run_dir / f"agreement_grid_{name}.png",
                                    f"layer {l}: top-1 agreement, transcoder spliced vs model")
            qq = qq_plot(wc, wh, run_dir / f"win_qq_{name}.png", f"layer {l}: win probability (r = {corr:.3f})",
                         "model", "transcoder spliced")
            for png in (heat, qq):
                tracker.log_image(f"transcoder/{png.stem}", png)
            results["layers"][name] = res
            tracker.log({f"eval/{name}/{k}": v for k, v in res.items() if isinstance(v, float)})
            summary.update({f"{name}:{k}": res[k] for k in ("fvu", "l0", "dead_fraction_eval", "agreement", "kl",
                                                           "zero/agreement", "grid_agreement_mean", "win_correlation",
                                                           "selected_spliced_accuracy", "selected_step") if k in res})
            lines += [f"## layer {l}", "", f"FVU {res['fvu']:.3f}, L0 {res['l0']:.1f}, dead {res['dead_fraction_eval']:.3f}; "
                      f"spliced top-1 agreement {res['agreement']:.3f} (zero-ablated FFN {res['zero/agreement']:.3f}), policy KL "
                      f"{res['kl']:.4f}; over the 11 x 11 Elo grid mean agreement {res['grid_agreement_mean']:.3f} (min "
                      f"{res['grid_agreement_min']:.3f}); win-probability correlation {corr:.3f}.", "",
                      *([f"Kept the step-{res['selected_step']} weights: spliced top-1 accuracy against the human move "
                         f"{res['selected_spliced_accuracy']:.3f} on {len(sel_idx)} {tc.select_split} positions, the best "
                         f"of every {tc.select_every} steps.", ""] if name in selected else []),
                      f"![grid]({heat.name}) ![qq]({qq.name})", ""]
        atomic_write_json(run_dir / "results.json", results)
        atomic_write_text(run_dir / "results.md", "\n".join(lines))
        tracker.summary(summary)
    finally:
        tracker.finish()
    mark_done(run_dir)
    return summary
