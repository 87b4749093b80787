"""The steps of a session (design, record, analyse/<name>, perturb/<name>), one function each.

Every step reads earlier steps' files from the session folder, writes its own outputs atomically, and returns
the list of files it wrote (relative to the folder). Heavy objects (subject, stimuli) are built lazily and
shared between the steps of one run.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from .io import atomic_path, write_json
from .protocol import Protocol

#: analyse/perturb step type -> function(ctx, spec) -> list of output files
STEP_TYPES: dict[str, Callable[["StepContext", Any], list[str]]] = {}


def step_type(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        STEP_TYPES[name] = fn
        return fn

    return deco


@dataclass
class StepContext:
    folder: Path
    protocol: Protocol
    log: logging.Logger
    progress: bool = True
    headline: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def stimuli(self):
        from stimuli import StimulusSet

        return StimulusSet.from_netcdf(self.folder / "stimuli.nc")

    @cached_property
    def subject(self):
        from .subjects import load_subject

        subject = load_subject(**self.protocol.subject.kwargs())
        self.log.info("subject %s on %s", subject.name, subject.device)
        return subject

    @cached_property
    def readout(self):
        """The session's behaviour readout (None without [behaviour]), built once."""
        return None if self.protocol.behaviour is None else self.new_readout()

    def new_readout(self):
        """A fresh readout of the subject as it is now (e.g. text embeddings under a text-tower lesion)."""
        from .behaviour import make_readout

        return make_readout(self.subject, self.protocol.behaviour.model_dump())

    def recording(self) -> xr.Dataset:
        from .recorder import open_recording

        return open_recording(self.folder / "recording.nc")

    def write_dataset(self, relative: str, ds: xr.Dataset) -> str:
        with atomic_path(self.folder / relative) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4")
        return relative

    def write_figure(self, name: str, fig: Any, dpi: int = 110) -> str:
        relative = f"figures/{name}.png"
        with atomic_path(self.folder / relative) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        return relative

    def update_provenance(self, **fields: Any) -> None:
        path = self.folder / "provenance.json"
        data = json.loads(path.read_text())
        data.update(fields)
        write_json(path, data)


def run_step(ctx: StepContext, key: str) -> list[str]:
    """Run the step named `key` (as in session.json's steps) and return the files it wrote."""
    if key == "design":
        return design(ctx)
    if key == "record":
        return record(ctx)
    if key == "compare":
        return compare(ctx)
    section, name = key.split("/", 1)
    spec = next(s for s in getattr(ctx.protocol, section) if s.key == name)
    return STEP_TYPES[spec.type](ctx, spec)


def design(ctx: StepContext) -> list[str]:
    """Generate the stimulus set; store its parameter table and two figures."""
    import stimuli

    spec = ctx.protocol.stimuli
    stim = stimuli.make(spec.generator, **spec.params())
    with atomic_path(ctx.folder / "stimuli.nc") as tmp:
        stim.to_netcdf(tmp)
    ctx.__dict__["stimuli"] = stim
    ctx.update_provenance(stimulus_hash=stim.content_hash())
    ctx.headline["stimuli"] = len(stim)
    return ["stimuli.nc",
            ctx.write_figure("stimuli_contact_sheet", stimuli.contact_sheet(stim, n=16, seed=spec.seed)),
            ctx.write_figure("stimuli_overview", stimuli.overview(stim))]


def record(ctx: StepContext) -> list[str]:
    """Show every stimulus to the subject; stream the chosen sites to recording.nc and behaviour to behaviour.nc."""
    from .recorder import record as record_sites

    spec = ctx.protocol.record
    subject = ctx.subject
    ctx.update_provenance(device=str(subject.device), weights_sha256=subject.weights_hash(),
                          subject=subject.describe())
    record_sites(subject, ctx.stimuli, spec.sites, ctx.folder / "recording.nc", tokens=spec.tokens,
                 dtype=spec.dtype, batch_size=spec.batch_size, readout=ctx.readout, progress=ctx.progress,
                 compression=spec.compression, overwrite=True)
    outputs = ["recording.nc"]
    if ctx.readout is not None:
        outputs.append("behaviour.nc")
        with xr.open_dataset(ctx.folder / "behaviour.nc") as beh:
            if "target_probability" in beh:
                p = beh["target_probability"].values
                target = str(beh.attrs.get("target", "target"))
                ctx.headline[f"P({target})"] = round(float(np.mean(p)), 4)  # numbers: rig diff / ls --where
                ctx.headline[f"P({target}) sd"] = round(float(np.std(p)), 4)
    with xr.open_dataset(ctx.folder / "recording.nc") as rec:
        ctx.headline["sites"] = len(rec.data_vars)
        ctx.headline["units"] = sum(_n_units(rec[v]) for v in rec.data_vars)
    return outputs


