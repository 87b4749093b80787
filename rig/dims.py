"""The data contract: dimension names, their canonical form, what a recorded site looks like, and the per-unit
table that every per-unit result uses.

Dimensions (as a user receives them, whatever the storage):

| dim | meaning |
| --- | --- |
| `stimulus` | one stimulus of the set; its parameters (`x`, `y`, `diameter`, ...) are coordinates along it |
| `unit` | one channel of a site's output |
| `token` | one token of a transformer site (`token_row`, `token_col`: patch-grid position, -1 for CLS / registers) |
| `map_y`, `map_x` | the spatial position in a convolutional site's feature map (`x`/`y` are stimulus coordinates) |
| `y_bin`, `x_bin` | the position bins of a ratemap (bin centres in pixels as coordinates) |
| `cell` | one recorded value per stimulus (a unit, at a token or map position where the site has them) in a per-unit table |

A recorded site is `(stimulus, unit)` (flat sites, and `tokens = "cls"`), `(stimulus, token, unit)` or
`(stimulus, unit, map_y, map_x)`. A netCDF file has one namespace of dimensions, so when the sites of one file
differ in a dim's size, storage names that dim with its size (`unit_512`, `map_y_7`, and coordinates
`token_row_50`); `canonical` maps such names back, and `Recording` (what `rig.open_session(...).recording` and
`open_recording` return) gives every site under its canonical names, so code written for one site works for
the next. This module imports no torch.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Mapping, TypeVar

import numpy as np
import xarray as xr

from .errors import RigError

STIMULUS, UNIT, TOKEN, MAP_Y, MAP_X = "stimulus", "unit", "token", "map_y", "map_x"
Y_BIN, X_BIN, CELL = "y_bin", "x_bin", "cell"
#: per-stimulus dims of a site by its layout (see `rig.sites.SiteInfo.layout`)
LAYOUT_DIMS = {"tokens": (TOKEN, UNIT), "conv": (UNIT, MAP_Y, MAP_X), "flat": (UNIT,)}
#: dims (and the coordinates along them) whose storage name may carry a size suffix
SIZED = (UNIT, TOKEN, MAP_Y, MAP_X, "token_row", "token_col")
#: coordinates a per-unit table keeps to say which unit a cell is
UNIT_COORDS = (UNIT, TOKEN, "token_row", "token_col", MAP_Y, MAP_X)
_SUFFIXED = re.compile(rf"({'|'.join(SIZED)})_\d+")

X = TypeVar("X", xr.DataArray, xr.Dataset)


def storage_name(dim: str, size: int, sized: bool) -> str:
    """The name of `dim` in a file where sites disagree on its size (`sized`): `unit_512`; else `unit`."""
    return f"{dim}_{int(size)}" if sized else dim


def canonical(obj: X) -> X:
    """`obj` with storage names carrying a size (`unit_512`, `map_y_7`, `token_row_50`) renamed to their role."""
    names = {str(n): m.group(1) for n in [*obj.dims, *obj.coords] if (m := _SUFFIXED.fullmatch(str(n)))}
    return obj.rename(names) if names else obj


def units_first(da: xr.DataArray, keep: tuple[str, ...] = ()) -> xr.DataArray:
    """Stack every dim except `keep` into one `cell` dim (a site-independent list of units), in dim order."""
    other = [d for d in da.dims if d not in keep]
    if not other:
        return da.expand_dims(CELL)
    return da.stack({CELL: other}).transpose(CELL, *keep)


def unit_table(results: xr.Dataset, site: str) -> xr.Dataset:
    """Per-unit results of one site `(unit[, token | map_y, map_x])` as a table along `cell`, with coordinates
    `site`, `unit` and, where the site has them, `token`, `token_row`, `token_col`, `map_y`, `map_x`.

    Tables of several sites concatenate along `cell` with `concat_tables`, whatever their shapes.
    """
    flat = units_first(canonical(results), ())
    if CELL in flat.indexes:
        flat = flat.reset_index(CELL)
    flat = flat.drop_vars([c for c in flat.coords if c not in UNIT_COORDS])
    return flat.assign_coords(site=(CELL, np.full(flat.sizes[CELL], site)))


def concat_tables(tables: list[xr.Dataset]) -> xr.Dataset:
    """Per-unit tables of several sites as one table along `cell`; a unit coordinate that a site lacks (e.g.
    `map_y` beside a flat site) is -1 on that site's cells."""
    present = {c for t in tables for c in t.coords if c in UNIT_COORDS}
    filled = [t.assign_coords({c: (CELL, np.full(t.sizes[CELL], -1, np.int64)) for c in present - set(t.coords)})
              for t in tables]
    return xr.concat(filled, dim=CELL, join="outer", combine_attrs="drop_conflicts")


