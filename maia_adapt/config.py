"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

maia_adapt/conf/config.yaml starts from `base_config` (the `Config` dataclass) and every group YAML merges into
one of its typed fields, so a misspelt key (`train.lrr=3`) or a value of the wrong type fails before anything runs, and an
unknown option (`stage=nope`) fails with the list of valid ones.

Adding a stage: write maia_adapt/stages/<name>.py with `run(cfg, run_dir) -> dict`, add it to
stages.REGISTRY, add maia_adapt/conf/stage/<name>.yaml (`name: <name>`), and if it has settings, a dataclass
here as a field of `Config` (e.g. `sae: SAEConfig`) with its own group when there are presets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .data.pgn import GameFilter
from .dictionaries.sae import SAEConfig
from .errors import ConfigError
from .dictionaries.transcoder import TranscoderConfig
from .model.maia2 import Maia2Config
from .model.training import lr_at

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the source checkout when the package runs from one
CONF_DIR = PACKAGE_DIR / "conf"
ASSETS = PACKAGE_DIR / "assets"


def project_root() -> Path:
    """`paths.root`: the source checkout holding the package (a clone, an editable install), else the
    working directory. An installed package lives in site-packages, where no cache or data belongs."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


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


def _help_lists() -> str:
    from .helptext import for_hydra_template

    return for_hydra_template()


if not OmegaConf.has_resolver("maia_help"):  # --help's option lists (hydra.help.template in conf/config.yaml)
    OmegaConf.register_new_resolver("maia_help", _help_lists)


@dataclass
class StageConfig:
    name: str = MISSING


@dataclass
class ModelConfig(Maia2Config):
    """`model`: the architecture is Maia2Config's own fields (one definition), plus what to load."""

    name: str = "maia2"
    # official .pt file, our .safetensors file or a run directory; null = random initialisation.
    # model=maia1: the folder of maia-1100.pb.gz ... maia-1900.pb.gz (or a fine-tuned family's file)
    checkpoint: Optional[str] = None
    # model=maia1 only: one network (1100..1900) used for every Elo bucket; null = the family, bucket b
    # -> the network of its band (0 -> 1100, 10 -> 1900; see maia_adapt/model/skill.py)
    rating: Optional[int] = None
    # model=maia1 only: lc0 inputs carry the game's history (false: lc0's bare-FEN mode, position repeated)
    history: bool = True
    # model=maia3 only: the published size of a maia3-runtime .pt checkpoint (3m | 5m | 23m | 79m), which
    # such a file does not record; null for a .safetensors file written by maia-adapt (it records its own)
    size: Optional[str] = None


@dataclass
class DataConfig(GameFilter):
    """`data`: the game filters are GameFilter's own fields (one definition), plus where and how to store."""

    name: str = "lichess"
    pgn: list[str] = field(default_factory=list)
    store_dir: Optional[str] = None  # null: ${paths.cache_dir}/stores/<name>-<fingerprint>
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    workers: int = 2
    shard_size: int = 262144


@dataclass
class TrainConfig:
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 200
    max_steps: int = 500
    lr_schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    side_info_coefficient: float = 1.0
    value_coefficient: float = 1.0
    eval_every: int = 500
    eval_positions: int = 5000
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast on CUDA only
    # bfloat16 autocast on a CPU too (student and Maia-1 teachers): several times faster where the CPU
    # has bf16 matrix units (AMX, `lscpu | grep amx`), slow emulation where it has not
    cpu_bf16: bool = False
    compile: bool = False
    # batch: BatchNorm normalises each batch (SyncBatchNorm over the global batch under DDP on GPUs;
    # on CPU, where PyTorch has no SyncBatchNorm, each rank's part); frozen: running statistics only
    batchnorm: str = "batch"
    # uniform: positions as the data has them; elo_balanced: each Elo bucket of the player to move
    # equally often (the rare <1100 and >=2000 buckets are otherwise ~10x under-represented)
    sampling: str = "uniform"
    # distillation (model/distill.py): null, or maia1 = every position also supervised at
    # teacher_buckets random Elo buckets by the Maia-1 network of each bucket's band
    teacher: Optional[str] = None
    teacher_buckets: int = 4
    distill_coefficient: float = 1.0
    teacher_history: bool = True  # the teachers see the game's move history (false: lc0's bare-FEN mode)
    teacher_top_k: int = 32  # the teacher's most likely moves the KL runs over (renormalised)
    # beta >= 0: each band's target p_b^(1+beta) / pbar^beta (pbar: the nine networks' mean), which
    # exaggerates what sets a band apart from the others; 0: the network's own distribution
    teacher_amplify: float = 0.0
    # true: every band's target is a straight line in rating fitted to the nine networks per position and
    # move (distill.py smooth_targets; teacher_amplify then exaggerates the line's slope): what changes
    # steadily with skill, without the networks' separate trainings' noise
    teacher_smooth: bool = False
    # weight of a loss on the differences between a position's targets at two buckets (distill.py
    # contrast_loss): the part of the policy the Elo changes, without the part the buckets share
    teacher_contrast: float = 0.0
    # null: the teachers run on every batch (a GPU); N: their targets for N random training positions are
    # computed once and cached beside the store, and training draws from those positions (a CPU)
    teacher_cache_positions: Optional[int] = None
    # DataLoader processes preparing the next batches (0: in the training process); on CUDA the
    # batches are pinned and copied asynchronously
    loader_workers: int = 0
    resume: bool = True  # continue an interrupted run of the same settings
    init_from_checkpoint: bool = False  # start from model.checkpoint instead of random weights
    # with init_from_checkpoint: append this many transformer blocks to the checkpoint's, each starting
    # as the identity (model/maia2.py grow_transformer): more places for the Elo to route the tokens
    grow_vit_blocks: int = 0


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "maia-adapt"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the experiment name
    job_type: Optional[str] = None  # null: the stage name
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = True


