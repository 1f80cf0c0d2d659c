"""Causal interventions at a hook site: amplify SAE features, add a probe direction or a steering vector;
and, for reference, give a Maia-2's skill heads another bucket's Elo (`EloHeadIntervention`).

All three act on the site's activation [B, tokens, ...] through the model's hook API (a Maia-1 conv map
as its 64 square tokens, `SkillModel.hooks`) and, like the SAE's mean-pooled training, change every
token by the same vector. The SAE intervention keeps the
reconstruction error by default: x + decode(z') - decode(z), so strength 1 changes nothing and only
the amplified features move; `keep_error=False` is the study's variant, which replaces the pooled
activation by the reconstruction, error dropped. Each position can have its own features (those of
the concepts active in it) through a per-sample mask.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.activations import collect_activations
from ..concepts.detection import read_detection_table
from ..dictionaries import find_saes, load_sae
from ..encoding import NUM_BUCKETS
from ..errors import ConfigError, MaiaAdaptError
from ..layout import detection_table, probe_file
from .probes import load_probe
from .transitional import SEED_DROPPED, correct_by_bucket, predictions_by_bucket, seed_transition_points, transition_points


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(1)  # [B, tokens, ...] -> [B, features]


def _add_to_tokens(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] plus delta [B, F] on every token (F = the product of the trailing dims)."""
    return (x.flatten(2) + delta[:, None, :]).view_as(x)


ERROR_MODES = ("keep", "drop", "replace")  # intervention.error


def sae_amplify(sae, mask: torch.Tensor, strength: float, error: str = "keep", threshold: bool = True):
    """Hook fn multiplying the SAE features in mask [B, F] (bool or weights) by `strength`.

    The codes are of the token-mean activation, as the SAE was trained. error: keep (ours) adds
    decode(z') - decode(z) to every token, so strength 1 changes nothing and only the amplified features
    move; drop adds decode(z') - mean, so the reconstruction error of the mean is lost and each token
    keeps its own deviation from it; replace (the seed's, run_sae_intervention.py:236-242 and the
    revision's sae_intervention.py) writes decode(z') into every token, so the error and the tokens'
    differences are both lost and even strength 1 rewrites the site. threshold=False encodes with a
    plain ReLU of the pre-activations, ignoring the SAE's own sparsity rule (the NeurIPS seed's, which
    dropped its JumpReLU threshold, run_sae_intervention.py:218-221). An SAE trained on every token
    (token_pooling none) is applied token by token: with it, drop and replace both write the edited
    reconstruction of each token."""
    if error not in ERROR_MODES:
        raise ConfigError(f"intervention.error '{error}': expected one of {', '.join(ERROR_MODES)}")
    mask = mask.float()

    per_token = getattr(sae.cfg, "token_pooling", "mean") == "none"

    def fn(x, name):
        if next(sae.parameters()).device != x.device:  # a model on the GPU, the SAE loaded on the CPU
            sae.to(x.device)
        if per_token:  # an SAE of every token (a Maia-1 square): each token's codes, the sample's mask on all
            b, t = x.shape[:2]
            tokens = x.flatten(2).float().reshape(b * t, -1)
            z = sae.encode(tokens) if threshold else torch.relu(sae.pre_acts(tokens))
            z2 = z * (1 + (strength - 1) * mask.to(z.device).repeat_interleave(t, 0))
            new = sae.decode(z2) + (tokens - sae.decode(z) if error == "keep" else 0)
            return new.to(x.dtype).reshape(x.shape)
        pooled = _pooled(x).float()
        z = sae.encode(pooled) if threshold else torch.relu(sae.pre_acts(pooled))
        z2 = z * (1 + (strength - 1) * mask.to(z.device))
        if error == "replace":
            return sae.decode(z2).to(x.dtype)[:, None, :].expand(x.shape[0], x.shape[1], -1).reshape(x.shape).clone()
        delta = sae.decode(z2) - (sae.decode(z) if error == "keep" else pooled)
        return _add_to_tokens(x, delta.to(x.dtype))

    return fn


