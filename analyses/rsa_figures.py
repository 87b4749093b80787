"""Figures of RSA results: per-site curves (one line per subject or reference, confidence bands), delta-RSA per
condition, and model-brain RSA against the noise ceiling. Each takes the xarray results of `rig`'s rsa steps (or
the same layout built by hand) and returns a matplotlib `Figure`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

#: reference -> colour (saliency warm, semantics cool), and a cycle for subjects and conditions
REFERENCE_COLOURS = {"saliency": "#d95f02", "semantic": "#1b9e77"}
CYCLE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def _depth(n: int) -> np.ndarray:
    return np.linspace(0, 1, n) if n > 1 else np.zeros(1)


def rsa_curves(results: Mapping[str, xr.Dataset] | xr.Dataset, condition: str | None = None,
               title: str = "") -> Figure:
    """RSA per site, one panel per reference (saliency, semantic), one line per subject.

    `results`: one rsa result (`rsa` `(site, reference, condition)`, optional `ci_low`/`ci_high` `(site,
    reference)`) or `{label: result}` for several subjects (e.g. the sessions of a sweep); sites are placed at
    their relative depth (0 = first recorded site, 1 = last) so networks of different depth share the axis, and
    a single subject is labelled with its site names. `condition`: which condition (default the baseline)."""
    if isinstance(results, xr.Dataset):
        results = {"": results}
    refs = [str(r) for r in next(iter(results.values()))["reference"].values]
    fig = Figure(figsize=(4.2 * len(refs), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(refs), sharey=True))
    for ax, ref in zip(axes, refs):
        for k, (label, res) in enumerate(results.items()):
            cond = condition or str(res.attrs.get("baseline", res["condition"].values[0]))
            y = res["rsa"].sel(reference=ref, condition=cond).values
            x = _depth(len(y)) if len(results) > 1 else np.arange(len(y))
            colour = CYCLE[k % len(CYCLE)] if len(results) > 1 else REFERENCE_COLOURS.get(ref, CYCLE[0])
            ax.plot(x, y, "-o", ms=3, color=colour, label=label or None)
            if "ci_low" in res and cond == str(res.attrs.get("baseline", cond)):
                ax.fill_between(x, res["ci_low"].sel(reference=ref).values, res["ci_high"].sel(reference=ref).values,
                                color=colour, alpha=0.2, lw=0)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"{ref} RSA", fontsize=10)
        if len(results) > 1:
            ax.set_xlabel("relative depth (first to last site)", fontsize=9)
            ax.legend(fontsize=8)
        else:
            sites = [str(s) for s in next(iter(results.values()))["site"].values]
            ax.set_xticks(np.arange(len(sites)), [_short(s) for s in sites], rotation=90, fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel(f"RSA ({next(iter(results.values())).attrs.get('method', 'spearman')} rho)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def delta_rsa_figure(result: xr.Dataset) -> Figure:
    """delta-RSA per site for every non-baseline condition, one panel per reference."""
    refs = [str(r) for r in result["reference"].values]
    base = str(result.attrs.get("baseline", "Baseline"))
    conds = [str(c) for c in result["condition"].values if str(c) != base]
    sites = [str(s) for s in result["site"].values]
    fig = Figure(figsize=(4.2 * len(refs), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(refs), sharey=True))
    for ax, ref in zip(axes, refs):
        for k, cond in enumerate(conds):
            ax.plot(np.arange(len(sites)), result["delta_rsa"].sel(reference=ref, condition=cond).values, "-o", ms=3,
                    color=CYCLE[(k + 2) % len(CYCLE)], label=cond)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xticks(np.arange(len(sites)), [_short(s) for s in sites], rotation=90, fontsize=8)
        ax.set_title(f"delta {ref} RSA (condition - {base})", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("delta RSA (rho)", fontsize=9)
    return fig


def brain_rsa_figure(result: xr.Dataset) -> Figure:
    """Model-brain RSA per site (mean over subjects, one line per ROI) with each ROI's noise ceiling as a band
    from its lower to its upper bound."""
    sites = [str(s) for s in result["site"].values]
    fig = Figure(figsize=(max(5.0, 0.35 * len(sites) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    for k, roi in enumerate(result["roi"].values):
        colour = CYCLE[k % len(CYCLE)]
        ax.plot(np.arange(len(sites)), result["rsa_mean"].sel(roi=roi).values, "-o", ms=3, color=colour, label=str(roi))
        lo, hi = float(result["ceiling_lower"].sel(roi=roi)), float(result["ceiling_upper"].sel(roi=roi))
        if np.isfinite(lo):
            ax.axhspan(lo, hi, color=colour, alpha=0.15, lw=0)
    ax.set_xticks(np.arange(len(sites)), [_short(s) for s in sites], rotation=90, fontsize=8)
    ax.set_ylabel(f"model-brain RSA ({result.attrs.get('method', 'spearman')} rho)", fontsize=9)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=8, title="ROI", title_fontsize=8)
    ax.tick_params(labelsize=8)
    return fig


def _short(site: str, width: int = 28) -> str:
    s = site.replace("visual.transformer.resblocks.", "block ").replace("visual.", "")
    return s if len(s) <= width else "..." + s[-(width - 3):]
