"""One skill-conditioned model interface that Maia-2, the Maia-1 family and Maia-3 satisfy.

A stage that takes a `SkillModel` works with either: it asks the model for its inputs
(`inputs(store, indices)` or `inputs_from_boards(boards)`), then for policy logits in Maia-2's
1880-move vocabulary (side-to-move frame, the store's `move`/`legal` indexing) under an Elo
conditioning given per row as buckets 0..10.

- `Maia2Skill` wraps a `Maia2`: the buckets are its Elo embedding inputs (self and opponent).
- `Maia1Family` wraps the published Maia-1 networks (one per rating band). "Elo bucket b" means the
  network of that band: buckets 1..9 -> maia-1100 .. maia-1900; bucket 0 (<1100) -> maia-1100 and
  bucket 10 (>=2000) -> maia-1900, the nearest band there is. The opponent bucket is ignored (Maia-1
  has no opponent input). A batch with mixed buckets routes each row to its network. With one
  network (`model.rating=1500`) every bucket uses it. `history=False` feeds lc0's bare-FEN input
  (the current position repeated in all 8 history slots) instead of the game's real history.
- `Maia3Skill` (model/maia3_skill.py) wraps a `Maia3`, whose Elo is a continuous rating: bucket b
  means the rating of its midpoint (0 -> 1000, 1..9 -> 1150..1950, 10 -> 2100).

`conditions()` lists the distinct behaviours over the 11 buckets, so a caller that needs all 11
(the skill matrix) runs each distinct network once: 11 passes for Maia-2, 9 for the family, 1 for
a single network.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, runtime_checkable

import chess
import numpy as np
import torch

from ..encoding import BUCKET_NAMES, NUM_BUCKETS, board_planes, legal_mask
from ..errors import CheckpointError, ConfigError
from . import maia1_sites, maia2_sites
from .hooks import names_argument, select_hook_names
from .one_network import OneNetwork

MAIA1_RATINGS = tuple(range(1100, 2000, 100))


def maia1_rating_for_bucket(bucket: int) -> int:
    """The Maia-1 band standing for a Maia-2 Elo bucket: 1..9 -> 1100..1900, 0 -> 1100, 10 -> 1900."""
    if not 0 <= int(bucket) < NUM_BUCKETS:
        raise ValueError(f"Elo bucket {bucket} out of range: expected 0..{NUM_BUCKETS - 1}")
    return 1000 + 100 * min(max(int(bucket), 1), 9)


@runtime_checkable
class SkillModel(Protocol):
    name: str
    buckets: tuple[int, ...]  # the Elo buckets it can be conditioned on (0..10)
    hook_names: list[str]

    def inputs(self, store, indices) -> dict[str, torch.Tensor]:
        """Model inputs plus `legal` [B,1880], `move`, `elo_self`, `elo_oppo`, `index` for store rows."""

    def inputs_from_boards(self, boards: list[chess.Board]) -> dict[str, torch.Tensor]:
        """Model inputs plus `legal` for python-chess boards (their move stacks are the history)."""

    def policy_logits(self, inputs: dict, elo_self, elo_oppo) -> torch.Tensor:
        """[B,1880] logits in Maia-2's vocabulary; illegal moves are -inf or left for the caller to mask."""

    def value(self, inputs: dict, elo_self, elo_oppo) -> torch.Tensor:
        """[B] expected result for the side to move, in [-1, 1]."""

    def policy_logits_by_condition(self, inputs: dict, conditions) -> Iterator[torch.Tensor]:
        """`policy_logits` under each (elo_self, elo_oppo) of `conditions` in turn, sharing what does
        not depend on the Elo (a Maia-2's CNN trunk runs once for all of them)."""

    def conditions(self) -> list[tuple[int, list[int]]]:
        """(a representative bucket, every bucket that behaves identically) for the 11 buckets."""

    def label(self, bucket: int) -> str:
        """What conditioning on `bucket` means, for tables and plots ('<1100', 'maia-1100')."""

    def hooks(self, fwd_hooks: Iterable[tuple[str, object]]):
        """Context manager installing (hook name, fn(x, name)) hooks, as Maia2.hooks."""

    def run_with_cache(self, inputs: dict, elo_self, elo_oppo, names=None, *, names_filter=None) -> tuple[torch.Tensor, dict]:
        """(policy logits, {hook name: activation [B, ...]}) for the sites `names` or `names_filter`
        picks, as TransformerLens's names_filter: None for all, a name, a list of names or a predicate."""

    def policy_value_with_cache(self, inputs: dict, elo_self, elo_oppo, names=None, *, names_filter=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(policy logits, value [B], {hook name: activation}) from one forward pass (activation caches)."""

    def check_hook_name(self, name: str) -> str:
        """`name` if it is a hook site, else a MaiaAdaptError listing the sites."""

    def site_tokens(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """A site's activation as [B, tokens, ...features] (or [B, F] for a site with no tokens):
        Maia-2's 8 tokens as they come; a Maia-1 conv map [B, C, 8, 8] as 64 square tokens [B, 64, C].
        Hooks installed through `hooks()` see and return this token view."""

    def site_dim(self, name: str) -> int:
        """Features per token of a site (what a dictionary or a probe of it reads)."""

    def spaces(self) -> list[tuple[int, list[int]]]:
        """(a representative bucket, the buckets) of each activation space: one for Maia-2 (every
        bucket runs the same network), one per network for the Maia-1 family. A direction, probe or
        dictionary fitted in one space means nothing in another."""

    @property
    def module(self) -> torch.nn.Module:
        """The trainable torch module (the Maia-2, or the family's networks as a ModuleDict)."""

    def trainable_presets(self) -> dict[str, list[str]]:
        """finetune.trainable presets: name -> parameter-name prefixes (within one network)."""

    def to(self, device) -> "SkillModel":
        ...


def _rows(elo, n: int, device) -> torch.Tensor:
    """Buckets as a LongTensor [n] from a scalar, a sequence or a tensor."""
    t = torch.as_tensor(elo, dtype=torch.long, device=device)
    return t.expand(n).contiguous() if t.ndim == 0 else t.to(device)


class Maia2Skill(OneNetwork):
    """A Maia-2 network behind the SkillModel interface."""

    def __init__(self, model, name: str = "maia2"):
        super().__init__(model, name)

    def inputs(self, store, indices) -> dict[str, torch.Tensor]:
        return store.batch(indices)

    def inputs_from_boards(self, boards) -> dict[str, torch.Tensor]:
        return {"boards": torch.from_numpy(board_planes(boards)), "legal": torch.from_numpy(legal_mask(boards))}

    def _forward(self, inputs, elo_self, elo_oppo):
        boards = inputs["boards"].to(self.device)
        n = boards.size(0)
        return self.model(boards, _rows(elo_self, n, self.device), _rows(elo_oppo, n, self.device))

    def policy_logits(self, inputs, elo_self, elo_oppo) -> torch.Tensor:
        return self._forward(inputs, elo_self, elo_oppo)[0]

    def value(self, inputs, elo_self, elo_oppo) -> torch.Tensor:
        return self._forward(inputs, elo_self, elo_oppo)[2]

    def policy_logits_by_condition(self, inputs, conditions, hooks=None):
        """hooks: a list of fwd_hooks per condition, at sites after the tokens (blocks.*) only."""
        boards = inputs["boards"].to(self.device)
        n = boards.size(0)
        tokens = self.model.tokens(boards)  # the CNN does not see the Elo: one pass serves every condition
        for i, (elo_self, elo_oppo) in enumerate(conditions):
            with self.model.hooks(hooks[i] if hooks else ()):
                yield self.model.from_tokens(tokens, _rows(elo_self, n, self.device), _rows(elo_oppo, n, self.device))[0]

    def conditions(self) -> list[tuple[int, list[int]]]:
        return [(b, [b]) for b in self.buckets]

    def label(self, bucket: int) -> str:
        return BUCKET_NAMES[bucket]

    def hooks(self, fwd_hooks):
        return self.model.hooks(fwd_hooks)

    def policy_value_with_cache(self, inputs, elo_self, elo_oppo, names=None, *, names_filter=None):
        boards = inputs["boards"].to(self.device)
        n = boards.size(0)
        (logits, _, value), cache = self.model.run_with_cache(boards, _rows(elo_self, n, self.device),
                                                              _rows(elo_oppo, n, self.device), names,
                                                              names_filter=names_filter)
        return logits, value, cache

    def check_hook_name(self, name: str) -> str:
        return self.model.check_hook_name(name)

    def site_tokens(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def site_dim(self, name: str) -> int:
        return maia2_sites.site_dim(self.model.cfg, self.check_hook_name(name))

    def spaces(self) -> list[tuple[int, list[int]]]:
        return [(0, list(self.buckets))]

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def trainable_presets(self) -> dict[str, list[str]]:
        return {"all": [""], "policy_head": ["fc_1."], "heads": ["fc_1.", "fc_2.", "fc_3.", "fc_3_1."],
                "transformer": ["transformer.", "last_ln.", "fc_1.", "fc_2."]}

    def run_with_cache(self, inputs, elo_self, elo_oppo, names=None, *, names_filter=None):
        boards = inputs["boards"].to(self.device)
        n = boards.size(0)
        out, cache = self.model.run_with_cache(boards, _rows(elo_self, n, self.device), _rows(elo_oppo, n, self.device),
                                               names, names_filter=names_filter)
        return out[0], cache


def lc0_store_planes(store, indices, history: bool = True) -> torch.Tensor:
    """lc0 input planes [n,112,8,8] (float) for store rows, replaying each game once.

    Rows are grouped by game; `lc0_planes_game` walks a game's moves one time and emits the planes
    before the move at each requested ply, so n positions from G games cost G replays, not n."""
    from ..encoding.lc0 import lc0_planes_game, unpack_lc0_planes

    idx = np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(idx), 112, 8), dtype=np.uint8)
    for start_fen, moves, rows, ks in store.history_by_game(idx):
        out[rows] = lc0_planes_game(start_fen, moves, ks.tolist(), history=history, pack=True)
    return unpack_lc0_planes(out)


class Maia1Family:
    """The Maia-1 networks behind the SkillModel interface (see the module docstring for the mapping)."""

    def __init__(self, nets: dict, history: bool = True, name: str = "maia1", rating: Optional[int] = None):
        if not nets:
            raise CheckpointError("Maia1Family needs at least one network")
        self.nets = {int(r): net.eval() for r, net in sorted(nets.items())}
        self.rating = rating
        self.history = history
        self.name = name if rating is None else f"{name}-{rating}"
        self.buckets = tuple(range(NUM_BUCKETS))
        self.hook_names = list(next(iter(self.nets.values())).hook_names)

    def rating_for_bucket(self, bucket: int) -> int:
        if self.rating is not None:
            return self.rating
        r = maia1_rating_for_bucket(bucket)
        if r not in self.nets:
            raise ConfigError(f"Elo bucket {bucket} needs network maia-{r}, which is not loaded "
                              f"(loaded: {', '.join(map(str, self.nets))})")
        return r

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.nets.values())).parameters()).device

    def to(self, device) -> "Maia1Family":
        for net in self.nets.values():
            net.to(device)
        return self

    def inputs(self, store, indices) -> dict[str, torch.Tensor]:
        batch = store.batch(indices)
        batch.pop("boards")  # Maia-2's planes; Maia-1 reads lc0's
        batch["lc0"] = lc0_store_planes(store, indices, self.history)
        return batch

    def inputs_from_boards(self, boards) -> dict[str, torch.Tensor]:
        from ..encoding.lc0 import lc0_planes

        planes = np.stack([lc0_planes(b, history=self.history) for b in boards])
        return {"lc0": torch.from_numpy(planes).float(), "legal": torch.from_numpy(legal_mask(boards))}

    def _groups(self, elo_self, n: int) -> list[tuple[int, torch.Tensor | None]]:
        """(rating, row indices or None for all rows) for each network the rows need."""
        buckets = _rows(elo_self, n, "cpu")
        ratings = torch.tensor([self.rating_for_bucket(b) for b in range(NUM_BUCKETS)])[buckets]
        distinct = ratings.unique().tolist()
        if len(distinct) == 1:
            return [(distinct[0], None)]
        return [(r, (ratings == r).nonzero().flatten()) for r in distinct]

    def _run(self, inputs, elo_self, fn):
        """fn(net, planes) -> tensor [b, ...] for each network's rows, scattered back into row order."""
        planes = inputs["lc0"].to(self.device)
        n = planes.size(0)
        out = None
        for rating, rows in self._groups(elo_self, n):
            part = fn(self.nets[rating], planes if rows is None else planes[rows.to(self.device)])
            if rows is None:
                return part
            if out is None:
                out = part.new_empty((n, *part.shape[1:]))
            out[rows.to(out.device)] = part
        return out

    def policy_logits(self, inputs, elo_self, elo_oppo=None) -> torch.Tensor:
        from ..encoding.lc0 import lc0_policy_to_maia2

        return self._run(inputs, elo_self, lambda net, x: lc0_policy_to_maia2(net(x)[0], x))

    def policy_logits_by_condition(self, inputs, conditions):
        for elo_self, elo_oppo in conditions:  # each network its own forward pass
            yield self.policy_logits(inputs, elo_self, elo_oppo)

    def wdl(self, inputs, elo_self, elo_oppo=None) -> torch.Tensor:
        """[B,3] win/draw/loss probabilities for the side to move."""
        return self._run(inputs, elo_self, lambda net, x: net(x)[1].float().softmax(-1))

    def value(self, inputs, elo_self, elo_oppo=None) -> torch.Tensor:
        p = self.wdl(inputs, elo_self)
        return p[:, 0] - p[:, 2]

    def conditions(self) -> list[tuple[int, list[int]]]:
        groups: dict[int, list[int]] = {}
        for b in self.buckets:
            groups.setdefault(self.rating_for_bucket(b), []).append(b)
        return [(bs[0], bs) for bs in groups.values()]

    def label(self, bucket: int) -> str:
        return f"maia-{self.rating_for_bucket(bucket)}"

    @contextlib.contextmanager
    def hooks(self, fwd_hooks):
        """Hooks on every network; each fn sees a conv map as its token view [B, 64 squares, C]
        (`site_tokens`) and returns a replacement in that view, so one intervention works on both
        families. Each network runs only its own rows, so a hook sees the rows of one network."""
        fwd_hooks = [(name, _square_tokens_hook(fn)) for name, fn in fwd_hooks]
        with contextlib.ExitStack() as stack:
            for net in self.nets.values():
                stack.enter_context(net.hooks(fwd_hooks))
            yield self

    def policy_value_with_cache(self, inputs, elo_self, elo_oppo, names=None, *, names_filter=None):
        names = select_hook_names(self.hook_names, names_argument(names, names_filter))
        logits, cache = self.run_with_cache(inputs, elo_self, elo_oppo, list(dict.fromkeys([*names, "hook_wdl"])))
        p = (cache["hook_wdl"] if "hook_wdl" in names else cache.pop("hook_wdl")).float().softmax(-1)
        return logits, p[:, 0] - p[:, 2], cache  # lc0's Q, as `value`

    def check_hook_name(self, name: str) -> str:
        return next(iter(self.nets.values())).check_hook_name(name)

    def site_dim(self, name: str) -> int:
        return maia1_sites.site_dim(next(iter(self.nets.values())), self.check_hook_name(name))

    def spaces(self) -> list[tuple[int, list[int]]]:
        return self.conditions()  # one activation space per network

    @property
    def module(self) -> torch.nn.Module:
        return torch.nn.ModuleDict({f"maia-{r}": net for r, net in self.nets.items()})

    def trainable_presets(self) -> dict[str, list[str]]:
        # the policy head is its two convs; the value head its 1x1 conv and two linear layers
        return {"all": [""], "policy_head": ["policy_conv"], "heads": ["policy_conv", "value_"],
                "trunk": ["input_conv", "blocks."]}

    def site_tokens(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # a conv map's tokens are its 64 squares (side-to-move frame), each a C-channel vector, so
        # mean pooling is the mean over squares and token_pooling=none makes each square a sample
        return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x

    def run_with_cache(self, inputs, elo_self, elo_oppo=None, names=None, *, names_filter=None):
        from ..encoding.lc0 import lc0_policy_to_maia2

        names = select_hook_names(self.hook_names, names_argument(names, names_filter))
        planes = inputs["lc0"].to(self.device)
        n = planes.size(0)
        cache: dict[str, torch.Tensor] = {}
        logits = None
        for rating, rows in self._groups(elo_self, n):
            x = planes if rows is None else planes[rows.to(self.device)]
            (pol, _), part = self.nets[rating].run_with_cache(x, names=names)
            pol = lc0_policy_to_maia2(pol, x)
            if rows is None:
                return pol, part
            r = rows.to(self.device)
            if logits is None:
                logits = pol.new_empty((n, *pol.shape[1:]))
            logits[r] = pol
            for k, v in part.items():
                if k not in cache:
                    cache[k] = v.new_empty((n, *v.shape[1:]))
                cache[k][r] = v
        return logits, cache


def _square_tokens_hook(fn):
    """A Maia-1 hook fn from one written for a token view: conv maps [B, C, 8, 8] go in as
    [B, 64, C] and come back as conv maps; other sites ([B, F]) pass as they are."""
    def hook(x, name):
        if x.dim() != 4:
            return fn(x, name)
        out = fn(x.flatten(2).transpose(1, 2), name)
        return None if out is None else out.transpose(1, 2).reshape(x.shape)

    return hook


MAIA1_KEY = "maia_adapt.maia1"


def save_skill_model(model, path, **metadata) -> Path:
    """A SkillModel's weights as one safetensors file that `model.checkpoint` reads back: a Maia-2
    checkpoint, or the family's networks (keys `maia-<rating>.<parameter>`, their shapes in the
    metadata) for `model=maia1 model.checkpoint=<this file or its run directory>`."""
    from ..io import save_safetensors
    from .checkpoint import save_model

    model = as_skill_model(model)
    if isinstance(model, Maia2Skill):
        return save_model(model.model, path, **metadata)
    from .maia3_skill import Maia3Skill

    if isinstance(model, Maia3Skill):  # model=maia3 model.checkpoint=<this file> reads it back
        from .maia3 import save_maia3

        return save_maia3(model.model, path, **metadata)
    net = next(iter(model.nets.values()))
    shapes = {"filters": net.filters, "blocks": net.num_blocks, "se_channels": net.blocks[0].se_fc1.out_features,
              "policy_planes": net.policy_conv2.out_channels, "value_channels": net.value_conv.out_channels,
              "value_hidden": net.value_fc1.out_features}
    sources = {str(r): n.source for r, n in model.nets.items()}
    return save_safetensors(model.module.state_dict(), path, {**metadata, MAIA1_KEY: {"shapes": shapes, "sources": sources}})


def load_maia1_safetensors(path, device="cpu") -> dict:
    """{rating: Maia1} from a file written by `save_skill_model` (a fine-tuned family)."""
    from ..io import load_safetensors
    from .maia1 import Maia1

    tensors, meta = load_safetensors(path)
    if MAIA1_KEY not in meta:
        raise CheckpointError(f"{path}: not a Maia-1 file written by maia-adapt (no '{MAIA1_KEY}' metadata): "
                              "model=maia1 takes a folder of maia-<rating>.pb.gz files or such a file")
    import json

    from .checkpoint import load_state_strict

    try:
        info = json.loads(meta[MAIA1_KEY])
        sources, shapes = dict(info["sources"]), dict(info["shapes"])
        nets_of = {r: Maia1(**shapes) for r in sources if int(r) in MAIA1_RATINGS}
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # damaged, or written by a newer version
        raise CheckpointError(f"{path}: metadata '{MAIA1_KEY}' is not the record save_skill_model writes "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})") from None
    if len(nets_of) != len(sources) or not sources:
        raise CheckpointError(f"{path}: metadata '{MAIA1_KEY}' names the networks {', '.join(map(str, sources))}: "
                              f"expected Maia-1 ratings among {', '.join(map(str, MAIA1_RATINGS))}")
    nets = {}
    for r, net in nets_of.items():
        prefix = f"maia-{r}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        load_state_strict(net, state, f"{path} (network maia-{r})")
        net.rating, net.source = int(r), str(path)
        nets[int(r)] = net.to(memory_format=torch.channels_last).eval().requires_grad_(False).to(device)
    return nets


