"""Figures of spatial analyses (each function returns a `matplotlib.figure.Figure`, outside pyplot: nothing is
shown and no global figure is left open).

- `top_units_figure`: rows = sites, column groups = scores, the top-k units' ratemaps on a diverging colour
  map centred on each map's mean (the blog's figure).
- `score_distributions`: histogram of each score per site.
- `compare_preparations`: two result sets (e.g. trained vs random weights) side by side;
  `preparations_figure`: any number of them (a sweep's sessions).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

SCORE_LABELS = {"spatial_information": "spatial info", "grid_score": "grid", "border_score": "border"}


def _top(score: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(np.where(np.isfinite(score), score, -np.inf))[::-1]
    return order[:k]


def top_units_figure(maps: Mapping[str, np.ndarray], scores: Mapping[str, Mapping[str, np.ndarray]],
                     k: int = 5, score_names: Sequence[str] = tuple(SCORE_LABELS), cmap: str = "RdBu_r",
                     title: str | None = None) -> Figure:
    """Top-`k` units per site and score as ratemaps.

    maps: site -> (units, y, x) ratemaps; scores: site -> {score name -> (units,)}. Each panel is drawn on
    `cmap` with limits symmetric about the map's mean (so above/below-mean responses read as red/blue), and
    titled with the unit index and its score.
    """
    sites = list(maps)
    fig = Figure(figsize=(1.1 * k * len(score_names), 1.25 * len(sites) + 0.6))
    axes = fig.subplots(len(sites), k * len(score_names), squeeze=False)
    for row, site in enumerate(sites):
        m = np.asarray(maps[site])
        for g, name in enumerate(score_names):
            s = np.asarray(scores[site][name], dtype=float)
            for j, unit in enumerate(_top(s, k)):
                ax = axes[row, g * k + j]
                img = m[unit]
                centre = np.nanmean(img) if np.isfinite(img).any() else 0.0
                span = np.nanmax(np.abs(img - centre)) if np.isfinite(img).any() else 1.0
                ax.imshow(img, cmap=cmap, vmin=centre - span, vmax=centre + span, interpolation="nearest")
                ax.set_title(f"{unit}: {s[unit]:.2f}", fontsize=6)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0 and g == 0:
                    ax.set_ylabel(site, fontsize=6, rotation=0, ha="right", va="center")
            for j in range(min(k, len(s)), k):
                axes[row, g * k + j].axis("off")
            axes[0, g * k].annotate(SCORE_LABELS.get(name, name), (0, 1.35), xycoords="axes fraction",
                                    fontsize=8, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def score_distributions(scores: Mapping[str, Mapping[str, np.ndarray]],
                        score_names: Sequence[str] = tuple(SCORE_LABELS), bins: int = 40) -> Figure:
    """One panel per score: histograms of that score over units, one line per site."""
    fig = Figure(figsize=(3.2 * len(score_names), 2.6))
    axes = fig.subplots(1, len(score_names), squeeze=False)
    for g, name in enumerate(score_names):
        ax = axes[0, g]
        values = [np.asarray(scores[s][name], dtype=float) for s in scores]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else np.linspace(0, 1, bins + 1)
        for site, v in zip(scores, values):
            ax.hist(v[np.isfinite(v)], bins=edges, histtype="step", label=site)
        ax.set_xlabel(SCORE_LABELS.get(name, name))
        ax.set_ylabel("units")
    if len(scores) <= 12:
        axes[0, -1].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


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
    fig = Figure(figsize=(3.2 * len(score_names), 2.6 + 0.12 * max(len(results) - 4, 0)))
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
        ax.set_xlabel(SCORE_LABELS.get(name, name))
        ax.set_ylabel("units")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
