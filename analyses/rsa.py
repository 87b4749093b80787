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
from typing import Any, Iterator, Mapping

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
    stimulus was drawn), so Spearman and Pearson are computed as *weighted* statistics on the original pairs,
    exactly the values of the explicitly resampled RDMs without building them: Spearman from weighted mid-ranks
    (each RDM sorted once; a sample's ranks are a cumulative sum of its weights in that order, its rank variance
    a closed form in the counts), Pearson from weighted sums; both for a batch of samples at once, O(n_pairs)
    per sample. Kendall's tau-a builds the resampled RDMs (O(n_pairs log n_pairs) per sample).

    `a` `(k, n_pairs)` (or one RDM) is compared with each RDM of `b` on the same samples (paired: e.g. all sites
    of a network against one reference). NaN pairs are left out: those of an RDM of `a` from its own
    comparisons only, those of `b` from all. Returns an `xr.Dataset` with dims `a`, `b`, `sample`: `estimate`
    (`compare_rdms` on all stimuli), `samples`, `ci_low`, `ci_high` (percentile interval at `level`), `se`.
    Samples are drawn from one `seed` up front and computed in batches on `workers` threads (default: one per
    CPU), each holding about `BOOT_BYTES` of ranks; the result does not depend on `workers`.
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
    n, n_bootstrap = n_from_pairs(sa.shape[1]), int(n_bootstrap)
    nan_a, groups = np.isnan(sa), {}
    for k, row in enumerate(nan_a):
        groups.setdefault(np.packbits(row).tobytes(), []).append(k)
    if len(groups) > 1:  # RDMs of `a` with different NaN pairs are resampled apart, on the same samples: a pair
        # NaN in one of them (e.g. a site with patterns of norm 0) must not leave the comparisons of the others
        order = [k for idx in groups.values() for k in idx]
        parts = [bootstrap_compare(sa[idx], sb, method, n_bootstrap, level, seed, workers) for idx in groups.values()]
        return xr.concat(parts, "a", combine_attrs="override").isel(a=np.argsort(order))
    keep = ~(nan_a.any(axis=0) | np.isnan(sb).any(axis=0))
    sa, sb = sa[:, keep], sb[:, keep]
    i_all, j_all = np.triu_indices(n, 1)
    draws = np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))  # all samples drawn up front
    counts = np.bincount((draws + n * np.arange(n_bootstrap)[:, None]).ravel(), minlength=n_bootstrap * n)
    counts = counts.reshape(n_bootstrap, n)  # how often each stimulus was drawn, per sample
    workers = max(1, min(int(workers or os.cpu_count() or 1), n_bootstrap))
    if method == "kendall_tau_a":
        i_idx, j_idx = i_all[keep], j_all[keep]

        def one(s: int) -> np.ndarray:
            rep = np.repeat(np.arange(len(i_idx)), counts[s, i_idx] * counts[s, j_idx])
            return _compare_stacks(sa[:, rep], sb[:, rep], method)
        batches, run = [[s] for s in range(n_bootstrap)], lambda ss: one(ss[0])[None]
        estimate = np.asarray(compare_rdms(sa, sb, method)).reshape(len(sa), len(sb))
    else:
        pairs = _Pairs(i_all, j_all, keep, n)
        if method == "spearman":
            run = _SpearmanBatch(sa, sb, pairs)
            fits = BOOT_BYTES // max(1, len(sb) * sa.shape[1] * run.itemsize)  # samples whose b ranks fit
            # a power of two, gathered rows of at most 32 bytes: numpy's fast take (~8x faster than for 64)
            size = 1 << int(np.log2(np.clip(fits, 1, 32 // run.itemsize)))
        else:
            run, size = _PearsonBatch(sa, sb, pairs), 64
        size = max(1, min(size, -(-n_bootstrap // workers)))
        batches = [counts[lo:lo + size] for lo in range(0, n_bootstrap, size)]
        estimate = run(np.ones((1, n), np.int64))[0]  # every stimulus once: compare_rdms, from the same sort
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in the heavy loops
        samples = np.concatenate(list(pool.map(run, batches)))
    alpha = (1 - level) / 2
    with warnings.catch_warnings():  # a constant site has no RSA: NaN intervals, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(samples, alpha, axis=0), np.nanquantile(samples, 1 - alpha, axis=0)
        se = np.nanstd(samples, axis=0, ddof=1) if n_bootstrap > 1 else np.full(estimate.shape, np.nan)
    return xr.Dataset(
        {"estimate": (("a", "b"), estimate), "samples": (("sample", "a", "b"), samples),
         "ci_low": (("a", "b"), low), "ci_high": (("a", "b"), high), "se": (("a", "b"), se)},
        attrs={"method": method, "n_bootstrap": n_bootstrap, "level": level, "seed": int(seed),
               "n_stimuli": n, "resampling": "stimuli with replacement; self-pairs of a drawn stimulus excluded"})


BOOT_BYTES = 192 << 20  # memory for the `b` RDMs' ranks of one batch of Spearman samples (per worker)
CHUNK = 1 << 14  # pairs handled at once (cache-sized pieces of a batch)


class _Pairs:
    """The stimulus pairs `(i, j)`, `i < j`, left after NaN pairs are removed, and closed forms over them: a
    sample's pair weights are `w = c_i c_j` for draw counts `c`, so their sums of powers are sums over stimuli
    (minus the removed pairs)."""

    def __init__(self, i_all: np.ndarray, j_all: np.ndarray, keep: np.ndarray, n: int):
        small = np.int16 if n <= np.iinfo(np.int16).max else np.int32
        self.i, self.j = i_all[keep].astype(small), j_all[keep].astype(small)
        self.removed = (i_all[~keep], j_all[~keep])
        self.dtype = np.int32 if n * n < 2 ** 31 else np.int64  # ranks (doubled, centred) are at most n^2 / 2

    def weight_power_sums(self, counts: np.ndarray, power: int) -> np.ndarray:
        """`(S,)` sums of `w^power` over the kept pairs for counts `(S, n)` (float64; exact for power 1)."""
        c = counts.astype(np.int64) ** power
        total = (c.sum(axis=1) ** 2 - (c ** 2).sum(axis=1)) // 2
        ri, rj = self.removed
        if ri.size:
            total = total - (c[:, ri] * c[:, rj]).sum(axis=1)
        return total if power == 1 else total.astype(np.float64)


def _pair_weights(c: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """`(S, len(i))` weights `c[:, i] * c[:, j]` from counts `c` given as `(n, S)` (rows of a stimulus's counts
    in all samples: one gather per pair instead of one per pair and sample)."""
    w = np.take(c, i.astype(np.intp), axis=0)
    w *= np.take(c, j.astype(np.intp), axis=0)
    return np.ascontiguousarray(w.T)


class _SortedRDM:
    """One RDM's pairs sorted once by value, for the weighted mid-ranks of a batch of samples.

    A sample's weighted rank is doubled and centred: `r = 2 R - (W + 1)` = (weight below) - (weight above), an
    integer. Without ties it is `2 cumsum(w) - w - W` in sorted order; a pair in a tie group of total weight
    `W_g` gets `r + W_g - 2 (weight of its group up to and including it) + w`, computed on the tied pairs only.
    `to_common`: where each sorted pair sits in the common order of the batch (None: this order is it)."""

    def __init__(self, v: np.ndarray, pairs: _Pairs, common: np.ndarray | None = None):
        self.order = np.argsort(v)  # any order within a tie group
        self.i, self.j = pairs.i[self.order], pairs.j[self.order]
        sv = v[self.order]
        new = np.r_[True, sv[1:] != sv[:-1]]
        starts = np.flatnonzero(new)
        size = np.diff(np.r_[starts, v.size])
        self.tied = np.flatnonzero(np.repeat(size > 1, size))  # sorted positions of pairs in a tie group
        self.tie_starts = np.flatnonzero(new[self.tied])  # where each tie group begins among `tied`
        self.tie_group = np.cumsum(new[self.tied]) - 1
        self.to_common = None
        if common is not None:
            where = np.empty(v.size, np.int64)
            where[common] = np.arange(v.size)
            self.to_common = where[self.order].astype(np.int32 if v.size < 2 ** 31 else np.int64)

    def ranks(self, c: np.ndarray, total: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, Iterator]:
        """`(variance, pieces)` for draw counts `c` `(n, S)` (int) with total weights `total` `(S,)` and `base` =
        `W^3 - sum(w^3)` over all kept pairs: `variance` `(S,)` is the sum of `w r^2` (a closed form, float64);
        `pieces` yields `(lo, hi, w, r)` for consecutive pieces `[lo, hi)` of the sorted pairs, their weights and
        doubled centred ranks `(S, hi - lo)`."""
        t = self.tied
        delta = None
        variance = base.copy()
        if t.size:  # tie groups: corrections on the tied pairs only
            wt = _pair_weights(c, self.i[t], self.j[t])
            within = np.cumsum(wt, axis=1, dtype=wt.dtype)
            within -= (within[:, self.tie_starts] - wt[:, self.tie_starts])[:, self.tie_group]
            group_total = np.add.reduceat(wt, self.tie_starts, axis=1)
            delta = group_total[:, self.tie_group] - 2 * within + wt
            variance += (wt.astype(np.float64) ** 3).sum(axis=1) - (group_total.astype(np.float64) ** 3).sum(axis=1)
        # sum over all copies of (2 rank - W - 1)^2 with mid-ranks: (W^3 - W - sum over groups (W_g^3 - W_g)) / 3
        return variance / 3, self._pieces(c, total, delta)

    def _pieces(self, c: np.ndarray, total: np.ndarray, delta: np.ndarray | None) -> Iterator:
        t = self.tied
        carry = np.zeros((c.shape[1], 1), c.dtype)
        for lo in range(0, self.i.size, CHUNK):
            hi = min(lo + CHUNK, self.i.size)
            w = _pair_weights(c, self.i[lo:hi], self.j[lo:hi])
            r = np.cumsum(w, axis=1, dtype=c.dtype)  # same dtype: an upcasting cumsum is ~10x slower
            r += carry
            carry = r[:, -1:].copy()
            r *= 2
            r -= w
            r -= total[:, None]
            if delta is not None:
                a, b = np.searchsorted(t, (lo, hi))
                r[:, t[a:b] - lo] += delta[:, a:b]
            yield lo, hi, w, r


class _SpearmanBatch:
    """Spearman rho of every RDM of `sa` with every RDM of `sb` on a batch of bootstrap samples: weighted
    Pearson r of the weighted mid-ranks. The ranks of `sb` are kept for the batch in the common order (the
    sorted order of `sb[0]`); each RDM of `sa` then runs once through its own order, gathering them."""

    def __init__(self, sa: np.ndarray, sb: np.ndarray, pairs: _Pairs):
        self.pairs, self.itemsize = pairs, np.dtype(pairs.dtype).itemsize
        self.b = [_SortedRDM(sb[0], pairs)]
        self.b += [_SortedRDM(v, pairs, self.b[0].order) for v in sb[1:]]
        self.a = [_SortedRDM(v, pairs, self.b[0].order) for v in sa]

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """`(S, k, m)` rho for draw counts `(S, n)`."""
        c = np.ascontiguousarray(counts.T, self.pairs.dtype)  # (n, S)
        total = self.pairs.weight_power_sums(counts, 1)
        base = total.astype(np.float64) ** 3 - self.pairs.weight_power_sums(counts, 3)
        total = total.astype(c.dtype)
        n_pairs = self.a[0].i.size
        n_samples = len(counts)
        ranks_b = np.empty((len(self.b), n_pairs, n_samples), c.dtype)  # (m, pair in common order, sample)
        var_b = np.empty((n_samples, len(self.b)))
        for k, rdm_b in enumerate(self.b):
            var_b[:, k], pieces = rdm_b.ranks(c, total, base)
            for lo, hi, _, r in pieces:
                ranks_b[k, slice(lo, hi) if rdm_b.to_common is None else rdm_b.to_common[lo:hi]] = r.T
        cross = np.zeros((n_samples, len(self.a), len(self.b)))
        var_a = np.empty((n_samples, len(self.a)))
        for k, rdm_a in enumerate(self.a):
            var_a[:, k], pieces = rdm_a.ranks(c, total, base)
            for lo, hi, w, r in pieces:
                wr = np.multiply(w, r, dtype=np.float64)
                where = rdm_a.to_common[lo:hi].astype(np.intp)
                for m in range(len(self.b)):
                    cross[:, k, m] += np.einsum("sl,ls->s", wr, np.take(ranks_b[m], where, axis=0).astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            return cross / np.sqrt(var_a[:, :, None] * var_b[:, None, :])


class _PearsonBatch:
    """Pearson r of every RDM of `sa` with every RDM of `sb` on a batch of bootstrap samples: weighted sums over
    the pairs as matrix products with the batch's weights, piece by piece (values centred once, for precision)."""

    def __init__(self, sa: np.ndarray, sb: np.ndarray, pairs: _Pairs):
        self.pairs = pairs
        self.x, self.y = (v - v.mean(axis=1, keepdims=True) if v.size else v for v in (sa, sb))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """`(S, k, m)` r for draw counts `(S, n)`."""
        c = np.ascontiguousarray(counts.T, np.float64)  # (n, S)
        x, y, k, m = self.x, self.y, len(self.x), len(self.y)
        sums = np.zeros((len(counts), 2 * k + 2 * m + k * m))
        for lo in range(0, x.shape[1], CHUNK):
            hi = min(lo + CHUNK, x.shape[1])
            w = _pair_weights(c, self.pairs.i[lo:hi], self.pairs.j[lo:hi])
            xs, ys = x[:, lo:hi], y[:, lo:hi]
            terms = np.concatenate([xs, ys, xs ** 2, ys ** 2, (xs[:, None] * ys[None]).reshape(k * m, -1)])
            sums += w @ terms.T
        total = self.pairs.weight_power_sums(counts, 1).astype(np.float64)[:, None]
        sx, sy, sxx, syy = np.split(sums[:, :2 * k + 2 * m], np.cumsum([k, m, k]), axis=1)
        sxy = sums[:, 2 * k + 2 * m:].reshape(-1, k, m)
        with np.errstate(invalid="ignore", divide="ignore"):  # no pair left (total 0): NaN
            cov = sxy - sx[:, :, None] * sy[:, None, :] / total[:, :, None]
            var_x, var_y = sxx - sx ** 2 / total, syy - sy ** 2 / total
            return cov / np.sqrt(var_x[:, :, None] * var_y[:, None, :])


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
