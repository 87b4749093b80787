"""Which units a lesion silences first: what a unit is, and per-stimulus scores from ratemaps (numpy / xarray only).

**What a unit is** (`unit`): a site's output per stimulus is `(D,)` (flat), `(T, D)` (tokens) or `(C, H, W)` (conv).
- `"channel"`: one channel (D or C of them), silenced at every token / map position. Its ranking map is the
  ratemap of its mean response over the recorded tokens / map positions (for a conv site, of its
  global-average-pooled response; for a ViT site recorded with `tokens = "cls"`, its CLS map).
- `"element"`: one value of the output: a channel at one token (index `t * D + d`, the recording's
  `(token, unit)` order) or at one map position (index `c * H * W + y * W + x`, `(unit, map_y, map_x)` order).
  At flat sites both are the same.

**Scores** of unit u for stimulus s are read in the ranking map `m_u` at the bin whose centre is nearest the
stimulus centre; when no stimulus of the ranking set visited that bin, at the nearest visited bin (distance
between bin centres in pixels; `n_nearest` counts the stimuli this happened to). Never an index-order fallback.
- `z`, position selectivity (strategies `targeted`, `targeted_abs`): `(m_u(bin) - mean(m_u)) / sd(m_u)`, mean and
  s.d. over the visited bins. Scale-free: a unit is ranked by where its map is high *relative to itself*, so
  neither its overall level (a raw value picks the loudest units, the same set at every position) nor its gain
  (a deviation in raw units favours the units with the largest spatial variance) decides. A unit whose map is
  flat scores 0; one without a map (NaN) is silenced last.
- `raw`, the map value itself (`targeted_raw`, `targeted_raw_abs`): the blog's ranking, kept to reproduce it.
- `mean`, the unit's mean response over the ranking stimuli (`by_mean`): the position-free control, one set
  shared by all stimuli (a mean over N stimuli moves by 1/N with one stimulus; it is not held out).

**Held-out ranking maps** (`held_out_scores`, the default of the lesion step): the lesion stimuli are split into
`folds` (seeded), and the maps that rank the stimuli of one fold are made from every recorded stimulus outside
that fold (K-fold cross-fitting), so no stimulus ranks units with its own response. `map_scores` on maps made
from all stimuli is the circular variant (each stimulus then contributes to the very bin it is ranked at).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from rig.errors import RigError

UNIT_MODES = ("channel", "element")
#: the per-stimulus dims of a site, in the order the site's output (and the recording) lays them out
SITE_DIMS = ("token", "unit", "map_y", "map_x")


@dataclass
class UnitScores:
    """Scores that rank the units of a site for each lesion stimulus.

    `z`, `raw`: `(S, U)` float32 (see the module docstring); `mean`: `(U,)`; `n_nearest`: stimuli ranked at the
    nearest visited bin because their own bin was unvisited; `ranking`: how the maps were made (in words).
    """

    z: np.ndarray
    raw: np.ndarray
    mean: np.ndarray
    n_nearest: int
    ranking: str

    @property
    def n_units(self) -> int:
        return int(self.z.shape[1])


def per_unit(da: xr.DataArray, unit: str, lead: Sequence[str] = (), trail: Sequence[str] = ()) -> np.ndarray:
    """Values of a site's array (a recording `(stimulus, ...)` or its ratemaps `(..., y_bin, x_bin)`, canonical
    dims) per lesion unit: `(lead..., U, trail...)`. `channel` averages over `token` / `map_y` / `map_x`
    (NaN stays NaN); `element` flattens the site dims in the site's output order (see the module docstring)."""
    if unit not in UNIT_MODES:
        raise RigError(f"unit must be one of {', '.join(UNIT_MODES)}, got {unit!r}")
    site = [d for d in SITE_DIMS if d in da.dims]
    other = [d for d in da.dims if d not in site and d not in lead and d not in trail]
    if "unit" not in site or other:
        raise RigError(f"cannot find the units of an array with dims {da.dims}: expected {tuple(lead)} + the site's "
                       f"(token, unit) / (unit, map_y, map_x) / (unit,) + {tuple(trail)}")
    if unit == "channel":
        pooled = [d for d in site if d != "unit"]
        if pooled:
            da = da.mean(pooled, skipna=False)
        site = ["unit"]
    values = np.asarray(da.transpose(*lead, *site, *trail).values)
    lead_shape = values.shape[:len(lead)]
    return values.reshape(*lead_shape, -1, *values.shape[values.ndim - len(trail):])


