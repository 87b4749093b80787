"""The unit_lesions step: silence a growing proportion of a site's units per strategy and measure behaviour."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ..protocol import Range
from .base import Needs, Step, StepContext, StepSettings, register_step
from .ratemaps import open_ratemaps
from .weight_lesions import first_stimuli


def _targeted(spec: "UnitLesionsSettings") -> bool:
    return any(s.startswith("targeted") for s in spec.strategy)


class UnitLesionsSettings(StepSettings):
    type: Literal["unit_lesions"]
    site: str
    strategy: list[Literal["random", "targeted", "targeted_abs", "units"]] = ["random", "targeted",
                                                                              "targeted_abs"]
    proportions: Range | list[float] = Field(default_factory=lambda: Range(start=0, stop=1, step=0.1))
    units: list[int] | None = Field(None, description="the unit list for strategy 'units'")
    ratemaps: Annotated[str, Needs("ratemaps", when=_targeted)] = Field(
        "ratemaps", description="ratemaps step that picks targeted units")
    repeats: int = Field(5, gt=0, description="repeats of random lesions (other strategies are deterministic)")
    n_stimuli: int | None = Field(None, gt=0)
    batch_size: int = Field(32, gt=0)
    seed: int = 0

    @field_validator("proportions")
    @classmethod
    def _in_unit_interval(cls, v: Range | list[float]) -> Range | list[float]:
        values = v.values() if isinstance(v, Range) else v
        if not values or min(values) < 0 or max(values) > 1:
            raise ValueError("proportions must lie in [0, 1]")
        return v

    @model_validator(mode="after")
    def _units_listed(self) -> "UnitLesionsSettings":
        if "units" in self.strategy and not self.units:
            raise ValueError("strategy 'units' needs units = [list of unit indices]")
        return self

    def proportion_values(self) -> list[float]:
        return self.proportions.values() if isinstance(self.proportions, Range) else list(self.proportions)


@register_step
class UnitLesions(Step):
    """Silence a growing proportion of a site's units per strategy (random, targeted by the ratemap value at
    each stimulus's position, ...) and measure behaviour (the blog's second lesion experiment)."""

    section = "perturb"
    Settings = UnitLesionsSettings

    def run(self, ctx: StepContext, spec: UnitLesionsSettings) -> None:
        from ..errors import SiteError
        from ..lesions import unit_lesions
        from ..lesions.figures import unit_lesion_figure

        maps = None
        if _targeted(spec):
            with open_ratemaps(ctx.result_of(spec, "ratemaps")) as rm:
                if spec.site not in rm:
                    raise SiteError(f"perturb.{spec.key}: site {spec.site!r} has no ratemaps in analyses/"
                                    f"{spec.ratemaps}.nc; record and map it (mapped: {', '.join(rm)})")
                maps = rm[spec.site].load()
            if "token" in maps.dims:  # targeted lesions silence channels at every token: rank them by the CLS map
                maps = maps.isel(token=0)
                ctx.log.info("unit lesions: ranking units of %s by the ratemaps of token 0 (CLS)", spec.site)
        ds = unit_lesions(ctx.subject, first_stimuli(ctx.stimuli, spec.n_stimuli), ctx.readout, spec.site,
                          strategy=spec.strategy, proportions=spec.proportion_values(), ratemaps=maps,
                          units=spec.units, repeats=spec.repeats, seed=spec.seed, batch_size=spec.batch_size,
                          folder=ctx.scratch)
        for strategy in spec.strategy:
            if ds.sizes["proportion"] > 1:
                half = ds["mean"].sel(strategy=strategy).interp(proportion=0.5)
                ctx.headline[f"{spec.key}: {strategy} @ 50%"] = round(float(half), 3)
        ctx.write_result(ds)
        ctx.write_figure(spec.key, unit_lesion_figure(ds),
                         caption=f"Behaviour (mean probability of the target answer) as a growing proportion of the "
                                 f"units of {spec.site} is silenced, per strategy.")
        ctx.finish_scratch()
