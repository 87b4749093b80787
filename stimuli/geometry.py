"""Filled geometric shapes (circles, squares, triangles) at parametric positions and sizes.

The design of the spatial-cells study: each stimulus is one shape of diameter `d` (pixels) whose centre
`(x, y)` is drawn uniformly such that the shape stays inside the canvas. Rendering is anti-aliased
analytically: a pixel's value is its coverage by the shape, estimated from the signed distance of its centre
to the outline, `clip(0.5 - sdf, 0, 1)` (exact for straight edges, within 1/255 for circles of d >= 4 px).

Every set also gives its ground-truth object masks (the extra `masks`, `render_extras`): an int label image
`(H, W)` per stimulus, 0 = background, the shape's pixels (coverage >= 1/2) = 1 + the index of its shape in
the set's `mask_labels` attribute (the set's `shapes`, e.g. `["circle"]` for circles).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import xarray as xr
from matplotlib.colors import to_rgb

from .base import StimulusError, StimulusSet, list_attr, register_renderer
from .catalog import register_generator

SHAPES = ("circle", "square", "triangle")
LAYOUTS = ("random", "grid")


@register_generator("circles")
def circles(n: int = 3000, canvas: int = 224, diameter: float | Sequence[float] = (20, 80),
            color: str | Sequence[float] = "black", background: str | Sequence[float] = "white",
            layout: str = "random", seed: int = 0) -> StimulusSet:
    """`n` circles on a square canvas, the study's stimulus set.

    Args:
        n: number of stimuli (> 0).
        canvas: side of the square image, pixels.
        diameter: `(lo, hi)` for a diameter uniform in [lo, hi] pixels, or one number for a fixed size.
        color, background: matplotlib colour names or RGB triples in [0, 1].
        layout: `"random"`: centres uniform over the positions that keep the circle inside the canvas;
            `"grid"`: centres on a regular `k x k` lattice (`k = ceil(sqrt(n))`, raster order, the last row
            partial when `n` is not a square) spanning the positions valid for the largest diameter.
        seed: the one seed for every random choice (diameters, positions).

    Returns:
        A `StimulusSet` whose `params` has coordinates `x`, `y` (centre, pixels), `diameter` (pixels), `shape`.
    """
    return shapes(n=n, canvas=canvas, diameter=diameter, color=color, background=background, layout=layout,
                  seed=seed, shapes=("circle",), generator="circles")


@register_generator("shapes")
def shapes(n: int = 3000, canvas: int = 224, diameter: float | Sequence[float] = (20, 80),
           color: str | Sequence[float] = "black", background: str | Sequence[float] = "white",
           layout: str = "random", seed: int = 0, shapes: Sequence[str] = SHAPES,
           rotation: bool = False, generator: str = "shapes") -> StimulusSet:
    """`n` shapes drawn uniformly from `shapes` (the study's first version: circle, square, triangle).

    Same arguments as `circles`; `rotation=True` draws a uniform rotation in [0, 360) degrees per shape
    (otherwise squares are axis-aligned and triangles point up). A shape's "diameter" is the diameter of its
    circumscribed circle, so every shape of a given diameter stays inside the same disc.
    """
    lo, hi = _diameter_range(diameter, canvas)
    if int(n) != n or n <= 0:
        raise StimulusError(f"n must be a positive integer, got {n!r}", "n")
    if layout not in LAYOUTS:
        raise StimulusError(f"layout must be one of {LAYOUTS}, got {layout!r}", "layout")
    if isinstance(shapes, str):
        raise StimulusError(f"shapes must be a list of shape names, e.g. [{shapes!r}], got the string {shapes!r}",
                            "shapes")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise StimulusError(f"unknown shape(s) {unknown}; choose from {SHAPES}", "shapes")
    fg, bg = _rgb(color, "color"), _rgb(background, "background")
    n = int(n)
    rng = np.random.default_rng(seed)
    d = rng.uniform(lo, hi, n) if hi > lo else np.full(n, float(lo))
    if layout == "random":
        x = rng.uniform(d / 2, canvas - d / 2)
        y = rng.uniform(d / 2, canvas - d / 2)
    else:
        k = int(np.ceil(np.sqrt(n)))
        ticks = np.linspace(hi / 2, canvas - hi / 2, k) if k > 1 else np.array([canvas / 2])
        yy, xx = np.meshgrid(ticks, ticks, indexing="ij")
        x, y = xx.ravel()[:n], yy.ravel()[:n]
    kind = rng.choice(np.asarray(shapes), n) if len(shapes) > 1 else np.full(n, shapes[0])
    angle = rng.uniform(0, 360, n) if rotation else np.zeros(n)
    params = xr.Dataset(
        coords={
            "stimulus": np.arange(n),
            "x": ("stimulus", x, {"units": "px", "long_name": "centre x (right)"}),
            "y": ("stimulus", y, {"units": "px", "long_name": "centre y (down)"}),
            "diameter": ("stimulus", d, {"units": "px"}),
            "shape": ("stimulus", kind.astype(str)),
            "rotation": ("stimulus", angle, {"units": "degree"}),
        },
        attrs={"generator": generator, "renderer": "shapes", "canvas": int(canvas), "seed": int(seed),
               "layout": layout, "diameter_range": [float(lo), float(hi)],
               "color": list(fg), "background": list(bg),
               "extras": json.dumps(["masks"]), "mask_labels": json.dumps(list(dict.fromkeys(shapes)))},
    )
    return StimulusSet(params)


@register_renderer("shapes")
def render_shapes(params: xr.Dataset) -> np.ndarray | dict[str, np.ndarray]:
    """Render shapes as float32 `(B, 3, canvas, canvas)` in [0, 1], anti-aliased by signed distance; for sets
    that declare the extra `masks`, `{"image": images, "masks": (B, canvas, canvas) int16 labels}`."""
    canvas = int(params.attrs["canvas"])
    fg = np.asarray(params.attrs["color"], np.float32).reshape(1, 3, 1, 1)
    bg = np.asarray(params.attrs["background"], np.float32).reshape(1, 3, 1, 1)
    cx = params["x"].values.astype(np.float32)[:, None, None]
    cy = params["y"].values.astype(np.float32)[:, None, None]
    r = params["diameter"].values.astype(np.float32)[:, None, None] / 2
    theta = np.deg2rad(params["rotation"].values.astype(np.float32))[:, None, None]
    kind = params["shape"].values.astype(str)
    centres = np.arange(canvas, dtype=np.float32) + 0.5
    # pixel centres relative to each shape's centre, rotated into the shape's own frame
    u, v = centres[None, None, :] - cx, centres[None, :, None] - cy
    cos, sin = np.cos(theta), np.sin(theta)
    u, v = cos * u + sin * v, -sin * u + cos * v
    sdf = np.empty((len(kind), canvas, canvas), np.float32)
    for name, fn in (("circle", _sdf_circle), ("square", _sdf_square), ("triangle", _sdf_triangle)):
        sel = kind == name
        if sel.any():
            sdf[sel] = fn(u[sel], v[sel], r[sel])
    cover = np.clip(0.5 - sdf, 0.0, 1.0)[:, None]
    images = (bg + (fg - bg) * cover).astype(np.float32)
    if "masks" not in list_attr(params.attrs, "extras"):
        return images
    names = list_attr(params.attrs, "mask_labels") or list(SHAPES)
    label = np.array([names.index(k) + 1 if k in names else 0 for k in kind], dtype=np.int16)
    return {"image": images, "masks": np.where(sdf <= 0, label[:, None, None], 0).astype(np.int16)}


def _sdf_circle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - r


def _sdf_square(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Axis-aligned square inscribed in the circle of radius r (half side r / sqrt 2)."""
    h = r / np.sqrt(2)
    qx, qy = np.abs(u) - h, np.abs(v) - h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sdf_triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Upward equilateral triangle inscribed in the circle of radius r (image y points down)."""
    verts = [(0.0, -1.0), (np.sqrt(3) / 2, 0.5), (-np.sqrt(3) / 2, 0.5)]
    inside_dist, edge_dist = None, None
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1]):
        ax_, ay_, bx_, by_ = ax * r, ay * r, bx * r, by * r
        ex, ey = bx_ - ax_, by_ - ay_
        wx, wy = u - ax_, v - ay_
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        dist = np.hypot(wx - ex * t, wy - ey * t)
        side = ex * wy - ey * wx  # > 0 on the inner side for this vertex order in image coordinates
        edge_dist = dist if edge_dist is None else np.minimum(edge_dist, dist)
        inside = side > 0
        inside_dist = inside if inside_dist is None else inside_dist & inside
    return np.where(inside_dist, -edge_dist, edge_dist)


def _diameter_range(diameter: float | Sequence[float], canvas: int) -> tuple[float, float]:
    if int(canvas) != canvas or canvas <= 0:
        raise StimulusError(f"canvas must be a positive number of pixels, got {canvas!r}", "canvas")
    lo, hi = (diameter, diameter) if np.isscalar(diameter) else tuple(diameter)
    if not 0 < lo <= hi:
        raise StimulusError(f"diameter must be (lo, hi) with 0 < lo <= hi pixels, got {diameter!r}", "diameter")
    if hi > canvas:
        raise StimulusError(f"diameter {hi:g} px is larger than the canvas ({canvas} px): "
                            f"lower the diameter or enlarge the canvas", "diameter")
    return float(lo), float(hi)


def _rgb(color: str | Sequence[float], what: str) -> tuple[float, float, float]:
    try:
        return tuple(float(c) for c in to_rgb(color))  # type: ignore[return-value]
    except ValueError:
        raise StimulusError(f"{what} {color!r} is not a colour: use a name like 'black' or an RGB triple "
                            f"in [0, 1]", what) from None
