"""Per-unit significance of spatial scores against shuffled stimulus positions, and a class per unit.

A fixed cut-off gives false grid cells (opexebo scores 0.6-0.8 on some maps with a few random fields), so a
unit is called spatial / grid / border only when its score beats its own null distribution: the same unit's
responses with the stimulus positions permuted (seeded), re-binned, re-smoothed and re-scored. Each shuffle
is one sparse product for all units of a block; there is no loop per unit. With `regress_out`, stimulus
covariates (e.g. the diameter, confounded with position near the walls) are regressed out of the unshuffled
responses once; the residuals keep their stimuli, and only the positions are shuffled.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from analyses.ratemaps import RATES, AnalysisInputError, bin_means, regression_basis, residualise, stimulus_bins
from analyses.spatial import border_score, grid_score, spatial_stats

SCORES = ("spatial_information", "grid_score", "border_score")
CLASSES = ("none", "spatial", "grid", "border")


def _score(name: str, maps: np.ndarray, occupancy: np.ndarray, rate: str) -> np.ndarray:
    if name == "spatial_information":
        return np.asarray(spatial_stats(maps, occupancy, rate=rate)["information_content"])
    if name == "grid_score":
        return np.asarray(grid_score(maps))
    if name == "border_score":
        return np.asarray(border_score(maps))
    raise AnalysisInputError(f"unknown score {name!r}; choose from {SCORES}")


def classify(p: dict[str, np.ndarray], z: dict[str, np.ndarray], alpha: float) -> np.ndarray:
    """Class per unit from p-values and null z-scores ((score - null mean) / null sd) of the three scores.

    Rule: among grid and border, those with p <= alpha compete and the larger z wins (a unit can beat both
    nulls; it is the shape it beats by more); otherwise "spatial" if spatial information has p <= alpha;
    otherwise "none". Grid and border units are spatially informative too; the class names the most
    specific pattern.
    """
    n = next(iter(p.values())).shape
    out = np.full(n, "none", dtype=object)
    sig = {k: np.nan_to_num(p[k], nan=1.0) <= alpha for k in p}
    out[sig.get("spatial_information", np.zeros(n, bool))] = "spatial"
    zg = np.where(sig.get("grid_score", False), np.nan_to_num(z.get("grid_score", 0.0), nan=-np.inf), -np.inf)
    zb = np.where(sig.get("border_score", False), np.nan_to_num(z.get("border_score", 0.0), nan=-np.inf),
                  -np.inf)
    out[(zg > -np.inf) & (zg >= zb)] = "grid"
    out[(zb > -np.inf) & (zb > zg)] = "border"
    return out.astype(str)


def spatial_nulls(responses: xr.DataArray, x: Any = None, y: Any = None, n_shuffles: int = 100, seed: int = 0,
                  bins: int | tuple[int, int] = 28, extent: Sequence[float] | None = None,
                  smoothing: float | None = 1.0, rate: str = "shift", alpha: float = 0.05,
                  scores: Sequence[str] = SCORES, min_occupancy: int = 1,
                  block_units: int = 2048, regress_out: Any = None) -> xr.Dataset:
    """Scores, shuffle p-values and a class for every unit of `responses` (stimulus, other dims...).

    Maps are built as `analyses.ratemaps.ratemaps` (bins, extent, smoothing, min_occupancy); spatial
    information uses `rate` (default "shift": network activations are signed). Each of `n_shuffles` shuffles
    permutes the stimulus positions (`numpy.random.default_rng(seed)`, the same permutations for every unit).
    p = (1 + #{null >= observed}) / (1 + n_shuffles) (NaN where the observed score is NaN; a NaN null score
    counts as not beating it). regress_out: stimulus covariates (names or arrays, as in `ratemaps`) removed
    from each unit's responses by least squares (unit mean kept) before the maps and all shuffles; the
    covariates stay with their stimuli, so the null keeps no position-covariate confound. Returns a Dataset
    over the unit dims with, per score, `<score>`, `<score>_p`, `<score>_null_mean`, `<score>_null_sd`, and
    `class` (see `classify`); attrs hold the settings (with `regress_out`, the covariate labels).
    """
    flat, shape, extent = stimulus_bins(responses, x, y, bins, extent)
    if rate not in RATES:
        raise AnalysisInputError(f"rate must be one of {RATES}, got {rate!r}")
    if n_shuffles < 1:
        raise AnalysisInputError(f"n_shuffles must be >= 1, got {n_shuffles}")
    if not scores:
        raise AnalysisInputError(f"scores is empty; choose one or more of {SCORES}")
    for name in scores:
        if name not in SCORES:
            raise AnalysisInputError(f"unknown score {name!r}; choose from {SCORES}")
    basis, covariates = regression_basis(responses, regress_out)
    resp = responses.transpose("stimulus", ...)
    other = [d for d in resp.dims if d != "stimulus"]
    lead = tuple(resp.sizes[d] for d in other)
    stacked = resp.stack(_unit=other) if other else resp.expand_dims("_unit", axis=1)
    n_units = stacked.sizes["_unit"]
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(flat.size) for _ in range(n_shuffles)])
    obs = {k: np.empty(n_units) for k in scores}
    ge = {k: np.zeros(n_units) for k in scores}
    s1 = {k: np.zeros(n_units) for k in scores}
    s2 = {k: np.zeros(n_units) for k in scores}
    cnt = {k: np.zeros(n_units) for k in scores}
    for start in range(0, n_units, block_units):
        sl = slice(start, start + block_units)
        vals = residualise(np.asarray(stacked.isel(_unit=sl).values, dtype=np.float64), basis)
        maps, occ = bin_means(vals, flat, shape, min_occupancy, smoothing)
        for k in scores:
            obs[k][sl] = _score(k, maps, occ, rate)
        for perm in perms:
            maps, _ = bin_means(vals, flat[perm], shape, min_occupancy, smoothing)
            for k in scores:
                null = _score(k, maps, occ, rate)
                fin = np.isfinite(null)
                ge[k][sl] += fin & (null >= obs[k][sl])
                s1[k][sl] += np.where(fin, null, 0)
                s2[k][sl] += np.where(fin, null * null, 0)
                cnt[k][sl] += fin
    data, p, z = {}, {}, {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in scores:
            p[k] = np.where(np.isfinite(obs[k]), (1 + ge[k]) / (1 + n_shuffles), np.nan)
            mean = s1[k] / cnt[k]
            sd = np.sqrt(np.maximum(s2[k] / cnt[k] - mean * mean, 0))
            z[k] = (obs[k] - mean) / sd
            data.update({k: obs[k], f"{k}_p": p[k], f"{k}_null_mean": mean, f"{k}_null_sd": sd})
    data["class"] = classify(p, z, alpha)
    coords = {kk: v for kk, v in resp.coords.items() if "stimulus" not in v.dims}
    ds = xr.Dataset({k: (tuple(other), np.asarray(v).reshape(lead)) for k, v in data.items()}, coords=coords)
    ds.attrs.update(n_shuffles=int(n_shuffles), seed=int(seed), alpha=float(alpha), rate=rate,
                    bins=list(shape), extent=[float(e) for e in extent], smoothing=float(smoothing or 0.0),
                    scores=list(scores), regress_out=covariates, p_value="(1 + #{null >= observed}) / (1 + n_shuffles)")
    return ds
