"""Many sessions as one lazy xarray object along a `session` dim, for analyses across sessions out of core.

    scores = rig.open_sessions(sweep, "analyses/spatial_scores")            # an xr.Dataset (session, cell)
    scores["grid_score"].max("cell")                                        # one value per session
    rec = rig.open_sessions(sweep, "recording", site="head", by="stimulus")  # (session, stimulus, unit), dask

Every file is opened with dask (`xr.open_dataset(..., chunks=...)`), nothing is read until computed, and the
chunks follow the access pattern (`by`): `"unit"` (default) gives chunks that hold every stimulus of a block
of units (per-unit work: ratemaps, scores, tuning), `"stimulus"` chunks that hold every unit of a block of
stimuli (per-stimulus work: RDMs, features for clustering); blocks are whole multiples of the file's own
chunks (the recorder writes about 250 stimuli x 16 units per chunk) and about `chunk_mb` each, one session
per chunk. Sessions that differ along a dim (subjects with other unit counts, tables of other lengths) are
aligned on it with NaN where a session has no value. Coordinates along `session`: `session` (ids), `label`
and, for a sweep's points, every swept setting (`subject.arch`, ...), so `groupby("subject.arch")` works.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import xarray as xr

from .dims import STIMULUS, canonical
from .errors import RigError

SESSION = "session"


def open_sessions(sessions: Any, name: str = "recording", site: str | None = None,
                  archive: str | os.PathLike | None = None, by: Literal["unit", "stimulus"] = "unit",
                  chunk_mb: float = 64) -> xr.Dataset | xr.DataArray:
    """Open the file `name` of many sessions as one lazy (dask-backed) object along a `session` dim.

    sessions: a `rig.Sweep` (its point sessions in order), a sweep id, or an iterable of sessions (`rig.Session`,
    folder paths, ids or id prefixes in `archive`). name: `"recording"` (then `site`: one recorded site, a
    `DataArray` in canonical dims), `"behaviour"`, `"stimuli"`, or a result (`"analyses/<name>"`,
    `"perturb/<name>"`). by, chunk_mb: the chunking (see the module docstring).
    """
    if by not in ("unit", "stimulus"):
        raise RigError(f"by must be 'unit' or 'stimulus', got {by!r}")
    chosen = _sessions(sessions, archive)
    if not chosen:
        raise RigError("open_sessions: no sessions given")
    parts = [_open(s, name, site, by, chunk_mb) for s in chosen]
    parts = [_indexed(p, parts) for p in parts]
    out = xr.concat(parts, dim=SESSION, join="outer", coords="different", compat="equals",
                    combine_attrs="drop_conflicts", fill_value=np.nan)
    if name == "recording":  # padding splits chunks: the dims read whole stay whole, one session per chunk
        whole = [d for d in out.dims if d != SESSION and (d == STIMULUS) != (by == "stimulus")]
        out = out.chunk({SESSION: 1, **{d: -1 for d in whole}})
    coords: dict[str, Any] = {SESSION: [s.id for s in chosen], "label": (SESSION, [s.label for s in chosen])}
    keys = list(dict.fromkeys(k for s in chosen for k in (s.point or {})))
    for key in keys:
        values = [(s.point or {}).get(key) for s in chosen]
        coords[key] = (SESSION, np.asarray([str(v) if isinstance(v, (list, dict)) else v for v in values]))
    return out.assign_coords(coords)


def _sessions(sessions: Any, archive: Any) -> list[Any]:
    from .session import Session, open_session
    from .sweeps import Sweep, open_sweep

    if isinstance(sessions, (str, os.PathLike)):
        path = Path(sessions)
        if (path / "sweep.json").is_file() or not (path / "session.json").is_file():
            sessions = open_sweep(sessions, archive)
        else:
            sessions = [sessions]
    if isinstance(sessions, Sweep):
        found = sessions.sessions
        missing = [p["index"] for p, s in zip(sessions.points, found) if s is None]
        if missing:
            raise RigError(f"sweep {sessions.id}: points {missing} have no session yet; run the sweep first")
        return found
    if not isinstance(sessions, Iterable):
        raise RigError(f"sessions must be a Sweep, a sweep id or a list of sessions, got {type(sessions).__name__}")
    return [s if isinstance(s, Session) else open_session(s, archive) for s in sessions]


def _open(session: Any, name: str, site: str | None, by: str, chunk_mb: float) -> xr.Dataset | xr.DataArray:
    """One session's file, opened lazily with chunks for the access pattern, in canonical dims."""
    layout = session.layout
    if name == "recording":
        path = session._file(layout.recording)
        if site is None:
            raise RigError("open_sessions(..., 'recording') needs site='<one recorded site>'")
        with xr.open_dataset(path, engine="netcdf4") as probe:
            if site not in probe.data_vars:
                raise RigError(f"{session.id} did not record site {site!r} (sites: {', '.join(map(str, probe.data_vars))})")
            var = probe[site]
            chunks = _chunks(var.dims, var.shape, var.encoding.get("chunksizes"), var.dtype.itemsize, by, chunk_mb)
        return canonical(xr.open_dataset(path, engine="netcdf4", chunks=chunks)[site])
    files = {"behaviour": layout.behaviour, "stimuli": layout.stimuli, **layout.results()}
    if name not in files:
        raise RigError(f"{session.id} has no {name!r} (it has: {', '.join(files)})")
    return canonical(xr.open_dataset(session._file(files[name]), engine="netcdf4", chunks={}))


def _chunks(dims: tuple, shape: tuple, disk: Any, itemsize: int, by: str, chunk_mb: float) -> dict[str, int]:
    """Chunk sizes per dim: whole multiples of the file's chunks (`disk`, or every value when contiguous),
    grown along `stimulus` (by="stimulus") or along the unit-like dims (by="unit") to about `chunk_mb`."""
    base = list(disk) if disk else list(shape)
    grow = [i for i, d in enumerate(dims) if (d == STIMULUS) == (by == "stimulus")]
    keep = [i for i in range(len(dims)) if i not in grow]
    for i in keep:  # the other dims are whole in every chunk
        base[i] = shape[i]
    target = chunk_mb * 2 ** 20 / max(itemsize, 1)
    for i in grow:  # grow one dim at a time, in whole file chunks, up to the target
        other = math.prod(base[j] for j in range(len(dims)) if j != i)
        base[i] = int(min(shape[i], max(base[i], (target // max(other, 1)) // base[i] * base[i])))
    return {d: int(c) for d, c in zip(dims, base)}


def _indexed(obj: xr.Dataset | xr.DataArray, parts: list[Any]) -> xr.Dataset | xr.DataArray:
    """`obj` with an integer index on each dim that has none and whose size differs between the sessions, so
    they align on it (a shorter session is padded with NaN)."""
    sizes: dict[str, set[int]] = {}
    for p in parts:
        for d, n in p.sizes.items():
            sizes.setdefault(str(d), set()).add(int(n))
    missing = {d: np.arange(n) for d, n in obj.sizes.items() if d not in obj.indexes and len(sizes[str(d)]) > 1}
    return obj.assign_coords(missing) if missing else obj