def add_direction(direction: torch.Tensor, alpha: float, mask: torch.Tensor | None = None):
    """Hook fn adding alpha * direction [F] (or per-sample directions [B, F]) to every token; mask [B]
    restricts it to some positions."""

    def fn(x, name):
        d = direction.to(x.dtype).to(x.device)
        delta = (d.expand(x.shape[0], -1) if d.dim() == 1 else d) * alpha
        if mask is not None:
            delta = delta * mask.to(delta.dtype).to(x.device)[:, None]
        return _add_to_tokens(x, delta)

    return fn


def steering_vector(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean pooled activation where the concept holds minus where it does not ([N, F], [N] bool)."""
    if labels.all() or not labels.any():
        raise MaiaAdaptError("a steering vector needs positions with and without the concept")
    return acts[labels].mean(0) - acts[~labels].mean(0)


def matched_random_features(freq: torch.Tensor, chosen: list[int], rng: np.random.Generator, bins: int = 20) -> list[int]:
    """For each chosen feature, a different random feature of similar firing frequency (same quantile
    bin): the control for 'any features that fire this often would do the same'."""
    order = torch.argsort(freq).numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    bin_of = rank * bins // len(order)
    out = []
    for f in chosen:
        pool = np.flatnonzero((bin_of == bin_of[f]) & (np.arange(len(order)) != f))
        out.append(int(rng.choice(pool)) if len(pool) else int(f))
    return out


def uniform_random_features(n_features: int, chosen: list[int], rng: np.random.Generator) -> list[int]:
    """As many features drawn uniformly from the dictionary (the revision's control: np.random.choice
    over all 16,384, whatever they fire on)."""
    return rng.choice(n_features, size=len(chosen), replace=False).tolist() if chosen else []


CONTROLS = ("matched", "random", "none")  # intervention.control


@dataclass
class BucketReport:
    accuracy: np.ndarray  # [11] fraction of positions where the top move is correct
    correct: np.ndarray  # [N, 11] bool
    transition_points: np.ndarray  # [N]


def evaluate_under(model, store, rows: list[dict], site: str | None = None, make_hook=None, batch_size: int = 256) -> BucketReport:
    """Correct-move accuracy per Elo bucket with an intervention active: make_hook(positions, bucket)
    returns the hook fn at `site` for a batch of row indices under a conditioning bucket (None: no
    intervention)."""
    hooks_for = (lambda pos, k: [(site, make_hook(pos, k))]) if make_hook is not None else None
    preds, _ = predictions_by_bucket(model, store, np.arange(len(rows)), batch_size=batch_size, hooks_for=hooks_for)
    correct = correct_by_bucket(preds, rows)
    return BucketReport(correct.mean(0), correct, transition_points(correct)[0])


def bootstrap_diff(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over positions (per-position values) with a 95% bootstrap interval."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)] if len(d) else [np.nan]
    return float(d.mean()) if len(d) else float("nan"), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


# ---- the kinds of stage=intervention, as per-row hook makers ----------------------------
def _concepts_of(row: dict, concept: str) -> list[str]:
    return [t for t in row["threats"] if t == concept or t.startswith(concept + "@")]


POSITIONS = ("concept", "resolves_square")  # intervention.positions
CORRECT = ("dataset", "top_bucket")  # intervention.correct


def intervention_rows(rows: list[dict], concept: str, positions: str = "concept", correct: str = "dataset") -> list[dict]:
    """The rows an intervention chooses on and is judged on, from a transitional dataset's.

    correct: dataset (ours), each row's correct moves as the dataset has them; top_bucket (the seed's:
    `moves['10']`, run_sae_intervention.py:131-132), the model's own unedited move at the top bucket,
    so "correct" means agreeing with its own >= 2000 setting. positions: concept (ours), every row
    holding a concept of the kind, once, with all of them; resolves_square (the seed's), one row per
    (position, square) whose first correct move resolves that square's threat (`threat_resolved`),
    holding that one concept: a position relevant to k squares counts k times, as in the seed."""
    from ..concepts.squares import threat_resolved

    if correct == "top_bucket":
        if any(r.get("preds") is None for r in rows):
            raise ConfigError("intervention.correct=top_bucket needs each row's bucket-10 move: a transitional.csv "
                              "with pred_0 .. pred_10 columns (written by stage=transitional)")
        rows = [{**r, "correct": [r["preds"][-1]]} for r in rows]
    elif correct != "dataset":
        raise ConfigError(f"intervention.correct '{correct}': expected one of {', '.join(CORRECT)}")
    rows = [r for r in rows if _concepts_of(r, concept)]
    if positions == "concept":
        return rows
    if positions != "resolves_square":
        raise ConfigError(f"intervention.positions '{positions}': expected one of {', '.join(POSITIONS)}")
    return [{**r, "threats": [c]} for r in rows for c in _concepts_of(r, concept) if threat_resolved(r["fen"], r["correct"][0], c)]


def _pooled_acts(model, moves, site: str, batch_size: int, elo="data") -> torch.Tensor:
    idx = np.arange(len(moves.rows))
    return collect_activations(model, moves.store, idx, [site], batch_size=batch_size, elo=elo)[site]


class Intervention:
    """What the intervention stage asks of a method besides settings() and make(): its results in
    words for the report (a concept intervention by default) and as data for results.json."""

    unit = "features per concept"  # what a setting's top-n counts

    def what(self) -> str:
        return f"`{self.ic.kind}` on `{self.ic.concept}` concepts at `{self.ic.site}`"

    def describe(self) -> dict:
        return {}

    def notes(self) -> list[str]:
        """Paragraphs of results.md after the overall numbers."""
        return []


@dataclass
class _SpaceSAE:
    sae: object
    top: dict  # concept -> its features, best first
    freq: torch.Tensor  # [F] firing frequency on the train rows


class SAEIntervention(Intervention):
    """Per-row masks of the top-n SAE features of the row's concepts (from a stage=threats table).

    One SAE per activation space: a Maia-2 has one; the Maia-1 family one per network, named by
    `{rating}` in intervention.saes and intervention.threats (e.g. runs/sae/maia1-{rating})."""

    def __init__(self, ic, model, train, seed: int):
        spaces = model.spaces()
        if len(spaces) > 1 and "{rating}" not in str(ic.saes or ""):
            raise ConfigError(f"intervention.kind=sae on {model.name}: its networks have unrelated activation spaces and an "
                              "SAE reads one: give one SAE and one threats run per network with {rating} in "
                              "intervention.saes and intervention.threats, or use model.rating=R, or kind=steering|probe")
        if not ic.threats:
            raise ConfigError("intervention.kind=sae needs intervention.threats (a stage=threats run ranking the features)")
        self.space_of = {b: rep for rep, bs in spaces for b in bs}
        self.spaces = {}
        for rep, _ in spaces:
            fill = (lambda x: str(x)) if len(spaces) == 1 else (lambda x: str(x).replace("{rating}", str(model.rating_for_bucket(rep))))
            self.spaces[rep] = self._load(ic, model, train, fill(ic.saes) if ic.saes else None, fill(ic.threats),
                                          "data" if len(spaces) == 1 else rep)
        self.ic, self.seed = ic, seed

    @staticmethod
    def _load(ic, model, train, saes_dir, threats_dir, elo) -> _SpaceSAE:
        saes = [load_sae(p) for p in find_saes(saes_dir)] if saes_dir else []
        match = [s for s in saes if s.cfg.site == ic.site]
        if not match:
            raise ConfigError(f"intervention.saes {saes_dir} has no SAE reading {ic.site} (found: {[s.cfg.site for s in saes]})")
        table = detection_table(threats_dir, ic.site)
        if not table.is_file():
            raise ConfigError(f"{table} not found: run stage=threats with the same SAEs")
        top = {r["concept"]: [int(x) for x in r["top_features"].split()] for r in read_detection_table(table)}
        kept = max((len(v) for v in top.values()), default=0)
        if max(ic.top_n) > kept:
            raise ConfigError(f"intervention.top_n={list(ic.top_n)}: the threats run {threats_dir} kept {kept} features per "
                              "concept; rerun it with threats.top_k >= the largest top-n")
        sae = match[0]
        acts = collect_activations(model, train.store, np.arange(len(train.rows)), [ic.site], batch_size=ic.batch_size,
                                   elo=elo, token_pooling=sae.cfg.token_pooling)[ic.site]
        with torch.no_grad():
            freq = (sae.encode(acts.flatten(0, -2) if acts.dim() > 2 else acts) > 0).float().mean(0)
        return _SpaceSAE(sae, top, freq)

    def settings(self):
        return [(s, n) for s in self.ic.strengths for n in self.ic.top_n]

    def make(self, rows: list[dict], setting, control: bool):
        strength, n = setting
        hooks = {}
        for rep, sp in self.spaces.items():
            rng = np.random.default_rng(self.seed)
            mask = torch.zeros(len(rows), sp.sae.cfg.dim)
            for i, r in enumerate(rows):
                feats = sorted({f for c in _concepts_of(r, self.ic.concept) for f in sp.top.get(c, [])[:n]})
                if control and feats:
                    feats = (uniform_random_features(sp.sae.cfg.dim, feats, rng) if self.ic.control == "random"
                             else matched_random_features(sp.freq, feats, rng))
                mask[i, feats] = 1.0
            hooks[rep] = (sp.sae, mask)
        ic = self.ic

        def hook(pos, bucket):
            sae, mask = hooks[self.space_of[int(bucket)]]
            return sae_amplify(sae, mask[pos], strength, ic.error, ic.threshold)

        return hook


def _probe_path(ic, buckets: list[int]) -> Path:
    """The probe a space uses: intervention.probe_bucket's for one space, else the first of the
    space's own buckets that the probe run saved (a Maia-1 network's band)."""
    for b in buckets:
        if probe_file(ic.probes, ic.site, b).is_file():
            return probe_file(ic.probes, ic.site, b)
    return probe_file(ic.probes, ic.site, buckets[0])  # load_probe names the missing file


class DirectionIntervention(Intervention):
    """Per-row sums of concept directions: steering vectors, or probe directions scaled to their norm.
    One set per activation space (`SkillModel.spaces`: the Maia-1 family has one per network)."""

    def __init__(self, ic, model, train, seed: int):
        if ic.kind == "probe" and not ic.probes:
            raise ConfigError("intervention.kind=probe needs intervention.probes (a stage=probe run)")
        spaces = model.spaces()
        self.space_of = {b: rep for rep, bs in spaces for b in bs}
        names = sorted({c for r in train.rows for c in _concepts_of(r, ic.concept)})
        self.vectors: dict[int, dict[str, torch.Tensor]] = {}
        for rep, buckets in spaces:
            # one space: the players' own buckets, as the study; several: this network's activations
            acts = _pooled_acts(model, train, ic.site, ic.batch_size, elo="data" if len(spaces) == 1 else rep)
            vectors = {}
            for c in names:
                lab = torch.tensor([c in r["threats"] for r in train.rows])
                if lab.any() and not lab.all():
                    vectors[c] = steering_vector(acts, lab)
            if ic.kind == "probe":
                probe = load_probe(_probe_path(ic, [ic.probe_bucket] if len(spaces) == 1 else buckets))
                probed = {}
                for c, v in vectors.items():
                    if c in probe.names:
                        try:
                            probed[c] = probe.direction(c) * v.norm()
                        except MaiaAdaptError:  # a probe that never saw the concept has no direction
                            continue
                vectors = probed
            if not vectors:
                raise ConfigError(f"no direction for any '{ic.concept}' concept on the train rows"
                                  + (f" ({model.label(rep)})" if len(spaces) > 1 else ""))
            self.vectors[rep] = vectors
            self.dim = acts.shape[1]
        self.ic, self.seed = ic, seed

    def settings(self):
        return [(s, None) for s in self.ic.strengths]

    def _directions(self, rows: list[dict], vectors: dict, control: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        d = torch.zeros(len(rows), self.dim)
        for i, r in enumerate(rows):
            for c in _concepts_of(r, self.ic.concept):
                if c in vectors:
                    v = vectors[c]
                    if control:  # a random direction of the same norm
                        rnd = torch.randn(self.dim, generator=gen)
                        v = rnd / rnd.norm() * v.norm()
                    d[i] += v
        return d

    def make(self, rows: list[dict], setting, control: bool):
        strength, _ = setting
        d = {rep: self._directions(rows, vectors, control) for rep, vectors in self.vectors.items()}
        return lambda pos, bucket: add_direction(d[self.space_of[int(bucket)]][pos], strength)


class EloHeadIntervention(Intervention):
    """The skill heads given another bucket's Elo. At `blocks.<b>.hook_elo_q` (the Elo's term of block
    b's attention queries, the only place a Maia-2 reads its Elo) the n heads that carry the most of the
    skill dependence on the train rows (`head_patching` between < 1100 and >= 2000, ranked by the KL
    closed) have their Elo term moved toward bucket `elo_to`'s: strength 1 replaces it, 0.5 goes halfway,
    2 twice as far. The rest of the model keeps the row's own bucket. Control: as many of the block's
    other heads, drawn at random. Not a concept intervention: a reference for how far the skill levels'
    behaviour moves when the model's own skill mechanism is edited, against which the concept
    directions' effects can be read."""

    def __init__(self, ic, model, train, seed: int):
        from ..model.skill import Maia2Skill
        from .patching import head_patching

        m = re.fullmatch(r"blocks\.(\d+)\.hook_elo_q", str(ic.site))
        if not isinstance(model, Maia2Skill):
            why = ("a Maia-3's continuous Elo enters once, as a term added to every square token (hook_elo_in), with no Elo-query heads"
                   if model.name == "maia3" else "the Maia-1 family has none (its skill levels are separate networks)")
            raise ConfigError(f"intervention.kind=elo_heads on {model.name}: it edits a Maia-2's Elo-query heads; {why}")
        if m is None:
            raise ConfigError(f"intervention.kind=elo_heads acts on the Elo's query term: intervention.site must be "
                              f"blocks.<block>.hook_elo_q, got '{ic.site}'")
        if not 0 <= int(ic.elo_to) < NUM_BUCKETS:
            raise ConfigError(f"intervention.elo_to={ic.elo_to}: expected an Elo bucket 0..{NUM_BUCKETS - 1}")
        inputs = model.inputs(train.store, np.arange(len(train.rows)))
        with torch.no_grad():
            ranked = head_patching(model, inputs, int(m.group(1)), n_boot=0, seed=seed)["heads"]
            self.target = model.run_with_cache({k: v[:1] for k, v in inputs.items() if torch.is_tensor(v)},
                                               ic.elo_to, ic.elo_to, names=[ic.site])[1][ic.site]  # [1, 1, H, Dh]
        self.order = sorted(range(len(ranked)), key=lambda h: -ranked[h]["kl_closed"])
        self.kl_closed = [h["kl_closed"] for h in ranked]
        if max(ic.top_n) >= len(self.order):
            raise ConfigError(f"intervention.top_n={list(ic.top_n)}: kind=elo_heads picks heads, and block "
                              f"{m.group(1)} has {len(self.order)}; the control needs as many others")
        self.ic, self.seed = ic, seed

    def settings(self):
        return [(s, n) for s in self.ic.strengths for n in self.ic.top_n]

    unit = "skill heads"

    def what(self) -> str:
        return (f"the skill heads given bucket {self.ic.elo_to}'s Elo at `{self.ic.site}`, on positions with "
                f"`{self.ic.concept}` concepts")

    def describe(self) -> dict:
        return {"heads_ranked": self.order, "heads_kl_closed_ranked": [self.kl_closed[h] for h in self.order],
                "control_heads": {str(n): self.heads(n, True) for n in self.ic.top_n}}

    def notes(self) -> list[str]:
        return ["Heads by the share of KL(>= 2000 || < 1100) each closes on the train positions: "
                + ", ".join(f"{h} ({self.kl_closed[h]:.3f})" for h in self.order)
                + f". The top-n of them are given bucket {self.ic.elo_to}'s Elo; the control heads for each n: "
                + ", ".join(f"{n}: {h}" for n, h in self.describe()["control_heads"].items()) + ".", ""]

    def heads(self, n: int, control: bool) -> list[int]:
        if not control:
            return self.order[:n]
        return sorted(np.random.default_rng(self.seed).choice(self.order[n:], n, replace=False).tolist())

    def make(self, rows: list[dict], setting, control: bool):
        strength, n = setting
        heads = self.heads(n, control)

        def fn(x, name):
            x = x.clone()
            x[:, :, heads] += strength * (self.target[:, :, heads].to(x) - x[:, :, heads])
            return x

        return lambda pos, bucket: fn