@dataclass
class PathsConfig:
    root: str = "${repo_root:}"
    data_root: str = "${oc.env:MAIA_ADAPT_DATA,${paths.root}/../shared/data}"
    models_root: str = "${oc.env:MAIA_ADAPT_MODELS,${paths.root}/../shared/models}"  # published networks (Maia-1)
    cache_dir: str = "${paths.root}/cache"
    assets: str = "${assets:}"


@dataclass
class DictionaryRunConfig:
    """How stage=sae and stage=transcoder run their DictionaryTrainer."""

    log_every: int = 50
    checkpoint_every: int = 500
    resume: bool = True
    device: str = "auto"  # where the model runs and the dictionaries train: auto | cpu | cuda
    bf16: bool = True  # bfloat16 autocast of the dictionary losses (CUDA only)
    compile: bool = False  # torch.compile the dictionary losses


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
    # each SAE's site and input width come from `sites` and the model: these two only exist in the
    # saved cfg.json, and setting them here is an error (validate) rather than a silent no-op
    site: Optional[str] = None
    d_in: Optional[int] = None


@dataclass
class ActivationsConfig:
    """stage=activations: cache model (and dictionary) activations on disk, in shards."""

    sites: list[str] = "${sites}"  # the site preset's (site=...); a list here overrides it
    saes: Optional[str] = None  # a stage=sae run or SAE folder: its codes are cached too (its sites added)
    positions: Optional[int] = 20000  # positions of `split`; null: all of them
    split: str = "test"
    elo: list[str] = field(default_factory=lambda: ["data"])  # Elo conditionings: 'data' and/or buckets 0..10
    shard_positions: int = 4096  # rows per shard
    dtype: str = "float16"  # of the site activations (dictionary codes are float32, sparse)
    token_pooling: str = "mean"  # mean | none (keep the 8 tokens)
    batch_size: int = 256


@dataclass
class TransitionalConfig:
    """stage=transitional: per-bucket predictions, correct moves and transition points of a position set."""

    position_set: str = "store"  # store: positions of the data; seed: the seed study's 264 positions
    seed_path: str = "${paths.data_root}/transitional/seed_transitional_positions.json"
    positions: Optional[int] = 2000  # store positions per split of `splits`; null: all
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    # auto: the seed set's accepted moves, else Stockfish when installed, else the model's top-bucket
    # move; engine | accepted (seed only) | model force one
    oracle: str = "auto"
    engine_path: Optional[str] = None  # null: stockfish on PATH or /usr/games/stockfish
    depth: Optional[int] = 8
    seconds: Optional[float] = None  # a time limit per search instead of (or besides) the depth
    nodes: Optional[int] = None  # a node budget per search instead of (or besides) the depth
    engine_workers: int = 1  # engines searching positions side by side (one thread each)
    # every engine answer is kept here by engine, limit and position (null: none kept); a search starts
    # from a cleared engine, so an answer depends on those alone, and reruns and other models reuse it
    engine_cache: Optional[str] = "${paths.cache_dir}/engine/answers.jsonl"
    # the correct moves of a position (engine oracle): best = the engine's best move (ours); multipv =
    # every line's first move within accept_cp of the best (the seed's 30 cp over its database's lines)
    accept: str = "best"
    accept_cp: int = 30
    multipv: int = 1  # lines per search (the seed's database holds up to 5; accept=multipv needs >= 2)
    blunder_cp: int = 150  # the bucket-0 move loses at least this many centipawns: a blunder
    # loss: the bucket-0 move loses >= blunder_cp against the best (ours); seed: the seed's test
    # |eval before - eval after| > blunder_cp with each eval for its own side to move (a sign bug)
    blunder_rule: str = "loss"
    # which rows the dataset keeps: none = every position (ours); monotone = the seed's transitional
    # rows (wrong below one bucket, right from it up); monotone_blunder = of those, a blundering bucket 0
    require: str = "none"
    oppo_bucket: Optional[int] = None  # null: opponent bucket = own bucket (the study's)
    batch_size: int = 512


