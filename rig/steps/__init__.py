"""The steps of a session: one `Step` object per step type, in one module each, registered by type.

Built-in steps: `design` (stimuli), `record`, the `[[analyse]]` steps `ratemaps` and `spatial_scores`, the
`[[perturb]]` steps `weight_lesions` and `unit_lesions`, the RSA study's `[[analyse]]` steps `saliency_maps`,
`rsa` and `brain_rsa`, and the `[[across]]` step `compare` of sweeps. `plan(protocol)` lists a session's steps
in the order they run, `plan_across(protocol)` a sweep's across steps; `run_step(ctx, planned)` runs one. See
`rig.steps.base` for how to write a step.
"""
from __future__ import annotations

from .base import (ACROSS, LIST_SECTIONS, SECTIONS, TABLE_SECTIONS, Needs, PlannedStep, Preflight, Shared, Step, StepContext, StepSettings,
                   Strict, get_step, is_step, list_steps, plan, plan_across, register_step, steps)


def run_step(ctx: StepContext, planned: PlannedStep) -> StepContext:
    """Run one planned step in a context of its own; returns that context (`outputs`: the files it wrote,
    relative to the folder; `captions`: figure -> caption)."""
    step_ctx = ctx.for_step(planned)
    planned.step.run(step_ctx, planned.spec)
    return step_ctx


__all__ = ["ACROSS", "LIST_SECTIONS", "SECTIONS", "TABLE_SECTIONS", "Needs", "PlannedStep", "Preflight", "Shared", "Step", "StepContext",
           "StepSettings", "Strict", "get_step", "is_step", "list_steps", "plan", "plan_across", "register_step", "run_step", "steps"]
