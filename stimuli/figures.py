"""Figures of a stimulus set: a contact sheet of samples, and the study's overview (centres, mean image)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .base import StimulusError, StimulusSet


def contact_sheet(stimulus_set: StimulusSet, n: int = 16, seed: int = 0, columns: int = 8) -> Figure:
    """A grid of `n` stimuli drawn at random (seeded), each titled with its index and parameters."""
    if n < 1:
        raise StimulusError(f"a contact sheet needs n >= 1 stimuli, got {n}", "n")
    rng = np.random.default_rng(seed)
    n = min(n, len(stimulus_set))
    idx = np.sort(rng.choice(len(stimulus_set), n, replace=False))
    images = stimulus_set.render(idx)
    columns = min(columns, n)
    rows = int(np.ceil(n / columns))
    fig = Figure(figsize=(1.6 * columns, 1.75 * rows), layout="constrained")
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
        ax.set_title(label, fontsize=6)
    fig.suptitle(f"{p.attrs.get('generator', 'stimuli')}: {n} of {len(stimulus_set)}", fontsize=9)
    return fig


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
    ax_c.scatter(p.x.values, p.y.values, s=2, c=p.diameter.values, cmap="viridis")
    ax_c.set(xlim=(0, c), ylim=(c, 0), aspect="equal", xlabel="x (px)", ylabel="y (px)",
             title=f"centres (n={len(stimulus_set)}, colour = diameter)")
    ax_m.imshow(mean, vmin=0, vmax=1)
    ax_m.set(title="mean image", xticks=[], yticks=[])
    return fig