@dataclass
class FinetuneConfig:
    """stage=finetune: calibrate low-skill levels toward the correct move on concept positions."""

    transitional: Optional[str] = None  # a stage=transitional run directory or its transitional.csv
    # positions whose active threat concepts include this one ('defensive@e4') or any of this kind
    # ('defensive', the study's); '' = every position. Per-concept variants: a multirun over it
    concept: str = "defensive"
    trainable: str = "all"  # all | policy_head (fc_1 only) | heads | transformer | prefixes 'fc_1.,transformer.'
    freeze_elo: bool = True
    steps: int = 300  # with epochs null
    lr: float = 3.0e-4
    batch_size: int = 128  # (position, bucket) pairs per step; the seed: 256 (revision), 8192 (NeurIPS checkpoints)
    side_info_weight: float = 1.0  # the seed: 1 (NeurIPS full fine-tune), 0 (its head-only fine-tunes)
    eval_every: int = 25  # validation loss (every bucket) for choosing the checkpoint; with epochs null
    heldout_positions: int = 2000  # ordinary test positions of `data`: is human-likeness kept? 0: skip
    # The seed study's choices, each a switch on its own (experiments/finetune_study/README.md, "The
    # seed's protocol"); the defaults are ours.
    weight_decay: float = 0.0  # AdamW's; the seed: 1e-5
    # null: `steps` steps; N: N epochs, each one pass over the train positions x 11 buckets
    # (ceil(11 n / batch_size) steps), validated after each; the seed's revision: at most 20
    epochs: Optional[int] = None
    # null: no early stopping (the seed's NeurIPS full fine-tune); P: stop after P validations in a row
    # without a new lowest validation loss (the revision: 3, per epoch)
    patience: Optional[int] = None
    buckets: str = "random"  # random: each pair's bucket drawn at random | all_each_epoch: every pair once a pass (the seed)
    # best: the lowest-validation-loss weights | last: the last step's (the seed's NeurIPS head-only test,
    # and in effect its revision, whose "best state" is a shallow copy of the live weights)
    keep: str = "best"
    # true: the untouched model (validated before any step) competes for keep=best and is where patience
    # starts counting; false: the seed's (its best validation loss starts at infinity)
    untouched_is_candidate: bool = True
    # frozen_batchnorm: dropout on, BatchNorm on its running statistics | train: PyTorch's train mode
    # (the seed's full fine-tune) | eval: no dropout, the frozen trunk as at inference (its head-only ones)
    train_mode: str = "frozen_batchnorm"
    # a (concept's) dataset with fewer train positions is skipped: results.md says so and the run
    # ends without error (a multirun over concepts goes on); the seed's revision: 500
    min_train_rows: int = 0
    # which rows the fine-tune uses: all | transitional (the seed's is_transitional) | blundered_transitional
    row_filter: str = "all"
    target: str = "dataset"  # dataset: the row's correct move (the seed's) | top_bucket: the model's own bucket-10 move
    # the rows of the headline mean_shift (paired): all test rows | transitional (those transitional
    # before fine-tuning); results.md reports both, and the seed's unpaired metric beside them
    score_rows: str = "all"


@dataclass
class ProbeConfig:
    """stage=probe: linear probes per concept and Elo bucket (awareness), and the logit lens."""

    sites: list[str] = "${sites}"  # the site preset's (site=...); a list here overrides it
    # of threat, strategic, capture, study (the study's own 13 strategic concepts), seed172 (the 172 of
    # the study's revision; seed172:<category> for one of its 5 categories), board-state
    families: list[str] = field(default_factory=lambda: ["threat", "strategic"])
    train_positions: int = 4000  # from the train split
    test_positions: int = 2000  # from the test split (other games)
    buckets: list[int] = field(default_factory=lambda: list(range(11)))
    min_positives: int = 20  # concepts with fewer positives (or negatives) in train or test are left out
    l2: float = 1.0e-3  # penalty=l2 without c_grid: strength of l2/2 |w|^2 on the (class-weighted) mean loss
    shuffled_control: bool = True
    logit_lens: bool = True
    batch_size: int = 256
    # The seed study's probe choices, each on its own (experiments/probe_study/README.md, "The seed's
    # probes"); the defaults are the probe above.
    penalty: str = "l2"  # l2 | l1 (the seed's, both versions)
    l1: float = 1.0e-3  # penalty=l1 without c_grid: strength of l1 |w|_1 on the mean loss
    # inverse strengths C, one chosen per (concept, bucket) on the validation part by select_by
    # (first in this order on ties); null/empty: the fixed l2 / l1
    c_grid: Optional[list[float]] = None
    c_scale: str = "sum"  # how C maps to the strength: sum (sklearn: 1 / (C n)) | mean (the revision: 1 / C)
    select_by: str = "metric"  # the validation score that chooses C: metric (probe.metric's) | auc | accuracy | r2
    metric: str = "auc"  # reported per bucket, with top minus bottom: auc | accuracy | r2 (AUC is always reported too)
    penalize_bias: bool = False  # true: the penalty also takes the bias (liblinear and the revision)
    standardize: bool = True  # false: fit the raw activations (the seed's)
    class_balance: bool = True  # false: unweighted loss (the seed's, which balances by sampling instead)
    # split: train_positions of train games, test_positions of test games (val_positions of val games
    # with a c_grid) | balanced: the revision's per-concept balanced positions from one pool of
    # pool_positions train positions, split by split_fractions | balanced_splits: the NeurIPS probes'
    # balancing within train_positions / val_positions / test_positions of each split
    sampling: str = "split"
    val_positions: int = 1000  # from the val split (sampling=split with a c_grid, balanced_splits)
    pool_positions: int = 100000  # sampling=balanced: the pool, from the train split
    max_per_class: Optional[int] = 5000  # balanced sampling: positives (and negatives) per concept; null: all
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # sampling=balanced


