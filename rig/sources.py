"""Subject sources by name: where a network comes from (`open_clip`, `timm`, `torchvision`, `factory`,
`phantom`, or a source registered by a user's package). Torch-free, so that protocols validate fast: a
built-in builder is named by its import path and imported only when a subject is built.

    from rig.sources import register_source
    register_source("mylab", "mylab.models:build_subject", needs_arch=True)   # or a callable

Plugins register from their own package through the entry point group `rig.sources` (a module whose import
registers, or a builder callable registered under the entry point's name).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from stimuli.registry import Registry

Builder = Callable[[Any], Any]  # SubjectRequest -> Subject (see rig.subjects)


@dataclass(frozen=True)
class Source:
    """A subject source: `build(request) -> Subject` (a callable, or `"module:callable"` imported when first
    used); `needs_arch`: a protocol must name `arch`; `description` for listings and `rig schema`."""

    build: Builder | str
    needs_arch: bool = False
    description: str = ""

    def builder(self) -> Builder:
        if callable(self.build):
            return self.build
        module, _, attr = str(self.build).partition(":")
        return getattr(importlib.import_module(module), attr)


def _adopt(name: str, obj: Any) -> None:
    sources.register(name, obj if isinstance(obj, Source) else Source(obj))


sources: Registry[Source] = Registry("subject source", "rig.sources", adopt=_adopt)
SOURCES = sources  # the name of earlier versions


def register_source(name: str, builder: Builder | str, *, needs_arch: bool = False, description: str = "") -> Source:
    """Make `load_subject(source=name, ...)` (and `[subject] source = name` in protocols) call
    `builder(request) -> Subject`; `needs_arch`: the source needs a model name (`arch`)."""
    return sources.register(name, Source(builder, needs_arch, description), replace=True)


def list_sources(pattern: str | None = None) -> list[str]:
    """Names of the registered subject sources (optionally matching a glob)."""
    return sources.names(pattern)


def is_source(name: str) -> bool:
    return name in sources


register_source("open_clip", "rig.subjects:build_open_clip", needs_arch=True, description="OpenCLIP models (ViT, RN)")
register_source("timm", "rig.subjects:build_timm", needs_arch=True, description="timm image models")
register_source("torchvision", "rig.subjects:build_torchvision", needs_arch=True,
                description="torchvision classification models")
register_source("factory", "rig.subjects:build_factory",
                description="your own torch module: factory = 'package.module:callable'")
register_source("phantom", "rig.subjects:build_phantom",
                description="the planted-truth phantom (place, grid, border and untuned cells)")
register_source("planted_rsa", "rig.planted_rsa:build",
                description="planted-truth subjects of the scenes study: encode only saliency, only semantics, or both")
register_source("segmentation_phantom", "rig.segmentation_phantom:build_subject",
                description="planted figure-ground and shape-category token sites (the spectral study's phantom)")
register_source("rf_phantom", "rig.rf_phantom:build_subject",
                description="planted receptive fields: Gaussian ON/OFF units of known centre and size, some shifting "
                            "towards the salient object")
