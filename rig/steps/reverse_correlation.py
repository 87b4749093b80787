"""The reverse_correlation step: classic RF mapping. Each recorded cell's linear RF map from its responses to the
session's stimuli (sparse or white noise), its centre, size and ON/OFF balance, and the map of RF centres per
site (retinotopy)."""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ..dims import CELL, UNIT_COORDS, concat_tables, unit_label, units_first
from .base import Step, StepContext, StepSettings, register_step
from .gradient_rfs import channel_indices


class ReverseCorrelationSettings(StepSettings):
    type: Literal["reverse_correlation"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites")
    units: int | list[int] = Field(16, description="channels per site: the first N, or a list of indices; every "
                                   "recorded token or map position of them is mapped")
    pool: int | None = Field(None, ge=1, description="px per map bin (default: the noise grid's cell, else 1)")
    normalize: bool = Field(True, description="divide by each pixel's stimulus variance (a linear filter)")
    z: float = Field(3.0, ge=0, description="RF centre and size from pixels above z x the map's noise s.d.")
    n_show: int = Field(8, gt=0, description="maps drawn per site (spread over its cells)")


def check_sites(spec: Any, pre: Any) -> tuple:
    """Fail (at `sites`) unless `spec.sites` matches a recorded site; returns the step's protocol location."""
    from stimuli.registry import glob_match

    loc = pre.planned_loc(spec)
    if not glob_match(pre.recorded, spec.sites):
        pre.fail(loc + ("sites",), f"{spec.sites} match none of the recorded sites ({', '.join(pre.recorded)})")
    return loc


def recorded_cells(rec: Any, sites: list[str], units: int | list[int]) -> xr.DataArray:
    """Recorded responses `(stimulus, cell)` of the chosen channels of `sites`, every token or map position of them,
    with each cell's `site`, `unit`, `token`, `map_y`, `map_x` (-1 where a site has none)."""
    tables = []
    for site in sites:
        da = rec[site]
        da = da.isel(unit=channel_indices(units, da.sizes["unit"])).load()
        flat = units_first(da, ("stimulus",)).rename("r").to_dataset()
        if CELL in flat.indexes:
            flat = flat.reset_index(CELL)
        flat = flat.drop_vars([c for c in flat.coords if c not in UNIT_COORDS and flat[c].dims == (CELL,)])
        tables.append(flat.assign_coords(site=(CELL, np.full(flat.sizes[CELL], site))))
    return concat_tables(tables)["r"].transpose("stimulus", CELL)


def as_cells(result: Any, responses: xr.DataArray) -> Any:
    """An analysis result along `unit` (from `responses` `(stimulus, cell)`) along `cell`, with the cells'
    coordinates."""
    drop = [k for k, v in result.coords.items() if "unit" in v.dims]
    return result.drop_vars(drop).rename({"unit": CELL}).assign_coords(
        {k: (CELL, v.values) for k, v in responses.coords.items() if v.dims == (CELL,)})


def patch_centres(subject: Any, cells: xr.Dataset, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Where in the image (px) each cell's own token patch or map position is centred (NaN for flat cells and
    prefix tokens), assuming the model sees the whole canvas."""
    from ..sites import catalogue

    infos = {i.name: i for i in catalogue(subject, (canvas, canvas))}
    ex, ey = np.full(cells.sizes[CELL], np.nan), np.full(cells.sizes[CELL], np.nan)
    for i, site in enumerate(cells["site"].values):
        info = infos.get(str(site))
        if info is None:
            continue
        if info.layout == "tokens" and info.grid is not None and int(cells["token_row"].values[i]) >= 0:
            rows, cols = info.grid
            ex[i] = (cells["token_col"].values[i] + 0.5) * canvas / cols
            ey[i] = (cells["token_row"].values[i] + 0.5) * canvas / rows
        elif info.layout == "conv" and int(cells["map_y"].values[i]) >= 0:
            _, h, w = info.shape
            ex[i] = (cells["map_x"].values[i] + 0.5) * canvas / w
            ey[i] = (cells["map_y"].values[i] + 0.5) * canvas / h
    return ex, ey


@register_step
class ReverseCorrelation(Step):
    """Classic RF mapping by reverse correlation (response-weighted average of the stimuli, e.g. sparse or white
    noise): each cell's RF map, centre, size and ON/OFF index, and a retinotopy figure of RF centres per site."""

    section = "analyse"
    Settings = ReverseCorrelationSettings

    def check(self, spec: ReverseCorrelationSettings, pre: Any) -> None:
        loc = check_sites(spec, pre)
        pool = self._pool(spec, pre.stimuli)
        if pre.stimuli.canvas % pool:
            pre.fail(loc + ("pool",), f"pool = {pool} px must divide the canvas ({pre.stimuli.canvas} px)")

    @staticmethod
    def _pool(spec: ReverseCorrelationSettings, stimulus_set: Any) -> int:
        if spec.pool is not None:
            return spec.pool
        grid = stimulus_set.params.attrs.get("grid")
        canvas = stimulus_set.canvas
        return canvas // int(grid) if grid and canvas % int(grid) == 0 else 1

    def run(self, ctx: StepContext, spec: ReverseCorrelationSettings) -> None:
        import analyses.receptive_fields as rfa
        from analyses.rf_figures import retinotopy_figure, rf_images_figure

        from .spatial_scores import short_site

        with ctx.recording() as rec:
            sites = rec.select(spec.sites, f"analyse.{spec.key}: sites")
            responses = recorded_cells(rec, sites, spec.units)
        pool = self._pool(spec, ctx.stimuli)
        maps = as_cells(rfa.reverse_correlation(responses, ctx.stimuli, pool=pool, normalize=spec.normalize),
                        responses)
        geo = rfa.rf_geometry(maps, z=spec.z)
        out = xr.Dataset({"rf": maps, **geo.data_vars})
        out.attrs.update(pool=pool, normalize=int(spec.normalize), z=spec.z, n_stimuli=len(ctx.stimuli),
                         generator=str(ctx.stimuli.params.attrs.get("generator")))
        ctx.write_result(out)
        canvas = ctx.stimuli.canvas
        ex, ey = patch_centres(ctx.subject, out, canvas)
        by_site = {s: np.flatnonzero(out["site"].values == s) for s in sites}
        centres = {short_site(s): {"x": out["centre_x"].values[i], "y": out["centre_y"].values[i],
                                   "size": out["size"].values[i], "expected_x": ex[i], "expected_y": ey[i]}
                   for s, i in by_site.items()}
        ctx.write_figure(f"{spec.key}_retinotopy", retinotopy_figure(
            centres, canvas, title=f"RF centres by reverse correlation ({out.attrs['generator']})"),
            caption="Retinotopy: each mapped cell's RF centre (dot) and size (circle: s.d. of the |map|, px) in the "
                    "visual field (px), one panel and colour per site; a grey line joins it to the centre of the "
                    "cell's own token patch or map position, where it has one.")
        show = {s: i[np.unique(np.linspace(0, len(i) - 1, min(spec.n_show, len(i))).round().astype(int))]
                for s, i in by_site.items()}  # spread over the site's cells (units, tokens, positions)
        k = max(len(i) for i in show.values())
        rows = np.full((len(show), k) + maps.shape[-2:], np.nan, np.float32)
        for r, (s, i) in enumerate(show.items()):
            rows[r, :len(i)] = maps.values[i].sum(axis=1)
        ctx.write_figure(f"{spec.key}_maps", rf_images_figure(
            rows, [short_site(s) for s in show], extent=(0.0, float(canvas)),
            colorbar="response / pixel value" if spec.normalize else "covariance",
            title="reverse-correlation RF maps"),
            caption=f"Reverse-correlation RF maps of up to {k} cells spread over each site (rows; "
                    + "; ".join(f"{short_site(s)}: " + ", ".join(unit_label(out, int(j)) for j in i)
                                for s, i in show.items())
                    + f"), summed over colour channels, {pool} px bins: red = ON (brightening there raises the "
                      "response), blue = OFF.")
        ctx.headline["median RF size (px)"] = round(float(np.nanmedian(out["size"].values)), 2)
        ctx.headline["mapped cells"] = int(out.sizes[CELL])

    def compare_figure(self, a: Any, b: Any, labels: tuple[str, str]) -> Any:
        return self.across_figure(dict(zip(labels, (a, b))))[0]

    def across_figure(self, results: Any) -> Any:
        """RF sizes per site of several sessions (a [compare] pair, or the subjects of a sweep)."""
        from analyses.rf_figures import compare_rf_figure

        return compare_rf_figure(dict(results), title="RF size by reverse correlation, per site"), (
            "RF size (s.d. of the |map|, px) by reverse correlation per site, one colour per session: median over "
            "the site's cells (dot) and inter-quartile range (bar)")
