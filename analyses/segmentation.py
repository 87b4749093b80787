"""Reading normalized-cut eigenvectors as segments: the AlignedCut colour, spectral t-SNE, and the oracle
figure-ground / category segmentation scores (the study's appendix C.4).

Eigenvectors come as `(node, eig)` (from `analyses.ncut` / `nystrom_ncut`) or with the nodes unstacked, e.g.
`(site, stimulus, token, eig)` (`unstack_nodes`, the `ncut` step's result); every function here accepts both and
keeps the caller's layout. A node's patch-grid position is its `token_row`/`token_col` coordinate (or
`map_y`/`map_x` for convolutional sites); nodes off the grid (CLS, registers: -1) have no pixels.

- `spectral_embedding`: a 2-D or 3-D embedding of the eigenvectors (t-SNE as in the study, or PCA) fitted on
  `n_sample` farthest-point-sampled nodes and given to every node by its nearest sampled node (K = 1,
  Euclidean in eigenvector space; the study's Nystrom-like t-SNE, appendix C.5).
- `ncut_colors`: the AlignedCut colour, a 3-D `spectral_embedding` with each axis quantile-scaled into the RGB
  cube (quantiles 1 - q and q map to 0 and 1, clipped; as the authors' `rgb_from_3d_rgb_cube`).
- `patch_label_counts`: pixels of each label inside each patch of a (stimulus, y, x) label image.
- `oracle_segmentation`: the study's ORACLE protocol. It uses the ground-truth labels to define the class
  centres, so it measures how well the eigenvectors separate the labelled classes, not an unsupervised
  segmentation: centre of class c = mean of the first `n_eig` eigenvectors over the pixels labelled c (a pixel
  takes its patch's eigenvectors); each pixel goes to its most cosine-similar centre, or to the background
  (label 0) when that similarity is below a threshold; the threshold is grid-searched over 10 evenly spaced
  values in [0, 1] and the best mIoU kept, per site. IoU is counted in pixels over the whole stimulus set
  (dataset-level, as for ImageNet-segmentation and PASCAL VOC), mIoU = the mean over the labels present.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from .ratemaps import AnalysisInputError
from .spectral import farthest_point_sampling

GRID = (("token_row", "token_col"), ("map_y", "map_x"))


# ----------------------------------------------------------------------------------------------- node views
def _node_view(eigvecs: Any, name: str = "eigvecs") -> tuple[np.ndarray, xr.DataArray | None]:
    """(values (n, eig) float32, the DataArray or None): nodes are every index of the dims other than `eig`."""
    if isinstance(eigvecs, xr.DataArray):
        if "eig" not in eigvecs.dims:
            raise AnalysisInputError(f"{name} needs an 'eig' dim (dims {eigvecs.dims})")
        da = eigvecs.transpose(..., "eig")
        return np.asarray(da.values, dtype=np.float32).reshape(-1, da.sizes["eig"]), da
    v = np.asarray(eigvecs.detach().cpu().numpy() if hasattr(eigvecs, "detach") else eigvecs, dtype=np.float32)
    if v.ndim != 2:
        raise AnalysisInputError(f"{name} must be (node, eig), got shape {v.shape}")
    return v, None


def _node_coord(da: xr.DataArray, name: str) -> np.ndarray | None:
    """Coordinate `name` broadcast to one value per node of `_node_view(da)` (None if absent)."""
    if name not in da.coords:
        return None
    c = da.coords[name]
    node_dims = [d for d in da.dims if d != "eig"]
    if any(d not in node_dims for d in c.dims):
        return None
    return np.broadcast_to(c.transpose(*[d for d in node_dims if d in c.dims]).values.reshape(
        [da.sizes[d] if d in c.dims else 1 for d in node_dims]), [da.sizes[d] for d in node_dims]).ravel()


def _like(values: np.ndarray, da: xr.DataArray | None, dim: str, labels: Sequence[str] | None = None,
          attrs: dict | None = None) -> xr.DataArray:
    """(n, k) values back in the caller's node layout, the `eig` dim replaced by `dim`."""
    if da is None:
        coords = {dim: list(labels)} if labels is not None else {}
        return xr.DataArray(values, dims=("node", dim), coords=coords, attrs=attrs or {})
    node_dims = [d for d in da.dims if d != "eig"]
    coords = {k: c for k, c in da.coords.items() if "eig" not in c.dims}
    if labels is not None:
        coords[dim] = list(labels)
    return xr.DataArray(values.reshape([da.sizes[d] for d in node_dims] + [values.shape[1]]),
                        dims=(*node_dims, dim), coords=coords, attrs=attrs or {})


