"""A stimulus set: a table of parameters (one row per stimulus) plus a pure renderer.

Images are a function of the parameters alone (and, for sets made from image files, of those files), so a set
is stored as its parameter table (`stimuli.nc`) and rendered again in batches whenever needed; a large set is
never held in memory as images. A renderer may also give per-stimulus *extras* beside the image (e.g. the
ground-truth object masks of a scene); they are rendered with the images, on demand, by the same rule.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import xarray as xr

from .registry import Registry

#: Renderer = function(params: xr.Dataset of some stimuli) -> images `(B, 3, H, W)` float32 in [0, 1], or a
#: mapping `{"image": images, <extra name>: (B, ...) array, ...}` for sets that declare extras.
Renderer = Callable[[xr.Dataset], "np.ndarray | Mapping[str, np.ndarray]"]

#: renderer name (a set's `params.attrs["renderer"]`) -> render function; plugins: entry point group
#: `rig.renderers` (or register the renderer in the module that registers the generator)
renderers: Registry[Renderer] = Registry("stimulus renderer", "rig.renderers", builtin=("stimuli.geometry", "stimuli.scenes",
                                                                                       "stimuli.folder", "stimuli.noise"))
RENDERERS = renderers  # the name of earlier versions


class StimulusError(ValueError):
    """Stimulus parameters that cannot produce a valid stimulus set (the message says which and why).

    `param` names the offending generator argument, when there is one.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def register_renderer(name: str) -> Callable[[Renderer], Renderer]:
    """Decorator: make a render function available to `StimulusSet` by name (also after loading from disk)."""
    return renderers.register(name)


class StimulusSet:
    """Parameters of `n` stimuli (`params`, an `xr.Dataset` along dim `stimulus`) and how to render them.

    `params.attrs` hold the set-wide settings: `generator`, `renderer`, `canvas` (pixels), `seed`, colours, and
    optionally `extras` (names of the per-stimulus arrays the renderer gives beside the image, as a JSON list),
    `files` (the parameter variable holding paths of image files the set is rendered from, relative to the
    attribute `root` when that is set) and `figures` (the stimulus figures the generator asks for, JSON list).
    Positions are in the image frame, in pixels: x to the right, y downward, origin at the canvas's top-left
    corner, pixel (row i, column j) covering [j, j+1) x [i, i+1).
    """

    def __init__(self, params: xr.Dataset):
        if "stimulus" not in params.dims:
            raise StimulusError("a stimulus parameter table needs a 'stimulus' dimension")
        renderer = params.attrs.get("renderer")
        if renderer not in renderers:
            raise StimulusError(f"unknown stimulus renderer {renderer!r}; known: {', '.join(renderers)} (is the "
                                "package that made this set installed?)")
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

    @property
    def extras(self) -> list[str]:
        """Names of the per-stimulus arrays rendered beside the images (e.g. `["mask"]`); empty for most sets."""
        return list_attr(self.params.attrs, "extras")

    @property
    def figures(self) -> list[str] | None:
        """The stimulus figures the generator asked for (names in `stimuli.figure_types`), or None: then every
        registered figure whose parameters the set has."""
        return list_attr(self.params.attrs, "figures") if "figures" in self.params.attrs else None

    def render(self, indices: np.ndarray | slice | list[int] | None = None) -> np.ndarray:
        """Images of the chosen stimuli as float32 `(B, 3, canvas, canvas)` in [0, 1] (all when None)."""
        return self.render_with_extras(indices)[0]

    def render_extras(self, indices: np.ndarray | slice | list[int] | None = None) -> dict[str, np.ndarray]:
        """The extras of the chosen stimuli: name -> array `(B, ...)` (e.g. `mask` `(B, H, W)` int labels)."""
        return self.render_with_extras(indices)[1]

    def render_with_extras(self, indices: np.ndarray | slice | list[int] | None = None
                           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`(images, extras)` of the chosen stimuli, from one call of the renderer."""
        sel = self.params if indices is None else self.params.isel(stimulus=indices)
        out = renderers.lookup(self.params.attrs["renderer"])(sel)
        if isinstance(out, Mapping):
            extras = {k: np.asarray(v) for k, v in out.items() if k != "image"}
            return np.asarray(out["image"], dtype=np.float32), extras
        return out, {}

    def batches(self, batch_size: int = 32, start: int = 0, stop: int | None = None, extras: bool = False
                ) -> Iterator[tuple[np.ndarray, np.ndarray]] | Iterator[tuple[np.ndarray, np.ndarray, dict]]:
        """Yield `(indices, images)` for consecutive batches of stimuli in `[start, stop)`; with `extras=True`,
        `(indices, images, extras)`."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise StimulusError(f"batch_size must be a positive integer, got {batch_size!r}", "batch_size")
        stop = len(self) if stop is None else min(stop, len(self))
        for lo in range(start, stop, batch_size):
            idx = np.arange(lo, min(lo + batch_size, stop))
            if extras:
                yield (idx, *self.render_with_extras(idx))
            else:
                yield idx, self.render(idx)

    @property
    def files(self) -> list[Path]:
        """The image files the set is rendered from (empty for procedural sets)."""
        var = self.params.attrs.get("files")
        if not var:
            return []
        root = Path(str(self.params.attrs.get("root", "")))
        return [root / str(f) for f in self.params[var].values]

    def content_hash(self) -> str:
        """sha256 of the parameter table, the set-wide settings and the bytes of any image files it renders
        from: equal hashes mean equal images."""
        h = hashlib.sha256()
        h.update(json.dumps(_jsonable(self.params.attrs), sort_keys=True).encode())
        for name in sorted(map(str, self.params.variables)):
            values = np.asarray(self.params[name].values)
            h.update(name.encode())
            h.update(str(values.dtype).encode() if values.dtype.kind != "U" else b"str")
            h.update(values.astype(str).tobytes() if values.dtype.kind in "OU" else values.tobytes())
        for path in self.files:
            try:
                h.update(file_sha256(path).encode())
            except OSError as e:
                raise StimulusError(f"stimulus image {path} cannot be read ({e.strerror}); the set renders from it",
                                    "files") from None
        return h.hexdigest()

    def subset(self, indices: np.ndarray | slice | list[int]) -> "StimulusSet":
        """The stimuli at `indices` as a set of their own (same renderer and settings)."""
        return type(self)(self.params.isel(stimulus=indices))

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


def list_attr(attrs: Mapping[str, Any], name: str) -> list[str]:
    """A list-of-names attribute stored as JSON text (netCDF keeps it as one string), or []."""
    value = attrs.get(name)
    if value is None or value == "":
        return []
    return [str(v) for v in (json.loads(value) if isinstance(value, str) else value)]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(attrs: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in attrs.items()}


def _from_attr(value):
    """netCDF returns list attributes as numpy arrays and ints as numpy scalars; give plain Python back."""
    if isinstance(value, np.ndarray):
        return [v.item() for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