INTERVENTIONS = {"sae": SAEIntervention, "probe": DirectionIntervention, "steering": DirectionIntervention,
                 "elo_heads": EloHeadIntervention}  # intervention.kind -> its hook maker


def assemble(reports: list) -> "BucketReport":
    """Bucket k's column from reports[k]: per-bucket settings evaluated as one intervention."""
    correct = np.stack([r.correct[:, k] for k, r in enumerate(reports)], axis=1)
    return BucketReport(correct.mean(0), correct, transition_points(correct)[0])


def assemble_cells(reports: dict, assignment: np.ndarray) -> "BucketReport":
    """(row, bucket) from reports[assignment[row, bucket]]: a setting per cell evaluated as one."""
    correct = np.zeros(assignment.shape, dtype=bool)
    for i, r in reports.items():
        correct |= (assignment == i) & r.correct
    return BucketReport(correct.mean(0), correct, transition_points(correct)[0])


# ---- the study's protocol: choose on the train rows, judge on the test rows ------------------------
SELECT = ("global", "bucket", "cell")  # intervention.select


def cell_of(row: dict, concept: str) -> str:
    """The cell a row's setting is chosen for under select=cell: its concepts of the kind (one square
    for intervention.positions=resolves_square, the seed's (square, Elo) cells)."""
    return " ".join(_concepts_of(row, concept))


