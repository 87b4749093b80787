"""Representational similarity analysis: dissimilarity matrices (RDMs), their comparison, bootstrap confidence
intervals over stimuli, and delta-RSA per condition.

An RDM is kept *condensed*: the upper triangle of the `(n, n)` matrix as a vector of `n (n - 1) / 2` pairs in
scipy's `pdist` order ((0, 1), (0, 2), ..., (1, 2), ...); `scipy.spatial.distance.squareform` gives the square.
Distances follow rsatoolbox's conventions: `euclidean` is the *squared* Euclidean distance divided by the number
of channels, `correlation` is 1 - Pearson r between two stimuli's patterns; `cosine` (1 - cosine similarity, as
scipy's `pdist`, the study's metric) is correlation without removing each pattern's mean. A pattern of zeros
(cosine) or a constant one (correlation) has no defined distance: its pairs are NaN, and every comparison leaves
out the pairs that are NaN in either RDM (as rsatoolbox does).

Comparisons: `spearman` (Pearson r of the ranks, ties averaged: scipy's `spearmanr`), `pearson`, and
`kendall_tau_a` ((concordant - discordant) / all pairs, rsatoolbox's choice for models that predict ties).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .ratemaps import AnalysisInputError

METRICS = ("cosine", "correlation", "euclidean")
METHODS = ("spearman", "pearson", "kendall_tau_a")
BLOCK_BYTES = 64 << 20  # memory for one block of rows of the Gram matrix


# ----------------------------------------------------------------------------------------------------------
# RDMs


def as_patterns(features: Any, what: str = "features") -> np.ndarray:
    """Features as a 2-D float array `(stimulus, channel)`: numpy, torch, lists, or xarray (its `stimulus` dim
    first, every other dim flattened into channels)."""
    if isinstance(features, xr.DataArray):
        if "stimulus" in features.dims:
            features = features.transpose("stimulus", ...)
        features = features.values
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    arr = np.asarray(features)
    if arr.dtype.kind not in "fiub" or arr.ndim < 1:
        raise AnalysisInputError(f"{what} must be a numeric array (stimulus, ...), got {arr.dtype} of shape {arr.shape}")
    arr = arr.reshape(len(arr), -1) if arr.ndim != 1 else arr[:, None]
    if len(arr) < 2:
        raise AnalysisInputError(f"{what}: an RDM needs at least 2 stimuli, got {len(arr)}")
    return arr


def rdm(features: Any, metric: str = "cosine", dtype: Any = np.float64) -> np.ndarray:
    """The condensed RDM of `features` `(stimulus, ...)` (one row per stimulus, every other axis a channel).

    Computed from the Gram matrix in blocks of rows (about 64 MB each) written straight into the condensed
    vector, so memory is the features plus the `n (n - 1) / 2` result. `dtype=np.float32` halves the time of the
    matrix product at ~1e-7 relative precision (the default, float64, agrees with rsatoolbox and scipy to 1e-12).
    Returns float64 `(n (n - 1) / 2,)`.
    """
    if metric not in METRICS:
        raise AnalysisInputError(f"unknown RDM metric {metric!r}; choose from {', '.join(METRICS)}")
    x = as_patterns(features).astype(dtype, copy=True)
    n, p = x.shape
    if metric == "correlation":
        x -= x.mean(axis=1, keepdims=True)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    if metric in ("cosine", "correlation"):
        norm = np.sqrt(sq)
        with np.errstate(invalid="ignore", divide="ignore"):
            x /= np.where(norm > 0, norm, np.nan)[:, None].astype(dtype)
    out = np.empty(n * (n - 1) // 2)
    rows = max(1, int(BLOCK_BYTES // (8 * n)))
    for lo in range(0, n - 1, rows):
        hi = min(lo + rows, n - 1)
        gram = (x[lo:hi] @ x[lo:].T).astype(np.float64)  # (block, n - lo): columns j >= lo
        if metric == "euclidean":
            d = np.maximum(sq[lo:hi, None] + sq[None, lo:] - 2 * gram, 0) / p
        else:
            d = 1 - gram
        i = np.arange(lo, hi)
        upper = np.arange(lo, n)[None, :] > i[:, None]
        start = lo * n - lo * (lo + 1) // 2
        out[start:start + int(upper.sum())] = d[upper]
    return out


def n_from_pairs(n_pairs: int) -> int:
    """The number of stimuli of a condensed RDM with `n_pairs` entries (raises if it is not triangular)."""
    n = int(round((1 + np.sqrt(1 + 8 * n_pairs)) / 2))
    if n * (n - 1) // 2 != n_pairs:
        raise AnalysisInputError(f"{n_pairs} is not the length of a condensed RDM (n (n - 1) / 2 for some n)")
    return n


def as_rdms(value: Any, what: str = "rdm") -> tuple[np.ndarray, bool]:
    """`(stack (k, n_pairs) float64, was_single)` from a condensed RDM, a stack of them, a square RDM, or an
    xarray holding them (the last dim the pairs)."""
    if isinstance(value, xr.DataArray):
        value = value.values
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1] and arr.shape[0] > 1 and np.allclose(np.diag(arr), 0) \
            and np.allclose(arr, arr.T, equal_nan=True):
        from scipy.spatial.distance import squareform

        arr = squareform(arr, checks=False)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.ndim != 2:
        raise AnalysisInputError(f"{what} must be a condensed RDM (n_pairs,), a stack (k, n_pairs) or a square "
                                 f"(n, n) RDM; got shape {np.shape(value)}")
    return arr, single


# ----------------------------------------------------------------------------------------------------------
# comparing RDMs


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (as `scipy.stats.rankdata`), float64."""
    x = np.asarray(x)
    order = np.argsort(x, axis=-1)
    xs = np.take_along_axis(x, order, axis=-1)
    out = np.empty(x.shape, np.float64)
    for k in np.ndindex(x.shape[:-1]):
        v = xs[k]
        new = np.r_[True, v[1:] != v[:-1]]
        if new.all():
            out[k][order[k]] = np.arange(1, v.size + 1)
            continue
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], v.size]
        avg = (starts + ends + 1) / 2  # average of ranks starts+1 .. ends
        out[k][order[k]] = np.repeat(avg, ends - starts)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every row of a `(k, P)` and every row of b `(m, P)` -> `(k, m)`."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a @ b.T) / np.outer(np.sqrt(np.einsum("ij,ij->i", a, a)), np.sqrt(np.einsum("ij,ij->i", b, b)))