@dataclass
class InterventionConfig:
    """stage=intervention: amplify concept features / add directions and measure transition-point shifts."""

    # sae (amplify the concept's top SAE features) | probe (probe direction) | steering (mean difference) |
    # elo_heads (a Maia-2's skill heads given bucket elo_to's Elo at site blocks.<b>.hook_elo_q: a reference)
    kind: str = "sae"
    transitional: Optional[str] = None  # stage=transitional run (or CSV): train rows choose, test rows judge
    concept: str = "defensive"  # each position is intervened on for its active concepts of this kind (or one concept)
    site: str = "blocks.${layer}.hook_resid_post"
    saes: Optional[str] = None  # kind=sae: the stage=sae run (or SAE folder) whose SAE reads `site`
    threats: Optional[str] = None  # kind=sae: the stage=threats run whose detection table ranks the features
    probes: Optional[str] = None  # kind=probe: the stage=probe run
    probe_bucket: int = 10  # kind=probe: which bucket's probe gives the direction
    # sae: feature multiplier; probe/steering: x steering norm; elo_heads: how far toward elo_to's Elo term (1: replaced)
    strengths: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    top_n: list[int] = field(default_factory=lambda: [1, 3, 5])  # grid; kind=sae: features per concept; elo_heads: heads
    elo_to: int = 10  # kind=elo_heads: the bucket whose Elo the heads are given
    # kind=sae, how the edited codes are written back: keep (the reconstruction error kept: strength 1
    # changes nothing), drop (the error of the token mean dropped), replace (the seed's: every token
    # replaced by the edited reconstruction of the mean)
    error: str = "keep"
    threshold: bool = True  # kind=sae: encode with the SAE's own activation (false: a plain ReLU, the NeurIPS seed's)
    # which setting of the grid each test row uses, chosen on the train rows: global (one for all),
    # bucket (one per Elo bucket), cell (one per (concept, Elo bucket): the seed's per (square, Elo))
    select: str = "bucket"
    # the rows: concept (each row with concepts of the kind, once) | resolves_square (the seed's: one row
    # per (position, square) whose correct move resolves that square's threat)
    positions: str = "concept"
    # the correct move: dataset (the transitional dataset's) | top_bucket (the seed's: the unedited model's
    # own bucket-10 move)
    correct: str = "dataset"
    control: str = "matched"  # matched (features of matched firing frequency / a random direction) | random (uniform) | none
    keep_error: Optional[bool] = None  # renamed: intervention.error (validate says so)
    per_bucket: Optional[bool] = None  # renamed: intervention.select (validate says so)
    n_boot: int = 1000
    heldout_positions: int = 1000  # ordinary test positions of `data`: is the played (human) move still predicted?
    batch_size: int = 256


@dataclass
class ThreatsConfig:
    """stage=threats: which dictionary features detect which concepts (ROC-AUC)."""

    saes: Optional[str] = None  # a stage=sae run directory or one SAE folder; null: raw units of `sites`
    sites: list[str] = field(default_factory=list)  # with saes=null: hook names whose units are the features
    # store: positions of the data's `split`; puzzles / sts: the lichess puzzles / the Strategic Test
    # Suite, whose themes are added as concepts (family "puzzle theme" / "sts theme")
    position_set: str = "store"
    puzzles_path: str = "${paths.data_root}/puzzles/lichess_puzzles_5k.csv"
    sts_path: str = "${paths.data_root}/sts/STS1-STS15_LAN_v3.epd"
    positions: int = 4000  # positions scored (half selection, half held-out)
    split: str = "test"
    elo: str = "data"  # Elo conditioning of the model: data | random | 0..10 (data on puzzles/sts: bucket 5)
    # the study family (its 13 strategic concepts as its code defines them) and seed172 (the 172 concepts
    # of its revision, or seed172:<category>) are for reproducing it
    families: list[str] = field(default_factory=lambda: ["threat", "strategic", "capture", "board-state"])
    min_positives: int = 10  # concepts with fewer positive (or negative) positions are left out
    heldout_fraction: float = 0.5
    top_k: int = 5  # features kept per concept
    auc_threshold: float = 0.7  # the study's: a concept counts as detected at held-out AUC >= this
    n_null: int = 20  # label shuffles for the null of the best selection AUC
    n_boot: int = 200  # bootstrap resamples of the held-out AUC
    max_per_class: Optional[int] = None  # balanced samples: up to this many positives and negatives per concept
    batch_size: int = 512
    dashboards: int = 24  # HTML pages for up to this many features (the best detectors); 0: none
    dashboard_top_n: int = 12  # boards per feature page
    elo_profile_positions: int = 256  # positions run at each of the 11 Elo buckets for the Elo plot
    # positions the dashboards' logit effects average over (each feature's decoder direction added at its
    # site, the change of every legal move's log-probability); 0: no logit effects
    logit_positions: int = 64
    # a stage=threats run directory (another subject, or this model at another threats.elo): results.md
    # adds, per site both scored, this run's held-out AUC minus that run's, paired over concepts
    compare_to: Optional[str] = None


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