def grid_search(method, ev, train) -> tuple[list[dict], list["BucketReport"]]:
    """Mean and per-bucket correct-move accuracy on the train rows, without intervention (first row)
    and under each of the method's settings, and each setting's report (per-cell choices need its
    rows); ev(moves, make_hook=None) -> BucketReport."""
    base = ev(train).accuracy
    grid = [{"strength": None, "top_n": None, "train_accuracy": float(base.mean()), "train_accuracy_by_bucket": base.tolist()}]
    reports = []
    for setting in method.settings():
        rep = ev(train, method.make(train.rows, setting, control=False))
        reports.append(rep)
        grid.append({"strength": setting[0], "top_n": setting[1], "train_accuracy": float(rep.accuracy.mean()),
                     "train_accuracy_by_bucket": rep.accuracy.tolist()})
    return grid, reports


@dataclass
class Choice:
    """The settings chosen on the train rows: one for all (global), one per Elo bucket, or one per
    (cell, bucket), where a cell the train rows lack takes its bucket's setting."""

    settings: list[tuple]
    best: int  # the best setting over all buckets and rows
    per_bucket: list[int]  # [11]
    per_cell: dict  # {(cell, bucket): setting index}
    select: str
    concept: str

    def assignment(self, rows: list[dict]) -> np.ndarray:
        """[N, 11] the setting index each (row, bucket) uses."""
        out = np.array([self.per_bucket] * len(rows), dtype=np.int64).reshape(len(rows), NUM_BUCKETS)
        if self.select == "global":
            out[:] = self.best
        elif self.select == "cell":
            for i, r in enumerate(rows):
                c = cell_of(r, self.concept)
                for k in range(NUM_BUCKETS):
                    out[i, k] = self.per_cell.get((c, k), out[i, k])
        return out

    def by_bucket(self) -> list[tuple]:
        """The setting each bucket uses, as (strength, top-n) (select=cell: its fallback)."""
        return [self.settings[self.best if self.select == "global" else i] for i in self.per_bucket]


