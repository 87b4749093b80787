"""Figures of a stimulus set: a contact sheet of samples, and the study's overview (centres, mean image).

Stimulus figures are registered in `figure_types` (name -> `StimulusFigure`: the function and the parameters
it needs); the design step of a session draws those its set asks for (`StimulusSet.figures`), or else every
registered figure whose parameters the set has. Plugins: entry point group `rig.figures`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from .base import StimulusError, StimulusSet
from .registry import Registry


@dataclass(frozen=True)
class StimulusFigure:
    """A figure of a stimulus set: `draw(stimulus_set) -> Figure`, drawable when the set has the parameters
    `requires` (coordinates along `stimulus`)."""

    draw: Callable[[StimulusSet], Figure]
    requires: tuple[str, ...] = ()
    caption: str = ""

    def applies(self, stimulus_set: StimulusSet) -> bool:
        return all(name in stimulus_set.params.variables for name in self.requires)


figure_types: Registry[StimulusFigure] = Registry(
    "stimulus figure", "rig.figures",
    adopt=lambda name, obj: figure_types.register(name, obj if isinstance(obj, StimulusFigure) else StimulusFigure(obj)))


def register_figure(name: str, requires: tuple[str, ...] = (), caption: str = "") -> Callable:
    """Decorator: register `draw(stimulus_set) -> Figure` as the stimulus figure `name`, drawn for sets with
    the parameters `requires`."""
    def deco(draw: Callable[[StimulusSet], Figure]) -> Callable[[StimulusSet], Figure]:
        figure_types.register(name, StimulusFigure(draw, tuple(requires), caption))
        return draw
    return deco


def list_figures(pattern: str | None = None) -> list[str]:
    """Names of the registered stimulus figures (optionally matching a glob)."""
    return figure_types.names(pattern)


def figures_for(stimulus_set: StimulusSet) -> dict[str, StimulusFigure]:
    """The figures to draw for a set: those it asks for (`StimulusSet.figures`) that apply, else every
    registered figure whose parameters it has."""
    names = stimulus_set.figures if stimulus_set.figures is not None else figure_types.names()
    return {n: figure_types.lookup(n) for n in names if figure_types.lookup(n).applies(stimulus_set)}


@register_figure("contact_sheet", caption="A random sample of the stimuli as the network sees them, each titled "
                 "with its index (#), centre (x, y) and diameter d, in pixels.")
def contact_sheet(stimulus_set: StimulusSet, n: int = 16, seed: int | None = None, columns: int = 8) -> Figure:
    """A grid of `n` stimuli drawn at random (seeded; default: the set's own seed), each titled with its index
    and parameters."""
    if seed is None:
        seed = int(stimulus_set.params.attrs.get("seed", 0))
    if n < 1:
        raise StimulusError(f"a contact sheet needs n >= 1 stimuli, got {n}", "n")
    rng = np.random.default_rng(seed)
    n = min(n, len(stimulus_set))
    idx = np.sort(rng.choice(len(stimulus_set), n, replace=False))
    images = stimulus_set.render(idx)
    columns = min(columns, n)
    rows = int(np.ceil(n / columns))
    fig = Figure(figsize=(1.35 * columns, 1.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    p = stimulus_set.params
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    for ax, i, img in zip(axes.ravel(), idx, images):
        ax.set(xticks=[], yticks=[])  # keep the frame: white stimuli on a white page need an outline
        ax.imshow(img.transpose(1, 2, 0), vmin=0, vmax=1)
        label = f"#{i}"
        if "x" in p and "y" in p:
            label += f" ({p.x.values[i]:.0f},{p.y.values[i]:.0f})"
        if "diameter" in p:
            label += f" d={p.diameter.values[i]:.0f}"
        ax.set_title(label, fontsize=8)
    fig.suptitle(f"{p.attrs.get('generator', 'stimuli')}: {n} of {len(stimulus_set)} stimuli, at random", fontsize=10)
    return fig


@register_figure("overview", requires=("x", "y"),
                 caption="Left: every stimulus centre in image pixels, coloured by the stimulus diameter (colour "
                 "bar, pixels) where the set has one. Right: the mean image over the set, which shows where the "
                 "stimuli cover the visual field.")
def overview(stimulus_set: StimulusSet, batch_size: int = 256) -> Figure:
    """The study's overview: every stimulus centre (left) and the mean image over the set (right).

    The mean image is accumulated batch by batch, so memory does not grow with the size of the set.
    """
    total = np.zeros((3, stimulus_set.canvas, stimulus_set.canvas), np.float64)
    for _, images in stimulus_set.batches(batch_size):
        total += images.sum(axis=0)
    mean = (total / len(stimulus_set)).transpose(1, 2, 0)
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax_c, ax_m = fig.subplots(1, 2)
    p = stimulus_set.params
    c = stimulus_set.canvas
    if "diameter" in p.variables:
        dots = ax_c.scatter(p.x.values, p.y.values, s=2, c=p.diameter.values, cmap="viridis")
        fig.colorbar(dots, ax=ax_c, label="diameter (px)", shrink=0.8)
    else:
        ax_c.scatter(p.x.values, p.y.values, s=2, color="k")
    ax_c.set(xlim=(0, c), ylim=(c, 0), aspect="equal", xlabel="x (px)", ylabel="y (px)",
             title=f"stimulus centres (n={len(stimulus_set)})")
    ax_m.imshow(mean, vmin=0, vmax=1)
    ax_m.set(title="mean image", xticks=[], yticks=[])
    return fig
