"""Spatial scores of ratemaps: Skaggs spatial information (+ sparsity, selectivity), grid score, border score.

Every score takes maps whose last two axes are `(y, x)` (bins), with any leading axes (units), NaN marking
unvisited bins, as numpy arrays or xarray DataArrays, and returns one value per map (same leading shape; an
xarray input gives a DataArray with the leading dims and coords). All maps are processed together, in blocks
of `block_size` maps (bounded memory), without a Python loop per map.

Backends: numpy arrays, or torch tensors on any device (the array API, `analyses.backend`): spatial
statistics and the autocorrelogram run in the namespace they are given (batched FFTs on a GPU); the grid
score's centre-field search and ring correlations and the border score's field labelling run in numpy on the
host (the autocorrelograms are brought there), and their results go back to the input's namespace.

References: Skaggs et al. 1993/1996 (information, sparsity, selectivity); BNT / opexebo 0.7
(`opexebo.analysis.autocorrelation`, `grid_score`, `rate_map_stats`); Solstad et al. 2008 (border score).
Where these functions knowingly differ from opexebo it is said in their docstrings.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import xarray as xr
from scipy import fft as sp_fft
from scipy import ndimage, sparse

from analyses.backend import asarray, is_numpy, namespace, to_numpy
from analyses.ratemaps import AnalysisInputError, rate_transform

MapsLike = Any  # np.ndarray | xr.DataArray, last two axes (y, x)

GRID_ANGLES = (30, 60, 90, 120, 150)  # degrees, counter-clockwise as skimage.transform.rotate
_ACORR_BLOCK = 64  # maps per batch of autocorrelograms and of ring sums in `grid_score`: arrays stay in cache
_EXPAND_THRESHOLDS = np.round(np.linspace(0.95, 0.2, int((0.95 - 0.2) / 0.02) + 1), 2)


# --------------------------------------------------------------------------------------------- plumbing
def _split(maps: MapsLike) -> tuple[Any, tuple[int, ...], xr.DataArray | None]:
    """(N, H, W) stack (float64 numpy, or the given torch tensor), the leading shape, and the DataArray
    template (or None)."""
    template = maps if isinstance(maps, xr.DataArray) else None
    xp = namespace(maps)
    arr = xp.asarray(maps.values if template is not None else maps, dtype=xp.float64) if is_numpy(xp) else maps
    if arr.ndim < 2:
        raise AnalysisInputError(f"ratemaps need at least 2 axes (y, x), got shape {tuple(arr.shape)}; pass maps[..., y, x]")
    lead = tuple(arr.shape[:-2])
    return xp.reshape(arr, (-1,) + tuple(arr.shape[-2:])), lead, template


def _wrap(values: Any, lead: tuple[int, ...], template: xr.DataArray | None, name: str,
          attrs: dict | None = None) -> Any:
    out = namespace(values).reshape(values, lead)
    if template is None:
        return out
    dims = template.dims[:-2]
    coords = {k: v for k, v in template.coords.items() if set(v.dims) <= set(dims)}
    return xr.DataArray(out, dims=dims, coords=coords, name=name, attrs=dict(attrs or {}))


def _blocked(fn: Callable[[Any], np.ndarray], stack: Any, block_size: int, workers: int | None = 1) -> np.ndarray:
    """Apply `fn` (block (b, H, W) -> (b,)) over blocks of at most `block_size` maps, in `workers` threads (None:
    one per available core; smaller blocks when there are fewer than `workers` full ones). `fn` must give each
    map the same value whichever block holds it (the scores here do, bit for bit): then `workers` does not change
    the result."""
    n = resolve_workers(workers)
    size = max(1, min(block_size, -(-stack.shape[0] // n)))
    starts = range(0, stack.shape[0], size)
    out = np.empty(stack.shape[0], dtype=np.float64)

    def run(start: int) -> None:
        out[start:start + size] = fn(stack[start:start + size])

    if min(n, len(starts)) <= 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(min(n, len(starts))) as pool:
            list(pool.map(run, starts))
    return out


def resolve_workers(workers: int | None) -> int:
    """Threads for `workers`: None = the cores this process may use; at least 1."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if int(workers) != workers or workers < 1:
        raise AnalysisInputError(f"workers must be a positive integer or None, got {workers!r}")
    return int(workers)


