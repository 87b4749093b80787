"""Unit lesions at a site: which units to silence per stimulus (strategies), and the proportion sweep.

What a unit is and how ranked strategies score units: `rig.lesions.ranking`; intervals: `rig.lesions.intervals`.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from rig.errors import RigError
from rig.io import atomic_path
from rig.lesions.intervals import curve_interval
from rig.lesions.prefix import PrefixRunner
from rig.lesions.ranking import UNIT_MODES, UnitScores, map_scores, ranks_from_scores, set_overlap
from rig.lesions.silence import UnitSilencer, n_site_units
from rig.lesions.source import StimulusSource
from rig.lesions.store import ConditionStore

PRECISIONS = ("float32", "bfloat16")
STRATEGIES = ("random", "targeted", "targeted_abs", "targeted_raw", "targeted_raw_abs", "by_mean", "units")
#: strategies that rank units by their ratemaps / responses (they need `scores` or `ratemaps`)
RANKED = ("targeted", "targeted_abs", "targeted_raw", "targeted_raw_abs", "by_mean")
#: what each strategy silences first, for legends and captions
DESCRIPTIONS = {
    "random": "random units (one set per repeat, shared by all stimuli)",
    "targeted": "position-selective units: highest z of the ranking map at the position of the stimulus",
    "targeted_abs": "highest |z| of the ranking map at the position of the stimulus",
    "targeted_raw": "highest raw ratemap value at the position of the stimulus (as in the blog)",
    "targeted_raw_abs": "highest |raw ratemap value| at the position of the stimulus (as in the blog)",
    "by_mean": "highest overall mean response (position-free control)",
    "units": "the listed units, in order",
}


def proportion_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.025) -> np.ndarray:
    """Proportions `start, start+step, ..., stop` (inclusive, rounded to 1e-9), e.g. the blog's 0..1 by 0.025."""
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(n), 9)


def n_lesioned(proportions: np.ndarray, n_units: int) -> np.ndarray:
    """Number of units silenced at each proportion: `round(p * n_units)`."""
    return np.rint(np.asarray(proportions, float) * n_units).astype(int)


def ratemap_at(ratemaps: xr.Dataset | xr.DataArray, x: np.ndarray, y: np.ndarray, unit: str = "channel") -> np.ndarray:
    """Each unit's ratemap value at each stimulus centre `(S, U)`: in the bin whose centre is nearest, or in the
    nearest visited bin when that one is unvisited (see `rig.lesions.ranking`).

    `ratemaps`: the `analyses.ratemaps` output (variable `ratemap`, dims `(unit[, token | map_y, map_x], y_bin,
    x_bin)`, bin-centre coordinates in pixels); `x`, `y`: stimulus centres in pixels, shape `(S,)`.
    """
    return map_scores(ratemaps, x, y, unit).raw