def choose_settings(grid: list[dict], reports: list, train_rows: list[dict], select: str, concept: str) -> Choice:
    """The settings each (row, bucket) uses on the test rows, chosen by correct-move accuracy on the
    train rows: select=global, one setting for all; bucket (ours), each Elo bucket the setting that
    serves it best; cell (the seed's: best per (square, Elo), run_sae_intervention.py:251-294, and per
    (concept, Elo) in the revision), each (cell, bucket) its own, which over a wide grid fits the
    small cells' noise. Ties go to the first setting of the grid, as in the seed."""
    if select not in SELECT:
        raise ConfigError(f"intervention.select '{select}': expected one of {', '.join(SELECT)}")
    settings = [(g["strength"], g["top_n"]) for g in grid[1:]]
    best = int(np.argmax([g["train_accuracy"] for g in grid[1:]]))
    per_bucket = [int(np.argmax([g["train_accuracy_by_bucket"][k] for g in grid[1:]])) for k in range(NUM_BUCKETS)]
    per_cell = {}
    if select == "cell":
        cells = np.array([cell_of(r, concept) for r in train_rows])
        for c in dict.fromkeys(cells.tolist()):
            rows = cells == c
            acc = np.stack([rep.correct[rows].mean(0) for rep in reports])  # [settings, 11]
            per_cell.update({(c, k): int(np.argmax(acc[:, k])) for k in range(NUM_BUCKETS)})
    return Choice(settings, best, per_bucket, per_cell, select, concept)