# ------------------------------------------------------------------------------------ Skaggs statistics
def spatial_stats(ratemap: MapsLike, occupancy: MapsLike, rate: str = "none", clip: bool = False) -> dict:
    """Skaggs statistics of every map, as a dict of arrays (or DataArrays) with the leading shape.

    ratemap: (..., y, x) mean response per bin, NaN = unvisited; occupancy: broadcastable to it (stimuli or
    time per bin; NaN or 0 = unvisited). `rate` turns activations into non-negative rates first
    (`analyses.ratemaps.rate_transform`: "none", "shift" = minus the map's minimum, "robust" = minus its 5th
    percentile, clipped at 0, "rectify" = max(., 0)).
    With p_i = occupancy_i / sum(occupancy), mean rate r = sum p_i r_i:
      information_rate    = sum p_i r_i log2(r_i / r)           [bits per unit time / per stimulus]
      information_content = information_rate / r               [bits per spike]
      sparsity            = r^2 / sum p_i r_i^2                 (in (0, 1])
      selectivity         = max_i r_i / r
    `clip=False` is Skaggs' formula (a KL divergence, >= 0). `clip=True` is opexebo's `rate_map_stats`, which
    clips log2 arguments below 1 to 1 (only bins above the mean contribute). Undefined values are NaN: maps with
    no visited bin, zero mean rate, or (with rate="none") a negative rate anywhere.
    """
    maps, lead, template = _split(ratemap)
    xp = namespace(maps)
    maps = rate_transform(maps, rate)
    occ = getattr(occupancy, "values", occupancy)
    occ = asarray(occ if not is_numpy(namespace(occ)) else np.asarray(occ, dtype=np.float64), like=maps)
    occ = xp.reshape(xp.broadcast_to(occ, lead + tuple(maps.shape[-2:])), maps.shape)
    valid = xp.isfinite(maps) & xp.isfinite(occ) & (occ > 0)
    zero, nan = xp.zeros_like(maps), float("nan")
    r = xp.where(valid, maps, zero)
    p = xp.where(valid, occ, zero)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / xp.sum(p, axis=(1, 2), keepdims=True)
        mean = xp.sum(p * r, axis=(1, 2))
        mean_sq = xp.sum(p * r * r, axis=(1, 2))
        ratio = r / mean[:, None, None]
        if clip:
            ratio = xp.clip(ratio, min=1.0)
        positive = ratio > 0
        log_term = xp.where(positive, xp.log2(xp.where(positive, ratio, xp.ones_like(ratio))), zero)
        info_rate = xp.sum(p * r * log_term, axis=(1, 2))
        peak = xp.max(xp.where(valid, maps, xp.full_like(maps, -float("inf"))), axis=(1, 2))
        bad = ~xp.any(valid, axis=(1, 2)) | (mean == 0) | ~xp.isfinite(mean)
        if rate == "none":
            bad = bad | xp.any(r < 0, axis=(1, 2))
        out = {
            "information_rate": xp.where(bad, nan, info_rate),
            "information_content": xp.where(bad, nan, info_rate / mean),
            "sparsity": xp.where(bad | (mean_sq == 0), nan, mean * mean / mean_sq),
            "selectivity": xp.where(bad, nan, peak / mean),
        }
    attrs = {"rate": rate, "clip": int(clip)}
    units = {"information_rate": "bits/stimulus", "information_content": "bits/spike",
             "sparsity": "1", "selectivity": "1"}
    return {k: _wrap(v, lead, template, k, {**attrs, "units": units[k]}) for k, v in out.items()}


def spatial_information(ratemap: MapsLike, occupancy: MapsLike, rate: str = "none", clip: bool = False,
                        per: str = "spike") -> np.ndarray | xr.DataArray:
    """Skaggs spatial information per map: bits/spike (`per="spike"`) or bits per unit occupancy
    (`per="second"`; per stimulus when occupancy counts stimuli). See `spatial_stats` for the formula, the
    `rate` transform and `clip`. Returns the leading shape of `ratemap`."""
    if per not in ("spike", "second"):
        raise AnalysisInputError(f"per must be 'spike' or 'second', got {per!r}")
    stats = spatial_stats(ratemap, occupancy, rate=rate, clip=clip)
    return stats["information_content" if per == "spike" else "information_rate"]


def sparsity(ratemap: MapsLike, occupancy: MapsLike, rate: str = "none") -> np.ndarray | xr.DataArray:
    """Skaggs sparsity r^2 / <r^2> per map (see `spatial_stats`)."""
    return spatial_stats(ratemap, occupancy, rate=rate)["sparsity"]


def selectivity(ratemap: MapsLike, occupancy: MapsLike, rate: str = "none") -> np.ndarray | xr.DataArray:
    """Selectivity max(r) / mean(r) per map (see `spatial_stats`)."""
    return spatial_stats(ratemap, occupancy, rate=rate)["selectivity"]


# ----------------------------------------------------------------------------------- autocorrelogram
def _corr_fft(shape: tuple[int, int], lags: tuple[int, int], like: Any,
              workers: int = -1) -> tuple[Callable, Callable]:
    """FFT helpers for correlations of (H, W) maps at lags |dy| <= lags[0], |dx| <= lags[1] (< H, W): FFT
    sizes >= H + lag (the smallest without wrap-around at those lags), fast lengths. Batched over leading
    axes, in the namespace of `like` (scipy.fft with `workers` threads (-1: all cores) for numpy, the backend's
    fft otherwise)."""
    xp = namespace(like)
    fshape = tuple(sp_fft.next_fast_len(n + lag, real=True) for n, lag in zip(shape, lags))
    extra = {"workers": workers} if is_numpy(xp) else {}
    fft = sp_fft if is_numpy(xp) else xp.fft

    def fwd(a: Any) -> Any:
        return fft.rfftn(a, s=fshape, axes=(-2, -1), **extra)

    def corr(fa: Any, fb: Any) -> Any:
        """(..., 2 lags[0] + 1, 2 lags[1] + 1): out[lag + lags] = sum_p a(p) b(p + lag)."""
        c = fft.irfftn(xp.conj(fa) * fb, s=fshape, axes=(-2, -1), **extra)
        for axis, lag in ((-2, lags[0]), (-1, lags[1])):  # lags -lag..-1 wrap around to the end
            neg, pos = [slice(None)] * c.ndim, [slice(None)] * c.ndim
            neg[axis], pos[axis] = slice(c.shape[axis] - lag, None), slice(0, lag + 1)
            c = xp.concat([c[tuple(neg)], c[tuple(pos)]], axis=axis)
        return c

    return fwd, corr


def _crop_slices(shape: tuple[int, int], overlap: float = 0.8) -> tuple[slice, slice]:
    """opexebo's crop of the full (2H-1, 2W-1) autocorrelogram to lags with >= ~`overlap` support."""
    out = []
    for n in shape:
        full = 2 * n - 1
        new = np.round(n + n * overlap)
        if new % 2 == 0:
            new -= 1
        offset = np.round((full - new) / 2 + 1)
        out.append(slice(int(offset - 1), int(full - offset + 1)))
    return out[0], out[1]


