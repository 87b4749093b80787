"""A stimulus set: a table of parameters (one row per stimulus) plus a pure renderer.

Images are a function of the parameters alone, so a set is stored as its parameter table (`stimuli.nc`) and
rendered again in batches whenever needed; a large set is never held in memory as images.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterator

import numpy as np
import xarray as xr

#: renderer name -> function(params: xr.Dataset restricted to some stimuli) -> (B, 3, H, W) float32 in [0, 1]
RENDERERS: dict[str, Callable[[xr.Dataset], np.ndarray]] = {}


class StimulusError(ValueError):
    """Stimulus parameters that cannot produce a valid stimulus set (the message says which and why).

    `param` names the offending generator argument, when there is one.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def register_renderer(name: str) -> Callable:
    """Decorator: make a render function available to `StimulusSet` by name (also after loading from disk)."""

    def deco(fn: Callable[[xr.Dataset], np.ndarray]) -> Callable[[xr.Dataset], np.ndarray]:
        RENDERERS[name] = fn
        return fn

    return deco


class StimulusSet:
    """Parameters of `n` stimuli (`params`, an `xr.Dataset` along dim `stimulus`) and how to render them.

    `params.attrs` hold the set-wide settings: `generator`, `renderer`, `canvas` (pixels), `seed`, colours.
    Positions are in the image frame, in pixels: x to the right, y downward, origin at the canvas's top-left
    corner, pixel (row i, column j) covering [j, j+1) x [i, i+1).
    """

    def __init__(self, params: xr.Dataset):
        if "stimulus" not in params.dims:
            raise StimulusError("a stimulus parameter table needs a 'stimulus' dimension")
        renderer = params.attrs.get("renderer")
        if renderer not in RENDERERS:
            raise StimulusError(f"unknown stimulus renderer {renderer!r}; known: {sorted(RENDERERS)}")
        self.params = params

    def __len__(self) -> int:
        return self.params.sizes["stimulus"]

    def __repr__(self) -> str:
        a = self.params.attrs
        return f"StimulusSet({a.get('generator')}, n={len(self)}, canvas={a.get('canvas')}, seed={a.get('seed')})"

    @property
    def canvas(self) -> int:
        """Side of the square canvas in pixels."""
        return int(self.params.attrs["canvas"])

    def render(self, indices: np.ndarray | slice | list[int] | None = None) -> np.ndarray:
        """Images of the chosen stimuli as float32 `(B, 3, canvas, canvas)` in [0, 1] (all when None)."""
        sel = self.params if indices is None else self.params.isel(stimulus=indices)
        return RENDERERS[self.params.attrs["renderer"]](sel)

    def batches(self, batch_size: int = 32, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield `(indices, images)` for consecutive batches of stimuli in `[start, stop)`."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise StimulusError(f"batch_size must be a positive integer, got {batch_size!r}", "batch_size")
        stop = len(self) if stop is None else min(stop, len(self))
        for lo in range(start, stop, batch_size):
            idx = np.arange(lo, min(lo + batch_size, stop))
            yield idx, self.render(idx)

    def content_hash(self) -> str:
        """sha256 of the parameter table and set-wide settings: equal hashes mean equal images."""
        h = hashlib.sha256()
        h.update(json.dumps(_jsonable(self.params.attrs), sort_keys=True).encode())
        for name in sorted(map(str, self.params.variables)):
            values = np.asarray(self.params[name].values)
            h.update(name.encode())
            h.update(str(values.dtype).encode() if values.dtype.kind != "U" else b"str")
            h.update(values.astype(str).tobytes() if values.dtype.kind in "OU" else values.tobytes())
        return h.hexdigest()

    def to_netcdf(self, path: str | os.PathLike) -> None:
        """Write the parameter table (not the images) to netCDF."""
        self.params.to_netcdf(path)

    @classmethod
    def from_netcdf(cls, path: str | os.PathLike) -> "StimulusSet":
        """Read a set written by `to_netcdf` (the images are rendered again, identically, on demand)."""
        with xr.open_dataset(path) as ds:
            params = ds.load()
        params.attrs = {k: _from_attr(v) for k, v in params.attrs.items()}
        return cls(params)


def _jsonable(attrs: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in attrs.items()}


def _from_attr(value):
    """netCDF returns list attributes as numpy arrays and ints as numpy scalars; give plain Python back."""
    if isinstance(value, np.ndarray):
        return [v.item() for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
