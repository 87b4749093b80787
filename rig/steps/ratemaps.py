"""The ratemaps step: every unit's mean response per position bin, for the chosen recorded sites."""
from __future__ import annotations

from typing import Any, Literal

import xarray as xr
from pydantic import Field

from ..dims import SiteArrays, n_values
from .base import Step, StepContext, StepSettings, register_step


class RatemapsSettings(StepSettings):
    type: Literal["ratemaps"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites")
    bins: int = Field(28, gt=1, description="bins per side")
    extent: tuple[float, float] | None = Field(None, description="[lo, hi] pixels; default the canvas")
    smoothing: float = Field(1.0, ge=0, description="Gaussian sigma in bins (NaN-aware); 0 = none")
    min_occupancy: int = Field(1, ge=1, description="bins visited by fewer stimuli are unvisited (NaN)")
    regress_out: list[str] = Field(default_factory=list, description="stimulus parameters removed from every "
                                   "unit's responses by least squares before mapping, e.g. ['diameter']: in "
                                   "the circles design only small circles reach the walls, so size tuning "
                                   "would otherwise look like border tuning")

    def map_kwargs(self, canvas: int) -> dict[str, Any]:
        """Keyword arguments of `analyses.ratemaps` / `analyses.spatial_nulls` for these settings."""
        return dict(bins=self.bins, extent=self.extent if self.extent is not None else (0.0, float(canvas)),
                    smoothing=self.smoothing, min_occupancy=self.min_occupancy, regress_out=self.regress_out or None)


def analysis_device(ctx: StepContext) -> str | None:
    """Where the spatial analyses compute: the subject's CUDA device when the session runs on one (the data stay
    there; `analyses` then works on torch tensors), else None (numpy, the fastest on a CPU)."""
    device = str(ctx.protocol.subject.device)
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else None
    return device if device.startswith("cuda") else None


def open_ratemaps(path: Any) -> SiteArrays:
    """A ratemaps result: site -> maps `(unit[, token | map_y, map_x], y_bin, x_bin)`; `occupancy` in
    `.dataset`."""
    ds = xr.open_dataset(path)
    return SiteArrays(ds, [str(v) for v in ds.data_vars if v != "occupancy"])


@register_step
class Ratemaps(Step):
    """Ratemaps of every unit of the chosen sites: one variable per site plus the occupancy of each bin."""

    section = "analyse"
    Settings = RatemapsSettings

    def check(self, spec: RatemapsSettings, pre: Any) -> None:
        from stimuli.registry import glob_match

        loc = pre.planned_loc(spec)
        if not glob_match(pre.recorded, spec.sites):
            pre.fail(loc + ("sites",), f"{spec.sites} match none of the recorded sites ({', '.join(pre.recorded)}); "
                     "use names or globs of [record] sites")
        params = pre.stimuli.params
        if "x" not in params.variables or "y" not in params.variables:
            pre.fail(loc, f"ratemaps need stimulus positions x, y; generator {pre.protocol.stimuli.generator!r} "
                     "gives none (use circles or shapes, or a generator with x and y)")
        along = [str(k) for k, v in params.variables.items() if v.dims == ("stimulus",) and k != "stimulus"]
        for name in spec.regress_out:
            if name not in along:
                from stimuli.registry import did_you_mean

                pre.fail(loc + ("regress_out",), f"{name!r} is not a stimulus parameter{did_you_mean(name, along)} "
                         f"(parameters: {', '.join(along)})")

    def run(self, ctx: StepContext, spec: RatemapsSettings) -> None:
        import analyses

        from ..io import atomic_path

        with ctx.recording() as rec, atomic_path(ctx.result_path) as tmp:
            sites = rec.select(spec.sites, f"analyse.{spec.key}: sites")
            for i, site in enumerate(sites):
                # stored dims: sites of one file share one namespace of dims, as in the recording
                maps = analyses.ratemaps(rec.stored(site), **spec.map_kwargs(ctx.stimuli.canvas),
                                         device=analysis_device(ctx))
                out = xr.Dataset({site: maps["ratemap"]})
                if i == 0:
                    out["occupancy"] = maps["occupancy"]
                    out.attrs.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in maps.attrs.items()
                                      if v is not None})
                out.to_netcdf(tmp, mode="w" if i == 0 else "a", engine="netcdf4")
                ctx.log.info("ratemaps %s: %s", site, dict(maps["ratemap"].sizes))
            ctx.headline["ratemaps"] = sum(n_values(rec[s]) for s in sites)
        ctx.wrote(ctx.result_path)
