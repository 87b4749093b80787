"""Figures of spectral analyses (each returns a `matplotlib.figure.Figure`, outside pyplot).

- `ncut_image_figure`: the AlignedCut colour of every site (columns) for a few stimuli (rows), next to the
  stimulus itself (the study's figure 4).
- `trajectory_figure`: 2-D spectral t-SNE of the nodes of every site, with the paths of chosen tokens from
  site to site (the study's figure 9).
- `miou_figure`: oracle mIoU per site, one line per task (figure-ground, category) and subject (figure 5).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from .segmentation import GRID

FONT = 8  # points at the saved size


def short_site(site: Any) -> str:
    """A site name short enough for a figure label: `visual.transformer.resblocks.9.attn` -> `9.attn`."""
    parts = str(site).split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 else str(site)


def _grid_coords(da: xr.DataArray) -> tuple[str, str]:
    return next((p for p in GRID if all(c in da.coords for c in p)), GRID[0])


def ncut_image_figure(colors: xr.DataArray, stimuli: Sequence[Any], images: np.ndarray | None = None,
                      sites: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Rows: `stimuli` (values of the `stimulus` coordinate); columns: the stimulus image (when `images`,
    (len(stimuli), 3, H, W) in [0, 1], are given), then every site with each patch token in its AlignedCut
    colour on the patch grid. colors: `(site, stimulus, token, rgb)` with token_row/token_col (or map_y/map_x)
    coordinates on `token` (the `ncut_colors` of an unstacked eigenvector array)."""
    if "site" not in colors.dims:
        colors = colors.expand_dims(site=[str(colors.attrs.get("site", ""))])
    rname, cname = _grid_coords(colors)
    sites = [str(s) for s in colors["site"].values] if sites is None else list(sites)
    rows, cols = colors[rname].values, colors[cname].values
    on = (rows >= 0) & (cols >= 0)
    grid = (int(rows.max()) + 1, int(cols.max()) + 1)
    lead = 1 if images is not None else 0
    fig = Figure(figsize=(1.25 * (len(sites) + lead) + 0.6, 1.25 * len(stimuli) + 0.7))
    axes = fig.subplots(len(stimuli), len(sites) + lead, squeeze=False)
    for i, s in enumerate(stimuli):
        if images is not None:
            axes[i, 0].imshow(np.clip(np.moveaxis(np.asarray(images[i]), 0, -1), 0, 1))
        for j, site in enumerate(sites):
            rgb = colors.sel(site=site, stimulus=s).transpose(..., "rgb").values
            img = np.ones(grid + (3,), dtype=np.float32)
            img[rows[on], cols[on]] = rgb[on]
            axes[i, j + lead].imshow(img, interpolation="nearest")
        axes[i, 0].set_ylabel(f"stimulus {s}", fontsize=FONT)
    for j, site in enumerate(sites):
        axes[0, j + lead].set_title(short_site(site), fontsize=FONT)
    if images is not None:
        axes[0, 0].set_title("stimulus", fontsize=FONT)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def _site_cmap(n: int) -> ListedColormap:
    """n distinct colours from dark (early sites) to yellow (late)."""
    return ListedColormap(colormaps["viridis"](np.linspace(0, 0.92, n)))


