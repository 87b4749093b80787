"""Ratemaps: every unit's mean response as a function of stimulus position, on a grid of bins.

All units at once: the (bin x stimulus) one-hot matrix `B` is sparse, so the sums per bin of a block of units
`R` (stimulus x units) are one sparse-dense product `B @ R`; the recording is read in blocks of units
(bounded memory, works on a lazy netCDF-backed DataArray). Optionally each unit's responses are first
residualised on stimulus covariates (`regress_out`, e.g. the diameter, which the position confounds near the
walls of the frame): one orthonormal basis of the design, reused for every block.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import xarray as xr

from .backend import is_numpy, namespace, on_device, to_numpy

RATES = ("none", "shift", "robust", "rectify")
#: units per chunk column of a recording (`rig.recorder.CHUNK_UNITS`): blocks of units are whole columns
CHUNK_UNITS = 16
#: the percentile of a map's visited bins that rate="robust" takes as its zero rate
ROBUST_PERCENTILE = 5.0


class AnalysisInputError(ValueError):
    """Input an analysis cannot use (wrong shape, unknown option, no stimuli in the frame); says what to do.

    `analyses` cannot import `rig`; the rig layer re-raises these as `rig.errors.RigError`.
    """


def rate_transform(maps: Any, rate: str) -> Any:
    """Turn activation maps (..., y, x) into non-negative "rates" for Skaggs statistics.

    "none": unchanged (must already be >= 0); "shift": minus the map's own minimum over visited bins (the map's
    least response becomes rate 0; invariant to the unit's offset, but the information then depends on the
    map's single noisiest bin); "robust": minus the map's `ROBUST_PERCENTILE`-th percentile over visited bins
    (the order statistic of rank floor(0.05 (V - 1)) of its V visited bins), bins below it clipped to 0: as
    offset-invariant as "shift", and a single outlying bin moves it by at most one rank; "rectify":
    max(map, 0) (negative responses become silence). NaN (unvisited) stays NaN. numpy or torch arrays (float64
    for numpy input of another dtype); the result has the input's namespace and device.
    """
    if rate not in RATES:
        raise AnalysisInputError(f"rate must be one of {RATES}, got {rate!r}")
    xp = namespace(maps)
    maps = xp.asarray(maps, dtype=xp.float64) if is_numpy(xp) else maps
    finite = xp.isfinite(maps)
    nan = xp.asarray(float("nan"), dtype=maps.dtype)
    if rate in ("shift", "robust"):
        high = xp.where(finite, maps, xp.asarray(float("inf"), dtype=maps.dtype))
        if rate == "shift":
            low = xp.min(high, axis=(-2, -1), keepdims=True)
        else:
            flat = xp.reshape(high, high.shape[:-2] + (-1,))
            count = xp.sum(xp.astype(xp.reshape(finite, flat.shape), xp.int64), axis=-1, keepdims=True)
            rank = xp.astype(xp.floor(ROBUST_PERCENTILE / 100 * xp.astype(xp.clip(count - 1, min=0), maps.dtype)),
                             xp.int64)
            if is_numpy(xp) and flat.size and (rank == rank.flat[0]).all():  # one rank: select, do not sort
                low = np.partition(flat, int(rank.flat[0]), axis=-1)[..., int(rank.flat[0])][..., None, None]
            else:
                flat = xp.sort(flat, axis=-1)
                hit = xp.arange(flat.shape[-1], device=_device(maps)) == rank
                low = xp.sum(xp.where(hit, flat, xp.zeros_like(flat)), axis=-1)[..., None, None]
        low = xp.where(xp.isfinite(low), low, xp.zeros_like(low))
        shifted = maps - low
        if rate == "robust":
            shifted = xp.clip(shifted, min=0.0)
        return xp.where(finite, shifted, nan)
    if rate == "rectify":
        return xp.where(finite, xp.clip(maps, min=0.0), nan)
    return maps


def _device(a: Any) -> Any:
    from array_api_compat import device

    return device(a)


def gaussian_matrix(n: int, sigma: float, truncate: float = 4.0, like: Any = None) -> Any:
    """(n, n) matrix of `scipy.ndimage.gaussian_filter1d` (sigma in bins, radius int(truncate sigma + 0.5),
    zero padding: `mode="constant"`) along an axis of length n: filtered = K @ values."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    weights /= weights.sum()
    k = np.zeros((n, n))
    for off, w in zip(offsets, weights):
        k += w * np.eye(n, k=int(off))
    if like is None:
        return k
    xp = namespace(like)
    return xp.asarray(k, dtype=like.dtype, device=_device(like))


