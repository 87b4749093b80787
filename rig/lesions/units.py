"""Unit lesions at a site: which units to silence per stimulus (strategies), and the proportion sweep."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from rig.errors import RigError
from rig.io import atomic_path
from rig.lesions.prefix import PrefixRunner
from rig.lesions.silence import UnitSilencer, unit_axis
from rig.lesions.source import StimulusSource
from rig.lesions.store import ConditionStore

STRATEGIES = ("random", "targeted", "targeted_abs", "units")
DETERMINISTIC = ("targeted", "targeted_abs", "units")


def proportion_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.025) -> np.ndarray:
    """Proportions `start, start+step, ..., stop` (inclusive, rounded to 1e-9), e.g. the blog's 0..1 by 0.025."""
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(n), 9)


def n_lesioned(proportions: np.ndarray, n_units: int) -> np.ndarray:
    """Number of units silenced at each proportion: `round(p * n_units)`."""
    return np.rint(np.asarray(proportions, float) * n_units).astype(int)


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """Per row, the rank of each unit by descending score (0 = silenced first); NaN ranks last. `(S, U)` int."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def ratemap_at(ratemaps: xr.Dataset | xr.DataArray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each unit's ratemap value in the bin whose centre is nearest each stimulus centre: `(S, U)`.

    `ratemaps`: the `analyses.ratemaps` output (variable `ratemap`, dims `(unit, y_bin, x_bin)`, bin-centre
    coordinates along `y_bin` / `x_bin` in pixels); `x`, `y`: stimulus centres in pixels, shape `(S,)`.
    """
    rm = ratemaps["ratemap"] if isinstance(ratemaps, xr.Dataset) else ratemaps
    rm = rm.squeeze([d for d in rm.dims if d not in ("unit", "y_bin", "x_bin") and rm.sizes[d] == 1], drop=True)
    extra = [d for d in rm.dims if d not in ("unit", "y_bin", "x_bin")]
    if extra or "unit" not in rm.dims:
        raise RigError(
            f"ratemaps for targeted lesions need dims (unit, y_bin, x_bin), got {rm.dims}; select one token/site first"
        )
    rm = rm.transpose("unit", "y_bin", "x_bin")
    xc, yc = _centres(rm, "x_bin"), _centres(rm, "y_bin")
    xi = np.abs(np.asarray(x, float)[:, None] - xc[None, :]).argmin(1)
    yi = np.abs(np.asarray(y, float)[:, None] - yc[None, :]).argmin(1)
    return np.asarray(rm.values)[:, yi, xi].T


def _centres(rm: xr.DataArray, dim: str) -> np.ndarray:
    if dim in rm.coords:
        return np.asarray(rm[dim].values, float)
    for c in rm.coords.values():
        if c.dims == (dim,):
            return np.asarray(c.values, float)
    raise RigError(f"ratemaps have no bin-centre coordinate along {dim!r}; pass the output of analyses.ratemaps")


