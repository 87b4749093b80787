"""AlignedCut colour and the oracle figure-ground / category segmentation scores (appendix C.4).

- `ncut_colors(eigvecs)`: RGB per node: a 3-D embedding of the eigenvectors of FPS-sampled nodes (t-SNE,
  scikit-learn, as the study; or "pca", cheaper), propagated to all nodes with K = 1 (nearest sampled node
  in eigenvector space), each axis quantile-scaled into [0, 1] (quantiles 1-q, q).
- `oracle_segmentation(eigvecs, masks)`: the study's ORACLE protocol; it uses the ground-truth labels to
  define class centres, so it measures how well the eigenvectors separate the labelled classes, not an
  unsupervised segmentation: centres = mean of the first `n_eig` eigenvectors of each class's tokens; each
  token goes to its most cosine-similar centre, or to background when that similarity < threshold; the
  threshold is grid-searched over 10 evenly spaced values in [0, 1] and the best mIoU kept, per site.
  Masks (stimulus, y, x) of integer labels (0 = background) are downsampled to the patch grid by majority
  vote over each patch's pixels.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .ratemaps import AnalysisInputError
from .spectral import farthest_point_sampling


def _nearest(queries: np.ndarray, points: np.ndarray, chunk: int = 8192) -> np.ndarray:
    sq = np.einsum("ij,ij->i", points, points)
    out = np.empty(queries.shape[0], dtype=np.int64)
    for lo in range(0, queries.shape[0], chunk):
        out[lo:lo + chunk] = np.argmin(sq[None, :] - 2 * queries[lo:lo + chunk] @ points.T, axis=1)
    return out


def spectral_embedding(eigvecs: xr.DataArray, n_components: int = 3, method: str = "tsne", n_sample: int = 3000,
                       perplexity: float = 30.0, seed: int = 0) -> xr.DataArray:
    """Low-dimensional embedding (node, component) of eigenvectors (node, eig): t-SNE ("tsne", scikit-learn)
    or principal components ("pca") of `n_sample` FPS-sampled nodes, propagated to all nodes by their
    nearest sampled node (K = 1, Euclidean in eigenvector space). The study's spectral t-SNE (2-D: figure 9;
    3-D: the colour)."""
    if method not in ("tsne", "pca"):
        raise AnalysisInputError(f"method must be 'tsne' or 'pca', got {method!r}")
    v = np.asarray(eigvecs.values if isinstance(eigvecs, xr.DataArray) else eigvecs, dtype=np.float64)
    if v.ndim != 2:
        raise AnalysisInputError(f"eigvecs must be (node, eig), got shape {v.shape}")
    v = v / np.maximum(np.linalg.norm(v, axis=0, keepdims=True), 1e-12) * np.sqrt(v.shape[0])
    idx = np.sort(farthest_point_sampling(v, min(n_sample, v.shape[0]), seed=seed))
    vs = v[idx]
    if method == "tsne":
        from sklearn.manifold import TSNE  # heavy import, only when asked for
        emb = TSNE(n_components=n_components, perplexity=min(perplexity, (len(idx) - 1) / 3), init="pca",
                   random_state=seed).fit_transform(vs)
    else:
        c = vs - vs.mean(0)
        emb = c @ np.linalg.svd(c, full_matrices=False)[2][:n_components].T
    full = emb[_nearest(v, vs)] if len(idx) < v.shape[0] else emb
    coords = {k: c for k, c in eigvecs.coords.items() if c.dims == ("node",)} if isinstance(eigvecs, xr.DataArray) else {}
    return xr.DataArray(full.astype(np.float32), dims=("node", "component"), coords=coords,
                        attrs={"method": method, "n_sample": len(idx), "seed": seed})


def ncut_colors(eigvecs: xr.DataArray, method: str = "tsne", n_sample: int = 3000, q: float = 0.95,
                perplexity: float = 30.0, seed: int = 0) -> xr.DataArray:
    """AlignedCut colour: (node, rgb) in [0, 1] from a 3-D `spectral_embedding`, each axis scaled so its
    (1 - q) and q quantiles map to 0 and 1 (clipped)."""
    emb = spectral_embedding(eigvecs, 3, method, n_sample, perplexity, seed)
    x = emb.values.astype(np.float64)
    lo, hi = np.quantile(x, 1 - q, axis=0), np.quantile(x, q, axis=0)
    rgb = np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1).astype(np.float32)
    return xr.DataArray(rgb, dims=("node", "rgb"), coords={**emb.coords, "rgb": ["r", "g", "b"]},
                        attrs={**emb.attrs, "q": q})


def downsample_masks(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(stimulus, y, x) integer labels -> (stimulus, rows, cols): each patch's majority label (ties: the
    smaller label); patch edges at floor(i * H / rows)."""
    m = np.asarray(masks)
    if m.ndim != 3 or m.dtype.kind not in "iub":
        raise AnalysisInputError(f"masks must be integer labels (stimulus, y, x), got shape {m.shape} dtype {m.dtype}")
    m = m.astype(np.int64)
    rows, cols = grid
    ys = np.minimum((np.arange(m.shape[1]) * rows) // m.shape[1], rows - 1)
    xs = np.minimum((np.arange(m.shape[2]) * cols) // m.shape[2], cols - 1)
    n_lab = int(m.max()) + 1
    cell = (ys[:, None] * cols + xs[None, :]).ravel()
    out = np.empty((m.shape[0], rows, cols), dtype=np.int64)
    for s in range(m.shape[0]):
        counts = np.zeros((rows * cols, n_lab), dtype=np.int64)
        np.add.at(counts, (cell, m[s].ravel()), 1)
        out[s] = counts.argmax(1).reshape(rows, cols)
    return out


def _miou(pred: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    iou = np.array([((pred == c) & (truth == c)).sum() / max(1, ((pred == c) | (truth == c)).sum()) for c in labels])
    return float(iou.mean()), iou


def oracle_segmentation(eigvecs: xr.DataArray, masks: Any, n_eig: int = 10, binary: bool = False,
                        thresholds: Sequence[float] | None = None) -> xr.Dataset:
    """Oracle mIoU per site (appendix C.4; uses the ground-truth labels to define class centres).

    eigvecs: (node, eig) with node coordinates `stimulus`, `token_row`, `token_col` (and `site`, `subject`
    when several); tokens with token_row < 0 (CLS) are ignored. masks: (stimulus, y, x) integer labels over
    the same stimuli (index = the `stimulus` coordinate), 0 = background; binary=True scores figure-ground
    (labels > 0 -> 1). Returns Dataset: `miou (site)`, `threshold (site)` (the best), `miou_by_threshold
    (site, threshold)`, `iou (site, label)`.
    """
    if not isinstance(eigvecs, xr.DataArray) or not {"stimulus", "token_row", "token_col"} <= set(eigvecs.coords):
        raise AnalysisInputError("eigvecs must be a DataArray (node, eig) with stimulus/token_row/token_col coords")
    m = np.asarray(masks.values if isinstance(masks, xr.DataArray) else masks)
    if binary:
        m = (m > 0).astype(np.int64)
    thr = np.linspace(0, 1, 10) if thresholds is None else np.asarray(thresholds, dtype=float)
    rows = eigvecs["token_row"].values
    cols = eigvecs["token_col"].values
    grid = (int(rows.max()) + 1, int(cols.max()) + 1)
    small = downsample_masks(m, grid)
    site = eigvecs["site"].values if "site" in eigvecs.coords else np.full(eigvecs.sizes["node"], "", object)
    if "subject" in eigvecs.coords:
        site = np.array([f"{a}/{b}" if a else b for a, b in zip(eigvecs["subject"].values, site)], dtype=object)
    sites = list(dict.fromkeys(site.tolist()))
    labels = np.unique(small)
    v_all = np.asarray(eigvecs.values[:, :n_eig], dtype=np.float64)
    stim = eigvecs["stimulus"].values
    if stim.max() >= small.shape[0]:
        raise AnalysisInputError(f"masks cover {small.shape[0]} stimuli but eigvecs reference stimulus {stim.max()}")
    best, best_t, by_t, ious = [], [], [], []
    for s in sites:
        sel = (site == s) & (rows >= 0)
        v = v_all[sel]
        truth = small[stim[sel], rows[sel], cols[sel]]
        centres = np.stack([v[truth == c].mean(0) if (truth == c).any() else np.zeros(v.shape[1]) for c in labels])
        vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        cn = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        sim = vn @ cn.T
        arg, top = labels[sim.argmax(1)], sim.max(1)
        scores = [_miou(np.where(top < th, 0, arg), truth, labels) for th in thr]
        k = int(np.argmax([x[0] for x in scores]))
        best.append(scores[k][0]), best_t.append(thr[k]), by_t.append([x[0] for x in scores]), ious.append(scores[k][1])
    return xr.Dataset({"miou": ("site", np.array(best)), "threshold": ("site", np.array(best_t)),
                       "miou_by_threshold": (("site", "threshold_grid"), np.array(by_t)),
                       "iou": (("site", "label"), np.array(ious))},
                      coords={"site": sites, "threshold_grid": thr, "label": labels},
                      attrs={"protocol": "oracle (AlignedCut C.4): class centres from ground-truth labels",
                             "n_eig": n_eig, "binary": int(binary), "downsample": "majority per patch"})


def oracle_miou(eigvecs: xr.DataArray, masks: Any, n_eig: int = 10, binary: bool = False) -> xr.DataArray:
    """`oracle_segmentation(...)["miou"]`: mIoU per site (DataArray, coordinate `threshold` = the best)."""
    ds = oracle_segmentation(eigvecs, masks, n_eig, binary)
    return ds["miou"].assign_coords(threshold=ds["threshold"])


# ----------------------------------------------------------------------------------------------- figures
def ncut_image_figure(colors: xr.DataArray, stimuli: Sequence[int], sites: Sequence[str] | None = None) -> Figure:
    """RGB image of every site (columns) for a few stimuli (rows): each patch token coloured by its AlignedCut
    colour on the patch grid (token_row, token_col)."""
    site = colors["site"].values if "site" in colors.coords else np.full(colors.sizes["node"], "", object)
    sites = list(dict.fromkeys(site.tolist())) if sites is None else list(sites)
    rows, cols, stim = (colors[c].values for c in ("token_row", "token_col", "stimulus"))
    grid = (int(rows.max()) + 1, int(cols.max()) + 1)
    fig = Figure(figsize=(1.2 * len(sites) + 0.5, 1.2 * len(stimuli) + 0.4))
    axes = fig.subplots(len(stimuli), len(sites), squeeze=False)
    rgb = colors.values
    for i, s in enumerate(stimuli):
        for j, name in enumerate(sites):
            sel = (stim == s) & (site == name) & (rows >= 0)
            img = np.ones(grid + (3,), dtype=np.float32)
            img[rows[sel], cols[sel]] = rgb[sel]
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(str(name).split(".")[-2:] and ".".join(str(name).split(".")[-2:]), fontsize=6)
            if j == 0:
                ax.set_ylabel(f"stimulus {s}", fontsize=6)
    fig.tight_layout()
    return fig


def trajectory_figure(embedding: xr.DataArray, stimulus: int, tokens: Sequence[int],
                      sites: Sequence[str] | None = None, labels: Sequence[str] | None = None) -> Figure:
    """2-D spectral t-SNE trajectories (the study's figure 9): every node of `embedding (node, 2)` as a grey
    point coloured by site depth (dark = early), and the path of each chosen token of `stimulus` from site to
    site (in `sites` order, default first appearance)."""
    site = embedding["site"].values
    sites = list(dict.fromkeys(site.tolist())) if sites is None else list(sites)
    depth = np.array([sites.index(s) if s in sites else -1 for s in site])
    xy = embedding.values
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    keep = depth >= 0
    sc = ax.scatter(xy[keep, 0], xy[keep, 1], c=depth[keep], s=2, cmap="viridis", alpha=0.3, linewidths=0)
    fig.colorbar(sc, ax=ax, label="site (depth)")
    tok, stim = embedding["token"].values, embedding["stimulus"].values
    for i, t in enumerate(tokens):
        path = [np.flatnonzero((site == s) & (tok == t) & (stim == stimulus)) for s in sites]
        pts = np.array([xy[p[0]] for p in path if p.size])
        ax.plot(pts[:, 0], pts[:, 1], "-o", ms=3, lw=1, label=labels[i] if labels else f"token {t}")
    ax.legend(fontsize=6, frameon=False)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"spectral t-SNE trajectories, stimulus {stimulus}", fontsize=8)
    return fig


def miou_figure(scores: xr.Dataset | xr.DataArray, title: str = "oracle mIoU per site") -> Figure:
    """mIoU per site (x: site order) from `oracle_segmentation` / `oracle_miou`."""
    miou = scores["miou"] if isinstance(scores, xr.Dataset) else scores
    fig = Figure(figsize=(max(3, 0.35 * miou.sizes["site"] + 1), 2.6))
    ax = fig.subplots()
    ax.plot(np.arange(miou.sizes["site"]), miou.values, "-o", ms=3)
    ax.set_xticks(np.arange(miou.sizes["site"]), [str(s).split(".")[-2] if "." in str(s) else str(s)
                                                  for s in miou["site"].values], fontsize=6, rotation=90)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mIoU (oracle)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