def smooth_maps(maps: Any, sigma: float, truncate: float = 4.0, visited: Any = None) -> Any:
    """NaN-aware Gaussian smoothing of maps (..., y, x), sigma in bins (normalised convolution).

    smooth(values * visited) / smooth(visited) over the last two axes, each a separable product with
    `gaussian_matrix` (identical to `scipy.ndimage.gaussian_filter(..., mode="constant")`: zero padding outside
    the frame, so edges are not biased toward reflected values); unvisited bins stay NaN. `visited`: the
    visited mask when known and shared by all maps ((y, x); its smoothing is then done once). numpy or torch
    arrays, same namespace out. sigma <= 0 returns a copy.
    """
    xp = namespace(maps)
    maps = xp.asarray(maps, dtype=xp.float64) if is_numpy(xp) else maps
    if sigma is None or sigma <= 0:
        return xp.asarray(maps, copy=True)
    ky = gaussian_matrix(maps.shape[-2], sigma, truncate, like=maps)
    kx = gaussian_matrix(maps.shape[-1], sigma, truncate, like=maps)
    visited = xp.isfinite(maps) if visited is None else visited
    num = ky @ xp.where(visited, maps, xp.zeros_like(maps)) @ kx.T
    den = ky @ xp.astype(visited, maps.dtype) @ kx.T
    return xp.where(visited, num / xp.where(visited, den, xp.ones_like(den)),
                    xp.asarray(float("nan"), dtype=maps.dtype))


def as_extent(extent: Any) -> tuple[float, float, float, float]:
    """`(x0, x1, y0, y1)` pixels from the forms a user writes: `(lo, hi)` for both axes, or `(x0, x1, y0, y1)`."""
    try:
        values = [float(v) for v in np.asarray(extent, dtype=float).ravel()]
    except (TypeError, ValueError):
        values = []
    if len(values) == 2:
        values = values * 2
    if len(values) != 4 or not all(np.isfinite(values)):
        raise AnalysisInputError(f"extent must be (lo, hi) pixels for both axes or (x0, x1, y0, y1), got {extent!r}")
    x0, x1, y0, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise AnalysisInputError(f"extent must have hi > lo on both axes (x0, x1, y0, y1), got {extent!r}")
    return x0, x1, y0, y1


