"""The unit_lesions step: silence a growing proportion of a site's units per strategy and measure behaviour."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..protocol import Range
from .base import Needs, Step, StepContext, StepSettings, register_step
from .ratemaps import open_ratemaps
from .weight_lesions import first_stimuli

Strategy = Literal["random", "targeted", "targeted_abs", "targeted_raw", "targeted_raw_abs", "by_mean", "units"]
#: strategies that rank units by ratemaps / responses (the same as `rig.lesions.RANKED`; no torch imported here)
RANKED = ("targeted", "targeted_abs", "targeted_raw", "targeted_raw_abs", "by_mean")


def _ranked(spec: "UnitLesionsSettings") -> bool:
    return any(s in RANKED for s in spec.strategy)


class UnitLesionsSettings(StepSettings):
    type: Literal["unit_lesions"]
    site: str = Field(..., description="the module whose units are silenced (a name from `rig sites`)")
    strategy: list[Strategy] = Field(
        ["random", "targeted", "targeted_abs", "by_mean"],
        description="random; targeted / targeted_abs: position selectivity (z of the unit's ranking map at the "
                    "stimulus's position, or |z|); targeted_raw / targeted_raw_abs: the raw map value (the blog's); "
                    "by_mean: the units with the highest mean response (position-free control); units: a list")
    unit: Literal["channel", "element"] = Field(
        "channel", description="what a unit is at token / conv sites: a channel (silenced at every token / map "
                               "position, ranked by the ratemap of its mean over them) or an element (one channel at "
                               "one token / map position)")
    ranking: Literal["held_out", "circular"] = Field(
        "held_out", description="held_out: each lesion stimulus ranks units with ratemaps made without its fold; "
                                "circular: one map from all stimuli, the stimulus's own response included (the blog's)")
    folds: int = Field(5, ge=2, description="folds of the lesion stimuli for held-out ranking maps")
    proportions: Range | list[float] = Field(default_factory=lambda: Range(start=0, stop=1, step=0.1))
    units: list[int] | None = Field(None, description="the unit list for strategy 'units'")
    ratemaps: Annotated[str, Needs("ratemaps", when=_ranked)] = Field(
        "ratemaps", description="ratemaps step whose settings (bins, smoothing, ...) make the ranking maps")
    repeats: int = Field(5, gt=0, description="repeats of random lesions (other strategies are deterministic)")
    n_stimuli: int | None = Field(None, gt=0, description="lesion the first n stimuli (default all)")
    batch_size: int = Field(32, gt=0, description="stimuli per batch of the cached prefix")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16: lesioned forwards under autocast (1.6x less CPU per condition on a CPU "
                               "with AVX512-BF16, slower without; GPUs with bf16 units gain more); the first "
                               "stimulus batch is also run in float32 and the largest difference is reported")
    per_forward: int = Field(1, gt=0, description="unit sets (conditions) run together on each stimulus batch: "
                                                  "batch_size x per_forward rows per forward (raise both on a GPU)")
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
    """Silence a growing proportion of a site's units per strategy (random, position-selective, the blog's raw
    ranking, a position-free control, ...) and measure behaviour (the blog's second lesion experiment)."""

    section = "perturb"
    Settings = UnitLesionsSettings

    def check(self, spec: UnitLesionsSettings, pre: Any) -> None:
        """The site exists and runs on the image path, the readout has a target, ranked strategies find the site
        recorded and mapped (with every token for element units), listed units exist."""
        from stimuli.registry import did_you_mean, glob_match

        loc = pre.planned_loc(spec)
        subject = pre.subject
        info = pre.site_info(spec.site)
        if info is None:
            names = [i.name for i in pre.catalogue]
            modules = {n for n, _ in subject.model.named_modules()}
            why = "does not run on the image path" if spec.site in modules else "is no module"
            pre.fail(loc + ("site",), f"site {spec.site!r} {why} of {subject.name}{did_you_mean(spec.site, names)} "
                     "(`rig sites` lists the sites)")
        if getattr(pre.readout, "target", None) is None:
            pre.fail(("behaviour",), f"the unit lesions of perturb.{spec.key} measure the probability of a target: "
                     "set [behaviour] target (and prompts: the choices)")
        if _ranked(spec):
            rm = pre.planned_step("ratemaps", spec.ratemaps)
            mapped = rm is not None and glob_match([spec.site], rm.spec.sites)
            if spec.site not in pre.recorded or not mapped:
                pre.fail(loc + ("site",), f"{', '.join(s for s in spec.strategy if s in RANKED)} lesions at "
                         f"{spec.site!r} need its ratemaps: add it to [record] sites and to the sites of the "
                         f"ratemaps step {spec.ratemaps!r}")
            tokens = pre.protocol.record.tokens
            if spec.unit == "element" and info.layout == "tokens" and tokens != "all":
                pre.fail(loc + ("unit",), f"unit = 'element' at token site {spec.site!r} ranks every token of it, "
                         f"but [record] tokens = {tokens!r}; record tokens = 'all', or use unit = 'channel'")
        if spec.units:
            from ..lesions.silence import n_site_units

            n = n_site_units(info.shape, spec.unit)
            bad = [u for u in spec.units if not 0 <= u < n]
            if bad or len(set(spec.units)) != len(spec.units):
                pre.fail(loc + ("units",), f"units must be distinct indices in [0, {n}) ({spec.unit}s of "
                         f"{spec.site!r}); got {bad[:5] or 'duplicates'}")

    def run(self, ctx: StepContext, spec: UnitLesionsSettings) -> None:
        import numpy as np

        from ..lesions import unit_lesions
        from ..lesions.figures import unit_lesion_caption, unit_lesion_figure
        from ..lesions.ranking import held_out_scores, map_scores, per_unit

        stim = first_stimuli(ctx.stimuli, spec.n_stimuli)
        scores = None
        if _ranked(spec):
            rm_spec = ctx.referenced(spec, "ratemaps").spec
            with ctx.recording() as rec:
                responses = rec[spec.site]
                lesion = np.arange(len(stim))
                if spec.ranking == "held_out":
                    scores = held_out_scores(responses, lesion, unit=spec.unit, folds=spec.folds, seed=spec.seed,
                                             **rm_spec.map_kwargs(ctx.stimuli.canvas))
                else:
                    mean = per_unit(responses, spec.unit, lead=("stimulus",)).mean(0)
                    with open_ratemaps(ctx.result_of(spec, "ratemaps")) as rm:
                        x, y = (responses[c].values[lesion] for c in ("x", "y"))
                        scores = map_scores(rm[spec.site].load(), x, y, spec.unit, mean=mean)
            ctx.log.info("unit lesions: units ranked by %s; %d stimuli ranked at the nearest visited bin",
                         scores.ranking, scores.n_nearest)
        ds = unit_lesions(ctx.subject, stim, ctx.readout, spec.site, strategy=spec.strategy,
                          proportions=spec.proportion_values(), scores=scores, unit=spec.unit, units=spec.units,
                          repeats=spec.repeats, seed=spec.seed, batch_size=spec.batch_size,
                          per_forward=spec.per_forward, precision=spec.precision, folder=ctx.scratch)
        if "precision_max_abs_diff" in ds.attrs:
            ctx.log.info("unit lesions in %s: %s = %.3g", spec.precision, ds.attrs["precision_check"],
                         ds.attrs["precision_max_abs_diff"])
            ctx.headline[f"{spec.key}: {spec.precision} max |error| (first batch)"] = round(
                float(ds.attrs["precision_max_abs_diff"]), 4)
        for strategy in spec.strategy:
            if ds.sizes["proportion"] > 1:
                half = ds["mean"].sel(strategy=strategy).interp(proportion=0.5)
                ctx.headline[f"{spec.key}: {strategy} @ 50%"] = round(float(half), 3)
        positive = ds["proportion"].values[ds["proportion"].values > 0]
        if "overlap_by_mean" in ds and len(positive):
            p = float(positive[np.abs(positive - 0.1).argmin()])
            for strategy in ("targeted", "targeted_abs"):
                if strategy in spec.strategy:  # is the targeted set just the loudest units? (1 = the same)
                    value = float(ds["overlap_by_mean"].sel(strategy=strategy, proportion=p))
                    ctx.headline[f"{spec.key}: {strategy} overlap with by_mean @ {p:.0%}"] = round(value, 3)
        ctx.write_result(ds)
        ctx.write_figure(spec.key, unit_lesion_figure(ds), caption=unit_lesion_caption(ds))
        ctx.finish_scratch()
