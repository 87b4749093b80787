"""Record the units of chosen sites for every stimulus, streamed to netCDF, crash-safe and resumable.

Design (why shards): HDF5/netCDF files are not crash-consistent, so a file written in place and killed by
SIGKILL may be corrupt or look complete when it is not. Instead the stimuli are cut into shards of
`shard_size` stimuli; each shard is written to `<path>.parts/part-NNNNN.nc` through `rig.io.atomic_path`
(so a part file exists only when complete) with contiguous storage (each batch is one contiguous write).
When all shards exist they are merged, one block of at most `MERGE_BLOCK_BYTES` at a time, into the final
file (again atomically, so `path` exists only when complete; behaviour is written before it), then the parts
are deleted. Calling `record` again on the same path skips shards that exist, after checking that they were
made with the same settings (subject, weights fingerprint, sites, tokens, dtype, stimuli hash, shard size,
readout labels; stored as the attribute `rig_settings`), and refuses otherwise. Peak memory is one batch of
activations plus one merge block; it does not grow with the number of stimuli.

Final file layout: unlimited `stimulus` dim; one variable per site (variable name = site name) with dims
`(stimulus, unit)` (flat sites and `tokens="cls"`), `(stimulus, token, unit)` (other token choices) or
`(stimulus, unit, map_y, map_x)` (conv sites: the spatial dims are `map_y`/`map_x`, not `y`/`x`, because
`x`/`y` are the stimulus-centre coordinates on `stimulus`). Chunks are about `(250 stimuli, all tokens,
16 units)` (`(250, 16, all map_y, all map_x)` for conv), shrunk to stay under `CHUNK_BYTES`, so reading one
unit across all stimuli touches few chunks. Dim naming rule (`rig.dims`): when sites disagree on the size of a dim,
storage names that dim with its size in every site (`unit_768`, `unit_3072`; token coordinates become
`token_row_50`, ...); `open_recording` gives every site back under the canonical names. Stimulus parameters are coordinates on `stimulus`; tokens carry `token_row`/`token_col` (patch grid
position, -1 for CLS/registers).

dtype: `float32` (exact) or `int16`: per-site linear packing with CF `scale_factor`/`add_offset` (xarray
decodes automatically). The scale comes from the first batch's range widened by `INT16_HEADROOM` of the
span on each side, so the decoded error is at most `scale_factor / 2` (about span / 65534 of the first
batch's range, times 2 for the headroom); values outside the representable range are clipped to it and
counted in the variable attribute `n_clipped` (a warning is issued).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import netCDF4
import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from rig.dims import LAYOUT_DIMS, open_recording, storage_name  # noqa: F401  (open_recording: public here too)
from rig.errors import RigError, SiteError
from rig.io import atomic_path
from rig.subjects import weights_hash
from rig.sites import SiteInfo, TokenChoice, batch_first, catalogue, primary_output, select_sites, token_indices

CHUNK_STIMULI = 250
CHUNK_UNITS = 16
CHUNK_BYTES = 4 << 20
MERGE_BLOCK_BYTES = 32 << 20
INT16_HEADROOM = 0.5
INT16_MAX = 32767
INT16_FILL = -32768
_PROB = "_rig_probability"
DTYPES = ("float32", "int16")


@dataclass
class _Plan:
    """How one site is stored: selected tokens, dim names, per-stimulus shape, token coordinates."""

    info: SiteInfo
    tokens: np.ndarray | None      # token indices kept (None = all tokens; unused for non-token sites)
    squeeze: bool                  # tokens="cls": store (stimulus, unit)
    dims: tuple[str, ...]          # per-stimulus dim names in the file
    shape: tuple[int, ...]         # per-stimulus shape in the file


def record(subject: Any, stimulus_set: Any, sites: str | Sequence[str], path: str | Path, tokens: TokenChoice = "cls",
           dtype: str = "float32", batch_size: int = 32, readout: Callable | None = None, progress: bool = True, *,
           shard_size: int = 500, compression: bool = False, behaviour_path: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Record `sites` (names or globs) of `subject` for every stimulus of `stimulus_set` into netCDF `path`.

    One forward pass per batch of `batch_size` stimuli (rendered per batch); hooks select the tokens and copy
    to CPU inside the hook. With a `readout` (image output -> probabilities `(B, K)`, with `.dataset(probs,
    stimulus_index)`), behaviour from the same pass goes to `behaviour_path` (default `behaviour.nc` beside
    `path`). `compression=True` zlib-compresses the final file (slower). Resumes an interrupted recording of
    the same settings; an existing complete `path` with the same settings is returned as is; with other
    settings it is refused unless `overwrite=True`. Returns `path`.
    """
    path = Path(path)
    if dtype == "float16":
        raise RigError("dtype 'float16' cannot be stored in netCDF; use dtype='int16' (packed, half the size of float32)")
    if dtype not in DTYPES:
        raise RigError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if batch_size < 1 or shard_size < 1:
        raise RigError("batch_size and shard_size must be positive integers")
    if shard_size > CHUNK_STIMULI and shard_size % CHUNK_STIMULI:
        raise RigError(f"shard_size {shard_size} must be a multiple of {CHUNK_STIMULI} (the stimulus chunk)")
    n = len(stimulus_set)
    if n == 0:
        raise RigError("the stimulus set is empty; generate stimuli with n > 0")
    infos = catalogue(subject, tuple(stimulus_set.render(np.arange(1)).shape[-2:]))
    by_name = {i.name: i for i in infos}
    names = select_sites(subject, sites, infos)
    plans = _plan_sites([by_name[s] for s in names], tokens)
    params = stimulus_set.params
    _check_names(names, params)
    behaviour_path = Path(behaviour_path) if behaviour_path is not None else path.with_name("behaviour.nc")
    settings = {
        "subject": str(getattr(subject, "name", type(subject.model).__name__)),
        "weights_fingerprint": weights_hash(subject.model, sample=1024)[:16],
        "sites": names, "tokens": tokens if isinstance(tokens, str) else [int(t) for t in tokens],
        "dtype": dtype, "stimuli_hash": stimulus_set.content_hash(), "n_stimuli": n, "shard_size": shard_size,
        "compression": bool(compression),
        "readout": None if readout is None else [str(x) for x in getattr(readout, "labels", [])],
    }
    settings_json = json.dumps(settings, sort_keys=True)
    parts = path.with_name(path.name + ".parts")
    if path.exists():
        if _file_attr(path, "rig_settings") == settings_json and (readout is None or behaviour_path.exists()):
            shutil.rmtree(parts, ignore_errors=True)
            return path
        if not overwrite:
            raise RigError(f"{path} already exists with other settings; choose another path or pass overwrite=True")
    if overwrite and parts.exists() and _parts_settings(parts) not in (None, settings_json):
        shutil.rmtree(parts)
    shards = [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]
    done = _done_shards(parts, shards, settings_json)
    scales: dict[str, tuple[float, float]] = _read_scales(parts / _part_name(0)) if done[0] else {}
    stim_index = _stimulus_index(params, n)

    todo = [k for k in range(len(shards)) if not done[k]]
    if todo:
        captured: dict[str, torch.Tensor] = {}
        handles = _attach(subject.model, plans, captured, subject.device)
        bar = tqdm(total=n, initial=n - sum(shards[k][1] - shards[k][0] for k in todo), unit="stimulus",
                   desc=f"record {path.name}", disable=not progress)
        try:
            for k in todo:
                _record_shard(subject, stimulus_set, plans, shards[k], parts / _part_name(k), batch_size, dtype,
                              readout, captured, scales, settings_json, bar)
        finally:
            for h in handles:
                h.remove()
            bar.close()
    _merge(parts, shards, plans, path, params, stim_index, settings, settings_json, compression, readout,
           behaviour_path)
    shutil.rmtree(parts, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------------------------- planning
def _plan_sites(infos: list[SiteInfo], tokens: TokenChoice) -> list[_Plan]:
    """Per-site token selection and file dims, applying the dim-size naming rule across sites."""
    for info in infos:
        if info.calls != 1:
            raise SiteError(f"site {info.name!r} fires {info.calls} times per forward pass; record a site that "
                            "fires once (e.g. its parent or child module)")
    raw = []
    for info in infos:
        idx = token_indices(info, tokens)
        squeeze = info.layout == "tokens" and isinstance(tokens, str) and tokens == "cls"
        if info.layout == "tokens":
            t = info.shape[0] if idx is None else len(idx)
            base = (LAYOUT_DIMS["flat"], (info.shape[1],)) if squeeze else (LAYOUT_DIMS["tokens"], (t, info.shape[1]))
        else:
            base = (LAYOUT_DIMS[info.layout], info.shape)
        raw.append((info, idx, squeeze, base))
    sizes: dict[str, set[int]] = {}
    for _, _, _, (dims, shape) in raw:
        for d, s in zip(dims, shape):
            sizes.setdefault(d, set()).add(int(s))
    plans = []
    for info, idx, squeeze, (dims, shape) in raw:
        named = tuple(storage_name(d, s, len(sizes[d]) > 1) for d, s in zip(dims, shape))
        plans.append(_Plan(info, idx, squeeze, named, tuple(int(s) for s in shape)))
    _check_token_coords(plans)
    return plans


def _token_coords(plan: _Plan) -> dict[str, np.ndarray]:
    """`token`, `token_row`, `token_col` values of a site's token dim (suffixed like the dim)."""
    dim = plan.dims[0]
    suffix = dim[len("token"):]
    row, col = plan.info.token_positions()
    idx = np.arange(plan.info.shape[0]) if plan.tokens is None else plan.tokens
    return {dim: idx.astype(np.int64), f"token_row{suffix}": row[idx], f"token_col{suffix}": col[idx]}


def _check_token_coords(plans: list[_Plan]) -> None:
    seen: dict[str, np.ndarray] = {}
    for p in plans:
        if p.info.layout != "tokens" or p.squeeze:
            continue
        for k, v in _token_coords(p).items():
            if k in seen and not np.array_equal(seen[k], v):
                raise SiteError(f"sites disagree on the positions of their {len(v)} tokens ({k}); "
                                "record them in separate recordings")
            seen[k] = v


def _check_names(names: list[str], params: xr.Dataset) -> None:
    reserved = set(_param_names(params)) | {"stimulus", "choice"}
    clash = [s for s in names if s in reserved or re.fullmatch(r"(unit|token|token_row|token_col|map_y|map_x)(_\d+)?", s)]
    if clash:
        raise SiteError(f"site name(s) {clash} collide with coordinate names of the recording; rename the modules")


def _param_names(params: xr.Dataset) -> list[str]:
    """Stimulus parameters stored as coordinates: every 1-D variable along `stimulus` except `stimulus`."""
    return [str(k) for k, v in params.variables.items() if v.dims == ("stimulus",) and k != "stimulus"]


def _stimulus_index(params: xr.Dataset, n: int) -> np.ndarray:
    if "stimulus" in params.variables:
        return np.asarray(params["stimulus"].values)
    return np.arange(n)


# ----------------------------------------------------------------------------------------------- recording
def _attach(model: torch.nn.Module, plans: list[_Plan], captured: dict, device: torch.device) -> list:
    """Forward hooks storing each site's selected output, batch-first float32 on CPU, into `captured`."""
    modules = dict(model.named_modules())
    handles = []
    for plan in plans:
        idx = None if plan.tokens is None else torch.as_tensor(plan.tokens, device=device)

        def hook(module: torch.nn.Module, inputs: Any, output: Any, plan: _Plan = plan, idx: Any = idx) -> None:
            if plan.info.name in captured:
                raise SiteError(f"site {plan.info.name!r} fired twice in one forward pass; choose a site that fires once")
            x = batch_first(primary_output(output).detach(), plan.info)
            if idx is not None:
                x = x.index_select(1, idx.to(x.device))       # keep only the chosen tokens (a copy)
            if plan.squeeze:
                x = x[:, 0]
            captured[plan.info.name] = x.to("cpu", torch.float32, copy=True)  # copy: in-place ops cannot alter it
        handles.append(modules[plan.info.name].register_forward_hook(hook))
    return handles


def _record_shard(subject: Any, stimulus_set: Any, plans: list[_Plan], shard: tuple[int, int], part: Path,
                  batch_size: int, dtype: str, readout: Callable | None, captured: dict,
                  scales: dict[str, tuple[float, float]], settings_json: str, bar: tqdm) -> None:
    """Run the stimuli of one shard and write them to `part` (atomically: the file exists only when complete)."""
    a, b = shard
    with atomic_path(part) as tmp, netCDF4.Dataset(tmp, "w") as nc:
        nc.createDimension("stimulus", b - a)
        variables = {}
        for p in plans:
            for d, s in zip(p.dims, p.shape):
                if d not in nc.dimensions:
                    nc.createDimension(d, s)
            variables[p.info.name] = nc.createVariable(p.info.name, "f4" if dtype == "float32" else "i2",
                                                       ("stimulus",) + p.dims, contiguous=True)
            variables[p.info.name].set_auto_maskandscale(False)
        clipped = dict.fromkeys(variables, 0)
        for idx, images in stimulus_set.batches(batch_size, start=a, stop=b):
            start, stop = int(idx[0]), int(idx[-1]) + 1
            images = torch.from_numpy(np.ascontiguousarray(images))
            captured.clear()
            output = subject.forward(images.to(subject.device))
            if readout is not None:
                probs = np.asarray(torch.as_tensor(readout(output)).detach().to("cpu", torch.float32))
                if _PROB not in nc.variables:
                    nc.createDimension("choice", probs.shape[1])
                    nc.createVariable(_PROB, "f4", ("stimulus", "choice"), contiguous=True)
                nc.variables[_PROB][start - a:stop - a] = probs
            for name, var in variables.items():
                x = captured[name].numpy()
                if x.shape[1:] != var.shape[1:]:
                    raise SiteError(f"site {name!r} gave shape {x.shape[1:]} per stimulus at stimulus {start}, not "
                                    f"{var.shape[1:]} as when probed; record sites whose shape does not change")
                if dtype == "int16":
                    if name not in scales:
                        scales[name] = _int16_scale(x)
                    x, c = _pack_int16(x, *scales[name])
                    clipped[name] += c
                var[start - a:stop - a] = x
            captured.clear()
            bar.update(stop - start)
        for name, var in variables.items():
            if dtype == "int16":
                var.scale_factor, var.add_offset = np.float32(scales[name][0]), np.float32(scales[name][1])
                var.n_clipped = np.int64(clipped[name])
        nc.rig_settings, nc.start, nc.stop = settings_json, np.int64(a), np.int64(b)


def _int16_scale(x: np.ndarray) -> tuple[float, float]:
    """(scale_factor, add_offset) covering x's range widened by INT16_HEADROOM of its span on each side.

    Both are rounded to float32 first, so packing uses exactly the values a reader decodes with.
    """
    lo, hi = float(np.min(x)), float(np.max(x))
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    half = span * (0.5 + INT16_HEADROOM)
    return float(np.float32(half / INT16_MAX)), float(np.float32((hi + lo) / 2))


def _pack_int16(x: np.ndarray, scale: float, offset: float) -> tuple[np.ndarray, int]:
    """Round `(x - offset) / scale` to int16, clipped to +-INT16_MAX; returns packed values and the clip count."""
    q = np.rint((x.astype(np.float64) - offset) / scale)
    over = np.abs(q) > INT16_MAX
    return np.clip(q, -INT16_MAX, INT16_MAX).astype(np.int16), int(over.sum())


# ----------------------------------------------------------------------------------------------- resume
def _part_name(k: int) -> str:
    return f"part-{k:05d}.nc"


def _file_attr(path: Path, name: str) -> Any:
    try:
        with netCDF4.Dataset(path) as nc:
            return getattr(nc, name, None)
    except OSError:
        return None


def _parts_settings(parts: Path) -> str | None:
    first = sorted(parts.glob("part-*.nc"))
    return _file_attr(first[0], "rig_settings") if first else None


def _done_shards(parts: Path, shards: list[tuple[int, int]], settings_json: str) -> list[bool]:
    """Which shards already exist, after checking that every part file was made with these settings."""
    done = []
    for k, (a, b) in enumerate(shards):
        part = parts / _part_name(k)
        if not part.exists():
            done.append(False)
            continue
        with netCDF4.Dataset(part) as nc:
            same = getattr(nc, "rig_settings", None) == settings_json
            span = (int(getattr(nc, "start", -1)), int(getattr(nc, "stop", -1)))
        if not same or span != (a, b):
            raise RigError(f"{parts} holds a recording made with other settings; delete that folder to start over, "
                           "or call record() with the settings it was made with")
        done.append(True)
    return done


def _read_scales(part: Path) -> dict[str, tuple[float, float]]:
    """int16 (scale_factor, add_offset) per site from the first shard, so resumed shards pack identically."""
    with netCDF4.Dataset(part) as nc:
        return {k: (float(v.scale_factor), float(v.add_offset)) for k, v in nc.variables.items()
                if "scale_factor" in v.ncattrs()}


# ----------------------------------------------------------------------------------------------- merging
def _chunks(shape: tuple[int, ...], layout: str, itemsize: int, shard_size: int) -> tuple[int, ...]:
    """Chunk shape (stimulus first): (250, all tokens, 16 units) / (250, 16, H, W) / (250, 16), capped in bytes.

    `shard_size`: stimuli per shard (or fewer, for a recording of fewer stimuli): chunks never exceed it.
    """
    stim = min(CHUNK_STIMULI, shard_size)
    per = list(shape)
    unit_axis = len(per) - 1 if layout == "tokens" else 0
    per[unit_axis] = min(CHUNK_UNITS, per[unit_axis])
    while stim * math.prod(per) * itemsize > CHUNK_BYTES and per[unit_axis] > 1:
        per[unit_axis] = (per[unit_axis] + 1) // 2
    while stim * math.prod(per) * itemsize > CHUNK_BYTES and stim > 1:
        stim = (stim + 1) // 2
    return (stim, *per)


def _merge(parts: Path, shards: list[tuple[int, int]], plans: list[_Plan], path: Path, params: xr.Dataset,
           stim_index: np.ndarray, settings: dict, settings_json: str, compression: bool,
           readout: Callable | None, behaviour_path: Path) -> None:
    """Copy the shards into the final file in bounded blocks, write coordinates and attrs, and behaviour."""
    if readout is not None:
        probs = np.concatenate([_read_var(parts / _part_name(k), _PROB) for k in range(len(shards))])
        beh = readout.dataset(probs, stim_index)
        beh = beh.assign_coords({k: ("stimulus", params[k].values) for k in _param_names(params)})
        with atomic_path(behaviour_path) as tmp:
            beh.to_netcdf(tmp, engine="netcdf4")
    itemsize = 4 if settings["dtype"] == "float32" else 2
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w") as out:
        out.createDimension("stimulus", None)
        coord_names = _write_stimulus_coords(out, params, stim_index)
        for p in plans:
            for d, s in zip(p.dims, p.shape):
                if d not in out.dimensions:
                    out.createDimension(d, s)
                    out.createVariable(d, "i8", (d,))[:] = np.arange(s)
            extra = []
            if p.info.layout == "tokens" and not p.squeeze:
                for k, v in _token_coords(p).items():
                    if k not in out.variables or k == p.dims[0]:
                        var = out.variables[k] if k in out.variables else out.createVariable(k, "i8", (p.dims[0],))
                        var[:] = v
                    if k != p.dims[0]:
                        extra.append(k)
            chunks = _chunks(p.shape, p.info.layout, itemsize, min(settings["shard_size"], len(stim_index)))
            var = out.createVariable(p.info.name, "f4" if itemsize == 4 else "i2", ("stimulus",) + p.dims,
                                     chunksizes=chunks, zlib=compression, complevel=1 if compression else None,
                                     fill_value=None if itemsize == 4 else np.int16(INT16_FILL))
            var.set_auto_maskandscale(False)
            var.set_var_chunk_cache(size=CHUNK_BYTES, preemption=1.0)   # whole chunks are written: no big cache
            var.coordinates = " ".join(coord_names + extra)
            var.layout, var.module_type = p.info.layout, p.info.type
            if p.squeeze:
                var.token_index = np.int64(0)
            clipped = 0
            for k, (a, b) in enumerate(shards):
                with netCDF4.Dataset(parts / _part_name(k)) as src:
                    sv = src.variables[p.info.name]
                    sv.set_auto_maskandscale(False)
                    if itemsize == 2:
                        var.scale_factor, var.add_offset = sv.scale_factor, sv.add_offset
                        clipped += int(sv.n_clipped)
                    for blk in _blocks(b - a, p.shape, itemsize, chunks):
                        var[(slice(a + blk[0].start, a + blk[0].stop),) + blk[1:]] = sv[blk]
            if itemsize == 2:
                var.n_clipped = np.int64(clipped)
                if clipped:
                    warnings.warn(f"{clipped} values of site {p.info.name!r} fell outside the int16 range set by the "
                                  "first batch and were clipped; record with dtype='float32' for exact values")
        out.setncatts({"rig_settings": settings_json, "subject": settings["subject"],
                       "sites": json.dumps(settings["sites"]), "tokens": json.dumps(settings["tokens"]),
                       "dtype": settings["dtype"], "stimuli_hash": settings["stimuli_hash"],
                       "weights_fingerprint": settings["weights_fingerprint"]})


def _blocks(n: int, shape: tuple[int, ...], itemsize: int, chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Slices of a `(n, *shape)` array in blocks of whole chunks, each at most MERGE_BLOCK_BYTES (or one chunk row)."""
    row = math.prod(shape) * itemsize * chunks[0]
    unit_axis = 2 if len(shape) == 2 else 1          # (stimulus, token, unit) or (stimulus, unit[, y, x])
    full = (n, *shape)
    units = full[unit_axis]
    step_u = units if row <= MERGE_BLOCK_BYTES else max(chunks[unit_axis], (MERGE_BLOCK_BYTES * units // row)
                                                        // chunks[unit_axis] * chunks[unit_axis])
    rows = max(chunks[0], (MERGE_BLOCK_BYTES // max(row, 1)) * chunks[0]) if step_u == units else chunks[0]
    out = []
    for s in range(0, n, rows):
        for u in range(0, units, step_u):
            idx = [slice(None)] * len(full)
            idx[0], idx[unit_axis] = slice(s, min(s + rows, n)), slice(u, min(u + step_u, units))
            out.append(tuple(idx))
    return out


def _read_var(part: Path, name: str) -> np.ndarray:
    with netCDF4.Dataset(part) as nc:
        return np.asarray(nc.variables[name][:])


def _write_stimulus_coords(out: netCDF4.Dataset, params: xr.Dataset, stim_index: np.ndarray) -> list[str]:
    """Write `stimulus` and every stimulus parameter as 1-D variables; returns the parameter names."""
    out.createVariable("stimulus", stim_index.dtype if stim_index.dtype.kind in "iuf" else "i8",
                       ("stimulus",))[:] = stim_index
    names = _param_names(params)
    for k in names:
        v = np.asarray(params[k].values)
        if v.dtype.kind in "USO":
            var = out.createVariable(k, str, ("stimulus",))
            var[:] = v.astype(str).astype(object)
        elif v.dtype.kind == "b":
            out.createVariable(k, "i1", ("stimulus",))[:] = v.astype(np.int8)
        else:
            out.createVariable(k, v.dtype, ("stimulus",))[:] = v
    return names
