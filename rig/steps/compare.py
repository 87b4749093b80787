"""The `compare` across step: the sessions of a sweep side by side (a `[compare]` table adds it by itself)."""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from .base import ACROSS, Step, StepContext, StepSettings, plan, register_step


class CompareSettings(StepSettings):
    type: Literal["compare"]
    steps: list[str] = Field(["*"], description="globs over the names of the session steps to draw "
                             "(analyse and perturb steps)")


@register_step
class Compare(Step):
    """The point sessions side by side: for each analyse / perturb step that can draw several sessions' results
    (`Step.across_figure`), one figure of all of them, and a table of every session's key numbers."""

    section = ACROSS
    Settings = CompareSettings

    def run(self, ctx: StepContext, spec: CompareSettings) -> None:
        import xarray as xr

        from stimuli.registry import glob_match

        labels = [s.label for s in ctx.sessions]
        chosen = [p for p in plan(ctx.protocol) if p.section in ("analyse", "perturb")
                  and glob_match([p.name], spec.steps)]
        for planned in chosen:
            paths = {s.label: s.layout.result(planned.section, planned.name) for s in ctx.sessions}
            paths = {label: path for label, path in paths.items() if path.is_file()}
            if len(paths) < 2:
                continue
            opened = {label: xr.open_dataset(path) for label, path in paths.items()}
            try:
                fig = planned.step.across_figure(opened)
            finally:
                for ds in opened.values():
                    ds.close()
            if isinstance(fig, tuple):  # (figure, caption)
                fig, caption = fig
            else:
                caption = f"{planned.name} of every session of the sweep, side by side"
            if fig is not None:
                ctx.write_figure(f"{spec.key}_{planned.name}", fig,
                                 caption=f"{caption.rstrip('.')}. Sessions: {'; '.join(paths)}.")
        ctx.write_result(headline_table(ctx.sessions))
        ctx.headline["sessions"] = len(labels)


def headline_table(sessions: list[Any]) -> Any:
    """Every session's numeric key results (`rig ls` headline) as an `xr.Dataset` along `session` (coordinates
    `label` and `id`); a key a session lacks is NaN."""
    import numpy as np
    import xarray as xr

    keys = list(dict.fromkeys(k for s in sessions for k, v in s.info.get("headline", {}).items() if _number(v)))
    data = {k.replace("/", "_"): ("session", np.array([_value(s.info.get("headline", {}).get(k)) for s in sessions]))
            for k in keys}
    return xr.Dataset(data, coords={"session": np.arange(len(sessions)), "label": ("session", [s.label for s in sessions]),
                                    "id": ("session", [s.id for s in sessions])})


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(v: Any) -> float:
    return float(v) if _number(v) else math.nan