def unit_ranks(
    strategy: str,
    n_units: int,
    n_stimuli: int,
    *,
    ratemaps: xr.Dataset | xr.DataArray | None = None,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    units: Sequence[int] | None = None,
    seed: int = 0,
    repeat: int = 0,
) -> np.ndarray:
    """Lesion order of units: `ranks[s, u] < k` means unit u is silenced for stimulus s when k are lesioned.

    Returns `(S, U)` for per-stimulus strategies, `(1, U)` when all stimuli share the order.
    - `random`: one permutation per `repeat` from `default_rng([seed, repeat])`, shared by all stimuli,
      nested across proportions.
    - `targeted` / `targeted_abs`: per stimulus, units by descending (absolute) ratemap value at the
      stimulus's bin (needs `ratemaps` and stimulus centres `x`, `y`).
    - `units`: the given units in the given order (others never silenced).
    """
    if strategy == "random":
        perm = np.random.default_rng([seed, repeat]).permutation(n_units)
        ranks = np.empty(n_units, int)
        ranks[perm] = np.arange(n_units)
        return ranks[None]
    if strategy in ("targeted", "targeted_abs"):
        if ratemaps is None or x is None or y is None:
            raise RigError(f"strategy {strategy!r} needs ratemaps and stimulus positions; record and analyse first")
        if len(x) != n_stimuli or len(y) != n_stimuli:
            raise RigError(f"{len(x)} x and {len(y)} y positions for {n_stimuli} stimuli; pass one (x, y) per "
                           "stimulus")
        values = ratemap_at(ratemaps, x, y)
        if values.shape[1] != n_units:
            raise RigError(f"ratemaps have {values.shape[1]} units but the site has {n_units}; use the same site")
        return ranks_from_scores(np.abs(values) if strategy == "targeted_abs" else values)
    if strategy == "units":
        units = np.asarray(units if units is not None else [], int)
        if len(units) == 0 or units.min() < 0 or units.max() >= n_units or len(set(units.tolist())) != len(units):
            raise RigError(f"strategy 'units' needs distinct unit indices in [0, {n_units}); got {units.tolist()[:10]}")
        ranks = np.full(n_units, n_units)
        ranks[units] = np.arange(len(units))
        return ranks[None]
    raise RigError(f"unknown lesion strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def _site_units(runner: PrefixRunner, site: str) -> int:
    module = runner.model.get_submodule(site)
    shape: dict[str, tuple] = {}

    def grab(m: Any, a: Any, out: Any) -> None:
        first = out[0] if isinstance(out, tuple) else out
        shape["s"] = tuple(first.shape)

    h = module.register_forward_hook(grab)
    try:
        runner.probe()
    finally:
        h.remove()
    if "s" not in shape:
        raise RigError(f"site {site!r} did not run for an image; choose a site on the image path")
    return shape["s"][unit_axis(len(shape["s"]))]


def unit_lesions(
    subject: Any,
    stimuli: Any,
    readout: Any,
    site: str,
    strategy: str | Sequence[str] = ("random", "targeted", "targeted_abs"),
    proportions: Sequence[float] | np.ndarray = proportion_grid(),
    *,
    ratemaps: xr.Dataset | xr.DataArray | None = None,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    units: Sequence[int] | None = None,
    repeats: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    folder: str | Path | None = None,
    use_cache: bool = True,
    max_cache_bytes: int = 2**30,
) -> xr.Dataset:
    """Silence a growing proportion of the units of `site` per strategy and measure behaviour.

    `readout(output) -> (B, K)` probabilities with an index `readout.target`; `positions=(x, y)` (pixels)
    default to the stimulus set's `x`, `y`. With `folder`, each condition is stored as it finishes (a killed
    sweep resumes there) and the result is written atomically to `folder/unit_lesions.nc`.

    Returns `target_probability(strategy, repeat, proportion, stimulus)` (NaN for repeats > 0 of deterministic
    strategies), `mean`, `ci_low`, `ci_high` `(strategy, proportion)` (95 % normal interval of the mean over
    stimuli and repeats), `baseline(stimulus)`, coordinate `n_lesioned(proportion)`.
    """
    strategies = [strategy] if isinstance(strategy, str) else list(strategy)
    for s in strategies:
        if s not in STRATEGIES:
            raise RigError(f"unknown lesion strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    target = getattr(readout, "target", None)
    if target is None:
        raise RigError("unit lesions need a behaviour readout with a target; set [behaviour] target")
    proportions = np.asarray(proportions, float)
    if proportions.ndim != 1 or len(proportions) == 0 or proportions.min() < 0 or proportions.max() > 1:
        raise RigError("proportions must be a non-empty list of values in [0, 1]")
    source = StimulusSource(stimuli)
    runner = PrefixRunner(subject, source, batch_size, max_cache_bytes, use_cache=use_cache)
    n_units, n_stim = _site_units(runner, site), source.n
    x, y = positions if positions is not None else (source.positions() or (None, None))
    ks = n_lesioned(proportions, n_units)
    n_rep = max(repeats, 1) if "random" in strategies else 1
    spec = dict(site=site, strategies=strategies, proportions=proportions.tolist(), repeats=n_rep, seed=seed,
                units=None if units is None else list(map(int, units)), n_units=n_units, n_stimuli=n_stim,
                stimuli=source.content_hash(), subject=str(getattr(subject, "name", type(subject.model).__name__)))
    store = ConditionStore(folder, spec)
    tp = np.full((len(strategies), n_rep, len(proportions), n_stim), np.nan, np.float32)
    by_mask: dict[str, np.ndarray] = {}
    silencer = UnitSilencer(runner.model.get_submodule(site))
    try:
        for si, strat in enumerate(strategies):
            for r in range(n_rep if strat == "random" else 1):
                ranks = unit_ranks(strat, n_units, n_stim, ratemaps=ratemaps, x=x, y=y, units=units,
                                   seed=seed, repeat=r)
                for pi, k in enumerate(ks):
                    if strat == "units":
                        k = min(k, len(units))
                    key = f"{strat}/r{r}/p{proportions[pi]:.9f}"
                    probs = store.get(key)
                    if probs is None:
                        digest = hashlib.sha1(np.packbits(ranks < k).tobytes() + str(ranks.shape).encode()).hexdigest()
                        if digest not in by_mask:
                            if runner.split is None and runner.fallback == "not prepared":
                                runner.prepare(site)

                            def on_batch(idx: np.ndarray, ranks=ranks, k=k) -> None:
                                rows = ranks[idx] if len(ranks) > 1 else np.repeat(ranks, len(idx), 0)
                                silencer.mask = rows < k

                            by_mask[digest] = runner.run(readout, on_batch)
                        probs = by_mask[digest]
                        store.put(key, probs)
                    tp[si, r, pi] = probs[:, target]
    finally:
        silencer.remove()
        runner.close()
    ds = _unit_dataset(tp, strategies, proportions, ks, source, x, y)
    ds.attrs.update(site=site, n_units=n_units, seed=seed, repeats=n_rep, target=str(_label(readout, target)),
                    prefix_cache=runner.split.block if runner.split else f"off: {runner.fallback}",
                    cls_only_last_block=int(runner.cls_only),
                    random_sets="one random unit set per repeat, shared by all stimuli, nested across proportions")
    if folder is not None:
        with atomic_path(Path(folder) / "unit_lesions.nc") as tmp:
            ds.to_netcdf(tmp)
    return ds


def _label(readout: Any, target: int) -> str:
    labels = getattr(readout, "labels", None)
    return labels[target] if labels else str(target)


def _unit_dataset(tp: np.ndarray, strategies: list[str], proportions: np.ndarray, ks: np.ndarray,
                  source: StimulusSource, x: np.ndarray | None, y: np.ndarray | None) -> xr.Dataset:
    flat = tp.transpose(0, 2, 1, 3).reshape(len(strategies), len(proportions), -1)
    n = np.sum(~np.isnan(flat), axis=-1)
    mean = np.nanmean(flat, axis=-1)
    sem = np.nanstd(flat, axis=-1, ddof=1) / np.sqrt(np.maximum(n, 1)) if flat.shape[-1] > 1 else np.zeros_like(mean)
    dims2 = ("strategy", "proportion")
    base_idx = int(np.argmin(proportions))
    ds = xr.Dataset(
        {
            "target_probability": (("strategy", "repeat", "proportion", "stimulus"), tp),
            "mean": (dims2, mean), "ci_low": (dims2, mean - 1.96 * sem), "ci_high": (dims2, mean + 1.96 * sem),
        },
        coords={"strategy": strategies, "repeat": np.arange(tp.shape[1]), "proportion": proportions,
                "n_lesioned": ("proportion", ks), "stimulus": np.arange(source.n)},
    )
    if proportions[base_idx] == 0:
        ds["baseline"] = ("stimulus", tp[0, 0, base_idx])
    if x is not None:
        ds = ds.assign_coords(x=("stimulus", np.asarray(x, float)), y=("stimulus", np.asarray(y, float)))
    ds["target_probability"].attrs["units"] = "probability of the target choice"
    return ds