def _tau_a(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a from scipy's O(P log P) tau-b: con - dis = tau_b sqrt((N - ties_a)(N - ties_b))."""
    from scipy.stats import kendalltau

    total = a.size * (a.size - 1) / 2
    tau_b = kendalltau(a, b).statistic
    if not np.isfinite(tau_b):
        return 0.0 if np.ptp(a) == 0 or np.ptp(b) == 0 else float("nan")

    def ties(v: np.ndarray) -> float:
        _, counts = np.unique(v, return_counts=True)
        return float((counts * (counts - 1) / 2).sum())

    return float(np.clip(tau_b * np.sqrt((total - ties(a)) * (total - ties(b))) / total, -1, 1))


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> float | np.ndarray:
    """How similar RDMs are: Spearman (default), Pearson, or Kendall's tau-a between condensed RDMs.

    `a`, `b`: condensed RDMs `(n_pairs,)` (or square ones), or stacks `(k, n_pairs)` / `(m, n_pairs)`, e.g. one
    RDM per site against a saliency and a semantic RDM. Two single RDMs give a float; otherwise `(k, m)` (a
    single RDM counts as a stack of one). Pairs that are NaN in either RDM are left out.
    """
    if method not in METHODS:
        raise AnalysisInputError(f"unknown RDM comparison {method!r}; choose from {', '.join(METHODS)}")
    sa, single_a = as_rdms(a, "a")
    sb, single_b = as_rdms(b, "b")
    if sa.shape[1] != sb.shape[1]:
        raise AnalysisInputError(f"RDMs of {sa.shape[1]} and {sb.shape[1]} stimulus pairs cannot be compared; "
                                 "compute both on the same stimuli")
    out = np.full((len(sa), len(sb)), np.nan)
    nan_a, nan_b = np.isnan(sa), np.isnan(sb)
    if not nan_a.any() and not nan_b.any():
        out = _compare_stacks(sa, sb, method)
    else:  # pairwise-complete: each (row, row) pair on the pairs finite in both
        for i in range(len(sa)):
            for j in range(len(sb)):
                keep = ~(nan_a[i] | nan_b[j])
                if keep.sum() > 1:
                    out[i, j] = _compare_stacks(sa[i:i + 1, keep], sb[j:j + 1, keep], method)[0, 0]
    return float(out[0, 0]) if single_a and single_b else out


def _compare_stacks(sa: np.ndarray, sb: np.ndarray, method: str) -> np.ndarray:
    if method == "spearman":
        return _pearson(rank(sa), rank(sb))
    if method == "pearson":
        return _pearson(sa, sb)
    return np.array([[_tau_a(x, y) for y in sb] for x in sa])


# ----------------------------------------------------------------------------------------------------------
# bootstrap over stimuli


def bootstrap_compare(a: Any, b: Any, method: str = "spearman", n_bootstrap: int = 1000, level: float = 0.95,
                      seed: int = 0, workers: int | None = None) -> xr.Dataset:
    """Confidence intervals of `compare_rdms(a, b)` by resampling stimuli with replacement.

    Each bootstrap sample draws `n` stimuli with replacement; the resampled RDM holds every pair of drawn
    stimuli except pairs of a stimulus with its own copy (their distance is 0 by construction, as rsatoolbox
    excludes them). That RDM is the original one with pair (k, l) counted `c_k c_l` times (`c`: how often each
    stimulus was drawn), so Spearman and Pearson are computed as *weighted* statistics on the original pairs, in
    O(n_pairs) per sample with the sort done once (weighted ranks = cumulative weights in the fixed order):
    exactly the values of the explicitly resampled RDMs, without building them. Kendall's tau-a builds them.

    `a` `(k, n_pairs)` (or one RDM) is compared with each RDM of `b` on the same samples (paired: e.g. all sites
    of a network against one reference). Returns an `xr.Dataset` with dims `a`, `b`, `sample`: `estimate`
    (`compare_rdms` on all stimuli), `samples`, `ci_low`, `ci_high` (percentile interval at `level`), `se`.
    Samples are drawn from one `seed` up front and computed in `workers` threads (default: one per CPU); the
    result does not depend on `workers`.
    """
    if method not in METHODS:
        raise AnalysisInputError(f"unknown RDM comparison {method!r}; choose from {', '.join(METHODS)}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 1:
        raise AnalysisInputError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
    if not 0 < level < 1:
        raise AnalysisInputError(f"level must be in (0, 1), got {level!r}")
    sa, _ = as_rdms(a, "a")
    sb, _ = as_rdms(b, "b")
    if sa.shape[1] != sb.shape[1]:
        raise AnalysisInputError("RDMs of different numbers of stimuli cannot be compared")
    n = n_from_pairs(sa.shape[1])
    keep = ~(np.isnan(sa).any(axis=0) | np.isnan(sb).any(axis=0))
    sa, sb = sa[:, keep], sb[:, keep]
    i_idx, j_idx = (v[keep] for v in np.triu_indices(n, 1))
    draws = np.random.default_rng(seed).integers(0, n, (int(n_bootstrap), n))  # all samples drawn up front
    if method == "kendall_tau_a":
        def one(s: int) -> np.ndarray:
            counts = np.bincount(draws[s], minlength=n)
            rep = np.repeat(np.arange(len(i_idx)), counts[i_idx] * counts[j_idx])
            return _compare_stacks(sa[:, rep], sb[:, rep], method)
    else:
        i_idx, j_idx = i_idx.astype(np.int32), j_idx.astype(np.int32)
        if method == "spearman":
            first = _Ordered(sa[0], i_idx, j_idx)  # its sorted order is the common order of the pairs
            ordered = [first] + [_Ordered(v, i_idx, j_idx, first.order) for v in [*sa[1:], *sb]]

        def one(s: int) -> np.ndarray:
            counts = np.bincount(draws[s], minlength=n).astype(np.float64)
            if method == "pearson":
                return _weighted_pearson(sa, sb, counts[i_idx] * counts[j_idx])
            ranks = [o.weighted_ranks(counts) for o in ordered]
            x = np.stack([r for r, _ in ranks])
            return _weighted_pearson(x[:len(sa)], x[len(sa):], ranks[0][1])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(int(workers or os.cpu_count() or 1), int(n_bootstrap)))) as pool:
        samples = np.stack(list(pool.map(one, range(int(n_bootstrap)))))  # numpy releases the GIL
    alpha = (1 - level) / 2
    estimate = np.asarray(compare_rdms(sa, sb, method)).reshape(len(sa), len(sb))
    with warnings.catch_warnings():  # a constant site has no RSA: NaN intervals, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(samples, alpha, axis=0), np.nanquantile(samples, 1 - alpha, axis=0)
        se = np.nanstd(samples, axis=0, ddof=1) if n_bootstrap > 1 else np.full(estimate.shape, np.nan)
    return xr.Dataset(
        {"estimate": (("a", "b"), estimate), "samples": (("sample", "a", "b"), samples),
         "ci_low": (("a", "b"), low), "ci_high": (("a", "b"), high), "se": (("a", "b"), se)},
        attrs={"method": method, "n_bootstrap": int(n_bootstrap), "level": level, "seed": int(seed),
               "n_stimuli": n, "resampling": "stimuli with replacement; self-pairs of a drawn stimulus excluded"})


