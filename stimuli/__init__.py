"""Stimulus generators: reproducible, parametric stimulus sets rendered in batches.

Each generator returns a `StimulusSet` (a parameter table `params: xr.Dataset` along dim `stimulus`, plus a
pure renderer). Generators are registered by name (`register_generator`, `list_generators`, `is_generator`;
plugins: entry point group `rig.generators`); `make(name, **params)` builds a set by name, as protocol files do.

Names are imported on first use, so that `import stimuli.registry` (used by the archive CLI) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StimulusSet": "base", "StimulusError": "base", "renderers": "base", "RENDERERS": "base",
    "register_renderer": "base", "file_sha256": "base",
    "circles": "geometry", "shapes": "geometry", "scenes": "scenes", "folder": "folder",
    "sparse_noise": "noise", "white_noise": "noise",
    "StimulusFigure": "figures", "contact_sheet": "figures", "overview": "figures", "figure_types": "figures",
    "figures_for": "figures", "list_figures": "figures", "register_figure": "figures",
    "generators": "catalog", "GENERATORS": "catalog", "register_generator": "catalog", "list_generators": "catalog",
    "is_generator": "catalog", "make": "catalog",
    "Registry": "registry", "UnknownNameError": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'stimuli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