def bin_positions(x: np.ndarray, y: np.ndarray, bins: int | tuple[int, int],
                  extent: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Flat bin index (y_bin * nx + x_bin) per stimulus, -1 outside `extent` (see `as_extent`), in pixels.

    Bins are half-open [lo, hi) except the last, which includes the far edge.
    """
    ny, nx = (bins, bins) if np.isscalar(bins) else tuple(int(b) for b in bins)
    if ny < 1 or nx < 1:
        raise AnalysisInputError(f"bins must be positive, got {bins!r}")
    x0, x1, y0, y1 = as_extent(extent)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ix = np.floor((x - x0) / (x1 - x0) * nx).astype(np.int64)
    iy = np.floor((y - y0) / (y1 - y0) * ny).astype(np.int64)
    ix[x == x1], iy[y == y1] = nx - 1, ny - 1
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & np.isfinite(x) & np.isfinite(y)
    return np.where(inside, iy * nx + ix, -1), (ny, nx)


def binning_matrix(flat_bins: np.ndarray, n_bins: int) -> sp.csr_matrix:
    """Sparse one-hot (bin x stimulus) matrix; stimuli outside the frame (-1) have no entry. For S stacked bin
    assignments (S, stimulus): (S * n_bins, stimulus), assignment s in rows s * n_bins ..."""
    stacked = np.asarray(flat_bins).reshape(-1, np.shape(flat_bins)[-1])
    rows, cols = np.nonzero(stacked >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows * n_bins + stacked[rows, cols], cols)),
                         shape=(stacked.shape[0] * n_bins, stacked.shape[1]))


def bin_sums(values: Any, flat_bins: np.ndarray, n_bins: int) -> Any:
    """Sums of `values` (stimulus, units) per bin for one or several bin assignments at once.

    flat_bins: (stimulus,) or (S, stimulus) flat bin per stimulus (-1 = outside the frame), e.g. S shuffles of
    the positions sharing one product: the stacked one-hot (S * n_bins, stimulus) matrix times `values`, sparse
    for numpy (scipy), dense for other backends (one GEMM on a GPU). Returns (n_bins, units) or
    (S, n_bins, units) in the namespace of `values`.
    """
    xp = namespace(values)
    flat_bins = np.asarray(flat_bins)
    onehot = binning_matrix(flat_bins, n_bins)
    if is_numpy(xp):
        out = onehot @ values
    else:
        out = xp.asarray(onehot.toarray(), dtype=values.dtype, device=_device(values)) @ values
    return xp.reshape(out, flat_bins.shape[:-1] + (n_bins, values.shape[-1]))


def bin_means(values: Any, flat_bin: np.ndarray, shape: tuple[int, int], min_occupancy: int = 1,
              smoothing: float | None = None) -> tuple[Any, np.ndarray]:
    """Mean of `values` (stimulus, units) per bin -> maps (units, ny, nx) and occupancy (ny, nx).

    One sparse (bin x stimulus) product for all units (`bin_sums`; numpy or torch `values`, maps in the same
    namespace); bins with < min_occupancy stimuli are NaN; optional NaN-aware smoothing (sigma in bins).
    Occupancy is numpy.
    """
    sums = bin_sums(values, flat_bin, shape[0] * shape[1])
    occupancy = np.bincount(flat_bin[flat_bin >= 0], minlength=shape[0] * shape[1])
    return sums_to_maps(sums, occupancy, shape, min_occupancy, smoothing), occupancy.reshape(shape)


def sums_to_maps(sums: Any, occupancy: np.ndarray, shape: tuple[int, int], min_occupancy: int = 1,
                 smoothing: float | None = None) -> Any:
    """Maps (..., units, ny, nx) from bin sums (..., n_bins, units) and the bins' occupancy (n_bins,) or
    (..., n_bins) (bins with fewer than `min_occupancy` stimuli -> NaN), smoothed when `smoothing` > 0."""
    xp = namespace(sums)
    occupancy = np.asarray(occupancy)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(occupancy >= max(min_occupancy, 1), 1.0 / occupancy, np.nan)
    inv = xp.asarray(inv, dtype=sums.dtype, device=_device(sums))
    means = sums * inv[..., :, None]
    maps = xp.reshape(xp.moveaxis(means, -1, -2), means.shape[:-2] + (means.shape[-1],) + tuple(shape))
    if not smoothing:
        return maps
    visited = xp.isfinite(xp.reshape(inv, inv.shape[:-1] + (1,) + tuple(shape)))
    return smooth_maps(maps, smoothing, visited=visited)


def _coordinate(responses: xr.DataArray, value: Any, name: str) -> np.ndarray:
    if value is None or isinstance(value, str):
        key = value or name
        if key not in responses.coords:
            raise AnalysisInputError(f"responses have no '{key}' coordinate; pass {name}= stimulus positions")
        value = responses.coords[key].values
    value = np.asarray(value, dtype=np.float64)
    if value.shape != (responses.sizes["stimulus"],):
        raise AnalysisInputError(f"{name} has shape {value.shape}, expected ({responses.sizes['stimulus']},) "
                                 "(one position per stimulus)")
    return value


def _covariate_columns(responses: xr.DataArray, item: Any, label: str) -> np.ndarray:
    """(stimulus, columns) float design columns of one covariate; strings / categoricals -> one-hot, first
    level dropped."""
    n = responses.sizes["stimulus"]
    if isinstance(item, str):
        if item not in responses.coords or responses.coords[item].dims != ("stimulus",):
            along = [str(k) for k, v in responses.coords.items() if v.dims == ("stimulus",)]
            raise AnalysisInputError(f"regress_out: responses have no stimulus coordinate {item!r}; "
                                     f"choose from {along} or pass an array of length {n}")
        item = responses.coords[item].values
    values = np.asarray(item.values if isinstance(item, xr.DataArray) else item)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n:
        raise AnalysisInputError(f"regress_out: covariate {label!r} has shape {values.shape}, expected ({n},) or "
                                 f"({n}, k) (one value per stimulus)")
    if values.dtype.kind in "OUSb":
        if values.shape[1] != 1:
            raise AnalysisInputError(f"regress_out: categorical covariate {label!r} must be one column, got "
                                     f"{values.shape[1]}")
        if values.dtype.kind == "O" and any(v is None or (isinstance(v, float) and not np.isfinite(v))
                                            for v in values[:, 0]):
            raise AnalysisInputError(f"regress_out: categorical covariate {label!r} has missing values; "
                                     "fill them or drop the stimuli")
        levels, codes = np.unique(values[:, 0].astype(str), return_inverse=True)
        if levels.size < 2:
            raise AnalysisInputError(f"regress_out: categorical covariate {label!r} has one level only "
                                     f"({levels[0]!r}); nothing to regress out, drop it")
        return (codes[:, None] == np.arange(1, levels.size)[None, :]).astype(np.float64)
    if values.dtype.kind not in "iuf":
        raise AnalysisInputError(f"regress_out: covariate {label!r} has dtype {values.dtype}; pass numbers or "
                                 "category labels")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise AnalysisInputError(f"regress_out: covariate {label!r} has {int((~np.isfinite(values)).sum())} "
                                 "non-finite values; fill them or drop those stimuli")
    return values


def regression_basis(responses: xr.DataArray, regress_out: Any) -> tuple[np.ndarray | None, list[str]]:
    """Orthonormal basis Q (stimulus, k) of the design [intercept, covariates...] and the covariates' labels.

    regress_out: None / empty (no regression -> Q is None), a coordinate name along `stimulus`, an array of one
    value per stimulus, or a sequence of those. Numeric covariates are columns as they are; string / boolean
    ones become one-hot columns with the first (sorted) level dropped. Raises `AnalysisInputError` for unknown
    names, wrong lengths, non-finite values, or a rank-deficient design (a constant covariate, one category
    only, or collinear covariates).
    """
    if regress_out is None:
        return None, []
    if isinstance(regress_out, (str, np.ndarray, xr.DataArray)):
        regress_out = [regress_out]
    items = list(regress_out)
    if not items:
        return None, []
    labels = [item if isinstance(item, str) else
              str(item.name) if isinstance(item, xr.DataArray) and item.name is not None else f"array[{i}]"
              for i, item in enumerate(items)]
    n = responses.sizes["stimulus"]
    design = np.concatenate([np.ones((n, 1))] + [_covariate_columns(responses, item, label)
                                                  for item, label in zip(items, labels)], axis=1)
    scale = np.linalg.norm(design, axis=0)
    u, s, _ = np.linalg.svd(design / np.where(scale > 0, scale, 1.0), full_matrices=False)
    rank = int((s > s[0] * max(design.shape) * np.finfo(np.float64).eps * 1e3).sum())
    if rank < design.shape[1] or n <= design.shape[1]:
        raise AnalysisInputError(
            f"regress_out {labels}: the design (intercept + {design.shape[1] - 1} covariate columns, {n} stimuli) "
            f"has rank {rank}; a covariate is constant, has one category, or is collinear with others; drop it")
    return u, labels


def residualise(values: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """OLS residuals of `values` (stimulus, units) on the design spanned by `basis` (stimulus, k; includes the
    intercept), plus each unit's mean: values - Q (Q^T values) + mean. `basis` None returns `values`."""
    if basis is None:
        return values
    return values - basis @ (basis.T @ values) + values.mean(axis=0, keepdims=True)


def default_extent(responses: xr.DataArray, xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float, float]:
    """(0, canvas, 0, canvas) from `responses.attrs["canvas"]` (a side or (width, height)), else the range of
    the positions."""
    canvas = responses.attrs.get("canvas")
    if canvas is None:
        return (np.nanmin(xs), np.nanmax(xs), np.nanmin(ys), np.nanmax(ys))
    cw, ch = (canvas, canvas) if np.isscalar(canvas) else canvas
    return (0.0, float(cw), 0.0, float(ch))


def stimulus_bins(responses: xr.DataArray, x: Any, y: Any, bins: int | tuple[int, int],
                  extent: Sequence[float] | None) -> tuple[np.ndarray, tuple[int, int], Sequence[float]]:
    """Check `responses` and bin its stimuli: flat bin per stimulus (-1 outside), (ny, nx), and the extent used.

    x, y, bins, extent as in `ratemaps` (extent None: `default_extent`). Raises `AnalysisInputError` when
    `responses` is not a DataArray with a `stimulus` dim or no stimulus lies inside the extent.
    """
    if not isinstance(responses, xr.DataArray):
        raise AnalysisInputError("responses must be an xarray DataArray with a 'stimulus' dim")
    if "stimulus" not in responses.dims:
        raise AnalysisInputError(f"responses need a 'stimulus' dim, got dims {responses.dims}")
    xs, ys = _coordinate(responses, x, "x"), _coordinate(responses, y, "y")
    extent = default_extent(responses, xs, ys) if extent is None else as_extent(extent)
    flat, shape = bin_positions(xs, ys, bins, extent)
    if not (flat >= 0).any():
        raise AnalysisInputError(f"no stimulus position lies inside extent {tuple(extent)}; check extent and x/y")
    return flat, shape, extent


def ratemaps(responses: xr.DataArray, x: Any = None, y: Any = None, bins: int | tuple[int, int] = 28,
             extent: Sequence[float] | None = None, smoothing: float | None = None, rate: str = "none",
             min_occupancy: int = 1, block_bytes: int = 64 * 2**20, dtype: Any = np.float32,
             regress_out: Any = None, device: str | None = None) -> xr.Dataset:
    """Ratemap of every unit: mean response per position bin, with the occupancy of each bin.

    responses: DataArray with a `stimulus` dim (any other dims: unit, token, ...; may be lazy, e.g. from
    `xr.open_dataset`), read in blocks of about `block_bytes`. x, y: stimulus centres in pixels (arrays, or
    coordinate names; default the `x`/`y` coordinates). bins: n or (ny, nx). extent: (lo, hi) for both axes
    or (x0, x1, y0, y1), in pixels; default (0, canvas, 0, canvas) from `responses.attrs["canvas"]`, else the positions' range.
    Bins with fewer than `min_occupancy` stimuli are NaN (unvisited). smoothing: Gaussian sigma in bins,
    NaN-aware (`smooth_maps`). rate: one of `RATES` (`rate_transform`), applied last.
    regress_out: stimulus covariates (coordinate names such as `["diameter"]`, or arrays; strings are
    categorical) whose least-squares fit (with intercept) is removed from every unit's responses before
    binning, the unit's mean added back (`regression_basis`, `residualise`; fit over all stimuli).
    device: None computes with numpy; "cpu" / "cuda" / "cuda:1" with torch on that device (float64; blocks are
    moved there and the maps brought back). Blocks run along the largest dim (`unit` in a recording), which
    is also the dim the recorder chunks by (all stimuli x all tokens x 16 units per chunk column).

    Returns Dataset with `ratemap` (other dims..., y_bin, x_bin) and `occupancy` (y_bin, x_bin; stimuli per
    bin), bin-centre coordinates `y_bin`, `x_bin` in pixels, attrs bins, extent, smoothing, rate,
    min_occupancy, n_outside (stimuli outside the extent, ignored), regress_out (covariate labels).
    """
    if rate not in RATES:
        raise AnalysisInputError(f"rate must be one of {RATES}, got {rate!r}")
    flat, (ny, nx), extent = stimulus_bins(responses, x, y, bins, extent)
    occupancy = np.bincount(flat[flat >= 0], minlength=ny * nx)
    basis, covariates = regression_basis(responses, regress_out)

    resp = responses.transpose("stimulus", ...)
    other = [d for d in resp.dims if d != "stimulus"]
    shape = tuple(resp.sizes[d] for d in other)
    n_units = int(np.prod(shape)) if shape else 1
    out = np.empty((n_units, ny, nx), dtype=dtype)
    block_dim = max(other, key=lambda d: resp.sizes[d]) if other else None
    per_index = max(1, n_units // max(resp.sizes[block_dim], 1)) if block_dim else 1
    step = max(1, int(block_bytes // (8 * resp.sizes["stimulus"] * per_index))) if block_dim else 1
    if step >= CHUNK_UNITS:  # whole chunk columns of a recording (all tokens x 16 units): none read twice
        step -= step % CHUNK_UNITS
    full = out.reshape(shape + (ny, nx)) if shape else out.reshape(ny, nx)
    axis = other.index(block_dim) if block_dim else None
    for start in range(0, resp.sizes[block_dim] if block_dim else 1, step):
        block = resp.isel({block_dim: slice(start, start + step)}) if block_dim else resp
        vals = np.asarray(block.values, dtype=np.float64)
        vals = on_device(residualise(vals.reshape(vals.shape[0], -1), basis), device)
        means, _ = bin_means(vals, flat, (ny, nx), min_occupancy, smoothing)
        means = to_numpy(rate_transform(means, rate)).reshape(block.shape[1:] + (ny, nx))
        index = [slice(None)] * len(other)
        if axis is not None:
            index[axis] = slice(start, start + step)
        full[tuple(index)] = means
    x_centres = extent[0] + (np.arange(nx) + 0.5) * (extent[1] - extent[0]) / nx
    y_centres = extent[2] + (np.arange(ny) + 0.5) * (extent[3] - extent[2]) / ny
    coords = {k: v for k, v in resp.coords.items() if "stimulus" not in v.dims}
    coords.update(y_bin=("y_bin", y_centres, {"units": "px"}), x_bin=("x_bin", x_centres, {"units": "px"}))
    attrs = {"bins": [ny, nx], "extent": [float(e) for e in extent], "smoothing": float(smoothing or 0.0),
             "rate": rate, "min_occupancy": int(min_occupancy), "n_outside": int((flat < 0).sum()),
             "units": responses.attrs.get("units", "response"), "regress_out": covariates}
    ds = xr.Dataset(
        {"ratemap": (tuple(other) + ("y_bin", "x_bin"), full),
         "occupancy": (("y_bin", "x_bin"), occupancy.reshape(ny, nx).astype(np.int64))},
        coords=coords, attrs=attrs)
    ds["ratemap"].attrs.update(long_name="mean response per position bin", rate=rate)
    ds["occupancy"].attrs.update(long_name="stimuli per bin", units="stimuli")
    return ds
