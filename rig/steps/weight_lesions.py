"""The weight_lesions step: zero each weighted module of the chosen towers in turn and measure behaviour."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from stimuli.registry import glob_match

from .base import Step, StepContext, StepSettings, register_step


class WeightLesionsSettings(StepSettings):
    type: Literal["weight_lesions"]
    towers: list[Literal["visual", "text"]] = Field(["visual", "text"])
    modules: list[str] | None = Field(None, description="globs restricting the lesioned modules (default: every "
                                      "weighted module of the towers, in named_modules() order)")
    include_bias: bool = Field(False, description="zero biases too (the study zeroed weights only)")
    n_stimuli: int | None = Field(None, gt=0, description="use the first n stimuli (default all)")
    batch_size: int = Field(32, gt=0)


def first_stimuli(stim, n: int | None):
    """The first `n` stimuli of a set (all when None)."""
    return stim if n is None or n >= len(stim) else stim.subset(slice(0, n))


@register_step
class WeightLesions(Step):
    """Zero each weighted module of the chosen towers in turn and measure behaviour (the blog's first lesion
    experiment); resumable per module."""

    section = "perturb"
    Settings = WeightLesionsSettings

    def check(self, spec: WeightLesionsSettings, pre) -> None:
        from ..errors import RigError
        from ..lesions import weighted_modules

        loc = pre.planned_loc(spec)
        try:
            modules = [m for tower in spec.towers for m in weighted_modules(pre.subject.model, tower)]
        except RigError as e:
            pre.fail(loc + ("towers",), f"{e}; set towers to those")
        if spec.modules is not None and not glob_match(modules, spec.modules):
            pre.fail(loc + ("modules",), f"{spec.modules} match no weighted module of the towers {spec.towers} "
                     f"(e.g. {', '.join(modules[:4])}); `rig sites {pre.source}` lists the module names")
        if getattr(pre.readout, "target", None) is None:
            pre.fail(("behaviour",), "weight lesions measure the probability of a target: set [behaviour] target")

    def run(self, ctx: StepContext, spec: WeightLesionsSettings) -> None:
        from ..errors import SiteError
        from ..lesions import weight_lesions, weighted_modules
        from ..lesions.figures import weight_lesion_figure

        subject = ctx.subject
        modules = [m for tower in spec.towers for m in weighted_modules(subject.model, tower)]
        if spec.modules is not None:
            modules = glob_match(modules, spec.modules)
            if not modules:
                raise SiteError(f"perturb.{spec.key}: modules {spec.modules} match no weighted module of the towers "
                                f"{spec.towers}; `rig sites {ctx.layout.protocol_toml}` lists the module names")
        ds = weight_lesions(subject, first_stimuli(ctx.stimuli, spec.n_stimuli), ctx.readout, modules,
                            include_bias=spec.include_bias, batch_size=spec.batch_size,
                            rebuild_readout=ctx.new_readout, folder=ctx.scratch)
        worst = int(np.argmin(ds["mean"].values))
        ctx.headline[f"{spec.key}: baseline"] = round(float(ds["baseline_mean"]), 3)
        ctx.headline[f"{spec.key}: worst module"] = f"{ds['module'].values[worst]} ({float(ds['mean'][worst]):.3f})"
        ctx.write_result(ds)
        ctx.write_figure(spec.key, weight_lesion_figure(ds),
                         caption="Behaviour (mean probability of the target answer) with each module's weights "
                                 "zeroed in turn, against the intact network (line).")
        ctx.finish_scratch()