# ----------------------------------------------------------------------------------------------------------
# analyse


def _n_units(da: xr.DataArray) -> int:
    """Recorded values per stimulus of one site (units x tokens, or units x map positions)."""
    return int(np.prod([s for d, s in da.sizes.items() if d != "stimulus"]))


def _recorded_sites(rec: xr.Dataset, patterns: list[str], key: str) -> list[str]:
    from fnmatch import fnmatchcase

    from .errors import SiteError

    sites = [str(v) for v in rec.data_vars if any(fnmatchcase(str(v), p) for p in patterns)]
    if not sites:
        raise SiteError(f"{key}: sites {patterns} match none of the recorded sites ({', '.join(map(str, rec.data_vars))})")
    return sites


def _extent(ctx: StepContext, extent: tuple[float, float] | None) -> tuple[float, float, float, float]:
    lo, hi = extent if extent is not None else (0.0, float(ctx.stimuli.canvas))
    return (lo, hi, lo, hi)


def canonical_dims(da: xr.DataArray) -> xr.DataArray:
    """Rename a site's size-suffixed dims (`unit_512`, used when sites of one recording differ in size) back to
    their role (`unit`)."""
    import re

    return da.rename({d: m.group(1) for d in da.dims if (m := re.fullmatch(r"(unit|token|y|x)_\d+", str(d)))})


def _units_first(da: xr.DataArray, keep: tuple[str, ...]) -> xr.DataArray:
    """Stack every dim except `keep` into one `cell` dim (site-independent unit list), in dim order."""
    other = [d for d in da.dims if d not in keep]
    if not other:
        return da.expand_dims("cell")
    return da.stack(cell=other).transpose("cell", *keep)


def _cell_table(scores: xr.Dataset, site: str) -> xr.Dataset:
    """Per-unit results of one site as a table along `cell`, with `site`, `unit` (and token) coordinates."""
    flat = _units_first(scores.map(canonical_dims), ())
    if "cell" in flat.indexes:
        flat = flat.reset_index("cell")
    flat = flat.drop_vars([c for c in flat.coords if c not in ("unit", "token", "token_row", "token_col")])
    return flat.assign_coords(site=("cell", np.full(flat.sizes["cell"], site)))


@step_type("ratemaps")
def analyse_ratemaps(ctx: StepContext, spec: Any) -> list[str]:
    """Ratemaps of every unit of the chosen sites: `analyses/<name>.nc`, one variable per site + occupancy."""
    import analyses

    rec = ctx.recording()
    sites = _recorded_sites(rec, spec.sites, f"analyse.{spec.key}")
    relative = f"analyses/{spec.key}.nc"
    with atomic_path(ctx.folder / relative) as tmp:
        for i, site in enumerate(sites):
            maps = analyses.ratemaps(rec[site], bins=spec.bins, extent=_extent(ctx, spec.extent),
                                     smoothing=spec.smoothing, min_occupancy=spec.min_occupancy,
                                     regress_out=spec.regress_out or None)
            out = xr.Dataset({site: maps["ratemap"]})
            if i == 0:
                out["occupancy"] = maps["occupancy"]
                out.attrs.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in maps.attrs.items()
                                  if v is not None})
            out.to_netcdf(tmp, mode="w" if i == 0 else "a", engine="netcdf4")
            ctx.log.info("ratemaps %s: %s", site, dict(maps["ratemap"].sizes))
    ctx.headline["ratemaps"] = sum(_n_units(rec[v]) for v in sites)
    return [relative]


