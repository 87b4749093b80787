"""Figures of receptive-field analyses (each returns a `matplotlib.figure.Figure`, outside pyplot).

- `gradient_rf_figure`: images (top row) and each unit's gradient RF on them (diverging colours, the study's).
- `explained_variance_figure`: cumulative explained variance of each unit's gRF PCA, one colour per site.
- `rf_images_figure`: rows of signed maps (PCA components, projections, reverse-correlation maps) with a colour bar.
- `retinotopy_figure`: RF centres in the visual field per site (and where the unit's patch or map position is).
- `saliency_shift_figure`: how far each unit's RF moves towards the saliency peak, per site.
- `contact_sheet_figure`: each unit's top and bottom stimuli with their responses.
- `saliency_channels_figure`: images, their saliency map and its smoothed Sobel gradients.
- `compare_rf_figure`: a per-cell value (RF size, RF shift) of several sessions (subjects, preparations) per site.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import xarray as xr

FONT = 8
CMAP = "RdBu_r"


def site_colours(sites: Sequence[str]) -> dict[str, tuple]:
    """A distinct colour per site (tab10, then tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(sites) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(sites)}


def _rgb(image: np.ndarray) -> np.ndarray:
    """`(C, H, W)` -> something imshow draws: RGB `(H, W, 3)` for 3 channels, else the channel mean."""
    image = np.asarray(image)
    return np.clip(image.transpose(1, 2, 0), 0, 1) if image.shape[0] == 3 else image.mean(axis=0)


