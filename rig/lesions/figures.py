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


#: one colour, line style and marker per strategy (controls dashed), the same in every figure
STYLES = {
    "random": ("#555555", "--", "o"), "by_mean": ("#1f77b4", "--", "s"), "targeted": ("#d62728", "-", "^"),
    "targeted_abs": ("#ff7f0e", "-", "v"), "targeted_raw": ("#9467bd", ":", "D"),
    "targeted_raw_abs": ("#e377c2", ":", "d"), "units": ("#2ca02c", "-", "o"),
}


def unit_lesion_figure(ds: xr.Dataset) -> Figure:
    """Mean target probability vs proportion of units lesioned: one line per strategy, its 95 % interval as a band,
    the unlesioned mean as a dotted line. The y axis spans the data (at least 0.1), so small effects are seen."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for strategy in ds["strategy"].values:
        colour, style, marker = STYLES.get(str(strategy), (None, "-", "o"))
        m = ds["mean"].sel(strategy=strategy)
        line = ax.plot(ds["proportion"], m, marker=marker, ms=4, mfc="none", color=colour, ls=style,
                       label=str(strategy))[0]
        ax.fill_between(ds["proportion"], ds["ci_low"].sel(strategy=strategy), ds["ci_high"].sel(strategy=strategy),
                        color=line.get_color(), alpha=0.15, lw=0)
    if "baseline" in ds:
        ax.axhline(float(ds["baseline"].mean()), color="k", lw=0.8, ls=(0, (1, 2)), label="unlesioned")
    lo, hi = float(np.nanmin(ds["ci_low"])), float(np.nanmax(ds["ci_high"]))
    centre, half = (lo + hi) / 2, max(hi - lo, 0.1) / 2 * 1.1
    ax.set_ylim(max(centre - half, -0.02), min(centre + half, 1.02))
    unit = ds.attrs.get("unit", "channel")
    ax.set_xlabel(f"proportion of units lesioned (n = {ds.attrs.get('n_units', '?')} {unit}s)", fontsize=9)
    ax.set_ylabel(f"P({ds.attrs.get('target', 'target')})", fontsize=9)
    ax.set_title(f"unit lesions at {ds.attrs.get('site', '')}", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, title="strategy", title_fontsize=8)
    fig.tight_layout()
    return fig


def unit_lesion_caption(ds: xr.Dataset) -> str:
    """The caption of `unit_lesion_figure`: what is plotted, what a unit is, how units were ranked, the bands."""
    from rig.lesions.units import DESCRIPTIONS

    n_stim, reps = ds.sizes.get("stimulus", 0), int(ds.attrs.get("repeats", 1))
    strategies = "; ".join(f"{s}: {DESCRIPTIONS.get(str(s), s)}" for s in ds["strategy"].values)
    text = (f"Behaviour (mean P({ds.attrs.get('target', 'target')}) over {n_stim} stimuli) as a "
            f"growing proportion of the units of {ds.attrs.get('site', 'the site')} is silenced. A unit is "
            f"{ds.attrs.get('unit_meaning', 'one channel')}. Strategies (dashed: controls): {strategies}.")
    if "ranking" in ds.attrs:
        text += f" Ranking maps: {ds.attrs['ranking']}"
        moved = int(ds.attrs.get("n_nearest_bin", 0))
        text += f"; {moved} stimuli ranked at the nearest visited bin." if moved else "."
    text += (f" Bands: 95% intervals of the mean; random lesions: over the {reps} random unit sets and the stimuli "
             "(Student t on the two-way variance), the others: bootstrap over the stimuli. Dotted line: the "
             "unlesioned network. The y axis spans the data.")
    return text
