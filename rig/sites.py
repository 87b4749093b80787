"""Sites of a subject: which modules can be recorded, what their outputs look like, and how to pick them.

A *site* is a named module of `subject.model` (a `model.named_modules()` name) that fires on the image path.
`catalogue(subject)` finds them with hooks on two small probe forward passes (batch sizes 2 and 3) and
normalises each output to batch-first:

- tuple/list outputs keep element 0 (`nn.MultiheadAttention` returns `(out, weights)`; a site records `out`);
- 3-D outputs are token tensors; whether they are sequence-first `(T, B, D)` or batch-first `(B, T, D)` is
  *detected* (the axis whose size follows the probe batch size is the batch axis), never assumed;
  layout `tokens`, per-stimulus shape `(T, D)`, dims `(token, unit)`;
- 4-D `(B, C, H, W)` outputs: layout `conv`, per-stimulus shape `(C, H, W)`, dims `(unit, map_y, map_x)`;
- 2-D `(B, D)` (and 1-D `(B,)`, treated as `D = 1`): layout `flat`, dims `(unit,)`.

Token positions: a ViT's tokens are prefix tokens (CLS, registers) followed by the patch grid in row-major
order. The grid comes from the subject (any module with a 2-int `grid_size`, e.g. open_clip's
`model.visual.grid_size` or timm's `patch_embed.grid_size`; the prefix is then `T - rows * cols`), else from
`T - 1` being a square (one CLS token), else from `T` being a square (no prefix). Non-patch tokens get
row/col -1.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from rig.dims import LAYOUT_DIMS
from rig.errors import SiteError
from stimuli.registry import glob_match

TokenChoice = Union[str, Sequence[int]]
_PROBE_BATCHES = (2, 3)


@dataclass(frozen=True)
class SiteInfo:
    """One recordable site.

    name: module name in `model.named_modules()`; type: module class name; shape: per-stimulus output shape
    after normalisation (`(T, D)`, `(C, H, W)` or `(D,)`); layout: `tokens | conv | flat`;
    seq_first: the raw output is `(T, B, D)`; tuple_output: the module returns a tuple (element 0 is used);
    calls: how often the module fires per forward pass (only sites firing once can be recorded);
    n_prefix: non-patch tokens before the patch grid; grid: patch grid `(rows, cols)` or None.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    layout: str
    seq_first: bool = False
    tuple_output: bool = False
    calls: int = 1
    n_prefix: int = 0
    grid: tuple[int, int] | None = None

    @property
    def dims(self) -> tuple[str, ...]:
        """Per-stimulus dim names, e.g. `("token", "unit")`."""
        return LAYOUT_DIMS[self.layout]

    @property
    def n_units(self) -> int:
        return self.shape[-1] if self.layout == "tokens" else self.shape[0]

    def token_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Patch-grid `(row, col)` of every token, int arrays of shape `(T,)`, -1 for non-patch tokens."""
        if self.layout != "tokens":
            raise SiteError(f"site {self.name!r} has layout {self.layout!r}, not tokens")
        t = self.shape[0]
        row = np.full(t, -1, dtype=np.int64)
        col = np.full(t, -1, dtype=np.int64)
        if self.grid is not None:
            k = np.arange(t - self.n_prefix)
            row[self.n_prefix:] = k // self.grid[1]
            col[self.n_prefix:] = k % self.grid[1]
        return row, col


def primary_output(output: Any) -> torch.Tensor | None:
    """The tensor a site records from a module output: the output itself, or element 0 of a tuple/list."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, torch.Tensor) else None


def batch_first(x: torch.Tensor, info: SiteInfo) -> torch.Tensor:
    """Normalise a raw site output to batch-first: `(B, T, D)`, `(B, C, H, W)` or `(B, D)`."""
    if info.seq_first:
        return x.transpose(0, 1)
    if x.dim() == 1:
        return x[:, None]
    return x