def _maia1_file(root: Path) -> Path | None:
    """The fine-tuned family file a model.checkpoint names: the file itself or a run's model.safetensors."""
    if root.is_file() and root.suffix == ".safetensors":
        return root
    from ..layout import MODEL_FILE

    if root.is_dir() and (root / MODEL_FILE).is_file() and not any(root.glob("maia-*.pb.gz")):
        return root / MODEL_FILE
    return None


def as_skill_model(model) -> SkillModel:
    """`model` itself if it is a SkillModel, else a bare `Maia2` (or `Maia3`) wrapped as one (callers
    that hold a Maia2 from `load_model`, e.g. finetuning, keep passing it)."""
    from .maia3 import Maia3
    from .maia3_skill import Maia3Skill

    if isinstance(model, (Maia2Skill, Maia1Family, Maia3Skill)):
        return model
    return Maia3Skill(model) if isinstance(model, Maia3) else Maia2Skill(model)


def load_skill_model(model_cfg, history: Optional[bool] = None, device="cpu") -> SkillModel:
    """The SkillModel of a `model` config: `maia1` (the family, or `model.rating`'s network), `maia3` (a
    Maia-3 checkpoint of `model.size`) or a Maia-2 checkpoint (`model.checkpoint`). `history`
    overrides `model.history` (Maia-1 only)."""
    name = str(model_cfg.name)
    if name == "maia3":
        from .maia3 import load_maia3
        from .maia3_skill import Maia3Skill

        if not model_cfg.checkpoint:
            raise ConfigError("model=maia3 needs weights: set model.checkpoint (a maia3-runtime .pt file, with model.size, "
                              "or a .safetensors file / run directory written by maia-adapt)")
        model = load_maia3(model_cfg.checkpoint, size=model_cfg.size, device=device).requires_grad_(False)
        return Maia3Skill(model, name=name)
    if name == "maia1":
        root = Path(str(model_cfg.checkpoint)) if model_cfg.checkpoint else None
        hist = bool(model_cfg.history if history is None else history)
        tuned = _maia1_file(root) if root is not None else None
        if tuned is not None:  # a fine-tuned family (stage=finetune model=maia1)
            nets = load_maia1_safetensors(tuned)
            if model_cfg.rating is not None:
                if int(model_cfg.rating) not in nets:
                    raise ConfigError(f"model.rating={model_cfg.rating}: {tuned} holds maia-{', maia-'.join(map(str, nets))}")
                nets = {int(model_cfg.rating): nets[int(model_cfg.rating)]}
            return Maia1Family(nets, history=hist, rating=None if model_cfg.rating is None else int(model_cfg.rating)).to(device)
        if root is None or not root.is_dir():
            raise CheckpointError(f"Maia-1 networks not found: {root} is not a folder of maia-1100.pb.gz ... "
                                  "maia-1900.pb.gz (set MAIA_ADAPT_MODELS to the folder above maia1/, or model.checkpoint)")
        from .maia1 import load_maia1, load_maia1_family

        rating = model_cfg.rating
        if rating is not None:
            if int(rating) not in MAIA1_RATINGS:
                raise ConfigError(f"model.rating={rating}: expected one of {', '.join(map(str, MAIA1_RATINGS))} or null")
            path = root / f"maia-{int(rating)}.pb.gz"
            if not path.is_file():
                raise CheckpointError(f"Maia-1 network {path} not found (set MAIA_ADAPT_MODELS or model.checkpoint)")
            nets = {int(rating): load_maia1(path)}
        else:
            nets = load_maia1_family(root)
        return Maia1Family(nets, history=hist, rating=None if rating is None else int(rating)).to(device)
    from .checkpoint import load_model

    if not model_cfg.checkpoint:
        raise ConfigError(f"model={name} needs weights: set model.checkpoint (a .pt/.safetensors file or run directory)")
    model = load_model(model_cfg.checkpoint, device=device, attention=(model_cfg.heads, model_cfg.dim_head))
    for p in model.parameters():
        p.requires_grad_(False)
    return Maia2Skill(model, name=name)