@step_type("spatial_scores")
def analyse_spatial_scores(ctx: StepContext, spec: Any) -> list[str]:
    """Spatial information, grid and border score of every mapped unit, with per-unit shuffle nulls and a class
    (spatial / grid / border / none): `analyses/<name>.nc` along a `cell` dim with `site`, `unit` (and `token`)
    coordinates, plus the study's top-units figure and the score distributions per site."""
    import matplotlib.pyplot as plt

    import analyses

    rm_spec = next(s for s in ctx.protocol.analyse if s.key == spec.ratemaps)
    rec = ctx.recording()
    with xr.open_dataset(ctx.folder / f"analyses/{rm_spec.key}.nc") as rm_file:
        site_maps = {v: rm_file[v] for v in rm_file.data_vars if v != "occupancy"}
        occupancy = rm_file["occupancy"].values
        per_site, maps_flat, scores_flat = [], {}, {}
        for site, maps in site_maps.items():
            if spec.shuffles > 0:
                scores = analyses.spatial_nulls(rec[site], bins=rm_spec.bins, extent=_extent(ctx, rm_spec.extent),
                                                smoothing=rm_spec.smoothing, min_occupancy=rm_spec.min_occupancy,
                                                regress_out=rm_spec.regress_out or None,
                                                rate=spec.rate, alpha=spec.alpha,
                                                n_shuffles=spec.shuffles, seed=spec.seed)
            else:
                scores = xr.Dataset({
                    "spatial_information": analyses.spatial_information(maps, occupancy, rate=spec.rate),
                    "grid_score": analyses.grid_score(maps),
                    "border_score": analyses.border_score(maps)})
            flat = _cell_table(scores, site)
            per_site.append(flat)
            maps_flat[site] = _units_first(maps, ("y_bin", "x_bin")).values
            scores_flat[site] = {k: flat[k].values for k in ("spatial_information", "grid_score", "border_score")}
            ctx.log.info("spatial scores %s: %d units", site, flat.sizes["cell"])
    result = xr.concat(per_site, dim="cell", join="outer", combine_attrs="drop_conflicts")
    result.attrs.update({"rate": spec.rate, "shuffles": spec.shuffles, "alpha": spec.alpha, "seed": spec.seed,
                         "ratemaps": rm_spec.key, "regress_out": list(rm_spec.regress_out)})
    outputs = [ctx.write_dataset(f"analyses/{spec.key}.nc", result)]
    short = {s: s.replace("visual.transformer.resblocks.", "block ") for s in maps_flat}
    fig = analyses.top_units_figure({short[s]: m for s, m in maps_flat.items()},
                                    {short[s]: v for s, v in scores_flat.items()}, k=spec.top_k,
                                    title=f"{ctx.protocol.name}: top {spec.top_k} units per site and score")
    outputs.append(ctx.write_figure(f"{spec.key}_top_units", fig))
    plt.close(fig)
    fig = analyses.score_distributions({short[s]: v for s, v in scores_flat.items()})
    outputs.append(ctx.write_figure(f"{spec.key}_distributions", fig))
    plt.close(fig)
    if "class" in result:
        labels, counts = np.unique(result["class"].values.astype(str), return_counts=True)
        for label, count in zip(labels, counts):
            if label != "none":
                ctx.headline[f"{label} units"] = int(count)
    ctx.headline["best grid score"] = round(float(np.nanmax(result["grid_score"].values)), 3) \
        if np.isfinite(result["grid_score"].values).any() else None
    return outputs


# ----------------------------------------------------------------------------------------------------------
# perturb


def _first(stim: Any, n: int | None) -> Any:
    """The first `n` stimuli of a set (all when None)."""
    if n is None or n >= len(stim):
        return stim
    return type(stim)(stim.params.isel(stimulus=slice(0, n)))


def _finish_perturb(ctx: StepContext, spec: Any, ds: xr.Dataset, fig: Any) -> list[str]:
    """Write `perturb/<name>.nc` and its figure, then drop the sweep's per-condition working folder."""
    import shutil

    import matplotlib.pyplot as plt

    outputs = [ctx.write_dataset(f"perturb/{spec.key}.nc", ds)]
    outputs.append(ctx.write_figure(f"{spec.key}", fig))
    plt.close(fig)
    shutil.rmtree(ctx.folder / "perturb" / spec.key, ignore_errors=True)
    return outputs


@step_type("weight_lesions")
def perturb_weight_lesions(ctx: StepContext, spec: Any) -> list[str]:
    """Zero each weighted module of the chosen towers in turn and measure behaviour (the blog's first lesion
    experiment); resumable per module in `perturb/<name>/`."""
    from .lesions import weight_lesions, weighted_modules
    from .lesions.figures import weight_lesion_figure

    from fnmatch import fnmatchcase

    subject = ctx.subject
    modules = [m for tower in spec.towers for m in weighted_modules(subject.model, tower)]
    if spec.modules is not None:
        modules = [m for m in modules if any(fnmatchcase(m, g) for g in spec.modules)]
        if not modules:
            from .errors import SiteError

            raise SiteError(f"perturb.{spec.key}: modules {spec.modules} match no weighted module of the towers "
                            f"{spec.towers}; `rig sites` lists the module names")
    ds = weight_lesions(subject, _first(ctx.stimuli, spec.n_stimuli), ctx.readout, modules,
                        include_bias=spec.include_bias, batch_size=spec.batch_size,
                        rebuild_readout=ctx.new_readout,
                        folder=ctx.folder / "perturb" / spec.key)
    worst = int(np.argmin(ds["mean"].values))
    ctx.headline[f"{spec.key}: baseline"] = round(float(ds["baseline_mean"]), 3)
    ctx.headline[f"{spec.key}: worst module"] = f"{ds['module'].values[worst]} ({float(ds['mean'][worst]):.3f})"
    return _finish_perturb(ctx, spec, ds, weight_lesion_figure(ds))


