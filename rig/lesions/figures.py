"""Figures of lesion results: behaviour per lesioned module (per tower), behaviour vs proportion lesioned.

Each function returns a `matplotlib.figure.Figure` made outside pyplot (no global figure is left open)."""
from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure


def _short(name: str) -> str:
    return (name.replace("visual.", "").replace("transformer.resblocks.", "block ").replace(".attn.out_proj", " out_proj")
            .replace(".mlp.", " ").replace(".attn", " attn").replace(".ln_", " ln_"))


def weight_lesion_figure(ds: xr.Dataset) -> Figure:
    """Mean target probability per lesioned module (one panel per tower, modules in order), baseline as a line."""
    towers = list(dict.fromkeys(ds["tower"].values.tolist()))
    fig = Figure(figsize=(max(8, 0.12 * ds.sizes["module"] + 4), 3.2 * len(towers)))
    axes = fig.subplots(len(towers), 1, squeeze=False)
    sem = ds["target_probability"].std("stimulus") / np.sqrt(ds.sizes["stimulus"])
    for ax, tower in zip(axes[:, 0], towers):
        sel = ds["tower"].values == tower
        names = ds["module"].values[sel]
        pos = np.arange(sel.sum())
        ax.errorbar(pos, ds["mean"].values[sel], yerr=1.96 * sem.values[sel], fmt="o", ms=3, lw=0.8)
        ax.axhline(float(ds["baseline_mean"]), color="k", ls="--", lw=1, label="unlesioned")
        ax.set_xticks(pos, [_short(n) for n in names], rotation=90, fontsize=5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"P({ds.attrs.get('target', 'target')})")
        ax.set_title(f"{tower} tower: weights of one module set to 0 ({int(sel.sum())} modules)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def unit_lesion_figure(ds: xr.Dataset) -> Figure:
    """Mean target probability vs proportion of units lesioned, one line per strategy with its 95 % interval."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for strategy in ds["strategy"].values:
        m = ds["mean"].sel(strategy=strategy)
        ax.plot(ds["proportion"], m, marker="o", ms=3, label=str(strategy))
        ax.fill_between(ds["proportion"], ds["ci_low"].sel(strategy=strategy), ds["ci_high"].sel(strategy=strategy),
                        alpha=0.2)
    ax.set_xlabel(f"proportion of units lesioned (n = {ds.attrs.get('n_units', '?')})")
    ax.set_ylabel(f"P({ds.attrs.get('target', 'target')})")
    ax.set_title(f"unit lesions at {ds.attrs.get('site', '')}", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
