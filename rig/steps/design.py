"""The design step: generate the stimulus set from `[stimuli]`, store its parameter table and its figures."""
from __future__ import annotations

from typing import Any

from ..io import atomic_path
from ..protocol import StimuliSpec
from .base import Step, StepContext, register_step


@register_step
class Design(Step):
    """Generate the stimulus set; store its parameters (`stimuli.nc`) and the figures its generator asks for."""

    section = "design"
    settings_from = "stimuli"
    Settings = StimuliSpec

    def run(self, ctx: StepContext, spec: Any) -> None:
        import stimuli

        stim = ctx.shared.stimuli or stimuli.make(spec.generator, **spec.params())  # preflight may have made it
        with atomic_path(ctx.layout.stimuli) as tmp:
            stim.to_netcdf(tmp)
        ctx.wrote(ctx.layout.stimuli)
        ctx.shared.stimuli = stim
        ctx.layout.update_provenance(stimulus_hash=stim.content_hash())
        ctx.headline["stimuli"] = len(stim)
        for name, figure in stimuli.figures_for(stim).items():
            ctx.write_figure(f"stimuli_{name}", figure.draw(stim), caption=figure.caption)
