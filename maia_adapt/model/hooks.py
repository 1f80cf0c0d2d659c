"""Named hook points shared by Maia-2 and Maia-1, in the TransformerLens style.

A model calls `self._hook(name, x)` at each of its `hook_names`; a hook is fn(x, name) and may return
a replacement of the same shape (splicing, ablation, steering) or None (read only).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Union

import torch

from ..errors import MaiaAdaptError

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]
# what run_with_cache caches, as TransformerLens's names_filter: None (every site), one name, a list of
# names or a predicate on a name
NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


def select_hook_names(sites: list[str], names_filter: NamesFilter = None) -> list[str]:
    """The sites `names_filter` picks, in the order asked (a predicate keeps forward order). A name that
    is not a site is an error listing the sites, where TransformerLens would silently cache nothing."""
    if names_filter is None:
        return list(sites)
    if callable(names_filter):
        return [n for n in sites if names_filter(n)]
    names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    unknown = [n for n in names if not isinstance(n, str) or n not in sites]
    if unknown:
        raise MaiaAdaptError(f"unknown hook site {', '.join(repr(n) for n in unknown)}: expected one of {', '.join(sites)}")
    return list(dict.fromkeys(names))


def names_argument(names: NamesFilter, names_filter: NamesFilter) -> NamesFilter:
    """run_with_cache's two spellings, `names=` (this project's) and `names_filter=` (TransformerLens's)."""
    if names is not None and names_filter is not None:
        raise MaiaAdaptError("run_with_cache: give names= or names_filter=, not both")
    return names_filter if names is None else names


def block_hook(layer: int, site: str) -> str:
    """The name of hook point `site` of block `layer` (block_hook(1, "hook_mlp_in") ->
    "blocks.1.hook_mlp_in"), as both model families name their per-block sites."""
    return f"blocks.{int(layer)}.{site}"


class HookPoints:
    """Mixin: the model sets `self.hook_names` (its sites) and `self._hooks = {}` in __init__, and says
    in `n_inputs` how many positional inputs its forward takes (Maia-1: planes; Maia-2: boards and the
    two Elo buckets). Positional arguments after those are run_with_hooks' / run_with_cache's own."""

    hook_names: list[str]
    _hooks: dict[str, list[HookFn]]
    n_inputs: int

    def _split_inputs(self, args: tuple, method: str, own: tuple[str, ...]) -> tuple[tuple, dict]:
        inputs, rest = args[: self.n_inputs], args[self.n_inputs:]
        if len(rest) > len(own):
            raise TypeError(f"{method}: {self.n_inputs} inputs and at most {', '.join(own)} positionally, "
                            f"got {len(args)} arguments")
        return inputs, dict(zip(own, rest))

    def run_with_hooks(self, *args, fwd_hooks=()):
        """Forward pass with (name, fn) hooks installed for it alone."""
        inputs, own = self._split_inputs(args, "run_with_hooks", ("fwd_hooks",))
        with self.hooks(own.get("fwd_hooks", fwd_hooks)):
            return self(*inputs)

    def run_with_cache(self, *args, names=None, detach: bool = True, names_filter=None):
        """Forward pass that also returns {hook name: activation} for the sites `names` (or, as in
        TransformerLens, `names_filter`) picks: None for all, a name, a list of names or a predicate."""
        inputs, own = self._split_inputs(args, "run_with_cache", ("names", "detach"))
        names = self.select_hook_names(own.get("names", names), names_filter)
        detach = own.get("detach", detach)
        cache: dict[str, torch.Tensor] = {}

        def save(x, name):
            cache[name] = x.detach() if detach else x

        out = self.run_with_hooks(*inputs, fwd_hooks=[(n, save) for n in names])
        return out, cache

    def _hook(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self._hooks:
            return x
        for fn in self._hooks.get(name, ()):
            out = fn(x, name)
            if out is not None:
                if out.shape != x.shape:
                    raise MaiaAdaptError(
                        f"hook on {name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}"
                    )
                x = out
        return x

    def check_hook_name(self, name: str) -> str:
        if name not in self.hook_names:
            raise MaiaAdaptError(f"unknown hook site '{name}': expected one of {', '.join(self.hook_names)}")
        return name

    def select_hook_names(self, names: NamesFilter = None, names_filter: NamesFilter = None) -> list[str]:
        """The sites that run_with_cache's `names` / `names_filter` pick (see select_hook_names)."""
        return select_hook_names(self.hook_names, names_argument(names, names_filter))

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]):
        """Install (name, fn) hooks for the duration of the block."""
        added = []
        try:
            for name, fn in fwd_hooks:
                self._hooks.setdefault(self.check_hook_name(name), []).append(fn)
                added.append((name, fn))
            yield self
        finally:
            for name, fn in added:
                self._hooks[name].remove(fn)
                if not self._hooks[name]:
                    del self._hooks[name]