def seed_tp_summary(reports: dict) -> dict:
    """The seed's headline per arm: mean transition point over buckets 0..9 (`seed_transition_points`)
    of the rows that arm keeps, and how many.
    Unpaired, as the seed averaged them: an arm whose edits break the high buckets drops those rows
    instead of counting them, which favours an apparent improvement."""
    out = {}
    for name, r in reports.items():
        tp = seed_transition_points(r.correct, levels=NUM_BUCKETS - 1)
        keep = tp != SEED_DROPPED
        out[f"seed_mean_tp_{name}"] = float(tp[keep].mean()) if keep.any() else float("nan")
        out[f"seed_tp_rows_{name}"] = int(keep.sum())
    return out


def judge(method, ev, test, choice: Choice, n_boot: int, seed: int, control: bool = True) -> dict:
    """The chosen settings on the test rows against no intervention and (control=True) against the
    method's control: the BucketReports and a summary with bootstrap intervals over positions."""
    base = ev(test)
    assignment = choice.assignment(test.rows)
    used = sorted(set(assignment.ravel().tolist()))
    eff = assemble_cells({i: ev(test, method.make(test.rows, choice.settings[i], False)) for i in used}, assignment)
    ctrl = (assemble_cells({i: ev(test, method.make(test.rows, choice.settings[i], True)) for i in used}, assignment)
            if control else None)
    per_pos = lambda r: r.correct.mean(1)
    effect = bootstrap_diff(per_pos(eff), per_pos(base), n_boot, seed)
    by_bucket = [bootstrap_diff(eff.correct[:, k], base.correct[:, k], n_boot, seed) for k in range(NUM_BUCKETS)]
    shift = bootstrap_diff(eff.transition_points, base.transition_points, n_boot, seed)
    summary = {
        "accuracy_base": float(base.accuracy.mean()), "accuracy_intervened": float(eff.accuracy.mean()),
        "effect": effect[0], "effect_ci": [effect[1], effect[2]],
        "accuracy_by_bucket_base": base.accuracy.tolist(), "accuracy_by_bucket_intervened": eff.accuracy.tolist(),
        "effect_by_bucket": [d[0] for d in by_bucket], "effect_by_bucket_ci": [[d[1], d[2]] for d in by_bucket],
        "mean_transition_point_base": float(base.transition_points.mean()),
        "mean_transition_point_intervened": float(eff.transition_points.mean()),
        "transition_point_shift": shift[0], "transition_point_shift_ci": [shift[1], shift[2]],
        "fixed": int((~base.correct & eff.correct).sum()), "broken": int((base.correct & ~eff.correct).sum()),
        **skill_trend_stats(base, eff, ctrl, n_boot, seed),
        **seed_tp_summary({"base": base, "intervened": eff, **({"control": ctrl} if ctrl is not None else {})}),
    }
    if ctrl is not None:
        vs_control = bootstrap_diff(per_pos(eff), per_pos(ctrl), n_boot, seed)
        summary.update({"accuracy_control": float(ctrl.accuracy.mean()), "effect_minus_control": vs_control[0],
                        "effect_minus_control_ci": [vs_control[1], vs_control[2]],
                        "mean_transition_point_control": float(ctrl.transition_points.mean())})
    return {"base": base, "intervened": eff, "control": ctrl, "summary": summary}