class _Ordered:
    """One RDM sorted once, for ranks under pair weights: a pair's weighted rank is the total weight of the
    pairs below its tie group plus (its group's total weight + 1) / 2, the average rank of that group's copies.
    The pairs' stimulus indices are kept in sorted order, so a sample's weights are gathered from the small
    per-stimulus counts (cache-friendly); ranks are handed out in a `common` order of the pairs (one gather per
    sample, none for the RDM whose own order is the common one)."""

    def __init__(self, v: np.ndarray, i_idx: np.ndarray, j_idx: np.ndarray, common: np.ndarray | None = None):
        self.order = np.argsort(v)
        self.i, self.j = i_idx[self.order], j_idx[self.order]
        sv = v[self.order]
        self.group = np.cumsum(np.r_[True, sv[1:] != sv[:-1]]) - 1  # tie group of each sorted pair
        self.ties = self.group[-1] + 1 < v.size
        if common is None:
            self.to_common = None  # this RDM's sorted order is the common order
        else:
            where = np.empty_like(self.order)
            where[self.order] = np.arange(v.size)
            self.to_common = where[common]

    def weighted_ranks(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(ranks in the common order, weights in this RDM's sorted order)` for stimulus draw counts `(n,)`."""
        ws = counts[self.i] * counts[self.j]
        if self.ties:
            totals = np.bincount(self.group, weights=ws)
            below = np.cumsum(totals) - totals
            rs = below[self.group] + (totals[self.group] + 1) / 2
        else:
            rs = np.cumsum(ws) - (ws - 1) / 2
        return (rs if self.to_common is None else rs[self.to_common]), ws


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson r between every row of a `(k, P)` and of b `(m, P)` with pair weights `w` `(P,)`."""
    total = w.sum()
    aw, bw = a * w, b * w
    ma, mb = aw.sum(axis=1) / total, bw.sum(axis=1) / total
    cov = aw @ b.T - total * np.outer(ma, mb)
    va = np.einsum("ij,ij->i", aw, a) - total * ma ** 2
    vb = np.einsum("ij,ij->i", bw, b) - total * mb ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt(np.outer(va, vb))


# ----------------------------------------------------------------------------------------------------------
# delta-RSA


def delta_rsa(model: Mapping[str, Any], reference: Any, baseline: str = "Baseline", method: str = "spearman"
              ) -> xr.DataArray:
    """delta-RSA per condition: RSA(model RDM on that condition's images, reference) - RSA(model RDM on the
    baseline images, reference), the study's measure of how a manipulation (a pasted distractor) moves a
    network's alignment with the baseline images' saliency or semantic RDM.

    `model`: condition -> RDM (or stack `(site, n_pairs)`) of the model on that condition's images, all over the
    same base images in the same order; `reference`: the baseline images' attribute RDM(s). Returns an
    `xr.DataArray` `(condition[, site][, reference])` (the baseline's own delta is 0).
    """
    if baseline not in model:
        raise AnalysisInputError(f"delta-RSA needs the baseline condition {baseline!r} among the model RDMs "
                                 f"(conditions: {', '.join(model)})")
    base = np.asarray(compare_rdms(model[baseline], reference, method))
    values = [np.asarray(compare_rdms(model[c], reference, method)) - base for c in model]
    dims = ("condition",) + (("site", "reference")[:base.ndim] if base.ndim else ())
    return xr.DataArray(np.stack(values), dims=dims, coords={"condition": list(model)},
                        attrs={"method": method, "baseline": baseline})