def catalogue(subject: Any, image_size: tuple[int, int] | None = None) -> list[SiteInfo]:
    """Every module of `subject.model` that produces a tensor on the image path, in model (registration) order.

    Two probe forward passes (batch sizes 2 and 3, seeded random images of `image_size` `(H, W)` pixels,
    default `subject.input_size` square) with hooks on every module; modules that never fire (e.g. a text
    tower, `MultiheadAttention.out_proj`) are left out, and so are outputs whose batch axis cannot be found or
    whose rank is not 1-4. Pass the stimuli's size when the subject does not resize (shapes depend on it).
    The catalogue is kept on the subject (per image size): a network's layout does not change.
    """
    height, width = image_size if image_size is not None else (subject.input_size, subject.input_size)
    known = subject.__dict__.setdefault("_site_catalogues", {})
    if (height, width) not in known:
        known[(height, width)] = _probe_catalogue(subject, height, width)
    return list(known[(height, width)])


def _probe_catalogue(subject: Any, height: int, width: int) -> list[SiteInfo]:
    model: nn.Module = subject.model
    names = [n for n, _ in model.named_modules() if n]
    shapes: dict[int, dict[str, list[tuple[tuple[int, ...], bool]]]] = {}
    for b in _PROBE_BATCHES:
        seen: dict[str, list[tuple[tuple[int, ...], bool]]] = {}
        handles = [m.register_forward_hook(_probe_hook(n, seen)) for n, m in model.named_modules() if n]
        try:
            g = torch.Generator().manual_seed(b)
            images = torch.rand(b, 3, height, width, generator=g)
            subject.forward(images.to(subject.device))
        finally:
            for h in handles:
                h.remove()
        shapes[b] = seen
    grid = _subject_grid(model)
    modules = dict(model.named_modules())
    infos = []
    for name in names:
        a, b = shapes[_PROBE_BATCHES[0]].get(name), shapes[_PROBE_BATCHES[1]].get(name)
        if not a or not b or len(a) != len(b):
            continue
        info = _describe(name, type(modules[name]).__name__, a[0][0], b[0][0], a[0][1], len(a), grid)
        if info is not None:
            infos.append(info)
    return infos


def _probe_hook(name: str, seen: dict):
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        x = primary_output(output)
        if x is not None:
            seen.setdefault(name, []).append((tuple(x.shape), isinstance(output, (tuple, list))))
    return hook


def _describe(name: str, type_name: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...], is_tuple: bool,
              calls: int, grid: tuple[int, int] | None) -> SiteInfo | None:
    """Classify one module from its output shapes at the two probe batch sizes; None if not recordable."""
    ba, bb = _PROBE_BATCHES
    if len(shape_a) != len(shape_b) or not 1 <= len(shape_a) <= 4:
        return None
    moving = [i for i, (p, q) in enumerate(zip(shape_a, shape_b)) if p != q]
    if len(moving) != 1 or shape_a[moving[0]] != ba or shape_b[moving[0]] != bb:
        return None
    axis, ndim = moving[0], len(shape_a)
    seq_first = ndim == 3 and axis == 1
    if axis != 0 and not seq_first:
        return None
    per = tuple(s for i, s in enumerate(shape_a) if i != axis) or (1,)
    layout = {1: "flat", 2: "flat", 3: "tokens", 4: "conv"}[ndim]
    n_prefix, site_grid = 0, None
    if layout == "tokens":
        t = per[0]
        if grid is not None and grid[0] * grid[1] <= t:
            site_grid, n_prefix = grid, t - grid[0] * grid[1]
        elif t > 1 and round((t - 1) ** 0.5) ** 2 == t - 1:
            side = round((t - 1) ** 0.5)
            site_grid, n_prefix = (side, side), 1
        elif round(t ** 0.5) ** 2 == t:
            site_grid = (round(t ** 0.5),) * 2
    return SiteInfo(name, type_name, per, layout, seq_first, is_tuple, calls, n_prefix, site_grid)


