"""`response_stats`: every unit's mean, standard deviation and lifetime sparseness over the stimuli."""
from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from pydantic import Field

from rig.dims import STIMULUS, concat_tables, unit_table
from rig.steps import Step, StepSettings, register_step


class ResponseStatsSettings(StepSettings):
    type: Literal["response_stats"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites")


def lifetime_sparseness(r: np.ndarray) -> np.ndarray:
    """Vinje & Gallant (2000) on rectified responses `(stimulus, units)`: 0 = equal to every stimulus, 1 = one."""
    r = np.maximum(r, 0.0)
    n = r.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = r.mean(0) ** 2 / (r ** 2).mean(0)
    return (1 - a) / (1 - 1 / n)


@register_step
class ResponseStats(Step):
    """Mean, standard deviation and lifetime sparseness of every unit of the chosen sites."""

    section = "analyse"
    Settings = ResponseStatsSettings

    def run(self, ctx, spec: ResponseStatsSettings) -> None:
        tables = []
        with ctx.recording() as rec:
            for site in rec.select(spec.sites):
                da = rec[site].load()
                flat = da.transpose(STIMULUS, ...).values.reshape(da.sizes[STIMULUS], -1)
                dims = [d for d in da.dims if d != STIMULUS]
                shape = [da.sizes[d] for d in dims]
                stats = xr.Dataset({
                    "mean": (dims, flat.mean(0).reshape(shape)),
                    "sd": (dims, flat.std(0).reshape(shape)),
                    "sparseness": (dims, lifetime_sparseness(flat).reshape(shape)),
                }, coords={d: da[d] for d in dims if d in da.coords})
                tables.append(unit_table(stats, site))
        result = concat_tables(tables)
        ctx.write_result(result)
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        ax.hist(result["sparseness"].values[np.isfinite(result["sparseness"].values)], bins=30)
        ax.set(xlabel="lifetime sparseness", ylabel="units")
        ctx.write_figure(spec.key, fig)
        ctx.headline[f"{spec.key}: median sparseness"] = round(float(np.nanmedian(result["sparseness"])), 3)