@step_type("unit_lesions")
def perturb_unit_lesions(ctx: StepContext, spec: Any) -> list[str]:
    """Silence a growing proportion of a site's units per strategy (random, targeted by the ratemap value at
    each stimulus's position, ...) and measure behaviour (the blog's second lesion experiment)."""
    from .lesions import unit_lesions
    from .lesions.figures import unit_lesion_figure

    maps = None
    if any(s.startswith("targeted") for s in spec.strategy):
        with xr.open_dataset(ctx.folder / f"analyses/{spec.ratemaps}.nc") as rm:
            if spec.site not in rm:
                from .errors import SiteError

                raise SiteError(f"perturb.{spec.key}: site {spec.site!r} has no ratemaps in analyses/{spec.ratemaps}.nc;"
                                f" record and map it (mapped: {', '.join(v for v in rm.data_vars if v != 'occupancy')})")
            maps = canonical_dims(rm[spec.site].load())
        if "token" in maps.dims:  # targeted lesions silence channels at every token: rank them by the CLS map
            maps = maps.isel(token=0)
            ctx.log.info("unit lesions: ranking units of %s by the ratemaps of token 0 (CLS)", spec.site)
    proportions = spec.proportions.values() if hasattr(spec.proportions, "values") else spec.proportions
    ds = unit_lesions(ctx.subject, _first(ctx.stimuli, spec.n_stimuli), ctx.readout, spec.site,
                      strategy=spec.strategy, proportions=proportions, ratemaps=maps, units=spec.units,
                      repeats=spec.repeats, seed=spec.seed, batch_size=spec.batch_size,
                      folder=ctx.folder / "perturb" / spec.key)
    for strategy in spec.strategy:
        half = ds["mean"].sel(strategy=strategy).interp(proportion=0.5) if ds.sizes["proportion"] > 1 else None
        if half is not None:
            ctx.headline[f"{spec.key}: {strategy} @ 50%"] = round(float(half), 3)
    return _finish_perturb(ctx, spec, ds, unit_lesion_figure(ds))


# ----------------------------------------------------------------------------------------------------------
# compare


def compare(ctx: StepContext) -> list[str]:
    """Run the comparison preparation (`[compare]`: this protocol with some settings changed, e.g. random
    weights) as a session nested in `compare/`, then draw each spatial-scores result of both side by side.

    A nested session that was interrupted is resumed, a completed one reused.
    """
    import matplotlib.pyplot as plt

    import analyses

    from .session import open_session, resume, run

    spec = ctx.protocol.compare
    other_protocol = ctx.protocol.compared(str(ctx.folder / "protocol.resolved.json"))
    nested = sorted((ctx.folder / "compare").glob("*/session.json"))
    if not nested:
        other = run(other_protocol, archive=ctx.folder / "compare", progress=ctx.progress)
    elif open_session(nested[0].parent).status != "completed":
        other = resume(nested[0].parent, progress=ctx.progress)
    else:
        other = open_session(nested[0].parent)
    label = spec.label or f"weights={other_protocol.subject.weights}, seed={other_protocol.subject.seed}"
    mine = f"weights={ctx.protocol.subject.weights}, seed={ctx.protocol.subject.seed}"
    outputs = []
    for step in ctx.protocol.analyse:
        if step.type != "spatial_scores":
            continue
        with xr.open_dataset(ctx.folder / f"analyses/{step.key}.nc") as a, \
                xr.open_dataset(other.path / f"analyses/{step.key}.nc") as b:
            fig = analyses.compare_preparations(a, b, labels=(mine, label))
            outputs.append(ctx.write_figure(f"compare_{step.key}", fig))
            plt.close(fig)
    for key, value in other.info.get("headline", {}).items():
        ctx.headline[f"compare: {key}"] = value
    ctx.headline["compare: session"] = f"compare/{other.id}"
    return outputs
