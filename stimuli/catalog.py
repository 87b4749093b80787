"""The stimulus generators by name: `generators` (a `Registry`), `register_generator`, `list_generators`,
`is_generator` and `make`, as protocol files use them. Plugins: entry point group `rig.generators`."""
from __future__ import annotations

from typing import Any, Callable

from .registry import Registry, UnknownNameError

#: generator name (as written in protocol files) -> function(**params) -> StimulusSet
generators: Registry[Callable[..., Any]] = Registry("stimulus generator", "rig.generators", builtin=("stimuli.geometry", "stimuli.scenes",
                                                                                                     "stimuli.folder", "stimuli.noise"))
GENERATORS = generators  # the name of earlier versions


def register_generator(name: str, fn: Callable[..., Any] | None = None, *,
                       check: Callable[..., Any] | None = None) -> Callable:
    """Register `fn(**params) -> StimulusSet` as the generator `name` (usable as a decorator). Its keyword
    arguments are the generator's protocol parameters (checked by name before a session starts).

    `rig validate` checks a protocol's stimulus parameters by building the parameter table, which is cheap for
    most generators. A generator whose table is expensive to build (e.g. a search over candidate images) gives
    `check(**params)`: it raises `StimulusError` for bad parameters without building anything."""
    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        if check is not None:
            f.check = check  # type: ignore[attr-defined]
        return generators.register(name, f)

    return deco(fn) if fn is not None else deco


def check_params(generator: str, **params: Any) -> None:
    """Raise `StimulusError` if `params` are not valid for `generator`: its own cheap `check` where it has
    one, else by building the set's parameter table (images are never rendered)."""
    from .base import StimulusError

    try:
        fn = generators.lookup(generator)
    except UnknownNameError as e:
        raise StimulusError(str(e), "generator") from None
    getattr(fn, "check", fn)(**params)


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