# ----------------------------------------------------------------------------------------------- colour
def spectral_embedding(eigvecs: Any, n_components: int = 3, method: str = "tsne", n_sample: int = 1000,
                       perplexity: float = 100.0, max_draw: float = 4.0, seed: int = 0) -> xr.DataArray:
    """Low-dimensional embedding of eigenvectors: t-SNE ("tsne", scikit-learn, Euclidean) or principal components
    ("pca") of `n_sample` nodes chosen by farthest-point sampling among `max_draw * n_sample` random ones, given
    to every node by its nearest sampled node (K = 1: t-SNE distances are non-linear, so the study propagates
    with one neighbour). Each eigenvector is first scaled to unit norm x sqrt(nodes), so exact and Nystrom
    eigenvectors embed alike. The study's spectral t-SNE: 2-D for trajectories (figure 9), 3-D for the colour.

    eigvecs: (node, eig) or any DataArray with an `eig` dim. Returns the same layout with `eig` replaced by
    `component` (float32).
    """
    if method not in ("tsne", "pca"):
        raise AnalysisInputError(f"method must be 'tsne' or 'pca', got {method!r}")
    if n_components not in (2, 3):
        raise AnalysisInputError(f"n_components must be 2 or 3, got {n_components!r}")
    v, da = _node_view(eigvecs)
    n = v.shape[0]
    if n < 4:
        raise AnalysisInputError(f"eigvecs: need at least 4 nodes, got {n}")
    if not np.isfinite(v).all():
        raise AnalysisInputError("eigvecs contain NaN or inf (nodes without eigenvectors?); select the computed ones")
    v = v * (np.sqrt(n) / np.maximum(np.linalg.norm(v, axis=0), 1e-12))
    rng = np.random.default_rng(seed)
    m = min(n_sample, n)
    draw = np.sort(rng.choice(n, size=min(n, int(max_draw * m)), replace=False))
    idx = draw[np.sort(farthest_point_sampling(v[draw], m, seed=seed))]
    vs = v[idx].astype(np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE  # heavy import, only when asked for

        emb = TSNE(n_components=n_components, perplexity=min(perplexity, (m - 1) / 3), init="pca",
                   random_state=seed).fit_transform(vs)
    else:
        c = vs - vs.mean(0)
        emb = c @ np.linalg.svd(c, full_matrices=False)[2][:n_components].T
    full = emb[nearest_rows(v, vs.astype(np.float32))].astype(np.float32)
    return _like(full, da, "component", attrs={"method": method, "n_sample": m, "seed": seed,
                                               "perplexity": perplexity if method == "tsne" else 0})


def nearest_rows(queries: np.ndarray, points: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the Euclidean-nearest row of `points` (m, d) for every row of `queries` (n, d), in chunks."""
    sq = np.einsum("ij,ij->i", points, points)
    out = np.empty(queries.shape[0], dtype=np.int64)
    for lo in range(0, queries.shape[0], chunk):
        out[lo:lo + chunk] = np.argmin(sq[None, :] - 2 * queries[lo:lo + chunk] @ points.T, axis=1)
    return out


def ncut_colors(eigvecs: Any, method: str = "tsne", n_sample: int = 1000, q: float = 0.95,
                perplexity: float = 100.0, seed: int = 0) -> xr.DataArray:
    """AlignedCut colour: RGB in [0, 1] per node from a 3-D `spectral_embedding`, each axis scaled so its
    (1 - q) and q quantiles map to 0 and 1 (clipped). Same layout as `eigvecs` with `eig` replaced by `rgb`."""
    if not 0.5 < q <= 1:
        raise AnalysisInputError(f"q must be in (0.5, 1], got {q!r}")
    emb = spectral_embedding(eigvecs, 3, method, n_sample, perplexity, seed=seed)
    rgb = rgb_cube(emb.values.reshape(-1, 3), q)
    out = xr.DataArray(rgb.reshape(emb.shape), dims=emb.dims, coords={k: c for k, c in emb.coords.items()
                                                                      if "component" not in c.dims},
                       attrs={**emb.attrs, "q": q})
    return out.rename(component="rgb").assign_coords(rgb=["r", "g", "b"])


def rgb_cube(points: np.ndarray, q: float = 0.95) -> np.ndarray:
    """(n, 3) points -> RGB in [0, 1]: each axis's (1 - q) and q quantiles map to 0 and 1, clipped (float32)."""
    x = np.asarray(points, dtype=np.float64)
    lo, hi = np.quantile(x, 1 - q, axis=0), np.quantile(x, q, axis=0)
    return np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- oracle
def patch_label_counts(masks: Any, grid: tuple[int, int], n_labels: int | None = None) -> np.ndarray:
    """Pixels of each label in each patch: masks (stimulus, y, x) integer labels >= 0 -> counts (stimulus, rows,
    cols, label) int32, patch (i, j) covering rows [floor(i H / rows), floor((i + 1) H / rows)) (likewise
    columns). n_labels: the label axis length (default max label + 1)."""
    m = np.asarray(masks.values if isinstance(masks, xr.DataArray) else masks)
    if m.ndim != 3 or m.dtype.kind not in "iub":
        raise AnalysisInputError(f"masks must be integer labels (stimulus, y, x), got shape {m.shape} dtype {m.dtype}")
    if m.size and m.min() < 0:
        raise AnalysisInputError("masks must be labels >= 0 (0 = background)")
    rows, cols = grid
    n_lab = int(m.max()) + 1 if n_labels is None else int(n_labels)
    if m.size and m.max() >= n_lab:
        raise AnalysisInputError(f"masks hold label {int(m.max())} >= n_labels={n_lab}")
    ys = np.minimum((np.arange(m.shape[1]) * rows) // m.shape[1], rows - 1)
    xs = np.minimum((np.arange(m.shape[2]) * cols) // m.shape[2], cols - 1)
    cell = (ys[:, None] * cols + xs[None, :]).ravel() * n_lab
    out = np.empty((m.shape[0], rows * cols * n_lab), dtype=np.int32)
    for s in range(m.shape[0]):
        out[s] = np.bincount(cell + m[s].ravel(), minlength=rows * cols * n_lab)
    return out.reshape(m.shape[0], rows, cols, n_lab)


def _grid_names(da: xr.DataArray) -> tuple[str, str]:
    for pair in GRID:
        if all(c in da.coords for c in pair):
            return pair
    raise AnalysisInputError("eigvecs need patch-grid coordinates token_row/token_col (or map_y/map_x) and a "
                             "stimulus coordinate; record tokens = 'patches' or 'all'")


def _site_labels(da: xr.DataArray) -> np.ndarray:
    """Per node: `site`, or `subject/site` (the names in `site_name` when sites are positions)."""
    n = int(np.prod([s for d, s in da.sizes.items() if d != "eig"]))
    site = _node_coord(da, "site_name")
    site = _node_coord(da, "site") if site is None else site
    site = np.full(n, "", object) if site is None else site.astype(object)
    subject = _node_coord(da, "subject")
    if subject is not None:
        site = np.array([f"{a}/{b}" if a else b for a, b in zip(subject.astype(str), site.astype(str))], object)
    return site


def oracle_segmentation(eigvecs: xr.DataArray, masks: Any, n_eig: int = 10, binary: bool = False,
                        thresholds: Sequence[float] | None = None, label_names: Sequence[str] | None = None
                        ) -> xr.Dataset:
    """Oracle mIoU per site (appendix C.4; the class centres come from the ground-truth labels).

    eigvecs: `(node, eig)` or e.g. `(site, stimulus, token, eig)`, with coordinates `stimulus`, `token_row`,
    `token_col` (or `map_y`, `map_x`) and `site` (and `subject`) where there are several. masks: label images
    `(stimulus, y, x)` over the same stimuli (0 = background, 1..K objects; a DataArray's `stimulus` coordinate
    is matched, an array is indexed by the eigenvectors' stimulus values), or their `patch_label_counts` as a
    DataArray `(stimulus, token_row, token_col, label)`. binary=True scores figure-ground (all objects one
    class). thresholds: default 10 values evenly spaced in [0, 1]. label_names: names of labels 0..K.

    Returns Dataset: `miou (site)`, `threshold (site)` (the best), `miou_by_threshold (site, threshold_grid)`,
    `iou (site, label)` at the best threshold (NaN for labels absent from the masks); attrs say it is an oracle.
    """
    if not isinstance(eigvecs, xr.DataArray):
        raise AnalysisInputError("eigvecs must be an xr.DataArray with stimulus and token_row/token_col coords")
    if not isinstance(n_eig, (int, np.integer)) or n_eig < 1:
        raise AnalysisInputError(f"n_eig must be a positive integer, got {n_eig!r}")
    v_all, da = _node_view(eigvecs)
    v_all = v_all[:, :n_eig].astype(np.float64)
    rname, cname = _grid_names(da)
    rows, cols = _node_coord(da, rname), _node_coord(da, cname)
    stim = _node_coord(da, "stimulus")
    if rows is None or cols is None or stim is None:
        raise AnalysisInputError("eigvecs need stimulus and patch-grid coordinates along their node dims")
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    grid = (int(rows.max()) + 1, int(cols.max()) + 1)
    counts, mask_stim = _counts(masks, grid)
    if binary:
        counts = np.stack([counts[..., 0], counts[..., 1:].sum(-1)], -1)
    n_lab = counts.shape[-1]
    lookup = {s: i for i, s in enumerate(mask_stim.tolist())} if mask_stim is not None else None
    if lookup is not None:
        missing = [s for s in np.unique(stim).tolist() if s not in lookup]
        if missing:
            raise AnalysisInputError(f"masks have no stimulus {missing[:5]} of the eigenvectors")
        sidx = np.array([lookup[s] for s in stim.tolist()], dtype=np.int64)
    else:
        sidx = stim.astype(np.int64)
        if sidx.max() >= counts.shape[0]:
            raise AnalysisInputError(f"masks cover {counts.shape[0]} stimuli but eigvecs reference stimulus "
                                     f"{int(sidx.max())}")
    thr = np.linspace(0, 1, 10) if thresholds is None else np.asarray(thresholds, dtype=float)
    site = _site_labels(da)
    sites = list(dict.fromkeys(site.tolist()))
    best, best_t, by_t, ious = [], [], [], []
    for s in sites:
        sel = (site == s) & (rows >= 0) & (cols >= 0)
        c = counts[sidx[sel], rows[sel], cols[sel]].astype(np.float64)  # (tokens, labels) pixel counts
        scores = _oracle_scores(v_all[sel], c, thr)
        k = int(np.nanargmax([x[0] for x in scores]))
        best.append(scores[k][0]), best_t.append(thr[k]), by_t.append([x[0] for x in scores])
        ious.append(scores[k][1])
    names = list(label_names) if label_names is not None and not binary else None
    labels = ["background", "figure"] if binary else (names if names and len(names) == n_lab else list(range(n_lab)))
    return xr.Dataset({"miou": ("site", np.array(best)), "threshold": ("site", np.array(best_t)),
                       "miou_by_threshold": (("site", "threshold_grid"), np.array(by_t)),
                       "iou": (("site", "label"), np.array(ious))},
                      coords={"site": sites, "threshold_grid": thr, "label": labels},
                      attrs={"protocol": "oracle (AlignedCut appendix C.4): class centres from the ground-truth "
                                         "labels; pixel IoU over the stimulus set",
                             "n_eig": int(min(n_eig, v_all.shape[1])), "task": "figure-ground" if binary else
                             "category"})


def _counts(masks: Any, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(masks, xr.DataArray) and "label" in masks.dims:
        c = masks.transpose("stimulus", ..., "label")
        if c.shape[1:3] != grid:
            raise AnalysisInputError(f"mask counts cover a {c.shape[1:3]} patch grid, the eigenvectors {grid}")
        return np.asarray(c.values), (c["stimulus"].values if "stimulus" in c.coords else None)
    stim = masks["stimulus"].values if isinstance(masks, xr.DataArray) and "stimulus" in masks.coords else None
    return patch_label_counts(masks, grid), stim


def _oracle_scores(v: np.ndarray, counts: np.ndarray, thresholds: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(mIoU, IoU per label) for each threshold; v (tokens, e) eigenvectors, counts (tokens, labels) pixels."""
    truth = counts.sum(0)
    present = truth > 0
    centres = (counts.T @ v) / np.maximum(truth, 1)[:, None]
    vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    cn = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    sim = vn @ cn.T
    sim[:, ~present] = -np.inf  # a label with no pixels has no centre
    arg, top = sim.argmax(1), sim.max(1)
    pixels = counts.sum(1)
    out = []
    for th in thresholds:
        pred = np.where(top < th, 0, arg)
        onehot = np.zeros_like(counts)
        onehot[np.arange(len(pred)), pred] = 1.0
        inter = (onehot * counts).sum(0)
        union = onehot.T @ pixels + truth - inter
        iou = np.where(present, inter / np.maximum(union, 1), np.nan)
        out.append((float(np.nanmean(iou)), iou))
    return out