@dataclass
class CircuitsConfig:
    """stage=circuits: layer-0 -> layer-1 transcoder feature circuits and their skill dependence."""

    transcoders: Optional[str] = None  # a stage=transcoder run with transcoders/layer_0 and layer_1
    finetuned: Optional[str] = None  # a calibrated model (e.g. a stage=finetune run) to compare with
    positions: int = 1000  # test positions
    top_down: int = 12  # layer-1 features kept (most skill-relevant / most changed by fine-tuning)
    top_up: int = 40  # layer-0 candidates per circuit (most skill-relevant)
    edges_per_node: int = 3
    dashboards: bool = True
    batch_size: int = 256
    # where skill enters (analysis/patching.py): test positions run at < 1100 and >= 2000, then at
    # < 1100 with each block's sites and each attention head taken from the >= 2000 run; 0: skip
    patching_positions: int = 2000


@dataclass
class EvaluateConfig:
    """stage=evaluate (and the end of stage=train): move accuracy and the skill matrix of any model."""

    split: str = "test"  # train | val | test | all
    # positions drawn uniformly at random from the split (so `top1` is the split's own accuracy and each
    # bucket gets rows in proportion to its share); null: every position of the split
    positions: Optional[int] = 20000
    # Maia-1 only: inputs with the game's history (null: model.history)
    history: Optional[bool] = None
    # the opponent bucket under each conditioning column: data (the real opponent's; default) | same (= column)
    oppo: str = "data"
    n_boot: int = 1000  # paired bootstrap resamples of games for every 95% interval
    batch_size: int = 512
    device: str = "auto"  # auto | cpu | cuda
    # model=maia3 only (a continuous Elo): also sweep these ratings (rating_sweep.csv: top-1 per player
    # bucket at each); null: the 11 buckets' skill matrix only
    ratings: Optional[list[float]] = None


@dataclass
class RungConfig:
    name: str = MISSING
    what: str = ""  # the switch in words, for the table
    # keys switched back to our presets' values at this rung (a key ending in '.' names every key of the
    # protocol under it); each must be one the protocol sets
    keys: list[str] = field(default_factory=list)


@dataclass
class LadderConfig:
    """stage=ladder: the study from the seed's protocol to ours, one switch a rung (maia_adapt/ladder.py)."""

    protocol: str = "seed_neurips"  # rung 0: a protocol of maia_adapt/conf/protocol
    rungs: list[RungConfig] = field(default_factory=list)
    # overrides every step gets, after the protocol and the rungs (sizes for the machine); a rung may not
    # switch a key set here
    common: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=lambda: ["intervention", "finetune"])  # intervention is always run
    # per model family (maia1 | maia2): {"all": overrides for every step, "<rung>": from that rung on}
    family_overrides: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False  # print each step's command, run nothing
    # run nothing, write the table from the steps finished so far (a ladder stopped part way; '-' where
    # a rung's step has not run)
    report: bool = False


