"""The preferred_stimuli step: each recorded cell's top- and bottom-k stimuli of the session, as a table and a
contact sheet (the study's example-based visualisation)."""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..dims import CELL, unit_label
from .base import Step, StepContext, StepSettings, register_step
from .reverse_correlation import as_cells, check_sites, recorded_cells


class PreferredStimuliSettings(StepSettings):
    type: Literal["preferred_stimuli"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites")
    units: int | list[int] = Field(4, description="channels per site: the first N, or a list of indices (every "
                                   "recorded token or map position of them)")
    k: int = Field(8, gt=0, description="top and bottom stimuli per cell")
    n_show: int = Field(6, gt=0, description="cells per site in the contact sheet")


@register_step
class PreferredStimuli(Step):
    """Each cell's k most and least driving stimuli of the session: a table along `cell` and `rank`, and a contact
    sheet per site."""

    section = "analyse"
    Settings = PreferredStimuliSettings

    def check(self, spec: PreferredStimuliSettings, pre: Any) -> None:
        loc = check_sites(spec, pre)
        if spec.k > len(pre.stimuli):
            pre.fail(loc + ("k",), f"k = {spec.k} is more than the {len(pre.stimuli)} stimuli")

    def run(self, ctx: StepContext, spec: PreferredStimuliSettings) -> None:
        import analyses.receptive_fields as rfa
        from analyses.rf_figures import contact_sheet_figure

        from .spatial_scores import short_site

        with ctx.recording() as rec:
            sites = rec.select(spec.sites, f"analyse.{spec.key}: sites")
            responses = recorded_cells(rec, sites, spec.units)
        stim = responses["stimulus"].values
        table = as_cells(rfa.preferred_stimuli(responses, k=spec.k), responses)
        ctx.write_result(table)
        position = {s: i for i, s in enumerate(stim.tolist())}
        for site in sites:
            cells = np.flatnonzero(table["site"].values == site)[:spec.n_show]
            chosen = np.array([[position[s] for s in row] for v in ("top_stimulus", "bottom_stimulus")
                               for row in table[v].values[cells].tolist()])  # (2 * cells, k) positions
            needed, inverse = np.unique(chosen, return_inverse=True)
            images = ctx.stimuli.render(needed)[inverse.reshape(chosen.shape)]
            top, bottom = images[:len(cells)], images[len(cells):]
            ctx.write_figure(f"{spec.key}_{site.replace('/', '_')}", contact_sheet_figure(
                top, bottom, table["top_response"].values[cells], table["bottom_response"].values[cells],
                [unit_label(table, int(i)) for i in cells], title=f"{short_site(site)}: preferred stimuli"),
                caption=f"For {len(cells)} cells of {site} (rows): the {spec.k} stimuli of the session that drive it "
                        f"most (left, red: response) and least (right, blue), of {len(stim)}.")
        ctx.headline["preferred-stimuli cells"] = int(table.sizes[CELL])