def skill_trend_stats(base: BucketReport, eff: BucketReport, ctrl: BucketReport | None, n_boot: int, seed: int) -> dict:
    """Per bucket, intervened minus control with its interval (H2 asks which levels gain, so the pooled
    effect is not enough), and the skill trend (top minus bottom bucket) before, under the intervention
    and under the control, with the paired change of the trend against no intervention and against the
    control: negative means the weak end gained more."""
    top, bottom = NUM_BUCKETS - 1, 0
    trend = lambda r: r.correct[:, top].astype(float) - r.correct[:, bottom]
    out = {}
    arms = (("base", base), ("intervened", eff)) + ((("control", ctrl),) if ctrl is not None else ())
    for name, r in arms:
        m, lo, hi = bootstrap_diff(trend(r), np.zeros(len(r.correct)), n_boot, seed)
        out[f"skill_trend_{name}"], out[f"skill_trend_{name}_ci"] = m, [lo, hi]
    m, lo, hi = bootstrap_diff(trend(eff), trend(base), n_boot, seed)
    out["skill_trend_change"], out["skill_trend_change_ci"] = m, [lo, hi]
    if ctrl is not None:
        per_bucket = [bootstrap_diff(eff.correct[:, k], ctrl.correct[:, k], n_boot, seed) for k in range(NUM_BUCKETS)]
        out["minus_control_by_bucket"] = [d[0] for d in per_bucket]
        out["minus_control_by_bucket_ci"] = [[d[1], d[2]] for d in per_bucket]
        m, lo, hi = bootstrap_diff(trend(eff), trend(ctrl), n_boot, seed)
        out["skill_trend_change_minus_control"], out["skill_trend_change_minus_control_ci"] = m, [lo, hi]
    return out
