"""Noise stimuli for classic receptive-field mapping: sparse noise and white noise on a grid of square cells.

- `sparse_noise`: on a grey background, `squares` cells per stimulus are bright (ON, +contrast/2) or dark
  (OFF, -contrast/2); the cell, polarity and position of each square are parameters, so with one square per
  stimulus its centre is the stimulus's `x`, `y` (px) and the ratemap of a unit is its ON/OFF RF map.
- `white_noise`: every cell is independently bright or dark (binary) or Gaussian, achromatic by default; the
  cells are drawn from a per-stimulus `noise_seed`, so images are a pure function of the parameter table.

Both tile the canvas with a `grid` x `grid` lattice of cells of `canvas / grid` px (the bin of RF maps made
from them: `reverse_correlation(..., pool=canvas // grid)`).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .base import StimulusError, StimulusSet, register_renderer
from .catalog import register_generator

BACKGROUND = 0.5


def _check(n: int, canvas: int, grid: int, contrast: float) -> None:
    if int(n) != n or n < 1:
        raise StimulusError(f"n must be a positive integer, got {n!r}", "n")
    if int(canvas) != canvas or canvas < 1:
        raise StimulusError(f"canvas must be a positive number of pixels, got {canvas!r}", "canvas")
    if int(grid) != grid or not 1 <= grid <= canvas:
        raise StimulusError(f"grid must be an integer in 1..canvas ({canvas}), got {grid!r}", "grid")
    if not 0 < contrast <= 1:
        raise StimulusError(f"contrast must be in (0, 1] (1 = black and white), got {contrast!r}", "contrast")


@register_generator("sparse_noise")
def sparse_noise(n: int = 2000, canvas: int = 224, grid: int = 16, squares: int = 1, contrast: float = 1.0,
                 seed: int = 0) -> StimulusSet:
    """`n` sparse-noise stimuli: `squares` cells of a `grid` x `grid` lattice, each ON (bright) or OFF (dark)
    at random, on grey.

    Args:
        n: number of stimuli; canvas: image side, px; grid: cells per side (a cell is `canvas / grid` px);
        squares: squares per stimulus (distinct cells); contrast: a square's value is 0.5 +- contrast / 2;
        seed: the one seed of every choice.

    Returns:
        A `StimulusSet` with `square_row`, `square_col`, `polarity` (+1 ON, -1 OFF) along `(stimulus, square)`;
        with one square, also `x`, `y` (its centre, px) and `polarity` along `stimulus`.
    """
    _check(n, canvas, grid, contrast)
    if int(squares) != squares or not 1 <= squares <= grid * grid:
        raise StimulusError(f"squares must be an integer in 1..{grid * grid}, got {squares!r}", "squares")
    n, grid, squares = int(n), int(grid), int(squares)
    rng = np.random.default_rng(seed)
    cells = np.stack([rng.choice(grid * grid, squares, replace=False) for _ in range(n)]) if squares > 1 \
        else rng.integers(0, grid * grid, (n, 1))
    polarity = rng.choice(np.array([1, -1], np.int8), (n, squares))
    row, col = cells // grid, cells % grid
    cell = canvas / grid
    coords = {"stimulus": np.arange(n)}
    if squares == 1:
        coords.update(x=("stimulus", (col[:, 0] + 0.5) * cell, {"units": "px", "long_name": "square centre x"}),
                      y=("stimulus", (row[:, 0] + 0.5) * cell, {"units": "px", "long_name": "square centre y"}),
                      polarity=("stimulus", polarity[:, 0], {"long_name": "+1 ON (bright), -1 OFF (dark)"}))
        data = {"square_row": ("stimulus", row[:, 0]), "square_col": ("stimulus", col[:, 0])}
    else:
        data = {"square_row": (("stimulus", "square"), row), "square_col": (("stimulus", "square"), col),
                "polarity": (("stimulus", "square"), polarity)}
    params = xr.Dataset(data, coords=coords, attrs={
        "generator": "sparse_noise", "renderer": "noise", "canvas": int(canvas), "seed": int(seed), "grid": grid,
        "squares": squares, "contrast": float(contrast), "noise": "sparse"})
    return StimulusSet(params)


@register_generator("white_noise")
def white_noise(n: int = 2000, canvas: int = 224, grid: int = 16, contrast: float = 1.0, binary: bool = True,
                color: bool = False, seed: int = 0) -> StimulusSet:
    """`n` white-noise stimuli: every cell of a `grid` x `grid` lattice drawn independently.

    Args:
        binary: cells are 0.5 +- contrast / 2 with equal odds; else Gaussian with s.d. contrast / 4, clipped to
            [0, 1]. color: cells drawn per RGB channel (else the same grey level in all three).
        n, canvas, grid, contrast, seed: as `sparse_noise`.

    Returns:
        A `StimulusSet` with `noise_seed` along `stimulus` (the seed of each stimulus's cells).
    """
    _check(n, canvas, grid, contrast)
    n = int(n)
    seeds = np.random.default_rng(seed).integers(0, 2**62, n, dtype=np.int64)
    params = xr.Dataset({"noise_seed": ("stimulus", seeds)}, coords={"stimulus": np.arange(n)}, attrs={
        "generator": "white_noise", "renderer": "noise", "canvas": int(canvas), "seed": int(seed), "grid": int(grid),
        "contrast": float(contrast), "binary": int(bool(binary)), "color": int(bool(color)), "noise": "white"})
    return StimulusSet(params)


@register_renderer("noise")
def render_noise(params: xr.Dataset) -> np.ndarray:
    """Sparse or white noise as float32 `(B, 3, canvas, canvas)` in [0, 1]: cells drawn on the grid, then each
    pixel takes the value of the cell it falls in (cell of pixel j = floor(j * grid / canvas))."""
    a = params.attrs
    canvas, grid, contrast = int(a["canvas"]), int(a["grid"]), float(a["contrast"])
    b = params.sizes["stimulus"]
    if a["noise"] == "sparse":
        cells = np.full((b, 1, grid, grid), BACKGROUND, np.float32)
        row, col = (np.asarray(params[k].values).reshape(b, -1) for k in ("square_row", "square_col"))
        pol = np.asarray(params["polarity"].values).reshape(b, -1)
        idx = np.broadcast_to(np.arange(b)[:, None], row.shape)
        cells[idx, 0, row, col] = BACKGROUND + pol * contrast / 2
        cells = np.repeat(cells, 3, axis=1)
    else:
        channels = 3 if int(a["color"]) else 1
        cells = np.empty((b, channels, grid, grid), np.float32)
        for i, s in enumerate(np.asarray(params["noise_seed"].values)):
            rng = np.random.default_rng(int(s))
            if int(a["binary"]):
                cells[i] = BACKGROUND + np.where(rng.random((channels, grid, grid)) < 0.5, -1, 1) * contrast / 2
            else:
                cells[i] = np.clip(BACKGROUND + rng.normal(0, contrast / 4, (channels, grid, grid)), 0, 1)
        cells = np.broadcast_to(cells, (b, 3, grid, grid))
    if canvas % grid == 0:
        k = canvas // grid
        return np.repeat(np.repeat(cells, k, axis=2), k, axis=3).astype(np.float32, copy=False)
    index = np.arange(canvas) * grid // canvas
    return np.ascontiguousarray(cells[:, :, index][:, :, :, index], dtype=np.float32)