def trajectory_figure(embedding: xr.DataArray, stimulus: Any, tokens: Sequence[int],
                      groups: Sequence[str] | None = None, sites: Sequence[str] | None = None,
                      max_points: int = 20000, seed: int = 0, title: str | None = None) -> Figure:
    """2-D spectral t-SNE trajectories (the study's figure 9). embedding: `(site, stimulus, token, component)`
    with 2 components (a `spectral_embedding` of eigenvectors computed jointly over the sites). Grey-to-yellow
    points: up to `max_points` nodes, coloured by site (early = dark); lines: the path of each of `tokens` (token
    coordinate values) of `stimulus` from site to site, with a ring at its first site; `groups` (one label per
    token, e.g. "figure" / "ground") colour the paths by group."""
    sites = [str(s) for s in embedding["site"].values] if sites is None else list(sites)
    e = embedding.sel(site=sites).transpose("site", ..., "component")
    xy = e.values.reshape(len(sites), -1, 2)
    fig = Figure(figsize=(6.2, 5.0))
    ax = fig.subplots()
    rng = np.random.default_rng(seed)
    per = xy.shape[1]
    pick = rng.choice(per * len(sites), size=min(max_points, per * len(sites)), replace=False)
    cmap = _site_cmap(len(sites))
    norm = BoundaryNorm(np.arange(len(sites) + 1) - 0.5, cmap.N)
    pts = xy.reshape(-1, 2)[pick]
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=pick // per, cmap=cmap, norm=norm, s=5, alpha=0.5, linewidths=0)
    bar = fig.colorbar(sc, ax=ax, ticks=np.arange(len(sites)))
    bar.ax.set_yticklabels([short_site(s) for s in sites], fontsize=FONT)
    bar.set_label("site (early to late)", fontsize=FONT)
    groups = list(groups) if groups is not None else [f"token {t}" for t in tokens]
    palette = {g: c for g, c in zip(dict.fromkeys(groups), ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"])}
    seen = set()
    for t, g in zip(tokens, groups):
        path = e.sel(stimulus=stimulus, token=t).values  # (site, 2)
        ax.plot(path[:, 0], path[:, 1], "-o", color=palette.get(g, "k"), ms=3, lw=1.2,
                label=g if g not in seen else None)
        ax.plot(path[0, 0], path[0, 1], "o", mfc="none", mec=palette.get(g, "k"), ms=8)
        seen.add(g)
    ax.legend(fontsize=FONT, frameon=False, title=f"tokens of stimulus {stimulus}", title_fontsize=FONT)
    ax.set_xlabel("spectral t-SNE 1 (a.u.)", fontsize=FONT)
    ax.set_ylabel("spectral t-SNE 2 (a.u.)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.set_title(title or "spectral t-SNE trajectories from site to site", fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def miou_figure(scores: xr.Dataset | Mapping[str, xr.Dataset], title: str = "oracle segmentation per site"
                ) -> Figure:
    """Oracle mIoU per site (x, in site order): one colour per subject (a mapping label -> result; the sites of
    every subject are placed on a common 0-1 depth axis when their numbers differ), one line style per task.
    A result is an `oracle_segmentation` Dataset, or several concatenated along `task`."""
    runs = {"": scores} if isinstance(scores, xr.Dataset) else dict(scores)
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.subplots()
    colours = colormaps["tab10"].colors
    styles = ["-o", "--s", ":^", "-.d"]
    n_sites = {len(ds["site"]) for ds in runs.values()}
    for c, (label, ds) in enumerate(runs.items()):
        tasks = [str(t) for t in ds["task"].values] if "task" in ds.dims else [str(ds.attrs.get("task", "mIoU"))]
        for k, task in enumerate(tasks):
            miou = ds["miou"].sel(task=task) if "task" in ds.dims else ds["miou"]
            n = miou.sizes["site"]
            x = np.arange(n) if len(n_sites) == 1 else np.linspace(0, 1, n)
            name = " ".join(p for p in (label, task.replace("_", "-")) if p)
            ax.plot(x, miou.values, styles[k % len(styles)], color=colours[c % len(colours)], ms=4, label=name)
    if len(n_sites) == 1:
        first = next(iter(runs.values()))
        ax.set_xticks(np.arange(first.sizes["site"]), [short_site(s) for s in first["site"].values],
                      rotation=60, ha="right", fontsize=FONT)
        ax.set_xlabel("site", fontsize=FONT)
    else:
        ax.set_xlabel("relative depth (first site 0, last 1)", fontsize=FONT)
    ax.set_ylim(0, 1)
    ax.set_ylabel("oracle mIoU (0-1)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, frameon=False)
    ax.set_title(title, fontsize=FONT + 1)
    fig.tight_layout()
    return fig