def _subject_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid `(rows, cols)` of a ViT: the first module attribute `grid_size` holding two ints."""
    for m in model.modules():
        g = getattr(m, "grid_size", None)
        if isinstance(g, (tuple, list)) and len(g) == 2 and all(isinstance(v, (int, np.integer)) for v in g):
            return int(g[0]), int(g[1])
    return None


def select_sites(subject: Any, patterns: Any, infos: list[SiteInfo] | None = None) -> list[str]:
    """Site names matching any of the fnmatch `patterns`, in model order (each name once).

    `patterns`: a glob, a list of globs, or a selection by module type `{"types": ["Conv2d", "LayerNorm"],
    "names": [globs, default "*"]}` (a protocol's `sites = { types = [...] }`: every recordable site whose module
    class is one of `types` and whose name matches one of `names`). A pattern or type that matches no recordable
    site raises `SiteError` naming the nearest. `infos` (from `catalogue`) avoids a second probe.
    """
    if hasattr(patterns, "model_dump"):
        patterns = patterns.model_dump()
    if isinstance(patterns, dict):
        return _select_by_type(subject, patterns, infos)
    if isinstance(patterns, str):
        patterns = [patterns]
    names = [i.name for i in (infos if infos is not None else catalogue(subject))]
    for pattern in patterns:
        if not glob_match(names, pattern):
            source, arch = getattr(subject, "source", None), getattr(subject, "arch", None)
            model = f"{source}:{arch}" if arch else source if source not in (None, "factory") else "PROTOCOL"
            raise SiteError(f"site pattern {pattern!r} matches no site; nearest: {', '.join(_nearest(pattern, names))}"
                            f" (list them with `rig sites {model}`)")
    return glob_match(names, patterns)


def _select_by_type(subject: Any, selection: dict, infos: list[SiteInfo] | None) -> list[str]:
    infos = infos if infos is not None else catalogue(subject)
    unknown = set(selection) - {"names", "types"}
    if unknown:
        raise SiteError(f"a site selection takes names and types, not {sorted(unknown)}")
    names = select_sites(subject, selection.get("names") or ["*"], infos)
    types = list(selection.get("types") or [])
    present = sorted({i.type for i in infos})
    for t in types:
        if t not in present:
            near = difflib.get_close_matches(t, present, n=3)
            raise SiteError(f"no recordable site is a {t!r} module{'; did you mean ' + ', '.join(near) + '?' if near else ''}"
                            f" (module types here: {', '.join(present)})")
    chosen = [i.name for i in infos if i.name in set(names) and (not types or i.type in types)]
    if not chosen:
        raise SiteError(f"no site matches names {selection.get('names')} with types {types}")
    return chosen


def _nearest(pattern: str, names: list[str], n: int = 3) -> list[str]:
    """Closest site names to a pattern (difflib), comparing against the pattern with globs made concrete."""
    concrete = pattern.replace("*", "0").replace("?", "0")
    near = difflib.get_close_matches(concrete, names, n=n, cutoff=0.0)
    return near or names[:n]


def token_indices(info: SiteInfo, tokens: TokenChoice) -> np.ndarray | None:
    """Indices of the tokens to record at a token site (`cls | patches | all | [indices]`); None = all.

    `cls` is token 0 (the first prefix token); it needs a site with a prefix token. Negative indices count
    from the end. Non-token sites ignore the choice (returns None).
    """
    if info.layout != "tokens":
        return None
    t = info.shape[0]
    if isinstance(tokens, str):
        if tokens == "all":
            return None
        if tokens == "cls":
            if info.n_prefix < 1:
                raise SiteError(f"site {info.name!r} has no CLS token (its {t} tokens are all patches); "
                                "use tokens='all', 'patches' or a list of indices")
            return np.array([0])
        if tokens == "patches":
            if info.grid is None:
                raise SiteError(f"site {info.name!r} has no known patch grid; use tokens='all' or a list of indices")
            return np.arange(info.n_prefix, t)
        raise SiteError(f"tokens={tokens!r} is not one of cls, patches, all, or a list of token indices")
    idx = np.asarray(list(tokens), dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0 or np.any(idx >= t) or np.any(idx < -t):
        raise SiteError(f"token indices {list(tokens)} are out of range for site {info.name!r} with {t} tokens")
    return idx % t


def format_catalogue(infos: Sequence[SiteInfo]) -> str:
    """A plain-text table of sites: name, module type, per-stimulus output shape, layout (for `rig sites`)."""
    rows = [("name", "type", "output shape", "layout")]
    for i in infos:
        shape = "(" + ", ".join(str(s) for s in i.shape) + ")"
        layout = i.layout + (" (seq-first)" if i.seq_first else "") + (f" x{i.calls} calls" if i.calls > 1 else "")
        rows.append((i.name, i.type, shape, layout))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