def _autocorr_block(maps: Any, nan: str, crop: bool, workers: int = -1) -> Any:
    xp = namespace(maps)
    h, w = maps.shape[-2:]
    x = xp.asarray(maps, dtype=xp.float64, copy=True) if is_numpy(xp) else maps
    if nan == "zero":
        x = xp.where(xp.isfinite(x), x, xp.zeros_like(x))
    valid = xp.isfinite(x)
    zero = xp.zeros_like(x)
    n_valid = xp.sum(xp.astype(valid, x.dtype), axis=(1, 2), keepdims=True)
    centre = xp.sum(xp.where(valid, x, zero), axis=(1, 2), keepdims=True) / xp.clip(n_valid, min=1.0)
    x = xp.where(valid, x - centre, zero)
    # one visited mask for all maps (maps from one recording share the occupancy): its FFTs once
    shared = bool(xp.all(valid == valid[:1]))
    m = xp.astype(valid[:1] if shared else valid, x.dtype)
    lags = tuple((s.stop - s.start) // 2 for s in _crop_slices((h, w))) if crop else (h - 1, w - 1)
    fwd, corr = _corr_fft((h, w), lags, x, workers)
    fx, fm, fx2 = fwd(x), fwd(m), fwd(x * x)
    n = xp.round(corr(fm, fm))
    sa, saa = corr(fx, fm), corr(fx2, fm)  # sums over the pairs' first member; the second is the lag flip
    sb, sbb = xp.flip(sa, axis=(-2, -1)), xp.flip(saa, axis=(-2, -1))
    sab = corr(fx, fx)
    # a lag's variance below 1e-10 of the map's total sum of squares is FFT round-off, not signal: r = 0 there
    energy = xp.sum(x * x, axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = sab - sa * sb / n
        var_a, var_b = saa - sa * sa / n, sbb - sb * sb / n
        ok = (n > 1) & (var_a > 1e-10 * energy) & (var_b > 1e-10 * energy)
        r = xp.where(ok, num / xp.sqrt(xp.where(ok, var_a * var_b, xp.ones_like(num))), xp.zeros_like(num))
    return xp.clip(r, min=-1.0, max=1.0)


def autocorrelogram(ratemap: MapsLike, nan: str = "exclude", crop: bool = True,
                    block_size: int = 1024) -> np.ndarray:
    """Spatial autocorrelogram of every map: Pearson correlation per lag over the overlapping visited bins.

    Computed for all maps at once with FFTs of sums of products (n, sums, sums of squares, cross products per
    lag). Output `(..., h, w)` with lag (0, 0) at index (h // 2, w // 2); with `crop=True` (opexebo) only lags
    whose overlap is at least ~80% of the map are kept (numpy, or torch on its device: batched FFTs) (h = 2H-1 cropped, 49 x 49 for 28 x 28 maps). Lags
    with fewer than 2 pairs or (numerically) zero variance are 0, as opexebo/BNT; "numerically zero" is below
    1e-10 of the map's sum of squares, where opexebo returns round-off noise (seen on place fields with a
    flat baseline: opexebo's value there depends on float error; this is the one known difference).
    nan="exclude" (default) leaves unvisited bins out of each lag's correlation; nan="zero" reproduces
    opexebo/BNT, which set unvisited bins to 0 first. That is wrong for maps with a baseline (0 is an arbitrary
    activation) and for any map with holes (0 is a made-up rate), so it is only offered for comparison.
    """
    if nan not in ("exclude", "zero"):
        raise AnalysisInputError(f"nan must be 'exclude' or 'zero', got {nan!r}")
    stack, lead, _ = _split(ratemap)
    xp = namespace(stack)
    blocks = [_autocorr_block(stack[s:s + block_size], nan, crop) for s in range(0, stack.shape[0], block_size)]
    out = xp.concat(blocks) if blocks else xp.zeros((0,) + tuple(stack.shape[-2:]))
    return xp.reshape(out, lead + tuple(out.shape[-2:]))


# ----------------------------------------------------------------------------------------- grid score
# The centre-field search works on maps-last arrays (h, w, b): every row/column slice is contiguous over maps.
def _erode_cross(a: np.ndarray) -> np.ndarray:
    """Grey erosion of (h, w, b) maps by the 4-neighbour cross (bins outside the map are ignored)."""
    out = a.copy()
    for ax in (0, 1):
        lo, hi = [slice(None)] * 2, [slice(None)] * 2
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        np.minimum(out[tuple(hi)], a[tuple(lo)], out=out[tuple(hi)])
        np.minimum(out[tuple(lo)], a[tuple(hi)], out=out[tuple(lo)])
    return out


def _sweep(v: np.ndarray, m: np.ndarray, axis: int, conn8: bool) -> None:
    """In place, on (h, w, b) arrays: one forward and one backward pass along `axis` (0 or 1); each slice
    takes min(m, max(itself, the previous slice (and, if `conn8`, its neighbours)))."""
    n = v.shape[axis]
    at = (lambda i: v[i]) if axis == 0 else (lambda i: v[:, i])
    mt = (lambda i: m[i]) if axis == 0 else (lambda i: m[:, i])
    for first, last, step in ((1, n, 1), (n - 2, -1, -1)):
        for i in range(first, last, step):
            prev, cur = at(i - step), at(i)
            np.maximum(cur, prev, out=cur)
            if conn8:  # and the previous slice's diagonal neighbours
                np.maximum(cur[1:], prev[:-1], out=cur[1:])
                np.maximum(cur[:-1], prev[1:], out=cur[:-1])
            np.minimum(cur, mt(i), out=cur)


def _reconstruct(seed: np.ndarray, mask: np.ndarray, conn8: bool = False) -> np.ndarray:
    """Greyscale reconstruction by dilation of `seed` under `mask` (both (h, w, b), seed <= mask), 4- or
    8-connected: each bin's value is the best over paths from any bin p of min(seed[p], mask along the path).

    Computed by sequential sweeps (left-right, right-left, top-bottom, bottom-top; each sweep carries values
    along a whole row or column in one pass, for all maps at once) repeated until no map changes; converged
    maps leave the working set once they are half of it. Smooth maps converge in a few rounds, where parallel
    dilation needs one round per bin of path length."""
    v, m = np.array(seed), np.ascontiguousarray(mask)
    out = v if v.shape[-1] == 0 else np.empty_like(v)
    active = np.arange(v.shape[-1])
    while active.size:
        before = v.copy()
        _sweep(v, m, 1, conn8)
        _sweep(v, m, 0, conn8)
        changed = (v != before).any(axis=(0, 1))
        out[..., active[~changed]] = v[..., ~changed]
        if not changed.any():
            break
        if (~changed).sum() * 2 >= active.size:
            v, m, active = v[..., changed].copy(), m[..., changed].copy(), active[changed]
    return out


def _quantize(fmap: np.ndarray, peak: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """uint8 array like maps `fmap` (..., b): how many of the descending `thresholds` t satisfy fmap >= peak * t
    (exactly that comparison; 0 where fmap is -inf or the map's peak (b,) is not positive and finite). The
    thresholds are distinct multiples of 0.01 (checked): a table indexed by floor(100 fmap / peak) gives the
    count up to one step where a value is within round-off of a threshold, and the exact product comparison
    with the neighbouring thresholds fixes that step (no search per bin)."""
    k = thresholds.size
    lut, t_ext = _quantize_tables(tuple(thresholds))
    p = np.asarray(peak, dtype=np.float64)
    ok = np.isfinite(p) & (p > 0)
    with np.errstate(invalid="ignore", over="ignore"):
        u = fmap * np.where(ok, 100.0 / np.where(ok, p, 1.0), 0.0)
        np.fmax(u, -1.0, out=u)  # also NaN (-inf * 0) -> -1
        np.fmin(u, 101.0, out=u)
        u += 1.0
        q = np.take(lut, u.astype(np.intp))
        q -= (q > 0) & ~(fmap >= p * np.take(t_ext, q))  # t_ext[q]: the highest threshold counted
        q += (q < k) & (fmap >= p * np.take(t_ext, q + 1))
    q[..., ~ok] = 0
    return q


@functools.lru_cache(maxsize=4)
def _quantize_tables(thresholds: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For `_quantize`: lut[u + 1] = how many thresholds are <= u / 100 (u = -1..101), and the ascending
    thresholds between -inf and inf."""
    t_asc = np.asarray(thresholds[::-1], dtype=np.float64)
    cents = np.round(t_asc * 100)
    if not (np.allclose(cents, t_asc * 100, rtol=0, atol=1e-9) and (np.diff(cents) > 0).all()):
        raise ValueError("_quantize needs distinct descending thresholds on a 0.01 grid")
    lut = np.searchsorted(cents, np.arange(-1, 102), side="right").astype(np.uint8)
    return lut, np.concatenate([[-np.inf], t_asc, [np.inf]])


def _field_steps(fmap: np.ndarray, peak: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For maps `fmap` (h, w, b), peaks (b,) and descending `thresholds` (K,): the area of the centre field
    (the 4-connected component of {fmap >= peak * t} holding the centre bin, (ceil(h/2) - 1, ceil(w/2) - 1))
    at every threshold and whether it encloses a hole (bins outside it not 4-connected to the border through
    bins outside it, as `ndimage.binary_fill_holes`): (b, K) float areas and (b, K) bools. See `_level_steps`."""
    return _level_steps(_quantize(fmap, peak, thresholds), thresholds.size)


def _level_steps(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`_field_steps` of maps quantised to q = how many of k descending thresholds a bin passes (uint8 (h, w, b),
    `_quantize`): a bin passes thresholds[j] iff q >= k - j.

    `level` (the highest q at which a bin is 4-connected to the centre: reconstruction by dilation from the
    centre) and `escape` (the lowest level at which a bin still reaches the border through lower levels:
    reconstruction by erosion from the border) give every threshold at once: the field at thresholds[j] is
    {level >= k - j} and a hole bin has level < k - j <= escape; both are counted for all thresholds with one
    bincount per block."""
    h, w, b = q.shape
    ch, cw = int(np.ceil(h / 2)) - 1, int(np.ceil(w / 2)) - 1
    seed = np.zeros_like(q)
    seed[ch, cw] = q[ch, cw]
    level = _reconstruct(seed, q)
    # escape by duality: k - escape is the reconstruction by dilation of k - level from the border
    inv = (k - level).astype(np.uint8)
    seed = np.zeros_like(inv)
    for sl in (0, -1, (slice(None), 0), (slice(None), -1)):
        seed[sl] = inv[sl]
    escape = (k - _reconstruct(seed, inv)).astype(np.uint8)
    lv, es = level.ravel(), escape.ravel()  # bin-major, map-minor
    offs = np.arange(b, dtype=np.intp) * (k + 2)
    count = np.bincount((level.reshape(h * w, b) + offs).ravel(), minlength=b * (k + 2)).reshape(b, k + 2)
    area = count[:, ::-1].cumsum(1)[:, ::-1][:, k:0:-1].astype(np.float64)  # #{level >= k - j}
    hole = np.flatnonzero(es > lv)  # hole bin for k - j in (level, escape]: +1 at level + 1, -1 at escape + 1
    at = offs[hole % b] + 1
    diff = np.bincount(lv[hole] + at, minlength=b * (k + 2)) - np.bincount(es[hole] + at, minlength=b * (k + 2))
    holes = diff.reshape(b, k + 2).cumsum(1)[:, k:0:-1] > 0
    return area, holes


def _opened_centre(a: np.ndarray, window: int = 5) -> np.ndarray:
    """The value at the centre bin of the opening by reconstruction of maps `a` (h, w, b) (marker: erosion by
    the 4-neighbour cross, 8-connected reconstruction), exactly, mostly from a (2 window + 1)^2 window.

    The opening is at least the marker e at the centre c; a path giving more stays in the 8-connected component
    K of c in {a > e(c)}. Where K does not reach a window edge inside the map, every such path lies in the window
    and the window's reconstruction is exact there; the other maps are reconstructed whole."""
    h, w, b = a.shape
    ch, cw = int(np.ceil(h / 2)) - 1, int(np.ceil(w / 2)) - 1
    y0, y1, x0, x1 = max(ch - window, 0), min(ch + window + 1, h), max(cw - window, 0), min(cw + window + 1, w)
    # the marker inside the window needs the map one bin beyond it
    my0, mx0 = max(y0 - 1, 0), max(x0 - 1, 0)
    marker = _erode_cross(a[my0:min(y1 + 1, h), mx0:min(x1 + 1, w)])[y0 - my0:y1 - my0, x0 - mx0:x1 - mx0]
    win = a[y0:y1, x0:x1]
    cy, cx = ch - y0, cw - x0
    peak = _reconstruct(marker, win, conn8=True)[cy, cx]
    above = (win > marker[cy, cx]).astype(np.uint8)
    seed = np.zeros_like(above)
    seed[cy, cx] = above[cy, cx]
    comp = _reconstruct(seed, above, conn8=True)
    edges = [comp[0] if y0 > 0 else None, comp[-1] if y1 < h else None,
             comp[:, 0] if x0 > 0 else None, comp[:, -1] if x1 < w else None]
    leaks = np.zeros(b, dtype=bool)
    for e in edges:
        if e is not None:
            leaks |= e.any(axis=0)
    if leaks.any():
        full = a[..., leaks]
        peak[leaks] = _reconstruct(_erode_cross(full), full, conn8=True)[ch, cw]
    return peak


def _centre_field_radius(acorr: np.ndarray) -> np.ndarray:
    """Radius (bins, float; NaN when no field) of the centre field of (b, h, w) autocorrelograms, as opexebo's
    `grid_score._findCentreRadius`: adaptive-threshold `place_field` around the centre (init_thresh 0.95,
    min_bins 5) on the opening-by-reconstruction of the map, radius = floor(sqrt(area / pi)).

    The adaptive threshold walks 0.95, 0.93, ..., 0.2 of the peak and stops before the field's 4-connected
    area jumps to >= 3x the initial growth ratio or the field encloses a hole, or after 10 steps without
    change. Only which thresholds a bin of the opened map passes matters, and opening by reconstruction (min
    and max along paths) commutes with any non-decreasing map of the values: so the peak (the opened map's
    centre, `_opened_centre`) is found first, the autocorrelogram is quantised to the thresholds it passes
    (`_quantize`, uint8) and opened in uint8, exactly as the float map would be. Areas and holes at all
    thresholds come from `_level_steps` (no labelling per threshold); the walk itself is `_adaptive_area`,
    vectorised over maps.
    Knowingly different: where opexebo's field is already invalid at 0.95/0.93 (a hole), it retries at higher
    thresholds; this returns NaN (rare: a hole next to the peak of an autocorrelogram).
    """
    a = np.ascontiguousarray(np.moveaxis(acorr, 0, -1))
    peak = _opened_centre(a)
    q = _quantize(a, peak, _EXPAND_THRESHOLDS)
    opened = _reconstruct(_erode_cross(q), q, conn8=True)
    area, holes = _level_steps(opened, _EXPAND_THRESHOLDS.size)
    result = _adaptive_area(area, holes, ~np.isfinite(peak) | (peak <= 0))
    with np.errstate(invalid="ignore"):
        result[result < 5] = np.nan
        return np.floor(np.sqrt(result / np.pi))


def _adaptive_area(area: np.ndarray, holes: np.ndarray, stopped: np.ndarray) -> np.ndarray:
    """opexebo's `_expand_field` walk over the thresholds `_EXPAND_THRESHOLDS`, for all maps at once.

    area, holes: (b, steps) field area and whether the field encloses a hole at each threshold; `stopped`:
    maps with no field at all. Returns the final area (NaN when the search fails)."""
    b = area.shape[0]
    a1, bad1, a2, bad2 = area[:, 0], holes[:, 0], area[:, 1], holes[:, 1]  # 0.95, 0.93
    stopped = stopped.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        growth = a2 / a1
        last = a2.copy()
        result = np.full(b, np.nan)
        stopped |= bad1 | bad2
        n_decrease = np.zeros(b, dtype=np.int64)
        n_same = np.zeros(b, dtype=np.int64)
        for j in range(area.shape[1]):
            cur, bad = area[:, j], holes[:, j]
            change = cur / last
            n_decrease = np.where(change < 1, n_decrease + 1, 0)
            grows_ok = (np.floor(change / growth) <= 2) & (n_decrease < 3)
            n_same = np.where(grows_ok, np.where(change == 1, n_same + 1, 0), n_same)
            stop = ~stopped & (bad | ~grows_ok | (n_same >= 10))
            result[stop] = last[stop] if j > 0 else np.nan
            stopped |= stop
            last = np.where(stopped, last, cur)
        result[~stopped] = last[~stopped]
        result[bad1 | bad2] = np.nan
    return result


@functools.lru_cache(maxsize=8)
def _ring_geometry(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, sparse.csr_matrix,
                                             sparse.csr_matrix]:
    """For (h, w) autocorrelograms: the flat indices of bins inside the largest ring (squared distance <
    floor(min(h, w) / 2)^2, distances as opexebo: 1-based indices minus ceil(size / 2)) ordered by squared
    distance (P'); the distinct squared distances (S shells) and each shell's size; the rotations as one
    sparse matrix (P' * A, h * w) giving those bins of every rotated map; the (S, P') sparse sum per shell."""
    outer = int(np.floor(min(h, w) / 2))
    rr, cc = np.mgrid[1:h + 1, 1:w + 1]
    d2 = ((cc - np.ceil(w / 2)) ** 2 + (rr - np.ceil(h / 2)) ** 2).ravel().astype(np.int64)
    keep = np.flatnonzero(d2 < outer * outer)
    keep = keep[np.argsort(d2[keep], kind="stable")]
    shells, shell_start, n_shell = np.unique(d2[keep], return_index=True, return_counts=True)
    idx, wts = _rotation_gather((h, w), GRID_ANGLES)  # (A, 4, h * w), index h * w = outside
    idx, wts = idx[:, :, keep], wts[:, :, keep]
    n_rot = len(GRID_ANGLES)
    # row p' * A + a of `rotate` gives bin p' of the map rotated by angle a
    rows = np.broadcast_to((np.arange(keep.size)[None, None, :] * n_rot + np.arange(n_rot)[:, None, None]),
                           idx.shape)
    inside = idx < h * w
    rotate = sparse.csr_matrix((wts[inside], (rows[inside], idx[inside])), shape=(n_rot * keep.size, h * w))
    shell_of = np.repeat(np.arange(shells.size), n_shell)
    per_shell = sparse.csr_matrix((np.ones(keep.size), (shell_of, np.arange(keep.size))),
                                  shape=(shells.size, keep.size))
    return keep, shells, n_shell, rotate, per_shell


def _rotation_gather(shape: tuple[int, int], angles: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear gather indices (A, 4, P) into a flattened map padded with one zero (index P) and weights
    (A, 4, P), reproducing skimage.transform.rotate(order=1, mode='constant', cval=0) about the centre."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h / 2.0 - 0.5, w / 2.0 - 0.5
    idx, wts = [], []
    for ang in angles:
        th = np.deg2rad(ang)
        xc, yc = cols - cx, rows - cy
        c_in = np.cos(th) * xc - np.sin(th) * yc + cx
        r_in = np.sin(th) * xc + np.cos(th) * yc + cy
        r0, c0 = np.floor(r_in), np.floor(c_in)
        dr, dc = r_in - r0, c_in - c0
        ii, ww = [], []
        for orow, ocol, wt in ((0, 0, (1 - dr) * (1 - dc)), (0, 1, (1 - dr) * dc),
                               (1, 0, dr * (1 - dc)), (1, 1, dr * dc)):
            rr, cc = (r0 + orow).astype(int), (c0 + ocol).astype(int)
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            ii.append(np.where(inside, rr * w + cc, h * w).ravel())
            ww.append(wt.ravel())
        idx.append(ii)
        wts.append(ww)
    return np.asarray(idx), np.asarray(wts)


def _grid_block(acorr: np.ndarray) -> np.ndarray:
    """Grid scores of (b, h, w) autocorrelograms: the centre-field search for the whole block (vectorised over
    maps), the ring correlations in cache-sized parts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        acorr = acorr / acorr.max(axis=(1, 2), keepdims=True)
    radius = _centre_field_radius(np.nan_to_num(acorr, nan=-np.inf))
    parts = [_ring_scores(acorr[s:s + _ACORR_BLOCK], radius[s:s + _ACORR_BLOCK])
             for s in range(0, acorr.shape[0], _ACORR_BLOCK)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _ring_scores(acorr: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Gridness of peak-normalised (b, h, w) autocorrelograms with centre-field radii (b,) (`grid_score`)."""
    b, h, w = acorr.shape
    outer = int(np.floor(min(h, w) / 2))
    order, shells, n_shell, rotate, per_shell = _ring_geometry(h, w)
    n_rot = len(GRID_ANGLES)
    x_all = np.ascontiguousarray(np.nan_to_num(acorr.reshape(b, -1)).T)  # (pixels, b): rows contiguous
    x = x_all[order]  # (P', b) bins inside the largest ring, by distance
    rot = (rotate @ x_all).reshape(order.size, n_rot, b)  # (P', A, b) rotated maps

    def cum(a: np.ndarray) -> np.ndarray:
        """Cumulative per-shell sums with a leading zero: (P', b) -> (b, S+1); (P', A, b) -> (b, A, S+1)."""
        sums = per_shell @ a.reshape(a.shape[0], -1)  # (S, ...)
        c = np.zeros((sums.shape[0] + 1,) + sums.shape[1:])
        for i, row in enumerate(sums):  # = np.cumsum(axis=0), which is many times slower along axis 0
            np.add(c[i], row, out=c[i + 1])
        return c.reshape((-1,) + a.shape[1:]).T

    cx, cxx = cum(x), cum(x * x)
    cy, cyy, cxy = cum(rot), cum(rot * rot), cum(x[:, None] * rot)
    cn = np.concatenate([[0.0], np.cumsum(n_shell)])
    # radii per map: opexebo's linspace(max(3, c + 1), outer, outer - c).astype(int)
    steps = max(outer - 1, 1)
    rad = np.full((b, steps), -1, dtype=np.int64)
    for c in np.unique(radius[np.isfinite(radius)]).astype(int):
        if c < 1 or outer - c < 1:
            continue
        r = np.linspace(max(3, c + 1), outer, outer - c).astype(int)
        rad[np.where(radius == c)[0], :r.size] = r
    valid_step = rad > 0
    c_int = np.where(np.isfinite(radius), radius, 0).astype(np.int64)
    lo = np.searchsorted(shells, c_int * c_int, side="right")  # shells with d2 <= c^2 excluded
    hi = np.searchsorted(shells, np.maximum(rad, 0) ** 2 - 1, side="right")  # d2 < R^2
    bi = np.arange(b)[:, None]

    def ring(cs: np.ndarray) -> np.ndarray:
        if cs.ndim == 2:
            return cs[bi, hi] - cs[np.arange(b), lo][:, None]
        return cs[bi[:, :, None], np.arange(cs.shape[1])[None, None], hi[:, :, None]] - \
            cs[np.arange(b)[:, None], np.arange(cs.shape[1])[None], lo[:, None]][:, None, :]

    n = (cn[hi] - cn[lo][:, None])[:, :, None]
    sx, sxx = ring(cx)[:, :, None], ring(cxx)[:, :, None]
    sy, syy, sxy = ring(cy), ring(cyy), ring(cxy)
    with np.errstate(invalid="ignore", divide="ignore"):
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        flat_x = vx <= 1e-12 * n * np.abs(sxx)
        flat_y = vy <= 1e-12 * n * np.abs(syy)
        r = (n * sxy - sx * sy) / np.sqrt(vx * vy)
        r = np.where(flat_x | flat_y | (n < 2), np.nan, r)
        gns = np.minimum(r[..., 1], r[..., 3]) - np.maximum(np.maximum(r[..., 0], r[..., 2]), r[..., 4])
        gns = np.where(valid_step, gns, np.nan)
        n_steps = valid_step.sum(1)
        # moving average of 3 over the first n_steps - 3 start positions (opexebo), else the plain mean
        win = np.stack([gns[:, i:i + 3] if i + 3 <= steps else np.full((b, 3), np.nan)
                        for i in range(steps)], 1)
        # np.nanmean's arithmetic, without its warning (warnings.catch_warnings is not thread-safe)
        seen = ~np.isnan(win)
        means = np.where(seen, win, 0.0).sum(2) / seen.sum(2, dtype=np.intp)
        starts = np.arange(steps)[None] < (n_steps - 3)[:, None]
        any_nan = (np.isnan(means) & starts).any(1)
        best = np.where(starts, means, -np.inf).max(1)
        best = np.where(any_nan, np.nan, best)
        plain = np.where(valid_step, gns, 0).sum(1) / np.maximum(n_steps, 1)
        plain = np.where((np.isnan(gns) & valid_step).any(1), np.nan, plain)
        score = np.where(n_steps - 3 > 1, best, plain)
        score = np.where((n_steps < 1) | ~np.isfinite(radius) | (radius < 1), np.nan, score)
    return score


def grid_score(ratemap: MapsLike, nan: str = "exclude", block_size: int = 512,
               workers: int | None = None) -> np.ndarray | xr.DataArray:
    """Gridness score per map (BNT / opexebo 0.7 definition), in [-2, 2]; NaN where undefined.

    Autocorrelogram (`autocorrelogram`, cropped to ~80% overlap) normalised to its peak; centre-field radius
    c from the adaptive field search (`_centre_field_radius`); for outer radii R = linspace(max(3, c+1),
    floor(min(h, w)/2), that - c) (opexebo's, including its int truncation), the Pearson correlation between
    the annulus c < d < R of the autocorrelogram and of its rotations by 30, 60, 90, 120, 150 degrees
    (bilinear, zero outside, as skimage `rotate`); gridness(R) = min(r60, r120) - max(r30, r90, r150); score =
    the best 3-radius moving average (over the first n_radii - 3 windows, as opexebo; the mean of all when
    that leaves one window or fewer). The rotations are one sparse product for a block of maps and annulus
    sums come from per-distance-shell sums (another sparse product) and cumulative sums, so all maps and radii
    are vectorised; `block_size` maps at a time (~0.1 MB each), autocorrelograms and ring sums in parts of
    64 that stay in cache. Blocks run in `workers` threads (None: one per available core; FFTs single-threaded
    inside them); the result does not depend on `workers` or `block_size`. About 0.35 ms CPU per 28 x 28 map
    (`bench/grid_speed.py`). NaN for all-NaN, constant or too small maps, and when no centre field is found.
    `nan` is passed to `autocorrelogram` ("zero" reproduces opexebo on maps with holes)."""
    stack, lead, template = _split(ratemap)


    def block(maps: Any) -> np.ndarray:
        if min(maps.shape[-2:]) < 3:
            return np.full(maps.shape[0], np.nan)
        # autocorrelograms in cache-sized parts (their FFTs and per-lag arithmetic), the field search and
        # rings on the whole block (vectorised over maps, less Python per map)
        acorr = [to_numpy(_autocorr_block(maps[s:s + _ACORR_BLOCK], nan, True, workers=1))
                 for s in range(0, maps.shape[0], _ACORR_BLOCK)]
        return _grid_block(np.concatenate(acorr))

    return _wrap(asarray(_blocked(block, stack, block_size, workers), like=stack), lead, template, "grid_score",
                 {"nan": nan})


# --------------------------------------------------------------------------------------- border score
def _field_labels(shifted: np.ndarray, threshold: float, min_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Global field labels (b, h, w) (0 = none; ids increase with the map index) and the map of each id, from
    maps minus their minimum (`rate_transform(maps, "shift")`, NaN = unvisited)."""
    b = shifted.shape[0]
    finite = np.isfinite(shifted)
    peak = np.where(finite, shifted, -np.inf).max(axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore"):
        above = finite & (shifted >= threshold * peak) & (peak > 0)
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(above, structure=cross)  # no links along axis 0: fields never span maps
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_bins
    keep[0] = False
    labels = np.where(keep[labels], labels, 0)
    # ids are assigned in scan order, so each map owns a contiguous id range ending at its largest id
    last_id = np.maximum.accumulate(labels.reshape(b, -1).max(1)) if b else np.zeros(0, int)
    map_of = np.searchsorted(last_id, np.arange(n + 1), side="left")
    return labels, np.minimum(map_of, max(b - 1, 0))


def border_fields(ratemap: MapsLike, threshold: float = 0.3, min_bins: int = 5) -> np.ndarray:
    """Firing fields of every map as integer labels (..., y, x): 0 outside fields, 1..k within each map.

    Rule (well defined for maps with a baseline, unlike opexebo's default peak search, which finds no field on
    maps without exact zeros): after subtracting the map's minimum, a field is a 4-connected region of visited
    bins at or above `threshold` x the map's peak, with at least `min_bins` bins. Constant or all-NaN maps
    have no field.
    """
    stack, lead, _ = _split(ratemap)
    stack = to_numpy(stack)
    labels, map_of = _field_labels(rate_transform(stack, "shift"), threshold, min_bins)
    first = np.concatenate([[0], np.maximum.accumulate(labels.reshape(len(stack), -1).max(1))])[:-1]
    local = np.where(labels > 0, labels - first[:, None, None], 0)
    return local.reshape(lead + stack.shape[-2:])


def border_score(ratemap: MapsLike, threshold: float = 0.3, min_bins: int = 5, search_width: int = 8,
                 block_size: int = 2048, workers: int | None = None) -> np.ndarray | xr.DataArray:
    """Border score (Solstad et al. 2008) per map: (cM - dm) / (cM + dm), in [-1, 1]; NaN where undefined.

    Rates are the map minus its minimum (baseline 0). Fields: `border_fields` (connected regions >= threshold
    x peak, >= min_bins bins). cM: the largest fraction of one wall's bins (the outermost row/column) covered
    by a single field, over fields and the 4 walls; an unvisited wall bin takes the value of the first visited
    bin inward within `search_width` bins (and is left out when there is none), as opexebo. dm: the mean
    distance of field bins to the nearest wall, weighted by rate, over all fields, with opexebo's distance
    (taxicab distance to outside the map: 1 for wall bins) normalised by half the shorter side.
    Maps without a field (all-NaN, constant) give NaN (opexebo gives -1 when handed no field). Blocks of
    `block_size` maps run in `workers` threads (None: one per available core); the result does not depend on it.
    """
    stack, lead, template = _split(ratemap)

    def block(maps: Any) -> np.ndarray:
        maps = to_numpy(maps)
        b, h, w = maps.shape
        shifted = rate_transform(maps, "shift")
        labels, map_of = _field_labels(shifted, threshold, min_bins)
        n_ids = map_of.size
        visited = np.isfinite(shifted)
        rate = np.where(visited, shifted, 0.0)
        cover = np.zeros(b)
        for wall in ("top", "bottom", "left", "right"):
            lab, vis = _wall_strip(labels, wall, search_width), _wall_strip(visited, wall, search_width)
            has = vis.any(axis=2)
            lab0 = np.take_along_axis(lab, np.argmax(vis, axis=2)[..., None], axis=2)[..., 0]
            counted = has.sum(1)
            hits = np.bincount(lab0[has], minlength=n_ids).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.nan_to_num(hits / counted[map_of])
            frac[0] = 0.0
            np.maximum.at(cover, map_of[1:], frac[1:])
        iy, ix = np.arange(h)[:, None], np.arange(w)[None, :]
        dist = np.minimum(np.minimum(iy + 1, h - iy), np.minimum(ix + 1, w - ix)).astype(np.float64)
        wrate = np.where(labels > 0, rate, 0.0)
        has_field = (labels > 0).any(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            dm = 2 * ((wrate * dist).sum((1, 2)) / wrate.sum((1, 2))) / min(h, w)
            score = (cover - dm) / (cover + dm)
        return np.where(has_field, score, np.nan)

    return _wrap(asarray(_blocked(block, stack, block_size, workers), like=stack), lead, template, "border_score",
                 {"threshold": threshold, "min_bins": min_bins})


def _wall_strip(a: np.ndarray, wall: str, width: int) -> np.ndarray:
    """(b, positions along the wall, depth inward) strip of `a` (b, h, w) next to `wall`."""
    if wall == "top":
        return a[:, :width, :].transpose(0, 2, 1)
    if wall == "bottom":
        return a[:, ::-1, :][:, :width, :].transpose(0, 2, 1)
    if wall == "left":
        return a[:, :, :width]
    return a[:, :, ::-1][:, :, :width]
