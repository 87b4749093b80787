"""Registries: named tables of plugins, all in one style (after timm's `register_model` / `list_models` /
`is_model`).

A `Registry` maps names to objects (stimulus generators, renderers, figures here; steps and subject sources in
`rig`). Objects are registered in code (`registry.register(name, obj)`, or as a decorator) or by an installed
package through a Python entry point of the registry's group (`rig.generators`, `rig.renderers`,
`rig.figures`, `rig.steps`, `rig.sources`). Entry points are loaded the first time a registry is looked up or
listed, so a user's package works from a protocol file without any import in user code:

    # pyproject.toml of the user's package
    [project.entry-points."rig.generators"]
    bars = "mypackage.stimuli"             # a module whose import registers its generators

An entry point naming a module is imported (its decorators register); one naming an object registers that
object under the entry point's name (or through the registry's `adopt` function, e.g. a step class is
registered under its own type name). This module has no dependencies, so `stimuli`, `analyses` and `rig` can
all build on it.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import types
import warnings
from importlib import metadata
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name that is not in a registry; the message lists the close and the known names."""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object, with entry-point plugins of group `group` loaded on first use.

    `kind` names what is registered, for messages ("stimulus generator"). `adopt(name, obj)` registers an
    object loaded from an entry point (default: `register(name, obj)`). The registry is a read-only
    `Mapping` (`name in registry`, `registry[name]`, iteration in registration order); `version` grows with
    every change, so derived objects (e.g. the protocol schema) know when to rebuild. `builtin` names the
    modules that register the built-in entries; they are imported on first use, like the plugins, so that
    importing a registry stays cheap.
    """

    def __init__(self, kind: str, group: str | None = None, adopt: Callable[[str, Any], Any] | None = None,
                 builtin: tuple[str, ...] = ()):
        self.kind, self.group = kind, group
        self._adopt = adopt
        self._builtin = builtin
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False
        self.version = 0

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    # -- registering ----------------------------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Any:
        """Register `obj` as `name`; without `obj`, a decorator that registers what it decorates.

        Registering another object under a taken name raises `ValueError` unless `replace=True`.
        """
        if obj is None:
            return lambda target: self.register(name, target, replace=replace)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and self._entries[name] is not obj and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); pass "
                             "replace=True to replace it")
        self._entries[name] = obj
        self.version += 1
        return obj

    def unregister(self, name: str) -> T:
        """Remove `name` and return what was registered (e.g. to undo a test's registration)."""
        obj = self._entries.pop(name)
        self.version += 1
        return obj

    # -- looking up -----------------------------------------------------------------------------------------
    def get(self, name: str, default: Any = None) -> T | Any:  # type: ignore[override]
        """The object registered as `name`, or `default`."""
        self.load_plugins()
        return self._entries.get(name, default)

    def lookup(self, name: str) -> T:
        """The object registered as `name`; an unknown name raises `UnknownNameError` with did-you-mean."""
        self.load_plugins()
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(str(name), list(self._entries))} "
                                   f"(known: {', '.join(self._entries) or 'none'})")
        return self._entries[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, optionally only those matching the glob `pattern`."""
        self.load_plugins()
        return list(self._entries) if pattern is None else glob_match(self._entries, pattern)

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    # -- plugins --------------------------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Load the entry points of this registry's group (once). A plugin that fails to load is reported as a
        warning and skipped: one broken package must not stop every session."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for module in self._builtin:
            importlib.import_module(module)
        for ep in (metadata.entry_points(group=self.group) if self.group else ()):
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001  (any import error of a third-party package)
                warnings.warn(f"{self.kind} plugin {ep.name!r} ({ep.value}, entry point group {self.group}) failed "
                              f"to load: {type(e).__name__}: {e}", stacklevel=2)
                continue
            if isinstance(obj, types.ModuleType) or any(v is obj for v in self._entries.values()):
                continue  # a module registers on import; an object may have registered itself
            try:
                self._adopt(ep.name, obj) if self._adopt is not None else self.register(ep.name, obj)
            except (TypeError, ValueError) as e:
                warnings.warn(f"{self.kind} plugin {ep.name!r} ({ep.value}) was not registered: {e}", stacklevel=2)


def glob_match(names: Iterable[str], patterns: str | Iterable[str]) -> list[str]:
    """The names matching any of the globs `patterns` (fnmatch syntax: `*`, `?`, `[...]`; case-sensitive on
    every platform), in the order of `names`, each once. The one glob matcher of the rig (sites, modules,
    registries, archive filters)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return [n for n in dict.fromkeys(names) if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def did_you_mean(word: str, choices: list[str]) -> str:
    """`"; did you mean 'x'?"` for the closest of `choices` (difflib), or `""`."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