def unit_ranks(
    strategy: str,
    n_units: int,
    n_stimuli: int,
    *,
    scores: UnitScores | None = None,
    ratemaps: xr.Dataset | xr.DataArray | None = None,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    unit: str = "channel",
    units: Sequence[int] | None = None,
    seed: int = 0,
    repeat: int = 0,
) -> np.ndarray:
    """Lesion order of units: `ranks[s, u] < k` means unit u is silenced for stimulus s when k are lesioned.

    Returns `(S, U)` for per-stimulus strategies, `(1, U)` when all stimuli share the order.
    - `random`: one permutation per `repeat` from `default_rng([seed, repeat])`, shared by all stimuli,
      nested across proportions.
    - `targeted` / `targeted_abs`: per stimulus, by descending z (|z|) of the unit's ranking map at the
      stimulus's position (position selectivity); `targeted_raw` / `targeted_raw_abs`: by the raw map value
      (|value|), the blog's; `by_mean`: by the unit's overall mean, one order for all stimuli (the control).
      These need `scores` (e.g. `rig.lesions.ranking.held_out_scores`) or `ratemaps` with stimulus centres
      `x`, `y` (one map for all stimuli: `map_scores`).
    - `units`: the given units in the given order (others never silenced).
    """
    if strategy == "random":
        perm = np.random.default_rng([seed, repeat]).permutation(n_units)
        ranks = np.empty(n_units, int)
        ranks[perm] = np.arange(n_units)
        return ranks[None]
    if strategy in RANKED:
        if scores is None:
            if ratemaps is None or x is None or y is None:
                raise RigError(f"strategy {strategy!r} needs ratemaps and stimulus positions; record and analyse first")
            if len(x) != n_stimuli or len(y) != n_stimuli:
                raise RigError(f"{len(x)} x and {len(y)} y positions for {n_stimuli} stimuli; pass one (x, y) per "
                               "stimulus")
            scores = map_scores(ratemaps, x, y, unit)
        if scores.n_units != n_units:
            raise RigError(f"ratemaps have {scores.n_units} units but the site has {n_units} (unit = {unit!r}); "
                           "use the same site and unit setting")
        if strategy == "by_mean":
            return ranks_from_scores(np.asarray(scores.mean, float)[None])
        if len(scores.z) != n_stimuli:
            raise RigError(f"scores for {len(scores.z)} stimuli, but {n_stimuli} are lesioned; rank the lesion stimuli")
        value = scores.z if strategy in ("targeted", "targeted_abs") else scores.raw
        return ranks_from_scores(np.abs(value) if strategy.endswith("_abs") else value)
    if strategy == "units":
        units = np.asarray(units if units is not None else [], int)
        if len(units) == 0 or units.min() < 0 or units.max() >= n_units or len(set(units.tolist())) != len(units):
            raise RigError(f"strategy 'units' needs distinct unit indices in [0, {n_units}); got {units.tolist()[:10]}")
        ranks = np.full(n_units, n_units)
        ranks[units] = np.arange(len(units))
        return ranks[None]
    raise RigError(f"unknown lesion strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def site_shape(runner: PrefixRunner, site: str) -> tuple[tuple[int, ...], int]:
    """The per-stimulus output shape of `site` (batch axis removed) and the axis of the batch in its raw output,
    from forwards of one and two stimuli (the axis that grows with the batch; 0 when there is one stimulus)."""
    module = runner.model.get_submodule(site)
    shapes: list[tuple] = []

    def grab(m: Any, a: Any, out: Any) -> None:
        first = out[0] if isinstance(out, tuple) else out
        shapes.append(tuple(first.shape))

    h = module.register_forward_hook(grab)
    try:
        for n in (1, 2)[: min(2, runner.source.n)]:
            runner.probe(n)
    finally:
        h.remove()
    if not shapes:
        raise RigError(f"site {site!r} did not run for an image; choose a site on the image path")
    axis = 0
    if len(shapes) == 2:
        moving = [i for i, (a, b) in enumerate(zip(shapes[0], shapes[1])) if a != b]
        axis = moving[0] if len(moving) == 1 else 0
    return shapes[0][:axis] + shapes[0][axis + 1:], axis


def describe_unit(site: str, shape: tuple[int, ...], unit: str) -> str:
    """What a unit of `site` is, in words, for results and captions."""
    dims = ", ".join(map(str, shape))
    n = n_site_units(shape, unit)
    if len(shape) == 1:
        return f"one of the {n} values of the output of {site}"
    pos = "token" if len(shape) == 2 else "map position"
    if unit == "channel":
        pooled = "recorded tokens" if len(shape) == 2 else "map positions"
        return (f"one channel of the ({dims}) output of {site} ({n} units), silenced at every {pos}; ranked by the "
                f"ratemap of its mean over the {pooled}")
    index = f"token * {shape[1]} + channel" if len(shape) == 2 else \
        f"channel * {shape[1] * shape[2]} + map_y * {shape[2]} + map_x"
    return f"one channel at one {pos} of the ({dims}) output of {site} ({n} units; index = {index})"


def unit_lesions(
    subject: Any,
    stimuli: Any,
    readout: Any,
    site: str,
    strategy: str | Sequence[str] = ("random", "targeted", "targeted_abs", "by_mean"),
    proportions: Sequence[float] | np.ndarray = proportion_grid(),
    *,
    scores: UnitScores | None = None,
    ratemaps: xr.Dataset | xr.DataArray | None = None,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    unit: str = "channel",
    units: Sequence[int] | None = None,
    repeats: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    per_forward: int = 1,
    precision: str = "float32",
    folder: str | Path | None = None,
    use_cache: bool = True,
    max_cache_bytes: int = 2**30,
    n_boot: int = 2000,
) -> xr.Dataset:
    """Silence a growing proportion of the units of `site` per strategy and measure behaviour.

    `readout(output) -> (B, K)` probabilities with an index `readout.target`. `unit`: `"channel"` or `"element"`
    (what a unit is; `rig.lesions.ranking`). Ranked strategies (`RANKED`) read `scores` (one row per stimulus,
    e.g. held-out: `rig.lesions.ranking.held_out_scores`) or else `ratemaps` (one map set for all stimuli, at
    `positions=(x, y)` px, default the stimulus set's `x`, `y`). Conditions are batched per stimulus: every
    distinct unit set runs on each batch of `batch_size` stimuli while its cached prefix is loaded (once), with
    `per_forward` unit sets tiled into one forward (`PrefixRunner.run_conditions`; on a GPU raise both).
    `precision="bfloat16"` runs the lesioned forwards under `torch.autocast` in bfloat16 (1.6x less CPU per
    condition on this project's CPU, which has AVX512-BF16: `bench/lesion_grid.py`; slower on CPUs without) and
    measures its own error: the first stimulus batch is run in float32 too, and the largest difference of the
    target probability is stored (attrs `precision_check`, `precision_max_abs_diff`). With
    `folder`, each stimulus batch is stored as it finishes (a killed sweep resumes there) and the result is
    written atomically to `folder/unit_lesions.nc`.

    Returns `target_probability(strategy, repeat, proportion, stimulus)` (NaN for repeats > 0 of deterministic
    strategies), `mean`, `ci_low`, `ci_high` `(strategy, proportion)` (95 % interval over the random unit sets
    and the stimuli, or over stimuli: `curve_interval`), `baseline(stimulus)`, with
    ranked strategies `overlap_by_mean(strategy, proportion)` (share of the silenced set that the position-free
    `by_mean` control silences too), coordinate `n_lesioned(proportion)`; attrs say what a unit is (`unit`,
    `unit_meaning`), how units were ranked (`ranking`, `n_nearest_bin`) and what the interval is (`interval`).
    """
    strategies = [strategy] if isinstance(strategy, str) else list(strategy)
    for s in strategies:
        if s not in STRATEGIES:
            raise RigError(f"unknown lesion strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    if unit not in UNIT_MODES:
        raise RigError(f"unit must be one of {', '.join(UNIT_MODES)}, got {unit!r}")
    if precision not in PRECISIONS:
        raise RigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    target = getattr(readout, "target", None)
    if target is None:
        raise RigError("unit lesions need a behaviour readout with a target; set [behaviour] target")
    proportions = np.asarray(proportions, float)
    if proportions.ndim != 1 or len(proportions) == 0 or proportions.min() < 0 or proportions.max() > 1:
        raise RigError("proportions must be a non-empty list of values in [0, 1]")
    source = StimulusSource(stimuli)
    runner = PrefixRunner(subject, source, batch_size, max_cache_bytes, use_cache=use_cache)
    shape, batch_axis = site_shape(runner, site)
    n_units, n_stim = n_site_units(shape, unit), source.n
    x, y = positions if positions is not None else (source.positions() or (None, None))
    if scores is None and ratemaps is not None and x is not None and any(s in RANKED for s in strategies):
        scores = map_scores(ratemaps, x, y, unit)
    ks = n_lesioned(proportions, n_units)
    n_rep = max(repeats, 1) if "random" in strategies else 1
    spec = dict(site=site, strategies=strategies, proportions=proportions.tolist(), repeats=n_rep, seed=seed,
                unit=unit, units=None if units is None else list(map(int, units)), n_units=n_units,
                n_stimuli=n_stim, ranking=None if scores is None else scores.ranking,
                stimuli=source.content_hash(), subject=str(getattr(subject, "name", type(subject.model).__name__)))
    if precision != "float32":
        spec["precision"] = precision
    store = ConditionStore(folder, spec)
    tp = np.full((len(strategies), n_rep, len(proportions), n_stim), np.nan, np.float32)
    overlap = np.full((len(strategies), len(proportions)), np.nan)
    mean_ranks = unit_ranks("by_mean", n_units, n_stim, scores=scores, unit=unit) if scores is not None else None
    masks: dict[str, tuple[np.ndarray, int]] = {}  # distinct unit sets to run: digest -> (ranks, k)
    cells: list[tuple[int, int, int, str]] = []  # (strategy, repeat, proportion) -> its unit set
    for si, strat in enumerate(strategies):
        for r in range(n_rep if strat == "random" else 1):
            ranks = unit_ranks(strat, n_units, n_stim, scores=scores, ratemaps=ratemaps, x=x, y=y, unit=unit,
                               units=units, seed=seed, repeat=r)
            for pi, k in enumerate(ks):
                k = min(k, len(units)) if strat == "units" else k
                if mean_ranks is not None and r == 0:
                    overlap[si, pi] = set_overlap(ranks, mean_ranks, k)
                sets = np.broadcast_to(ranks < k, (n_stim, n_units))  # e.g. p = 0 and 1: one set for all strategies
                digest = hashlib.sha1(np.packbits(sets).tobytes()).hexdigest()
                masks.setdefault(digest, (ranks, int(k)))
                cells.append((si, r, pi, digest))
    order = list(masks)
    silencer = UnitSilencer(runner.model.get_submodule(site), unit, batch_axis)
    probs: np.ndarray | None = None  # (distinct set, stimulus, choice)

    def key(idx: np.ndarray) -> str:
        return f"stimuli {idx[0]}-{idx[-1]}"

    def set_masks(conds: np.ndarray, idx: np.ndarray) -> None:
        silencer.mask = np.concatenate([np.broadcast_to(masks[order[c]][0], (n_stim, n_units))[idx]
                                        < masks[order[c]][1] for c in conds])

    def fill(idx: np.ndarray, out: np.ndarray) -> None:
        nonlocal probs
        if probs is None:
            probs = np.full((len(order), n_stim, out.shape[-1]), np.nan, np.float32)
        probs[:, idx] = out

    def keep(idx: np.ndarray, out: np.ndarray) -> None:
        fill(idx, out)
        store.put(key(idx), out)

    def done(idx: np.ndarray) -> np.ndarray | None:
        out = store.get(key(idx))
        if out is not None:
            fill(idx, out)
        return out

    starts = range(0, n_stim, batch_size)
    check: np.ndarray | None = None  # float32 readout of the first stimulus batch, to measure a lower precision
    try:
        if any(done(np.arange(i, min(i + batch_size, n_stim))) is None for i in starts):
            runner.prepare(site, replay=True)  # only the site's output changes: its own computation is replayed
            with _precision(precision, runner.device):
                runner.run_conditions(readout, len(order), set_masks, per_forward=per_forward, done=done, keep=keep)
        if precision != "float32":
            first = store.get("float32 check")
            if first is None:
                runner.prepare(site, replay=True)
                runner.run_conditions(readout, len(order), set_masks, per_forward=per_forward,
                                      done=lambda idx: None if idx[0] == 0 else idx,
                                      keep=lambda idx, out: store.put("float32 check", out))
                first = store.get("float32 check")
            check = probs[:, : first.shape[1], target] - first[..., target]
    finally:
        silencer.remove()
        runner.close()
    for si, r, pi, digest in cells:
        tp[si, r, pi] = probs[order.index(digest), :, target]
    ds = _unit_dataset(tp, strategies, proportions, ks, source, x, y, seed, n_boot)
    if mean_ranks is not None:
        ds["overlap_by_mean"] = (("strategy", "proportion"), overlap, {
            "long_name": "share of the silenced units that the by_mean control silences too (mean over stimuli; "
                         "random: first repeat)"})
    ds.attrs.update(site=site, n_units=n_units, seed=seed, repeats=n_rep, target=str(_label(readout, target)),
                    unit=unit, unit_meaning=describe_unit(site, shape, unit),
                    prefix_cache=runner.split.block if runner.split else (
                        "not needed: every stimulus batch was resumed from the store"
                        if runner.fallback == "not prepared" else f"off: {runner.fallback}"),
                    replayed_site=runner.replay or "",
                    cls_only_last_block=int(runner.cls_only),
                    random_sets="one random unit set per repeat, shared by all stimuli, nested across proportions")
    if scores is not None:
        ds.attrs.update(ranking=scores.ranking, n_nearest_bin=int(scores.n_nearest))
    ds.attrs["precision"] = precision
    if check is not None:
        ds.attrs.update(precision_max_abs_diff=float(np.abs(check).max()), precision_check=(
            f"largest |{precision} - float32| of the target probability over the first {check.shape[1]} stimuli x "
            f"{check.shape[0]} unit sets (mean {float(np.abs(check).mean()):.2g})"))
    if folder is not None:
        with atomic_path(Path(folder) / "unit_lesions.nc") as tmp:
            ds.to_netcdf(tmp)
    return ds


def _precision(precision: str, device: torch.device) -> Any:
    """The autocast context of a lesion precision (float32: none)."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def _label(readout: Any, target: int) -> str:
    labels = getattr(readout, "labels", None)
    return labels[target] if labels else str(target)


def _unit_dataset(tp: np.ndarray, strategies: list[str], proportions: np.ndarray, ks: np.ndarray,
                  source: StimulusSource, x: np.ndarray | None, y: np.ndarray | None, seed: int,
                  n_boot: int) -> xr.Dataset:
    level = 0.95
    stats = [curve_interval(tp[i], level, n_boot, seed=seed) for i in range(len(strategies))]
    mean, low, high = (np.stack([s[j] for s in stats]) for j in range(3))
    dims2 = ("strategy", "proportion")
    base_idx = int(np.argmin(proportions))
    ds = xr.Dataset(
        {
            "target_probability": (("strategy", "repeat", "proportion", "stimulus"), tp),
            "mean": (dims2, mean), "ci_low": (dims2, low), "ci_high": (dims2, high),
        },
        coords={"strategy": strategies, "repeat": np.arange(tp.shape[1]), "proportion": proportions,
                "n_lesioned": ("proportion", ks), "stimulus": np.arange(source.n)},
        attrs={"interval": f"{level:.0%} interval of the mean: random lesions (several unit sets) Student t on the "
                           "crossed sets x stimuli variance var(set means)/R + var(stimulus means)/S; the other "
                           f"strategies percentile bootstrap over stimuli ({n_boot} resamples, seed {seed})"},
    )
    if proportions[base_idx] == 0:
        ds["baseline"] = ("stimulus", tp[0, 0, base_idx])
    if x is not None:
        ds = ds.assign_coords(x=("stimulus", np.asarray(x, float)), y=("stimulus", np.asarray(y, float)))
    ds["target_probability"].attrs["units"] = "probability of the target choice"
    return ds
