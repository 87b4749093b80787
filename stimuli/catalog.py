"""The stimulus generators by name: `generators` (a `Registry`), `register_generator`, `list_generators`,
`is_generator` and `make`, as protocol files use them. Plugins: entry point group `rig.generators`."""
from __future__ import annotations

from typing import Any, Callable

from .registry import Registry, UnknownNameError

#: generator name (as written in protocol files) -> function(**params) -> StimulusSet
generators: Registry[Callable[..., Any]] = Registry("stimulus generator", "rig.generators", builtin=("stimuli.geometry", "stimuli.scenes",
                                                                                                     "stimuli.folder"))
GENERATORS = generators  # the name of earlier versions


def register_generator(name: str, fn: Callable[..., Any] | None = None) -> Callable:
    """Register `fn(**params) -> StimulusSet` as the generator `name` (usable as a decorator). Its keyword
    arguments are the generator's protocol parameters (checked by name before a session starts)."""
    return generators.register(name, fn)


def list_generators(pattern: str | None = None) -> list[str]:
    """Names of the registered generators (optionally matching a glob)."""
    return generators.names(pattern)


def is_generator(name: str) -> bool:
    return name in generators


def make(generator: str, **params: Any) -> Any:
    """Build a stimulus set by generator name, e.g. `make("circles", n=300, seed=1)`."""
    from .base import StimulusError

    try:
        fn = generators.lookup(generator)
    except UnknownNameError as e:
        raise StimulusError(str(e), "generator") from None
    return fn(**params)
