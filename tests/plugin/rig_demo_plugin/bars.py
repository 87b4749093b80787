"""`bars`: one oriented bar per stimulus at a random position, orientation and length."""
from __future__ import annotations

import numpy as np
import xarray as xr

from stimuli import StimulusError, StimulusSet


def bars(n: int = 100, canvas: int = 64, length: float = 24.0, width: float = 4.0, seed: int = 0) -> StimulusSet:
    """`n` white bars on black, centre `x`, `y` (pixels) uniform, orientation uniform in [0, 180) degrees."""
    if int(n) != n or n < 1:
        raise StimulusError(f"n must be a positive integer, got {n!r}", "n")
    if not 0 < width <= length <= canvas:
        raise StimulusError(f"need 0 < width <= length <= canvas, got width {width}, length {length}", "length")
    rng = np.random.default_rng(seed)
    params = xr.Dataset(coords={
        "stimulus": np.arange(n),
        "x": ("stimulus", rng.uniform(0, canvas, n)),
        "y": ("stimulus", rng.uniform(0, canvas, n)),
        "orientation": ("stimulus", rng.uniform(0, 180, n), {"units": "degree"}),
    }, attrs={"generator": "bars", "renderer": "bars", "canvas": int(canvas), "seed": int(seed),
              "length": float(length), "width": float(width)})
    return StimulusSet(params)


def render_bars(params: xr.Dataset) -> np.ndarray:
    """(B, 3, canvas, canvas) float32: 1 inside each bar (a rectangle around its centre), else 0."""
    c = int(params.attrs["canvas"])
    half_l, half_w = params.attrs["length"] / 2, params.attrs["width"] / 2
    t = np.deg2rad(params["orientation"].values)[:, None, None]
    px = np.arange(c) + 0.5
    u = px[None, None, :] - params["x"].values[:, None, None]
    v = px[None, :, None] - params["y"].values[:, None, None]
    along, across = np.cos(t) * u + np.sin(t) * v, -np.sin(t) * u + np.cos(t) * v
    inside = (np.abs(along) <= half_l) & (np.abs(across) <= half_w)
    return np.repeat(inside[:, None].astype(np.float32), 3, axis=1)
