"""The record step: show every stimulus to the subject, stream the chosen sites and the behaviour to disk."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..dims import n_values
from ..protocol import RecordSpec
from .base import Step, StepContext, register_step


@register_step
class Record(Step):
    """Show every stimulus to the subject; stream the chosen sites to `recording.nc` and behaviour to
    `behaviour.nc`, from the same forward pass."""

    section = "record"
    settings_from = "record"
    Settings = RecordSpec

    def run(self, ctx: StepContext, spec: Any) -> None:
        import xarray as xr

        from ..recorder import record

        subject = ctx.subject
        ctx.layout.update_provenance(device=str(subject.device), weights_sha256=subject.weights_hash(),
                                     subject=subject.describe())
        record(subject, ctx.stimuli, spec.sites, ctx.layout.recording, tokens=spec.tokens, dtype=spec.dtype,
               batch_size=spec.batch_size, readout=ctx.readout, progress=ctx.progress, compression=spec.compression,
               behaviour_path=ctx.layout.behaviour, overwrite=True)
        ctx.wrote(ctx.layout.recording)
        if ctx.readout is not None:
            ctx.wrote(ctx.layout.behaviour)
            with xr.open_dataset(ctx.layout.behaviour) as beh:
                if "target_probability" in beh:
                    p = beh["target_probability"].values
                    target = str(beh.attrs.get("target", "target"))
                    ctx.headline[f"P({target})"] = round(float(np.mean(p)), 4)  # numbers: rig diff / ls --where
                    ctx.headline[f"P({target}) sd"] = round(float(np.std(p)), 4)
        with ctx.recording() as rec:
            ctx.headline["sites"] = len(rec)
            ctx.headline["units"] = sum(n_values(rec[s]) for s in rec)