def _signed(ax, img: np.ndarray, limit: float | None = None):
    span = limit if limit is not None else (float(np.nanmax(np.abs(img))) if np.isfinite(img).any() else 1.0)
    span = span if span > 0 else 1.0
    im = ax.imshow(img, cmap=CMAP, vmin=-span, vmax=span, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def gradient_rf_figure(images: np.ndarray, rfs: np.ndarray, labels: Sequence[str], title: str = "",
                       colorbar: str = "d response / d pixel value") -> Figure:
    """`images` `(S, C, H, W)` in [0, 1] on the top row; below, one row per unit of `rfs` `(U, S, H, W)` (signed,
    e.g. summed over channels) on a diverging colour map with limits symmetric per row; `labels` per unit."""
    rfs = np.asarray(rfs)
    n_units, n_stim = rfs.shape[:2]
    fig = Figure(figsize=(1.25 * n_stim + 1.6, 1.25 * (n_units + 1) + 0.5), layout="constrained")
    axes = fig.subplots(n_units + 1, n_stim, squeeze=False)
    for j in range(n_stim):
        axes[0, j].imshow(_rgb(images[j]), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set(xticks=[], yticks=[])
        axes[0, j].set_title(f"image {j}", fontsize=FONT)
    axes[0, 0].set_ylabel("stimulus", fontsize=FONT)
    for i in range(n_units):
        limit = float(np.nanmax(np.abs(rfs[i]))) if np.isfinite(rfs[i]).any() else 1.0
        for j in range(n_stim):
            im = _signed(axes[i + 1, j], rfs[i, j], limit)
        axes[i + 1, 0].set_ylabel(labels[i], fontsize=FONT)
        fig.colorbar(im, ax=axes[i + 1, :], shrink=0.9, pad=0.01).ax.tick_params(labelsize=FONT - 1)
    fig.supxlabel(f"colour: {colorbar} (red > 0, blue < 0; limits per row)", fontsize=FONT)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def explained_variance_figure(ratios: Mapping[str, np.ndarray], level: float = 0.99, title: str = "") -> Figure:
    """Cumulative explained variance ratio against the number of components, one thin line per unit, one
    colour per site (`ratios`: site -> `(units, components)`), a dashed line at `level`."""
    colours = site_colours(list(ratios))
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for site, r in ratios.items():
        r = np.atleast_2d(np.asarray(r))
        k = np.arange(1, r.shape[1] + 1)
        for i, row in enumerate(np.cumsum(r, axis=1)):
            ax.plot(k, row, color=colours[site], lw=0.8, alpha=0.7, label=site if i == 0 else None)
    ax.axhline(level, ls="--", color="0.4", lw=0.8)
    ax.text(1, level, f"{level:.0%}", fontsize=FONT, va="bottom", color="0.3")
    ax.set(xlabel="principal components of the unit's gradient RFs", ylabel="cumulative explained variance",
           ylim=(0, 1.02))
    ax.xaxis.label.set_size(FONT + 1)
    ax.yaxis.label.set_size(FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, frameon=False, loc="lower right")
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    return fig


def rf_images_figure(rows: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
                     images: np.ndarray | None = None, title: str = "", colorbar: str = "weight (a.u.)",
                     extent: tuple[float, float] | None = None) -> Figure:
    """A grid of signed maps `rows` `(R, K, H, W)` on a diverging colour map (limits symmetric per row, one colour
    bar per row labelled `colorbar`); optional `images` `(K, C, H, W)` drawn as a first row; `extent` (lo, hi)
    px of the maps' side (axes in px)."""
    rows = np.asarray(rows)
    n_rows, k = rows.shape[:2]
    top = 1 if images is not None else 0
    fig = Figure(figsize=(1.3 * k + 1.7, 1.3 * (n_rows + top) + 0.5), layout="constrained")
    axes = fig.subplots(n_rows + top, k, squeeze=False)
    if images is not None:
        for j in range(k):
            axes[0, j].imshow(_rgb(images[j]), cmap="gray", vmin=0, vmax=1)
            axes[0, j].set(xticks=[], yticks=[])
        axes[0, 0].set_ylabel("image", fontsize=FONT)
    for i in range(n_rows):
        limit = float(np.nanmax(np.abs(rows[i]))) if np.isfinite(rows[i]).any() else 1.0
        for j in range(k):
            im = _signed(axes[i + top, j], rows[i, j], limit)
            if extent is not None:
                im.set_extent((extent[0], extent[1], extent[1], extent[0]))
        axes[i + top, 0].set_ylabel(row_labels[i], fontsize=FONT)
        bar = fig.colorbar(im, ax=axes[i + top, :], shrink=0.9, pad=0.01)
        bar.set_label(colorbar, fontsize=FONT)
        bar.ax.tick_params(labelsize=FONT - 1)
    if col_labels is not None:
        for j, label in enumerate(col_labels):
            axes[0, j].set_title(label, fontsize=FONT)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def retinotopy_figure(centres: Mapping[str, Mapping[str, np.ndarray]], canvas: float, title: str = "") -> Figure:
    """RF centres in the visual field, one panel and colour per site. `centres`: site -> {"x", "y" (px), "size"
    (px, drawn as the marker's circle radius), optional "expected_x", "expected_y" (px: the centre of the
    unit's own patch or map position; a grey line joins it to the RF centre)}."""
    sites = list(centres)
    colours = site_colours(sites)
    cols = min(4, len(sites))
    rows = int(np.ceil(len(sites) / cols))
    fig = Figure(figsize=(3.0 * cols, 3.0 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[len(sites):]:
        ax.set_axis_off()
    for ax, site in zip(axes.ravel(), sites):
        c = centres[site]
        ok = np.isfinite(c["x"]) & np.isfinite(c["y"])
        if "expected_x" in c:
            for x0, y0, x1, y1 in zip(c["expected_x"][ok], c["expected_y"][ok], c["x"][ok], c["y"][ok]):
                ax.plot([x0, x1], [y0, y1], color="0.6", lw=0.5)
        from matplotlib.patches import Circle

        for x, y, s in zip(c["x"][ok], c["y"][ok], np.asarray(c.get("size", np.zeros(len(ok))))[ok]):
            if np.isfinite(s) and s > 0:
                ax.add_patch(Circle((x, y), s, fill=False, lw=0.4, color=colours[site], alpha=0.5))
        ax.scatter(c["x"][ok], c["y"][ok], s=6, color=colours[site])
        ax.set(xlim=(0, canvas), ylim=(canvas, 0), aspect="equal")
        ax.set_xlabel("RF centre x (px)", fontsize=FONT)
        ax.set_ylabel("RF centre y (px)", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.set_title(f"{site} ({int(ok.sum())} cells)", fontsize=FONT, color=colours[site])
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def saliency_shift_figure(shifts: Mapping[str, np.ndarray], p_values: Mapping[str, np.ndarray] | None = None,
                          alpha: float = 0.05, title: str = "") -> Figure:
    """Each unit's `saliency_shift` (px, > 0: its RF moves towards the saliency peak) as dots, one row and colour
    per site; filled dots: p < `alpha` against shuffled pairings of images and peaks."""
    sites = list(shifts)
    colours = site_colours(sites)
    fig = Figure(figsize=(5.5, 0.6 * len(sites) + 1.2), layout="constrained")
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, site in enumerate(sites):
        v = np.asarray(shifts[site], float)
        jitter = i + rng.uniform(-0.15, 0.15, len(v))
        sig = np.asarray(p_values[site]) < alpha if p_values is not None and site in p_values else np.zeros(len(v), bool)
        ax.scatter(v[~sig], jitter[~sig], s=10, facecolors="none", edgecolors=colours[site])
        ax.scatter(v[sig], jitter[sig], s=10, color=colours[site])
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(sites)), sites, fontsize=FONT)
    ax.set_xlabel("RF shift towards the saliency peak (px; mean over images)", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.invert_yaxis()
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    return fig


def contact_sheet_figure(top: np.ndarray, bottom: np.ndarray, top_values: np.ndarray, bottom_values: np.ndarray,
                         labels: Sequence[str], title: str = "") -> Figure:
    """Each unit's `k` most (left) and least (right) driving stimuli, one row per unit: `top`, `bottom`
    `(U, k, C, H, W)` images in [0, 1], titled with the response."""
    n_units, k = top.shape[:2]
    fig = Figure(figsize=(1.0 * 2 * k + 1.2, 1.1 * n_units + 0.7), layout="constrained")
    axes = fig.subplots(n_units, 2 * k, squeeze=False)
    for i in range(n_units):
        for j in range(2 * k):
            img, val = (top[i, j], top_values[i, j]) if j < k else (bottom[i, j - k], bottom_values[i, j - k])
            ax = axes[i, j]
            ax.imshow(_rgb(img), cmap="gray", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{val:.3g}", fontsize=FONT - 1, color="C3" if j < k else "C0")
        axes[i, 0].set_ylabel(labels[i], fontsize=FONT)
    axes[0, 0].annotate(f"top {k} (response)", (0, 1.35), xycoords="axes fraction", fontsize=FONT, color="C3")
    axes[0, k].annotate(f"bottom {k}", (0, 1.35), xycoords="axes fraction", fontsize=FONT, color="C0")
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def saliency_channels_figure(images: np.ndarray, channels: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """Rows of stimuli: the image, then each extra channel (`channels` `(S, K, H, W)`, named `names`; a map in
    [0, 1] on grey, signed gradients on a diverging colour map)."""
    n, k = channels.shape[:2]
    fig = Figure(figsize=(1.5 * (k + 1) + 0.8, 1.45 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, k + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_rgb(images[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set(xticks=[], yticks=[])
        for j in range(k):
            ax = axes[i, j + 1]
            if channels[i, j].min() >= 0:
                im = ax.imshow(channels[i, j], cmap="magma", vmin=0, vmax=max(float(channels[i, j].max()), 1e-12))
                ax.set(xticks=[], yticks=[])
            else:
                im = _signed(ax, channels[i, j])
            fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=FONT - 2)
    for j, name in enumerate(["image", *names]):
        axes[0, j].set_title(name, fontsize=FONT)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def compare_rf_figure(results: Mapping[str, "xr.Dataset"], value: str = "size",
                      ylabel: str = "RF size (px, s.d.)", title: str = "") -> Figure:
    """One per-cell value of several sessions side by side (e.g. subjects or preparations): `results` label ->
    a per-cell result with `site` and `value` along `cell` (the reverse_correlation or rf_structure result).
    Per site (x, in order of appearance), the median over cells (dot) and the inter-quartile range (bar), one
    colour per label."""
    labels = list(results)
    sites: list[str] = []
    for ds in results.values():
        sites += [s for s in dict.fromkeys(str(v) for v in ds["site"].values) if s not in sites]
    colours = site_colours(labels)
    fig = Figure(figsize=(max(4.5, 1.1 * len(sites) + 2.5), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.6 / max(1, len(labels))
    for k, label in enumerate(labels):
        ds = results[label]
        v = np.asarray(ds[value].values, float)
        v = v.reshape(v.shape[0], -1).mean(axis=1) if v.ndim > 1 else v
        site = np.asarray(ds["site"].values).astype(str)
        for i, s in enumerate(sites):
            vals = v[(site == s) & np.isfinite(v)]
            if not len(vals):
                continue
            x = i - 0.3 + (k + 0.5) * width
            lo, mid, hi = np.percentile(vals, [25, 50, 75])
            ax.plot([x, x], [lo, hi], color=colours[label], lw=2)
            ax.scatter([x], [mid], color=colours[label], s=18, label=label if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(sites)), [s.replace("visual.transformer.resblocks.", "block ") for s in sites],
                  fontsize=FONT, rotation=30 if len(sites) > 4 else 0)
    ax.set_ylabel(ylabel, fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, frameon=False)
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    return fig
