"""Figures of spatial analyses (each function returns a `matplotlib.figure.Figure`, outside pyplot: nothing is
shown and no global figure is left open). Text is 8 pt or larger at the saved size, and sized so that the
figures fit a report page (about 1200 px wide at 110 dpi) without being shrunk.

- `top_units_figure`: rows = sites, column groups = scores, the top-k units' ratemaps, each as z-scores over
  its bins on one shared diverging colour scale (the blog's figure).
- `score_distributions`: histogram of each score per site, with the shuffle null and the significance
  threshold where the result holds them.
- `compare_preparations`: two result sets (e.g. trained vs random weights) side by side;
  `preparations_figure`: any number of them (a sweep's sessions).
- `site_styles`: a distinct (colour, line style) per site, for any number of sites.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

SCORE_LABELS = {"spatial_information": "spatial info", "grid_score": "grid", "border_score": "border"}
#: axis labels with units (spatial information is Skaggs' bits per unit of (shifted) activity)
SCORE_AXES = {"spatial_information": "spatial information (bits/spike)", "grid_score": "grid score",
              "border_score": "border score"}
FONT = 8  # pt: the smallest text of every figure
PANEL_IN = 0.56  # inches per ratemap panel of `top_units_figure`
Z_LIMIT = 3.0  # the colour scale of `top_units_figure` spans +-3 sd


def _top(score: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(np.where(np.isfinite(score), score, -np.inf))[::-1]
    return order[:k]


def site_styles(n: int) -> list[tuple[Any, str]]:
    """`n` distinct (colour, line style) pairs: 20 well-separated colours (tab20, dark shades first, then light),
    then the same colours dashed, dotted, dash-dotted."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    colours = list(tab20[0::2]) + list(tab20[1::2])
    styles = ("-", "--", ":", "-.")
    return [(colours[i % len(colours)], styles[(i // len(colours)) % len(styles)]) for i in range(n)]


def _zscore(img: np.ndarray) -> np.ndarray:
    """A ratemap as z-scores over its visited (finite) bins; NaN stays NaN (unvisited), a flat map is 0."""
    finite = np.isfinite(img)
    if not finite.any():
        return img
    sd = np.nanstd(img)
    return (img - np.nanmean(img)) / sd if sd > 0 else np.where(finite, 0.0, np.nan)


def top_units_figure(maps: Mapping[str, np.ndarray], scores: Mapping[str, Mapping[str, np.ndarray]],
                     k: int = 5, score_names: Sequence[str] = tuple(SCORE_LABELS), cmap: str = "RdBu_r",
                     title: str | None = None, labels: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """Top-`k` units per site and score as ratemaps.

    maps: site -> (units, y, x) ratemaps; scores: site -> {score name -> (units,)}; labels: site -> a name per
    unit (e.g. `26 (3,4)` for channel 26 at map position (3, 4)); default: the unit's index. Each panel shows
    one map as z-scores over its visited bins (red above the unit's mean, blue below), on one colour scale of
    +-3 sd with a colour bar; it is titled with the unit's name and its score; unvisited bins are blank.
    """
    sites = list(maps)
    groups = len(score_names)
    titles = {site: [str(t) for t in labels[site]] for site in sites} if labels is not None else {}
    if any(len(t) > 8 for ts in titles.values() for t in ts):  # too wide for a panel at 8 pt: two lines, all alike
        titles = {site: [t.replace(" ", "\n", 1) for t in ts] for site, ts in titles.items()}
    lines = max([t.count("\n") + 2 for ts in titles.values() for t in ts] or [2])  # name line(s) + the score
    gap, bar = 0.2, 0.15  # inches: between score groups, colour bar width
    left = 0.2 + 0.062 * max([len(str(site)) for site in sites] or [0])  # the site names at 8 pt
    right, top, bottom = 0.85, 0.55 + 0.13 * lines, 0.15
    row_gap = 0.05 + 0.135 * lines
    ratios = []
    for g in range(groups):
        ratios += [PANEL_IN] * k + ([gap] if g < groups - 1 else [])
    ratios += [0.15, bar]
    width = left + sum(ratios) + right
    height = top + bottom + len(sites) * (PANEL_IN + row_gap)
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(len(sites), len(ratios), width_ratios=ratios, left=left / width,
                            right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                            wspace=0.0, hspace=row_gap / PANEL_IN)
    image = None
    for row, site in enumerate(sites):
        m = np.asarray(maps[site])
        names = titles.get(site)
        for g, name in enumerate(score_names):
            s = np.asarray(scores[site][name], dtype=float)
            first = g * (k + 1)
            for j, unit in enumerate(_top(s, k)):
                ax = fig.add_subplot(grid[row, first + j])
                image = ax.imshow(_zscore(m[unit]), cmap=cmap, vmin=-Z_LIMIT, vmax=Z_LIMIT, interpolation="nearest")
                label = names[unit] if names is not None else str(unit)
                ax.set_title(f"{label}\n{s[unit]:.2f}", fontsize=FONT, pad=2, linespacing=1.1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0 and g == 0:
                    ax.set_ylabel(site, fontsize=FONT, rotation=0, ha="right", va="center", labelpad=4)
                if row == 0 and j == 0:
                    ax.annotate(SCORE_AXES.get(name, name), (0, 1), xytext=(0, 4 + 10 * lines),
                                xycoords="axes fraction", textcoords="offset points", fontsize=FONT + 1,
                                fontweight="bold", va="bottom")
    if image is not None:
        cax = fig.add_subplot(grid[:min(len(sites), 3), -1])
        bar_ = fig.colorbar(image, cax=cax, extend="both")
        bar_.set_label("response, sd from the\nunit's mean over bins", fontsize=FONT)
        bar_.ax.tick_params(labelsize=FONT)
    if title:
        fig.suptitle(title, fontsize=FONT + 2, y=1 - 0.12 / height, va="top")
    return fig


def score_distributions(scores: Mapping[str, Mapping[str, np.ndarray]] | xr.Dataset,
                        score_names: Sequence[str] = tuple(SCORE_LABELS), bins: int = 40,
                        alpha: float | None = None, n_shuffles: int | None = None) -> Figure:
    """One panel per score: histograms of that score over units, one line per site (`site_styles`).

    scores: site -> {name -> (units,)}, or a per-unit result table along `cell` with a `site` coordinate
    (`spatial_scores`'s result). Where the scores come with their shuffle nulls (`<name>_null_mean`,
    `<name>_null_sd`, `<name>_p`, as `analyses.spatial_nulls` gives them), each panel also shows:
    - the null of the average site (grey: one normal density per unit with its null's mean and sd, summed
      over units and divided by the number of sites, in units per bin);
    - the median over units of null mean + z(1 - alpha) sd (dashed: the score a typical unit needs for
      p <= alpha; `alpha` defaults to the table's `alpha` attribute, else 0.05);
    - how many units have p <= alpha, or, when `n_shuffles` (default: the table's `shuffles` attribute) is too
      few for any p to reach alpha (p >= 1 / (1 + n_shuffles)), how many shuffles that needs.
    """
    from scipy.stats import norm

    if isinstance(scores, xr.Dataset):
        if alpha is None:
            alpha = scores.attrs.get("alpha")
        if n_shuffles is None:
            n_shuffles = scores.attrs.get("shuffles", scores.attrs.get("n_shuffles"))
        scores = _by_site(scores)
    alpha = 0.05 if alpha is None else float(alpha)
    sites = list(scores)
    styles = site_styles(len(sites))
    fig = Figure(figsize=(3.0 * len(score_names) + 1.7, 3.0), layout="constrained")
    axes = fig.subplots(1, len(score_names), squeeze=False)
    reachable = n_shuffles is None or 1 / (1 + int(n_shuffles)) <= alpha
    for g, name in enumerate(score_names):
        ax = axes[0, g]
        values = [np.asarray(scores[s][name], dtype=float) for s in sites]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        has_null = bool(sites) and all(f"{name}_null_mean" in scores[s] and f"{name}_null_sd" in scores[s]
                                       for s in sites)
        mean = sd = np.zeros(0)
        if has_null:
            mean = np.concatenate([np.asarray(scores[s][f"{name}_null_mean"], float) for s in sites])
            sd = np.concatenate([np.asarray(scores[s][f"{name}_null_sd"], float) for s in sites])
            ok = np.isfinite(mean) & np.isfinite(sd)
            mean, sd = mean[ok], np.maximum(sd[ok], 1e-12)
        span = np.concatenate([finite, mean - 3 * sd, mean + 3 * sd]) if has_null else finite
        edges = np.histogram_bin_edges(span, bins=bins) if span.size else np.linspace(0, 1, bins + 1)
        for site, v, (colour, style) in zip(sites, values, styles):
            ax.hist(v[np.isfinite(v)], bins=edges, histtype="step", color=colour, linestyle=style, linewidth=1.2,
                    label=site)
        if has_null and mean.size:
            x = np.linspace(edges[0], edges[-1], 400)
            width = edges[1] - edges[0]
            density = np.zeros_like(x)
            for start in range(0, mean.size, 4096):  # bounded memory for many units
                density += norm.pdf(x[:, None], mean[None, start:start + 4096], sd[None, start:start + 4096]).sum(1)
            ax.fill_between(x, density * width / len(sites), color="0.6", alpha=0.45, linewidth=0,
                            label="shuffle null (per site)")
            threshold = float(np.median(mean + norm.ppf(1 - alpha) * sd))
            ax.axvline(threshold, color="k", linestyle="--", linewidth=1,
                       label=f"typical threshold (p = {alpha:g})")
        p_names = [f"{name}_p" in scores[s] for s in sites]
        if sites and all(p_names):
            p = np.concatenate([np.asarray(scores[s][f"{name}_p"], float) for s in sites])
            ax.set_title(f"{int(np.sum(p <= alpha))} of {p.size} units p \u2264 {alpha:g}" if reachable else
                         f"p \u2264 {alpha:g} needs \u2265 {int(np.ceil(1 / alpha)) - 1} shuffles", fontsize=FONT + 1)
        ax.set_xlabel(SCORE_AXES.get(name, name), fontsize=FONT + 1)
        ax.set_ylabel("units", fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
    handles, names = axes[0, -1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=FONT, frameon=False,
                   ncols=1 if len(handles) <= 16 else 2)
    return fig


def _by_site(table: xr.Dataset) -> dict[str, dict[str, np.ndarray]]:
    """A per-unit table along `cell` (with a `site` coordinate) as site -> {variable -> values}, sites in the
    order they first appear."""
    site = table["site"].values.astype(str) if "site" in table.coords else np.full(table.sizes.get("cell", 0), "all")
    order = list(dict.fromkeys(site))
    numeric = [v for v in table.data_vars if np.issubdtype(table[v].dtype, np.number)]
    return {s: {v: table[v].values[site == s] for v in numeric} for s in order}


def compare_preparations(a: xr.Dataset | Mapping, b: xr.Dataset | Mapping, labels: tuple[str, str] = ("trained",
                         "random"), score_names: Sequence[str] = tuple(SCORE_LABELS)) -> Figure:
    """Two preparations side by side: per score, the distribution over units of each (shared bins).

    a, b: anything indexable by score name giving per-unit scores (e.g. `spatial_nulls` Datasets).
    """
    return preparations_figure({labels[0]: a, labels[1]: b}, score_names)


def preparations_figure(results: Mapping[str, xr.Dataset | Mapping],
                        score_names: Sequence[str] = tuple(SCORE_LABELS)) -> Figure:
    """Any number of preparations (e.g. the sessions of a sweep) side by side: per score, the distribution over
    units of each, on shared bins; filled for two, outlines in distinct colours for more.

    results: label -> anything indexable by score name giving per-unit scores (e.g. `spatial_nulls` Datasets).
    """
    fig = Figure(figsize=(3.4 * len(score_names), 2.8 + 0.12 * max(len(results) - 4, 0)), layout="constrained")
    axes = fig.subplots(1, len(score_names), squeeze=False)
    colours = [f"C{i % 10}" for i in range(len(results))]
    for g, name in enumerate(score_names):
        ax = axes[0, g]
        values = {lab: np.asarray(x[name], dtype=float).ravel() for lab, x in results.items()}
        both = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
        edges = np.histogram_bin_edges(both, bins=40) if both.size else np.linspace(0, 1, 41)
        for (lab, v), colour in zip(values.items(), colours):
            if len(results) <= 2:
                ax.hist(v[np.isfinite(v)], bins=edges, histtype="stepfilled", alpha=0.5, label=lab, color=colour)
            else:
                ax.hist(v[np.isfinite(v)], bins=edges, histtype="step", linewidth=1.2, label=lab, color=colour)
        ax.set_xlabel(SCORE_AXES.get(name, name), fontsize=FONT + 1)
        ax.set_ylabel("units", fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
    axes[0, 0].legend(fontsize=FONT, frameon=False)
    return fig