def bin_centres(maps: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Bin-centre coordinates `(x centres, y centres)` in pixels of ratemaps with dims `y_bin`, `x_bin`."""
    out = []
    for dim in ("x_bin", "y_bin"):
        coord = maps.coords.get(dim)
        if coord is None:
            coord = next((c for c in maps.coords.values() if c.dims == (dim,)), None)
        if coord is None:
            raise RigError(f"ratemaps have no bin-centre coordinate along {dim!r}; pass the output of "
                           "analyses.ratemaps")
        out.append(np.asarray(coord.values, float))
    return out[0], out[1]


def ranking_bins(maps: np.ndarray, xc: np.ndarray, yc: np.ndarray, x: np.ndarray,
                  y: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat bin (`y_bin * nx + x_bin`) at which each stimulus is ranked, and how many were moved.

    The bin whose centre is nearest `(x, y)` (a stimulus outside the extent: the nearest edge bin); when that bin
    is unvisited (NaN for every unit of `maps` `(U, ny, nx)`), the visited bin nearest to it (Euclidean distance
    between bin centres in pixels)."""
    xi = np.abs(np.asarray(x, float)[:, None] - xc[None, :]).argmin(1)
    yi = np.abs(np.asarray(y, float)[:, None] - yc[None, :]).argmin(1)
    visited = np.isfinite(maps).any(axis=0)
    if not visited.any():
        raise RigError("the ranking maps have no visited bin; lower min_occupancy or show more stimuli")
    moved = ~visited[yi, xi]
    if moved.any():
        step = (float(np.mean(np.diff(yc))) if len(yc) > 1 else 1.0, float(np.mean(np.diff(xc))) if len(xc) > 1 else 1.0)
        _, (ny_idx, nx_idx) = ndimage.distance_transform_edt(~visited, sampling=step, return_indices=True)
        yi, xi = np.where(moved, ny_idx[yi, xi], yi), np.where(moved, nx_idx[yi, xi], xi)
    return yi * maps.shape[2] + xi, int(moved.sum())


def position_scores(maps: np.ndarray, flat_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`z` and `raw` scores `(S, U)` of maps `(U, ny, nx)` at each stimulus's flat bin (see `ranking_bins`)."""
    flat = maps.reshape(maps.shape[0], -1).astype(np.float64)
    finite = np.isfinite(flat)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    mean = np.where(finite, flat, 0.0).sum(axis=1, keepdims=True) / count
    sd = np.sqrt((np.where(finite, flat - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    # a map flat to float32 resolution scores 0 (its rounding is no position); NaN (no map) stays NaN
    resolution = 4 * np.finfo(np.float32).eps * np.abs(np.where(finite, flat, 0.0)).max(axis=1, keepdims=True)
    z = (flat - mean) / np.where(sd > resolution, sd, np.inf)
    raw = flat[:, flat_bin].T
    return z[:, flat_bin].T.astype(np.float32), raw.astype(np.float32)


def map_scores(maps: xr.DataArray | xr.Dataset, x: Any, y: Any, unit: str = "channel",
               mean: np.ndarray | None = None, ranking: str = "circular: one map from all stimuli") -> UnitScores:
    """Scores from one set of ratemaps for every stimulus (the circular variant when the maps include them).

    `maps`: `analyses.ratemaps` output (or its `ratemap`): `(unit[, token | map_y, map_x], y_bin, x_bin)`;
    `x`, `y`: stimulus centres `(S,)` px; `mean`: `(U,)` overall mean per unit (default: the maps' mean over
    visited bins, weighted by `occupancy` when `maps` is a Dataset that has it).
    """
    occupancy = maps["occupancy"].values if isinstance(maps, xr.Dataset) and "occupancy" in maps else None
    rm = maps["ratemap"] if isinstance(maps, xr.Dataset) else maps
    rm = rm.squeeze([d for d in rm.dims if d not in (*SITE_DIMS, "y_bin", "x_bin") and rm.sizes[d] == 1], drop=True)
    values = per_unit(rm, unit, trail=("y_bin", "x_bin"))
    xc, yc = bin_centres(rm)
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise RigError(f"x and y must be one position per stimulus, got shapes {x.shape} and {y.shape}")
    flat_bin, moved = ranking_bins(values, xc, yc, x, y)
    z, raw = position_scores(values, flat_bin)
    if mean is None:
        w = np.where(np.isfinite(values), 1.0 if occupancy is None else occupancy[None].astype(float), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(np.nan_to_num(values) * w, axis=(1, 2)) / w.sum(axis=(1, 2))
    return UnitScores(z, raw, np.asarray(mean, float), moved, ranking)


def held_out_scores(responses: xr.DataArray, lesion: Sequence[int] | np.ndarray, *, unit: str = "channel",
                    folds: int = 5, seed: int = 0, **map_kwargs: Any) -> UnitScores:
    """Scores for the lesion stimuli from ratemaps that leave each stimulus's own fold out.

    `responses`: a recorded site `(stimulus, ...)` (canonical dims, stimulus positions `x`, `y` as coordinates);
    `lesion`: indices (into `stimulus`) of the lesion stimuli, in lesion order; `folds`: the lesion stimuli are
    split into this many folds by a permutation from `default_rng(seed)` (at most one per stimulus); the maps
    for fold k are `analyses.ratemaps(**map_kwargs)` of every stimulus outside fold k (so stimuli that are
    not lesioned are in every map). `mean` is over all recorded stimuli.
    """
    import analyses

    lesion = np.asarray(lesion, int)
    n = responses.sizes["stimulus"]
    if lesion.ndim != 1 or len(lesion) == 0 or lesion.min() < 0 or lesion.max() >= n:
        raise RigError(f"lesion stimuli must be indices in [0, {n}), got {len(lesion)} of them")
    k = max(1, min(int(folds), len(lesion)))
    fold = np.empty(len(lesion), int)
    fold[np.random.default_rng(seed).permutation(len(lesion))] = np.arange(len(lesion)) % k
    values = per_unit(responses, unit, lead=("stimulus",)).astype(np.float32)
    coords = {c: v for c, v in responses.coords.items() if v.dims == ("stimulus",)}
    table = xr.DataArray(values, dims=("stimulus", "unit"), coords=coords, attrs=responses.attrs)
    x, y = (np.asarray(table[c].values, float)[lesion] for c in ("x", "y"))
    z = np.empty((len(lesion), values.shape[1]), np.float32)
    raw, moved = np.empty_like(z), 0
    for f in range(k):
        rows = np.flatnonzero(fold == f)
        keep = np.setdiff1d(np.arange(n), lesion[rows])
        maps = analyses.ratemaps(table.isel(stimulus=keep), **map_kwargs)["ratemap"]
        xc, yc = bin_centres(maps)
        flat_bin, m = ranking_bins(maps.values, xc, yc, x[rows], y[rows])
        z[rows], raw[rows] = position_scores(maps.values, flat_bin)
        moved += m
    return UnitScores(z, raw, values.mean(0).astype(float), moved,
                      f"held out: {k} folds of the lesion stimuli, each ranked by maps of the stimuli outside "
                      f"its fold (seed {seed})")


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """Per row, the rank of each unit by descending score (0 = silenced first); NaN ranks last. `(S, U)` int."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty(order.shape, np.int64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(scores.shape[1]), order.shape), axis=1)
    return ranks


def set_overlap(ranks: np.ndarray, other: np.ndarray, k: int) -> float:
    """Mean over stimuli of the share of the `k` units silenced first by `ranks` that `other` silences too
    (ranks `(S, U)` or `(1, U)`, broadcast); NaN for k = 0."""
    if k <= 0:
        return float("nan")
    return float(((ranks < k) & (other < k)).sum(axis=1).mean() / k)
