"""Any image folder as a stimulus set: one stimulus per image file, centre-cropped to a square and resized to
`canvas`. The files' bytes enter the set's content hash, so a changed image changes the session's stimulus hash.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from .base import StimulusError, StimulusSet, register_renderer
from .catalog import register_generator

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@register_generator("folder")
def folder(path: str = ".", canvas: int = 224, pattern: str = "*", recursive: bool = False,
           n: int | None = None, seed: int = 0, extensions: Sequence[str] = EXTENSIONS) -> StimulusSet:
    """The images of a folder (sorted by relative path) as a stimulus set.

    Args:
        path: the folder.
        canvas: side of the square images, pixels.
        pattern: a glob over file names (e.g. "*.jpg").
        recursive: include sub-folders.
        n: keep a random subset of n images (seeded by `seed`, kept in sorted order); None = all.
        extensions: file endings counted as images (case-insensitive).

    Returns:
        A `StimulusSet` whose `params` has the coordinate `file` (path relative to the folder).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise StimulusError(f"image folder {root} not found", "path")
    if int(canvas) != canvas or canvas < 8:
        raise StimulusError(f"canvas must be an integer >= 8 pixels, got {canvas!r}", "canvas")
    found = (root.rglob(pattern) if recursive else root.glob(pattern))
    ext = tuple(e.lower() for e in extensions)
    files = sorted(str(p.relative_to(root)) for p in found if p.is_file() and p.suffix.lower() in ext)
    if not files:
        raise StimulusError(f"no images matching {pattern!r} ({', '.join(ext)}) in {root}", "path")
    if n is not None:
        if int(n) != n or n < 1:
            raise StimulusError(f"n must be a positive integer or None, got {n!r}", "n")
        if n > len(files):
            raise StimulusError(f"n = {n} but {root} has only {len(files)} images", "n")
        keep = np.sort(np.random.default_rng(seed).choice(len(files), int(n), replace=False))
        files = [files[i] for i in keep]
    params = xr.Dataset(coords={"stimulus": np.arange(len(files)), "file": ("stimulus", np.array(files))},
                        attrs={"generator": "folder", "renderer": "folder", "canvas": int(canvas), "seed": int(seed),
                               "root": str(root.resolve()), "files": "file", "pattern": pattern})
    return StimulusSet(params)


@register_renderer("folder")
def render_folder(params: xr.Dataset) -> np.ndarray:
    """The images `(B, 3, canvas, canvas)` float32 in [0, 1]."""
    from .scenes import _load_square

    root = Path(str(params.attrs["root"]))
    canvas = int(params.attrs["canvas"])
    return np.stack([_load_square(root / str(f), canvas) for f in params["file"].values])


class _CallableModule(type(np)):
    """This module is also the function `folder` (`stimuli.folder(...)`), as `stimuli.scenes` is."""

    def __call__(self, *args, **kwargs) -> StimulusSet:
        return folder(*args, **kwargs)


import sys  # noqa: E402

sys.modules[__name__].__class__ = _CallableModule
