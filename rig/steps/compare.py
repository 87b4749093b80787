"""The compare step: a second preparation (`[compare]`: the protocol with some settings changed, e.g. random
weights) runs as a session nested in `compare/`, and every step that can draws both side by side."""
from __future__ import annotations

from ..protocol import CompareSpec
from .base import Step, StepContext, plan, register_step


@register_step
class Compare(Step):
    """Run the comparison preparation as a nested session (resumed if interrupted, reused if completed), then draw
    each result of both preparations side by side where its step knows how (`Step.compare_figure`)."""

    section = "compare"
    settings_from = "compare"
    Settings = CompareSpec

    def run(self, ctx: StepContext, spec: CompareSpec) -> None:
        import xarray as xr

        other_protocol = ctx.protocol.compared(str(ctx.layout.resolved))
        other = ctx.nested_session(other_protocol, ctx.layout.compare_dir)
        label = spec.label or f"weights={other_protocol.subject.weights}, seed={other_protocol.subject.seed}"
        mine = f"weights={ctx.protocol.subject.weights}, seed={ctx.protocol.subject.seed}"
        for planned in plan(ctx.protocol):
            if planned.section not in ("analyse", "perturb"):
                continue
            mine_path = ctx.layout.result(planned.section, planned.name)
            theirs_path = type(ctx.layout)(other.path).result(planned.section, planned.name)
            if not (mine_path.is_file() and theirs_path.is_file()):
                continue
            with xr.open_dataset(mine_path) as a, xr.open_dataset(theirs_path) as b:
                fig = planned.step.compare_figure(a, b, (mine, label))
                if fig is not None:
                    ctx.write_figure(f"compare_{planned.name}", fig,
                                     caption=f"{planned.name}: this session ({mine}) beside {label}.")
        for key, value in other.info.get("headline", {}).items():
            ctx.headline[f"compare: {key}"] = value
        ctx.headline["compare: session"] = f"compare/{other.id}"