@dataclass
class Config:
    stage: StageConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    logger: LoggerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sae: SAEStageConfig = field(default_factory=SAEStageConfig)
    threats: ThreatsConfig = field(default_factory=ThreatsConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    transitional: TransitionalConfig = field(default_factory=TransitionalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    transcoder: TranscoderStageConfig = field(default_factory=TranscoderStageConfig)
    circuits: CircuitsConfig = field(default_factory=CircuitsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    layer: int = 1  # transformer block used by the site presets (site=resid_post|mlp|attention|study)
    # hook sites of sae.sites, activations.sites and probe.sites unless one sets its own: set by the
    # site group (maia_adapt/conf/site), or directly (sites=[blocks.0.hook_mlp_out])
    sites: list[str] = field(default_factory=lambda: ["blocks.${layer}.hook_resid_post"])
    experiment: str = "default"  # experiment name: W&B group and the run's label
    # the study's protocol (set by the protocol group: maia_adapt/conf/protocol): ours, or the seed's
    # (seed_neurips, seed_revision) with every choice of its code; part of the presets' run directories
    protocol: str = "ours"
    seed: int = 0
    # the summary entry a sweeper optimises (e.g. 'blocks.1.hook_resid_post:sae/kl_recovered_vs_zero')
    objective: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the run record


# value ranges the schema's types cannot express: (keys, test, what was expected)
_POSITIVE_INT = ("train.batch_size", "train.max_steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
                 "sae.dim", "sae.batch_size", "sae.steps", "sae.chunk_positions", "sae.eval_positions", "sae.log_every",
                 "sae.checkpoint_every", "transcoder.dim", "transcoder.batch_size", "transcoder.steps",
                 "transcoder.chunk_positions", "transcoder.cache_positions", "transcoder.eval_positions",
                 "transcoder.select_every", "transcoder.select_positions",
                 "transcoder.log_every", "transcoder.checkpoint_every", "finetune.steps", "finetune.batch_size",
                 "finetune.eval_every", "finetune.epochs", "finetune.patience",
                 "probe.train_positions", "probe.test_positions", "probe.val_positions", "probe.pool_positions",
                 "probe.max_per_class", "threats.positions", "activations.shard_positions",
                 "model.dim_cnn", "model.num_blocks_cnn", "model.dim_vit", "model.num_blocks_vit", "model.heads",
                 "model.dim_head", "model.elo_dim", "data.workers", "data.shard_size", "evaluate.positions",
                 "evaluate.n_boot", "evaluate.batch_size", "train.teacher_top_k", "train.teacher_cache_positions",
                 "transitional.accept_cp", "transitional.multipv", "transitional.engine_workers", "transitional.nodes",
                 "transitional.depth")
_NON_NEGATIVE_INT = ("train.warmup_steps", "train.grow_vit_blocks", "train.loader_workers", "train.eval_positions", "sae.cache_positions", "sae.calibrate_every",
                     "sae.aux_k", "transcoder.aux_k", "transcoder.k", "data.first_n_plies", "threats.n_null",
                     "threats.n_boot", "threats.dashboards", "finetune.min_train_rows", "finetune.heldout_positions")
_POSITIVE_FLOAT = ("train.lr", "sae.lr", "transcoder.lr", "finetune.lr")
_NON_NEGATIVE_FLOAT = ("train.teacher_amplify", "train.teacher_contrast", "train.distill_coefficient",
                       "finetune.weight_decay", "finetune.side_info_weight", "probe.l1")
_FRACTION = ("data.val_fraction", "data.test_fraction", "model.dropout_cnn", "model.dropout_vit", "model.dropout",
             "train.min_lr_ratio", "threats.heldout_fraction", "sae.dense_threshold", "transcoder.dense_threshold")
# Elo settings: (key, words accepted besides a bucket 0..10); a list value is checked item by item
_ELO = (("threats.elo", ("data", "random")), ("sae.elo", ("data", "random")), ("transcoder.elo", ("data", "random")),
        ("activations.elo", ("data",)),
        ("probe.buckets", ()), ("intervention.probe_bucket", ()), ("intervention.elo_to", ()),
        ("transitional.oppo_bucket", ()))


# keys a stage sets itself: (key, where its value comes from)
_SET_BY_STAGE = (("sae.site", "sae.sites (or site=...)"), ("sae.d_in", "the model's width at each site"),
                 ("transcoder.layer", "transcoder.layers (or layer=...)"),
                 ("transcoder.site", "transcoder.layers: blocks.<l>.hook_mlp_in"),
                 ("transcoder.target_site", "transcoder.layers: blocks.<l>.hook_mlp_out"),
                 ("transcoder.d_in", "the model's width"), ("transcoder.d_out", "the model's width"))


def _choices() -> dict[str, tuple]:
    """Settings that take one of a few words: {key: the words}, from where each word is handled."""
    from .data.store import SPLITS
    from .dictionaries.kernels import KERNELS
    from .dictionaries.sae import ARCHITECTURES
    from .analysis.evaluation import SPLITS as EVAL_SPLITS
    from .analysis.interventions import CONTROLS, CORRECT, ERROR_MODES, INTERVENTIONS, POSITIONS, SELECT
    from .analysis.transitional import ACCEPT, BLUNDER_RULES, REQUIRE
    from .analysis.calibration import BUCKET_SAMPLING, KEEP, ROW_FILTERS, SCORE_ROWS, TARGETS, TRAIN_MODES
    from .analysis.probes import C_SCALES, METRICS, PENALTIES, SAMPLINGS
    from .dictionaries.transcoder import DECODER_NORMS

    pooling = ("mean", "none")
    return {
        "sae.architecture": ARCHITECTURES, "sae.kernel": KERNELS, "transcoder.kernel": KERNELS,
        "sae.b_dec_init": ("mean", "median", "zeros"), "sae.token_pooling": pooling,
        "sae.calibration_concepts": ("board", "threats", "all"),
        "activations.token_pooling": pooling, "activations.dtype": ("float16", "float32"), "activations.split": SPLITS,
        "threats.split": SPLITS, "threats.position_set": ("store", "puzzles", "sts"),
        "transitional.position_set": ("store", "seed"), "transitional.oracle": ("auto", "engine", "accepted", "model"),
        "transitional.accept": ACCEPT, "transitional.require": REQUIRE, "transitional.blunder_rule": BLUNDER_RULES,
        "intervention.kind": tuple(INTERVENTIONS), "intervention.error": ERROR_MODES, "intervention.select": SELECT,
        "intervention.positions": POSITIONS, "intervention.correct": CORRECT, "intervention.control": CONTROLS,
        "evaluate.split": EVAL_SPLITS, "evaluate.oppo": ("data", "same"),
        "train.batchnorm": ("batch", "frozen"),
        "transcoder.decoder_norm": DECODER_NORMS, "transcoder.select": ("last", "spliced_accuracy"),
        "transcoder.select_split": ("val", "train"),
        "finetune.buckets": BUCKET_SAMPLING, "finetune.keep": KEEP, "finetune.train_mode": TRAIN_MODES,
        "finetune.row_filter": ROW_FILTERS, "finetune.target": TARGETS, "finetune.score_rows": SCORE_ROWS,
        "train.sampling": ("uniform", "elo_balanced"), "logger.backend": ("wandb", "none"),
        "probe.penalty": PENALTIES, "probe.c_scale": C_SCALES, "probe.metric": METRICS,
        "probe.select_by": ("metric", *METRICS), "probe.sampling": SAMPLINGS,
        "logger.mode": ("offline", "online", "disabled"),
    }


def _validate_probe(pc, bad) -> None:
    """probe.c_grid and probe.split_fractions, and the seed-choice keys that only act with another
    setting: a value that would do nothing fails, naming what it needs."""
    import math

    grid = list(pc.c_grid or [])
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in grid):
        bad("probe.c_grid", grid, "a list of inverse strengths C > 0, or null/[] for the fixed probe.l2 / probe.l1")
    f = list(pc.split_fractions)
    if len(f) != 3 or not all(0 < v < 1 for v in f) or abs(sum(f) - 1) > 1e-6:
        bad("probe.split_fractions", f, "three fractions > 0 (train, val, test) that sum to 1")
    default = ProbeConfig()
    needs = (("l1", pc.penalty == "l1" and not grid, "probe.penalty=l1 and no probe.c_grid"),
             ("l2", pc.penalty == "l2" and not grid, "probe.penalty=l2 and no probe.c_grid"),
             ("c_scale", bool(grid), "a probe.c_grid"), ("select_by", bool(grid), "a probe.c_grid"),
             ("val_positions", pc.sampling == "balanced_splits" or (pc.sampling == "split" and bool(grid)),
              "probe.sampling=balanced_splits, or split with a probe.c_grid"),
             ("train_positions", pc.sampling != "balanced", "probe.sampling split or balanced_splits"),
             ("test_positions", pc.sampling != "balanced", "probe.sampling split or balanced_splits"),
             ("pool_positions", pc.sampling == "balanced", "probe.sampling=balanced"),
             ("max_per_class", pc.sampling != "split", "probe.sampling balanced or balanced_splits"),
             ("split_fractions", pc.sampling == "balanced", "probe.sampling=balanced"))
    for key, used, what in needs:
        if not used and pc[key] != getattr(default, key):
            bad(f"probe.{key}", pc[key] if not OmegaConf.is_list(pc[key]) else list(pc[key]),
                f"its default unless {what} (otherwise it does nothing)")


def _is_bucket(v) -> bool:
    return str(v).strip().isdigit() and 0 <= int(v) < 11


def validate(cfg) -> None:
    """Fail before a stage starts, naming the key, when a value is outside what it can mean."""
    import math

    def bad(key, value, expected):
        raise ConfigError(f"{key}={value!r}: expected {expected}")

    for key in _POSITIVE_INT:
        v = OmegaConf.select(cfg, key)
        if v is not None and v < 1:
            bad(key, v, "a positive integer")
    for key in _NON_NEGATIVE_INT:
        v = OmegaConf.select(cfg, key)
        if v is not None and v < 0:
            bad(key, v, "0 or more")
    for key in _POSITIVE_FLOAT:
        v = OmegaConf.select(cfg, key)
        if v is not None and not (math.isfinite(v) and v > 0):
            bad(key, v, "a finite number > 0")
    for key in _NON_NEGATIVE_FLOAT:
        v = OmegaConf.select(cfg, key)
        if v is not None and not (math.isfinite(v) and v >= 0):
            bad(key, v, "a finite number >= 0")
    for key in _FRACTION:
        v = OmegaConf.select(cfg, key)
        if v is not None and not (math.isfinite(v) and 0 <= v <= 1):
            bad(key, v, "a fraction between 0 and 1")
    for key, words in _ELO:
        values = OmegaConf.select(cfg, key)
        for v in values if OmegaConf.is_list(values) else [values]:
            if v is not None and v not in words and not _is_bucket(v):
                bad(key, v, "an Elo bucket 0..10" + "".join(f" or '{w}'" for w in words))
    for key, source in _SET_BY_STAGE:
        v = OmegaConf.select(cfg, key)
        if v is not None:
            raise ConfigError(f"{key}={v!r}: the stage sets it from {source}, so a value here would do nothing; remove it")
    for key, words in _choices().items():
        v = OmegaConf.select(cfg, key)
        if v not in words:
            bad(key, v, "one of " + ", ".join(words))
    _validate_probe(cfg.probe, bad)
    from .concepts import check_families

    check_families(cfg.threats.families, "threats.families")
    check_families(cfg.probe.families, "probe.families")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        bad("data.val_fraction + data.test_fraction", cfg.data.val_fraction + cfg.data.test_fraction, "less than 1")
    SAEConfig(architecture=cfg.sae.architecture, k=cfg.sae.k, dim=cfg.sae.dim).validate()
    TranscoderConfig(k=cfg.transcoder.k, dim=cfg.transcoder.dim).validate()
    if cfg.model.rating is not None and cfg.model.rating not in range(1100, 2000, 100):
        bad("model.rating", cfg.model.rating, "a Maia-1 band 1100, 1200, ..., 1900 or null")
    if cfg.model.rating is not None and cfg.model.name != "maia1":
        bad("model.rating", cfg.model.rating, "null unless model=maia1 (Maia-2 is conditioned by Elo buckets)")
    if cfg.model.size is not None:
        from .model.maia3 import SIZES

        if cfg.model.name != "maia3":
            bad("model.size", cfg.model.size, "null unless model=maia3 (a Maia-2's shape is its own model.* keys)")
        if str(cfg.model.size).lower() not in SIZES:
            bad("model.size", cfg.model.size, "a published Maia-3 size: " + ", ".join(SIZES))
    if cfg.evaluate.ratings is not None:
        if cfg.model.name != "maia3":
            bad("evaluate.ratings", list(cfg.evaluate.ratings), "null unless model=maia3 (the other families take Elo "
                "buckets only)")
        if not cfg.evaluate.ratings or not all(0 <= r <= 5000 for r in cfg.evaluate.ratings):
            bad("evaluate.ratings", list(cfg.evaluate.ratings), "a non-empty list of ratings 0..5000 (Maia-3 clamps to it)")
    if cfg.train.teacher not in (None, "maia1"):
        bad("train.teacher", cfg.train.teacher, "null or maia1")
    if not 1 <= cfg.train.teacher_buckets <= 11:
        bad("train.teacher_buckets", cfg.train.teacher_buckets, "a number of Elo buckets 1..11")
    for key in ("teacher_amplify", "teacher_contrast", "teacher_smooth"):
        if cfg.train[key] and not cfg.train.teacher:
            bad(f"train.{key}", cfg.train[key], "its default unless train.teacher=maia1 (it shapes the teacher's targets)")
    if cfg.train.teacher_contrast and cfg.train.teacher_buckets < 2:
        bad("train.teacher_contrast", cfg.train.teacher_contrast, "0 unless train.teacher_buckets >= 2 (it compares "
            "a position's conditionings)")
    if cfg.train.grow_vit_blocks and not cfg.train.init_from_checkpoint:
        bad("train.grow_vit_blocks", cfg.train.grow_vit_blocks, "0 unless train.init_from_checkpoint=true (it grows a "
            "trained model; one from random weights takes model.num_blocks_vit)")
    for old, new in (("keep_error", "intervention.error=keep|drop|replace (keep_error=false was drop)"),
                     ("per_bucket", "intervention.select=global|bucket|cell (per_bucket=false was global)")):
        if cfg.intervention[old] is not None:
            bad(f"intervention.{old}", cfg.intervention[old], f"nothing: it is now {new}")
    if cfg.transitional.accept == "multipv" and cfg.transitional.multipv < 2:
        bad("transitional.multipv", cfg.transitional.multipv, "2 or more with transitional.accept=multipv (one line "
            "is the best move only; the seed's database held up to 5)")
    if cfg.stage.name == "train" and not cfg.train.init_from_checkpoint and cfg.model.checkpoint \
            and cfg.model.checkpoint != _preset_checkpoint(cfg):
        raise ConfigError(f"model.checkpoint={cfg.model.checkpoint!r}: stage=train starts from random weights unless "
                          "train.init_from_checkpoint=true, so the file would not be used: add "
                          "train.init_from_checkpoint=true to train from it, or drop model.checkpoint")
    lr_at(0, 1.0, 0, 1, cfg.train.lr_schedule)  # the schedule's own check, before the first step


def _preset_checkpoint(cfg):
    """model.checkpoint as the model preset sets it, resolved in this config (it may name ${paths.assets}):
    a preset's file is the architecture's trained copy, which stage=train may leave unused."""
    import copy

    preset = OmegaConf.to_container(_model_preset(str(cfg.model.name)), resolve=False).get("checkpoint")
    c = copy.deepcopy(cfg)
    OmegaConf.update(c, "model.checkpoint", preset, merge=False)
    return c.model.checkpoint


# model.* keys that give the network's shape: they build a new model; a loaded one has the file's
MODEL_SHAPE = ("input_channels", "dim_cnn", "num_blocks_cnn", "dim_vit", "num_blocks_vit", "vit_length", "elo_dim",
               "heads", "dim_head")


def _model_preset(name: str):
    """A model preset's own values, merged over those of the presets it extends (its `defaults`)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        return OmegaConf.create({})
    node = OmegaConf.load(path)
    parents = [d for d in node.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.merge(*(_model_preset(p) for p in parents), node)


def check_model_shape(model_cfg, model) -> None:
    """Fail, naming the key and both values, when a shape value set for this run (one that differs
    from its model preset's) disagrees with the loaded checkpoint, instead of silently loading the
    file's shape. `model`: a Maia2, a Maia2Skill or a Maia-1 family (which has no such keys)."""
    loaded = getattr(getattr(model, "model", model), "cfg", None)
    if loaded is None or not all(hasattr(loaded, k) for k in MODEL_SHAPE):
        return
    preset = OmegaConf.merge(OmegaConf.structured(ModelConfig), _model_preset(model_cfg.name))
    for key in MODEL_SHAPE:
        wanted, has = model_cfg[key], getattr(loaded, key)
        if wanted != preset[key] and wanted != has:
            raise ConfigError(f"model.{key}={wanted}: the checkpoint {model_cfg.checkpoint} has {key}={has} "
                              f"(a loaded model's shape is the file's: drop model.{key})")


def register() -> None:
    # group YAMLs merge into the typed fields of Config, which validates their keys and types
    ConfigStore.instance().store(name="base_config", node=Config)


register()
