"""Stimulus generators: reproducible, parametric stimulus sets rendered in batches.

Each generator returns a `StimulusSet` (a parameter table `params: xr.Dataset` along dim `stimulus`, plus a
pure renderer). `make(name, **params)` builds one by generator name, as protocol files do.
"""
from __future__ import annotations

from typing import Callable

from .base import RENDERERS, StimulusError, StimulusSet, register_renderer
from .figures import contact_sheet, overview
from .shapes import circles, shapes

#: generator name (as written in protocol files) -> function returning a StimulusSet
GENERATORS: dict[str, Callable[..., StimulusSet]] = {"circles": circles, "shapes": shapes}


def make(generator: str, **params) -> StimulusSet:
    """Build a stimulus set by generator name, e.g. `make("circles", n=300, seed=1)`."""
    if generator not in GENERATORS:
        import difflib

        close = difflib.get_close_matches(generator, GENERATORS, n=3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise StimulusError(f"unknown stimulus generator {generator!r}{hint} (known: {', '.join(GENERATORS)})")
    return GENERATORS[generator](**params)


__all__ = ["GENERATORS", "RENDERERS", "StimulusError", "StimulusSet", "circles", "contact_sheet", "make",
           "overview", "register_renderer", "shapes"]