def unit_label(table: xr.Dataset | xr.DataArray, i: int) -> str:
    """How a reader names cell `i` of a per-unit table: `unit 26`, `unit 26 @ token 3`, `unit 26 @ (3, 4)`
    (channel at map position y, x)."""
    c = table.coords
    text = f"unit {int(c[UNIT].values[i])}" if UNIT in c else f"cell {i}"
    if TOKEN in c and int(c[TOKEN].values[i]) >= 0:
        text += f" @ token {int(c[TOKEN].values[i])}"
    if MAP_Y in c and MAP_X in c and int(c[MAP_Y].values[i]) >= 0:
        text += f" @ ({int(c[MAP_Y].values[i])}, {int(c[MAP_X].values[i])})"
    return text


def unit_names(table: xr.Dataset | xr.DataArray) -> list[str]:
    """Short names of every cell of a per-unit table, for figure panels: `26` (a unit), `26 t3` (unit 26 at
    token 3), `26 (3,4)` (channel 26 at feature-map position map_y 3, map_x 4)."""
    c = table.coords
    n = table.sizes[CELL]
    names = [str(int(u)) for u in c[UNIT].values] if UNIT in c else [str(i) for i in range(n)]
    if TOKEN in c:
        names = [f"{u} t{int(t)}" if t >= 0 else u for u, t in zip(names, c[TOKEN].values)]
    if MAP_Y in c and MAP_X in c:
        names = [f"{u} ({int(y)},{int(x)})" if y >= 0 else u for u, y, x in zip(names, c[MAP_Y].values,
                                                                              c[MAP_X].values)]
    return names


def n_values(da: xr.DataArray) -> int:
    """Recorded values per stimulus of one site (units x tokens, or units x map positions)."""
    return int(np.prod([s for d, s in da.sizes.items() if d != STIMULUS]))


class SiteArrays(Mapping[str, xr.DataArray]):
    """A file whose data variables are sites (a recording, a ratemaps result): site -> `xr.DataArray` under
    the canonical dims, read lazily. `dataset` is the file as stored; `attrs` its attributes."""

    def __init__(self, dataset: xr.Dataset, sites: list[str]):
        self.dataset = dataset
        self.sites = list(sites)

    def __getitem__(self, site: str) -> xr.DataArray:
        return canonical(self.stored(site))

    def stored(self, site: str) -> xr.DataArray:
        """The site as stored (dims may carry their size, `unit_512`): for writing files in which several sites
        share one namespace of dims, like the recording's."""
        if site not in self.sites:
            from stimuli.registry import did_you_mean

            raise KeyError(f"{site!r} is not a site here{did_you_mean(str(site), self.sites)} (sites: "
                           f"{', '.join(self.sites[:8])}{' ...' if len(self.sites) > 8 else ''})")
        return self.dataset[site]

    def select(self, patterns: str | list[str], what: str = "sites") -> list[str]:
        """The sites matching the globs `patterns`, in file order; none raises `RigError` naming them."""
        from stimuli.registry import glob_match

        chosen = glob_match(self.sites, patterns)
        if not chosen:
            raise RigError(f"{what} {patterns} match none of the sites here ({', '.join(self.sites)})")
        return chosen

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ({len(self)} sites)"]
        lines += [f"  {s}: {dict(self[s].sizes)}" for s in self.sites[:20]]
        return "\n".join(lines + ([f"  ... and {len(self) - 20} more"] if len(self) > 20 else []))

    @property
    def attrs(self) -> dict:
        return self.dataset.attrs

    def close(self) -> None:
        self.dataset.close()

    def __enter__(self) -> "SiteArrays":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Recording(SiteArrays):
    """A recording: site -> lazy `xr.DataArray` with dims `(stimulus, unit)`, `(stimulus, token, unit)` or
    `(stimulus, unit, map_y, map_x)` and the stimulus parameters as coordinates. `stimuli` holds those
    parameters alone (an `xr.Dataset` along `stimulus`); `n_stimuli` counts them."""

    @property
    def stimuli(self) -> xr.Dataset:
        return xr.Dataset(coords={k: v for k, v in self.dataset.coords.items() if v.dims == (STIMULUS,)})

    @property
    def n_stimuli(self) -> int:
        return int(self.dataset.sizes[STIMULUS])


def open_recording(path: str | Path) -> Recording:
    """Open a recording lazily (netCDF4 backend; values are read on access, int16 decoded to float)."""
    path = Path(path)
    if not path.exists():
        parts = path.with_name(path.name + ".parts")
        hint = f"; it is incomplete: resume it by calling record() again ({parts} holds the finished shards)" \
            if parts.exists() else "; record it first"
        raise RigError(f"recording {path} does not exist{hint}")
    ds = xr.open_dataset(path, engine="netcdf4")
    return Recording(ds, [str(v) for v in ds.data_vars])
