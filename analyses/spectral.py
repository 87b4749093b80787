"""Normalized cut (spectral clustering) of token features: exact for small graphs, Nystrom-like at scale.

The graph (as in AlignedCut and its authors' ncut-pytorch): nodes are feature vectors (tokens of stimuli of
sites of subjects), L2-normalised; the affinity is A_ij = exp(-(1 - cos_ij) / t); A is symmetrised and
normalised, M = D^-1/2 A D^-1/2 (D the degree), and the embedding is M's top `n_eig` eigenvectors (M's
eigenvalues lie in [0, 1]; the first is 1 with eigenvector sqrt(degree)). These are the eigenvectors the
authors return; multiply by D^-1/2 for the generalised (Shi-Malik) ones, (D - A) y = lambda D y.

Sign: each eigenvector is multiplied by +-1 so that its sum over the nodes it was solved on is positive (the
authors' `correct_rotation`: sign(1^T v)); exact ties (sum 0) keep +1.

`nystrom_ncut` (the study's Nystrom-like approximation), in bounded memory:
1. presample `max_draw * n_sample` nodes at random (seeded), read them once, and from them fit a PCA basis;
2. farthest-point sampling (FPS, seeded start) of `n_sample` nodes among the presample, in its top `fps_dim`
   centred principal components (the authors run FPS in an 8-D PCA projection too);
3. dense affinity of the sample, its top eigenvectors by randomized subspace iteration (the authors use a
   randomized low-rank SVD; M is positive semi-definite, so its SVD is its eigendecomposition), sign-fixed;
4. every node, in chunks of `chunk_size` nodes streamed from the source, gets the affinity-weighted average
   of the eigenvectors of its `knn` nearest sampled nodes (cosine). Neighbour search: candidates are the
   `rerank * knn` best in the top `search_dim` uncentred principal components (dot products preserved), then
   re-ranked and weighted with the exact full-dimensional cosine; `search_dim=None` searches exactly.
Memory: one (n_sample, n_sample) affinity, one (chunk_size, n_sample) similarity block, the presample, and
the output (N, n_eig) float32; features are never copied whole.

Features: a numpy array or torch tensor (N, D); an `xr.DataArray` (may be lazy, netCDF-backed) whose feature
dim is `unit` (or `unit_<n>`, `channel`, `feature`), the other dims flattened into nodes; an `xr.Dataset`
(a recording: every variable with such a dim is a site); a mapping `site -> DataArray/array` or
`(subject, site) -> ...`; a callable returning a fresh iterator of (n_i, D) blocks (streamed twice); or a
one-shot iterator of blocks (read once, into memory). A `transform(block, key)` (e.g. a
`analyses.ChannelAlignment`) maps each block of site `key` = (subject, site) before the graph is built.

Backend: numpy (+ scipy BLAS) by default; torch when the features are torch tensors (on their device) or
`device=` names a torch device ("cuda", "cpu"): torch is imported only then.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.sparse.linalg
import xarray as xr

from .ratemaps import AnalysisInputError

FEATURE_DIMS = ("unit", "channel", "feature")
BLOCK_BYTES = 96 << 20
Key = tuple  # (subject, site); either may be ""


# ----------------------------------------------------------------------------------------------- backend
class _Ops:
    """The few array operations that differ between numpy and torch (everything else is shared syntax)."""

    def __init__(self, device: Any = None):
        self.torch = None
        self.device = None
        if device is not None:
            import torch  # lazily: the numpy path needs no torch
            self.torch = torch
            self.device = torch.device(device)

    @property
    def name(self) -> str:
        return "numpy" if self.torch is None else f"torch:{self.device}"

    def asarray(self, x: Any) -> Any:
        if self.torch is None:
            if not isinstance(x, np.ndarray) and hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            return np.ascontiguousarray(x, dtype=np.float32)
        t = self.torch
        x = x if isinstance(x, t.Tensor) else t.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return x.detach().to(self.device, t.float32)

    def index(self, idx: np.ndarray) -> Any:
        return idx if self.torch is None else self.torch.as_tensor(idx, device=self.device)

    def numpy(self, x: Any) -> np.ndarray:
        return x if self.torch is None else x.detach().cpu().numpy()

    def exp_(self, x: Any) -> Any:
        return np.exp(x, out=x) if self.torch is None else x.exp_()

    def sqrt(self, x: Any) -> Any:
        return np.sqrt(x) if self.torch is None else x.sqrt()

    def isfinite_all(self, x: Any) -> bool:
        return bool(np.isfinite(x).all()) if self.torch is None else bool(self.torch.isfinite(x).all())

    def normalize_rows(self, x: Any) -> Any:
        """Rows scaled to unit L2 norm, as a new array (the caller's features are never changed)."""
        if self.torch is None:
            norm = np.sqrt(np.einsum("ij,ij->i", x, x))
            return x / np.maximum(norm, 1e-12)[:, None]
        return self.torch.nn.functional.normalize(x, dim=1, eps=1e-12)

    def qr(self, x: Any) -> Any:
        return np.linalg.qr(x)[0] if self.torch is None else self.torch.linalg.qr(x)[0]

    def randn(self, shape: tuple[int, int], seed: int) -> Any:
        return self.asarray(np.random.default_rng(seed).standard_normal(shape))

    def rowdot(self, a: Any, b: Any) -> Any:
        return np.einsum("ij,ij->i", a, b) if self.torch is None else (a * b).sum(1)

    def topk(self, s: Any, k: int) -> tuple[Any, Any]:
        """Values and column indices of the k largest entries of every row (unordered)."""
        if self.torch is not None:
            return s.topk(k, dim=1)
        return _topk_numpy(s, k)

    def take_along(self, a: Any, idx: Any) -> Any:
        return np.take_along_axis(a, idx, axis=1) if self.torch is None else a.gather(1, idx)

    def empty(self, shape: tuple[int, ...]) -> Any:
        if self.torch is None:
            return np.empty(shape, dtype=np.float32)
        return self.torch.empty(shape, dtype=self.torch.float32, device=self.device)


def _topk_numpy(s: np.ndarray, k: int, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Exact row-wise top-k of a (n, m) array (values, column indices; unordered), faster than a full
    `argpartition` for m >> k.

    Let b be a row's k-th largest maximum over blocks of `block` columns: k blocks hold a value >= b, so the
    row's k-th largest value is >= b, and every top-k entry is among the entries >= b (about k of them). Those
    are found with one comparison, sorted per row, and the first k kept.
    """
    n, m = s.shape
    if k >= m:
        idx = np.broadcast_to(np.arange(m), (n, m)).copy()
        return np.take_along_axis(s, idx, axis=1), idx
    if m <= 4 * k * block:
        idx = np.argpartition(s, m - k, axis=1)[:, m - k:]
        return np.take_along_axis(s, idx, axis=1), idx
    bmax = np.maximum.reduceat(s, np.arange(0, m, block), axis=1)
    nb = bmax.shape[1]
    thr = np.partition(bmax, nb - k, axis=1)[:, nb - k]
    rows, cols = np.nonzero(s >= thr[:, None])
    vals = s[rows, cols]
    order = np.lexsort((-vals, rows))  # by row, then by value descending
    take = np.searchsorted(rows[order], np.arange(n))[:, None] + np.arange(k)
    return vals[order][take], cols[order][take]


def _backend(features: Any, device: Any) -> _Ops:
    if device is not None:
        return _Ops(device)
    if type(features).__module__.startswith("torch"):
        return _Ops(features.device)
    return _Ops(None)


# ----------------------------------------------------------------------------------------------- sources
@dataclass
class _Part:
    """One site of one subject: an array-like (n_i, D) or a DataArray whose non-feature dims are nodes."""

    key: Key
    data: Any
    n: int
    d: int
    lead: str | None = None          # DataArray: the dim read in slabs (None: plain 2-D array)
    per_lead: int = 1                # nodes per index of `lead`
    step: int = 1                    # `lead` indices per slab


class _Source:
    """Features as consecutive blocks of nodes, from any of the accepted forms."""

    def __init__(self, features: Any, transform: Callable | None = None, feature_dim: str | None = None):
        self.transform = transform
        self.parts: list[_Part] = []
        self.blocks_fn: Callable[[], Iterator] | None = None
        self._coords: dict[str, np.ndarray] | None = None
        self.feature_dim = feature_dim
        if isinstance(features, xr.Dataset):
            sites = [k for k, v in features.data_vars.items() if _feature_dim(v, feature_dim, strict=True)]
            if not sites:
                raise AnalysisInputError("features: the Dataset has no variable with a unit/channel/feature dim")
            features = {str(k): features[k] for k in sites}
        if isinstance(features, Mapping):
            for key, value in features.items():
                k = (str(key[0]), str(key[1])) if isinstance(key, tuple) and len(key) == 2 else ("", str(key))
                self._add(k, value)
        elif isinstance(features, (list, tuple)) and features and all(isinstance(f, xr.DataArray) for f in features):
            for f in features:
                self._add(("", str(f.name) if f.name is not None else ""), f)
        elif callable(features) and not hasattr(features, "shape"):
            self.blocks_fn = features
            self._scan()
        elif isinstance(features, Iterator):
            blocks = [np.asarray(_cpu(b), dtype=np.float32) for b in features]
            if not blocks:
                raise AnalysisInputError("features: the iterator yielded no blocks")
            self._add(("", ""), np.concatenate([_as_2d(b, "features block") for b in blocks]))
        else:
            self._add(("", str(features.name) if isinstance(features, xr.DataArray) and features.name is not None
                        else ""), features)
        dims = {p.d for p in self.parts} if self.parts else {self.d}
        if len(dims) != 1 and transform is None:
            raise AnalysisInputError(f"features: sites have different numbers of features {sorted(dims)}; align "
                                     "them into one space first (analyses.procrustes_alignment / cca_alignment)")
        self.n = sum(p.n for p in self.parts) if self.parts else self.n
        if self.n < 2:
            raise AnalysisInputError(f"features: need at least 2 nodes, got {self.n}")

    # -- construction
    def _add(self, key: Key, value: Any) -> None:
        if isinstance(value, xr.DataArray):
            fdim = _feature_dim(value, self.feature_dim)
            other = [d for d in value.dims if d != fdim]
            da = value.transpose(*other, fdim)
            if not other:
                raise AnalysisInputError(f"features {key[1]!r}: a DataArray needs node dims besides {fdim!r}")
            per_lead = int(np.prod([da.sizes[d] for d in other[1:]])) if len(other) > 1 else 1
            d = da.sizes[fdim]
            step = max(1, int(BLOCK_BYTES // max(1, per_lead * d * 4)))
            chunks = value.encoding.get("chunksizes") if hasattr(value, "encoding") else None
            if chunks:
                c = dict(zip(value.dims, chunks)).get(other[0])
                if c:
                    step = max(c, (step // c) * c)
            self.parts.append(_Part(key, da, per_lead * da.sizes[other[0]], d, other[0], per_lead, step))
        else:
            arr = _as_2d(value, f"features {key[1]!r}" if key[1] else "features")
            self.parts.append(_Part(key, arr, arr.shape[0], arr.shape[1]))

    def _scan(self) -> None:
        n, d = 0, None
        for b in self.blocks_fn():
            b = _as_2d(b, "features block")
            d = b.shape[1] if d is None else d
            if b.shape[1] != d:
                raise AnalysisInputError(f"features: blocks disagree on the number of features ({d} vs {b.shape[1]})")
            n += b.shape[0]
        if d is None:
            raise AnalysisInputError("features: the callable's iterator yielded no blocks")
        self.n, self.d = n, d

    # -- reading
    def blocks(self) -> Iterator[tuple[int, Any]]:
        """(start node, block (n_i, D')) in node order, transformed when a transform was given."""
        if self.blocks_fn is not None:
            start = 0
            for b in self.blocks_fn():
                b = _as_2d(b, "features block")
                yield start, self._apply(b, ("", ""))
                start += b.shape[0]
            return
        start = 0
        for p in self.parts:
            for lo, b in self._part_blocks(p):
                yield start + lo, self._apply(b, p.key)
            start += p.n

    def _part_blocks(self, p: _Part, wanted: np.ndarray | None = None) -> Iterator[tuple[int, Any]]:
        if p.lead is None:
            step = max(1, int(BLOCK_BYTES // max(1, 4 * p.d)))
            for lo in range(0, p.n, step):
                if wanted is None or _any_in(wanted, lo, lo + step):
                    yield lo, p.data[lo:lo + step]
            return
        size = p.data.sizes[p.lead]
        for a in range(0, size, p.step):
            lo, hi = a * p.per_lead, min(a + p.step, size) * p.per_lead
            if wanted is None or _any_in(wanted, lo, hi):
                block = np.asarray(p.data.isel({p.lead: slice(a, a + p.step)}).values, dtype=np.float32)
                yield lo, block.reshape(-1, p.d)

    def take(self, idx: np.ndarray) -> np.ndarray | Any:
        """Rows `idx` (sorted global node indices), transformed; reads only the slabs that hold them."""
        out = []
        if self.blocks_fn is not None:
            for start, b in self.blocks():
                sel = idx[(idx >= start) & (idx < start + b.shape[0])] - start
                if sel.size:
                    out.append(b[sel])
        else:
            start = 0
            for p in self.parts:
                local = idx[(idx >= start) & (idx < start + p.n)] - start
                for lo, b in self._part_blocks(p, local):
                    sel = local[(local >= lo) & (local < lo + b.shape[0])] - lo
                    if sel.size:
                        out.append(self._apply(b[sel], p.key))
                start += p.n
        if not out:
            raise AnalysisInputError("features: no rows selected")
        if type(out[0]).__module__.startswith("torch"):
            import torch  # only reached with torch input
            return torch.cat(out)
        return np.concatenate([np.asarray(o, dtype=np.float32) for o in out])

    def _apply(self, block: Any, key: Key) -> Any:
        return block if self.transform is None else self.transform(block, key)

    # -- coordinates
    def coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """Per-node coordinates: subject/site (when named), and each node dim's index and 1-D coordinates."""
        if not self.parts:
            return {}
        sizes = [p.n for p in self.parts]
        per_part = []
        for p in self.parts:
            c: dict[str, np.ndarray] = {}
            if p.lead is not None:
                da = p.data
                other = list(da.dims[:-1])
                shape = [da.sizes[d] for d in other]
                grids = np.unravel_index(np.arange(p.n), shape) if len(other) > 1 else (np.arange(p.n),)
                for dim, g in zip(other, grids):
                    name = _canonical(dim)
                    values = da[dim].values if dim in da.coords else np.arange(da.sizes[dim])
                    c[name] = np.asarray(values)[g]
                    for cname, cvar in da.coords.items():
                        if cvar.dims == (dim,) and cname != dim and _canonical(str(cname)) in ("token_row", "token_col"):
                            c[_canonical(str(cname))] = np.asarray(cvar.values)[g]
            per_part.append(c)
        names = []
        for c in per_part:
            names += [k for k in c if k not in names]
        out: dict[str, tuple[str, np.ndarray]] = {}
        if any(p.key[0] for p in self.parts):
            out["subject"] = ("node", np.repeat(np.array([p.key[0] for p in self.parts], dtype=object), sizes))
        if any(p.key[1] for p in self.parts):
            out["site"] = ("node", np.repeat(np.array([p.key[1] for p in self.parts], dtype=object), sizes))
        for name in names:
            vals = [c.get(name) for c in per_part]
            kind = next(v for v in vals if v is not None).dtype.kind
            filled = [v if v is not None else np.full(n, -1 if kind in "iuf" else "", dtype=None if kind in "iuf"
                                                      else object) for v, n in zip(vals, sizes)]
            col = np.concatenate(filled)
            out[name] = ("node", col.astype(np.int32) if col.dtype.kind in "iu" else col)
        return out


def _any_in(sorted_idx: np.ndarray, lo: int, hi: int) -> bool:
    i = np.searchsorted(sorted_idx, lo)
    return i < sorted_idx.size and sorted_idx[i] < hi


def _canonical(dim: str) -> str:
    """`token_50` -> `token`, `token_row_50` -> `token_row` (the recorder's dim-size naming rule)."""
    head, _, tail = dim.rpartition("_")
    return head if head and tail.isdigit() else dim


def _feature_dim(da: xr.DataArray, name: str | None, strict: bool = False) -> str | None:
    if name is not None:
        if name not in da.dims:
            if strict:
                return None
            raise AnalysisInputError(f"features: no dim {name!r} (dims {da.dims}); pass feature_dim=")
        return name
    for d in da.dims:
        if _canonical(str(d)) in FEATURE_DIMS:
            return str(d)
    if strict:
        return None
    raise AnalysisInputError(f"features: DataArray dims {da.dims} have no unit/channel/feature dim; pass "
                             "feature_dim= the dim that holds the features")


def _cpu(x: Any) -> Any:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _as_2d(x: Any, label: str) -> Any:
    if type(x).__module__.startswith("torch"):
        if x.ndim != 2:
            raise AnalysisInputError(f"{label}: expected (nodes, features), got shape {tuple(x.shape)}")
        return x
    if isinstance(x, xr.DataArray):
        x = x.values
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - any unreadable input is the user's to fix
        raise AnalysisInputError(f"{label}: cannot read {type(x).__name__} as an array ({exc})") from None
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise AnalysisInputError(f"{label}: expected a numeric (nodes, features) array, got shape {arr.shape} "
                                 f"dtype {arr.dtype}")
    return arr


# ----------------------------------------------------------------------------------------------- graph pieces
def affinity(x: Any, y: Any = None, t: float = 1.0, ops: _Ops | None = None) -> Any:
    """exp(-(1 - cos) / t) between the rows of L2-normalised `x` (n, D) and `y` (m, D) (default `x`: then the
    numpy path computes one triangle of x x^T (BLAS syrk, half the work) and mirrors it, so A is exactly
    symmetric)."""
    ops = ops or _Ops()
    if y is None and ops.torch is None:
        # syrk fills the upper triangle of a Fortran array; its transpose is C-ordered with the lower one filled
        s = scipy.linalg.blas.ssyrk(1.0, x).T
        _mirror_lower(s)
    else:
        s = x @ (x if y is None else y).T
    s -= 1.0
    s *= 1.0 / t
    return ops.exp_(s)


def _mirror_lower(a: Any, block: int = 2048) -> None:
    """In place: the strict upper triangle of square `a` <- the transpose of its lower triangle (blockwise)."""
    m = a.shape[0]
    for i in range(0, m, block):
        d = a[i:i + block, i:i + block]  # a view: the diagonal block
        d[...] = np.tril(d) + np.tril(d, -1).T
        for j in range(i + block, m, block):
            a[i:i + block, j:j + block] = a[j:j + block, i:i + block].T


def _normalise_affinity(a: Any, symmetric: bool = False, block: int = 2048) -> Any:
    """In place: A <- (A + A^T) / 2 (blockwise, no full temporary; skipped when `symmetric`), then
    D^-1/2 A D^-1/2; returns the degree D (the row sums)."""
    m = a.shape[0]
    for i in range(0, m, block) if not symmetric else ():
        for j in range(i, m, block):
            avg = (a[i:i + block, j:j + block] + a[j:j + block, i:i + block].T) * 0.5
            a[i:i + block, j:j + block] = avg
            a[j:j + block, i:i + block] = avg.T
    deg = a.sum(1)
    s = 1.0 / (deg ** 0.5)
    a *= s[:, None]
    a *= s[None, :]
    return deg


def _sign_fix(u: np.ndarray) -> np.ndarray:
    s = np.sign(u.sum(axis=0))
    s[s == 0] = 1.0
    return u * s


def _top_eigen(m_: Any, k: int, ops: _Ops, solver: str, n_iter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of the symmetric PSD matrix `m_` (n, n): 'randomized' subspace iteration, 'eigsh'
    (Lanczos, scipy) or 'eigh' (dense, all eigenpairs). Returns (values desc (k,), vectors (n, k)) numpy."""
    n = m_.shape[0]
    if solver == "randomized" and k + 10 < n:
        q = min(n, k + max(10, k // 2))
        basis = ops.qr(m_ @ ops.randn((n, q), seed))
        for _ in range(n_iter):
            basis = ops.qr(m_ @ basis)
        small = ops.numpy(basis.T @ (m_ @ basis)).astype(np.float64)
        w, z = np.linalg.eigh((small + small.T) / 2)
        order = np.argsort(w)[::-1][:k]
        vec = ops.numpy(basis @ ops.asarray(z[:, order]))
        return w[order], vec.astype(np.float32)
    if solver == "eigsh" and k < n - 1:
        a = ops.numpy(m_)  # float32: Lanczos runs in float64 on matrix-vector products, no float64 copy
        op = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda v: a @ v.astype(np.float32), dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        w, v = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=v0, tol=1e-8)
    else:
        w, v = scipy.linalg.eigh(ops.numpy(m_).astype(np.float64), subset_by_index=[n - k, n - 1])
    order = np.argsort(w)[::-1]
    return w[order], v[:, order].astype(np.float32)


def farthest_point_sampling(points: np.ndarray, n_sample: int, seed: int = 0, chunk: int = 1 << 20) -> np.ndarray:
    """Indices of `n_sample` rows of `points` (n, p) chosen by farthest-point sampling (Euclidean).

    Starts at a row drawn with `numpy.random.default_rng(seed)`; then repeatedly takes the row farthest from
    all chosen ones. Each step updates every row's squared distance to the chosen set with one matrix-vector
    product per chunk of `chunk` rows (|x|^2 - 2 x.y + |y|^2). Returns int64 indices in the order chosen.
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    n = pts.shape[0]
    if n_sample >= n:
        return np.arange(n)
    sq = np.einsum("ij,ij->i", pts, pts)
    mind = np.full(n, np.inf)
    chosen = np.empty(n_sample, dtype=np.int64)
    cur = int(np.random.default_rng(seed).integers(n))
    buf = np.empty(min(n, chunk))
    for i in range(n_sample):
        chosen[i] = cur
        y = pts[cur]
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            d = buf[:hi - lo]
            np.dot(pts[lo:hi], y, out=d)
            d *= -2.0
            d += sq[lo:hi]
            d += sq[cur]
            np.minimum(mind[lo:hi], d, out=mind[lo:hi])
        mind[cur] = -np.inf  # chosen rows are never chosen again
        cur = int(np.argmax(mind))
    return chosen


# ----------------------------------------------------------------------------------------------- public API
def ncut(features: Any, n_eig: int = 20, t: float = 1.0, *, solver: str = "auto", max_nodes: int = 20000,
         transform: Callable | None = None, feature_dim: str | None = None, device: Any = None,
         seed: int = 0) -> xr.DataArray:
    """Exact normalized cut: top `n_eig` eigenvectors of D^-1/2 A D^-1/2 over all nodes (dense affinity).

    features: (N, D) in any form the module accepts (see the module docstring), N <= `max_nodes` (the
    affinity is N^2 float32). t: affinity temperature (A = exp(-(1 - cos) / t)). solver: "eigh" (dense
    `scipy.linalg.eigh`), "eigsh" (Lanczos) or "auto" (eigh up to 1000 nodes, eigsh above). Torch tensors or
    `device=` build the affinity with torch; the eigensolver is scipy's.

    Returns `xr.DataArray (node, eig)` float32, sign-fixed, unit norm per column, with coordinates `eig`,
    `eigenvalue (eig)` (descending, in [0, 1]), `degree (node)`, the node coordinates of the source
    (subject, site, stimulus, token, token_row, token_col where known) and attrs describing the run.
    """
    _check_common(n_eig, t)
    if solver not in ("auto", "eigh", "eigsh"):
        raise AnalysisInputError(f"solver must be 'auto', 'eigh' or 'eigsh', got {solver!r}")
    t0 = time.perf_counter()
    src = _Source(features, transform, feature_dim)
    if src.n > max_nodes:
        raise AnalysisInputError(f"features: {src.n} nodes exceed max_nodes={max_nodes} for the exact cut "
                                 f"({src.n ** 2 * 4 / 2 ** 30:.1f} GiB affinity); use analyses.nystrom_ncut")
    if n_eig >= src.n:
        raise AnalysisInputError(f"n_eig={n_eig} must be smaller than the number of nodes ({src.n})")
    ops = _backend(features, device)
    x = ops.normalize_rows(ops.asarray(src.take(np.arange(src.n))))
    if not ops.isfinite_all(x):
        raise AnalysisInputError("features contain NaN or inf; drop or fill those nodes")
    a = affinity(x, t=t, ops=ops)
    deg = ops.numpy(_normalise_affinity(a, symmetric=ops.torch is None))
    solver = ("eigh" if src.n <= 1000 else "eigsh") if solver == "auto" else solver
    w, v = _top_eigen(a, n_eig, ops, solver, 0, seed)
    del a
    v = _sign_fix(v)
    da = _eig_array(v, w, src, sampled=None,
                    attrs={"method": "ncut", "solver": solver, "t": float(t), "n_nodes": src.n,
                           "backend": ops.name, "seconds": round(time.perf_counter() - t0, 3)})
    return da.assign_coords(degree=("node", deg.astype(np.float32)))


def nystrom_ncut(features: Any, n_eig: int = 20, n_sample: int = 10000, knn: int = 10, t: float = 1.0, *,
                 sample: Sequence[int] | np.ndarray | None = None, anchors: int | None = None,
                 search_dim: int | None = 128, rerank: int = 4,
                 fps_dim: int = 8, max_draw: float = 4.0, n_iter: int = 4, orthogonalize: bool = False,
                 chunk_size: int = 4096, transform: Callable | None = None, feature_dim: str | None = None,
                 device: Any = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> xr.DataArray:
    """Nystrom-like normalized cut (the study's approximation; steps in the module docstring).

    features: (N, D) in any form the module accepts (streamed in blocks; never copied whole). n_sample:
    nodes of the subgraph whose eigenvectors are solved exactly (FPS among `max_draw * n_sample` random
    nodes, in `fps_dim` principal components); n_sample >= N solves the whole graph. sample: the subgraph's
    node indices, chosen by the caller instead (then n_sample, fps_dim and max_draw are unused). knn: sampled
    neighbours averaged per node (K = 3 to 10 in the study), weighted by their affinity. anchors: propagate
    from this many of the sampled nodes only, farthest-point sampled in eigenvector space (ncut-pytorch 3.x
    does this with 1024): about n_sample / anchors times less propagation work, smoother eigenvectors; None:
    from every sampled node (the paper). t: temperature.
    search_dim: principal components used to find `rerank * knn` candidate neighbours, re-ranked exactly
    (None: exact search in all D dims). n_iter: subspace iterations of the randomized eigensolver (on
    n_eig + max(10, n_eig / 2) vectors; the authors use torch.svd_lowrank's 2 on n_eig + 10).
    orthogonalize: Cholesky-QR the propagated eigenvectors (the authors' optional post-hoc Gram-Schmidt; off,
    as in the paper, so they are near- but not exactly orthogonal). chunk_size: nodes per propagation step
    (memory: chunk_size x n_sample float32). progress: called as progress(done_nodes, total_nodes).

    Returns `xr.DataArray (node, eig)` float32 like `ncut` (eigenvalues are the subgraph's; column norms
    are about sqrt(N / n_sample) unless orthogonalized), with a boolean `sampled (node)` coordinate marking
    the subgraph and attrs (n_sample, knn, t, search_dim, seeds, timings in seconds).
    """
    _check_common(n_eig, t)
    for name, value in (("n_sample", n_sample), ("knn", knn), ("rerank", rerank), ("fps_dim", fps_dim),
                        ("chunk_size", chunk_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise AnalysisInputError(f"{name} must be a positive integer, got {value!r}")
    if anchors is not None and (not isinstance(anchors, (int, np.integer)) or anchors < knn):
        raise AnalysisInputError(f"anchors must be an integer >= knn ({knn}) or None, got {anchors!r}")
    if search_dim is not None and (not isinstance(search_dim, (int, np.integer)) or search_dim < 1):
        raise AnalysisInputError(f"search_dim must be a positive integer or None, got {search_dim!r}")
    if max_draw < 1:
        raise AnalysisInputError(f"max_draw must be >= 1 (presample = max_draw * n_sample), got {max_draw!r}")
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    src = _Source(features, transform, feature_dim)
    ops = _backend(features, device)
    n = src.n
    rng = np.random.default_rng(seed)
    if sample is not None:
        draw = np.unique(np.asarray(_cpu(sample)).astype(np.int64).ravel())
        if draw.size != np.size(sample) or draw.size == 0 or draw[0] < 0 or draw[-1] >= n:
            raise AnalysisInputError(f"sample must be distinct node indices in [0, {n}), got {np.size(sample)} "
                                     "values")
        m = n_draw = draw.size
    else:
        m = min(n_sample, n)
        n_draw = min(n, int(math.ceil(max_draw * m)))
        draw = np.sort(rng.choice(n, size=n_draw, replace=False)) if n_draw < n else np.arange(n)
    if n_eig >= m:
        raise AnalysisInputError(f"n_eig={n_eig} must be smaller than the sample ({m} nodes)")

    # 1. presample (read once) and its second-moment matrix (PCA bases for FPS and the neighbour search)
    xd = ops.normalize_rows(ops.asarray(src.take(draw)))
    if not ops.isfinite_all(xd):
        raise AnalysisInputError("features contain NaN or inf; drop or fill those nodes")
    d = xd.shape[1]
    fit = ops.numpy(xd[:: max(1, n_draw // 20000)]).astype(np.float64)
    second = fit.T @ fit / fit.shape[0]
    timings["presample"] = time.perf_counter() - tick

    # 2. farthest-point sample in the top centred principal components
    tick = time.perf_counter()
    if m < n_draw:
        mu = fit.mean(0)
        wc, vc = np.linalg.eigh(second - np.outer(mu, mu))
        proj = vc[:, np.argsort(wc)[::-1][:min(fps_dim, d)]]
        pts = ops.numpy(xd @ ops.asarray(proj)).astype(np.float64) - mu @ proj
        pick = np.sort(farthest_point_sampling(pts, m, seed=seed))
    else:
        pick = np.arange(n_draw)
    sample_idx = draw[pick]
    xs = xd[ops.index(pick)]
    del xd
    timings["fps"] = time.perf_counter() - tick

    # 3. eigenvectors of the sample's normalised affinity
    tick = time.perf_counter()
    a = affinity(xs, t=t, ops=ops)
    _normalise_affinity(a, symmetric=ops.torch is None)
    w, u = _top_eigen(a, n_eig, ops, "randomized", n_iter, seed)
    del a
    u = _sign_fix(u)
    timings["eigen"] = time.perf_counter() - tick

    # 4. propagate to every node
    tick = time.perf_counter()
    out = np.empty((n, n_eig), dtype=np.float32)
    sampled = np.zeros(n, dtype=bool)
    sampled[sample_idx] = True
    if m == n:
        out[sample_idx] = u
    else:
        xa, ua = xs, u
        if anchors is not None and anchors < m:
            keep = np.sort(farthest_point_sampling(u.astype(np.float64), anchors, seed=seed))
            xa, ua = xs[ops.index(keep)], u[keep]
        k = min(knn, xa.shape[0])
        basis = None
        if search_dim is not None and search_dim < d and rerank * k < xa.shape[0]:
            ws, vs = np.linalg.eigh(second)
            basis = ops.asarray(vs[:, np.argsort(ws)[::-1][:search_dim]])
        knn_fn = _Neighbours(xa, k, basis, rerank, ops)
        u_b = ops.asarray(ua)
        for start, block in src.blocks():
            for lo in range(0, block.shape[0], chunk_size):
                xb = ops.normalize_rows(ops.asarray(block[lo:lo + chunk_size]))
                if not ops.isfinite_all(xb):
                    raise AnalysisInputError(f"features contain NaN or inf (near node {start + lo}); drop or "
                                             "fill those nodes")
                sim, idx = knn_fn(xb)
                wgt = ops.exp_((sim - 1.0) * (1.0 / t))
                wgt = wgt / wgt.sum(1)[:, None]
                acc = wgt[:, 0:1] * u_b[idx[:, 0]]
                for j in range(1, k):
                    acc += wgt[:, j:j + 1] * u_b[idx[:, j]]
                out[start + lo:start + lo + acc.shape[0]] = ops.numpy(acc)
            if progress is not None:
                progress(start + block.shape[0], n)
    timings["propagate"] = time.perf_counter() - tick
    if orthogonalize:
        gram = out.T.astype(np.float64) @ out.astype(np.float64)
        r = np.linalg.cholesky(gram).T
        out = scipy.linalg.solve_triangular(r, out.T.astype(np.float64), trans="T").T.astype(np.float32)
        out = _sign_fix(out)
    attrs = {"method": "nystrom_ncut", "t": float(t), "n_nodes": n, "n_sample": int(m), "knn": int(min(knn, m)),
             "search_dim": -1 if search_dim is None else int(search_dim), "rerank": int(rerank),
             "fps_dim": int(fps_dim), "n_draw": int(n_draw), "n_iter": int(n_iter), "seed": int(seed),
             "sample": "given" if sample is not None else "fps", "anchors": -1 if anchors is None else int(anchors),
             "orthogonalize": int(orthogonalize),
             "backend": ops.name, **{f"seconds_{k_}": round(v_, 3) for k_, v_ in timings.items()}}
    return _eig_array(out, w, src, sampled, attrs)


class _Neighbours:
    """The `k` most cosine-similar rows of `xs` (m, D; L2-normalised) for each row of a block: exact, or
    candidates from the top principal components (`basis` (D, p); dot products there approximate those in D)
    re-ranked with the exact similarity. Returns (similarities, indices), each (rows, k)."""

    def __init__(self, xs: Any, k: int, basis: Any, rerank: int, ops: _Ops, sub: int = 1024):
        self.xs, self.k, self.basis, self.ops, self.sub = xs, k, basis, ops, sub
        self.n_cand = rerank * k
        self.ps_t = None if basis is None else (xs @ basis).T

    def __call__(self, xb: Any) -> tuple[Any, Any]:
        ops = self.ops
        if self.basis is None:
            return ops.topk(xb @ self.xs.T, self.k)
        _, cand = ops.topk((xb @ self.basis) @ self.ps_t, self.n_cand)
        sims = ops.empty(tuple(cand.shape))
        for lo in range(0, cand.shape[0], self.sub):  # rows in cache-sized groups, one candidate column at a time
            xq = xb[lo:lo + self.sub]
            for j in range(cand.shape[1]):
                sims[lo:lo + self.sub, j] = ops.rowdot(xq, self.xs[cand[lo:lo + self.sub, j]])
        sim, pos = ops.topk(sims, self.k)
        return sim, ops.take_along(cand, pos)


def _check_common(n_eig: int, t: float) -> None:
    if not isinstance(n_eig, (int, np.integer)) or n_eig < 1:
        raise AnalysisInputError(f"n_eig must be a positive integer, got {n_eig!r}")
    if not (isinstance(t, (int, float)) and t > 0):
        raise AnalysisInputError(f"t (affinity temperature) must be a positive number, got {t!r}")


def _eig_array(v: np.ndarray, w: np.ndarray, src: _Source, sampled: np.ndarray | None,
               attrs: dict) -> xr.DataArray:
    coords: dict[str, Any] = {"node": np.arange(v.shape[0]), "eig": np.arange(v.shape[1]),
                              "eigenvalue": ("eig", np.asarray(w, dtype=np.float64))}
    coords.update(src.coords())
    if sampled is not None:
        coords["sampled"] = ("node", sampled)
    da = xr.DataArray(v, dims=("node", "eig"), coords=coords, name="eigenvectors", attrs=attrs)
    da.attrs.setdefault("long_name", "normalized-cut eigenvectors of D^-1/2 A D^-1/2")
    return da


def unstack_nodes(da: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Reshape a `node` dim back to (subject, site, stimulus, token) (those present), NaN where no node is.

    dims: the node coordinates to unstack by (default: whichever of subject, site, stimulus, token, map_y,
    map_x the array carries). Sites and subjects keep their order of first appearance (not sorted). Other
    per-node coordinates (token_row, token_col, sampled, ...) are dropped; token positions come back as
    `token_row`/`token_col` on `token` when they are constant per token.
    """
    if "node" not in da.dims:
        raise AnalysisInputError(f"unstack_nodes: no 'node' dim in {da.dims}")
    dims = [d for d in (dims or ("subject", "site", "stimulus", "token", "map_y", "map_x")) if d in da.coords]
    if not dims:
        raise AnalysisInputError("unstack_nodes: the array has no subject/site/stimulus/token node coordinates")
    order = {d: list(dict.fromkeys(da[d].values.tolist())) for d in dims if d in ("subject", "site")}
    token_pos = {}
    if "token" in dims:
        for c in ("token_row", "token_col"):
            if c in da.coords:
                tab = dict(zip(da["token"].values.tolist(), da[c].values.tolist()))
                token_pos[c] = tab
    drop = [c for c, v in da.coords.items() if v.dims == ("node",) and c not in dims]
    out = da.drop_vars(drop).set_index(node=dims).unstack("node")
    for d, values in order.items():
        out = out.reindex({d: values})
    if token_pos:
        tok = out["token"].values.tolist()
        out = out.assign_coords({c: ("token", np.array([tab.get(x, -1) for x in tok])) for c, tab in token_pos.items()})
    lead = [d for d in ("subject", "site", "stimulus", "token", "map_y", "map_x") if d in out.dims]
    return out.transpose(*lead, ...)
