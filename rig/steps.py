"""The steps of a session (design, record, analyse/<name>, perturb/<name>), one function each.

Every step reads earlier steps' files from the session folder, writes its own outputs atomically, and returns
the list of files it wrote (relative to the folder). Heavy objects (subject, stimuli) are built lazily and
shared between the steps of one run.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from .io import atomic_path, write_json
from .protocol import Protocol

#: analyse/perturb step type -> function(ctx, spec) -> list of output files
STEP_TYPES: dict[str, Callable[["StepContext", Any], list[str]]] = {}


def step_type(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        STEP_TYPES[name] = fn
        return fn

    return deco


@dataclass
class StepContext:
    folder: Path
    protocol: Protocol
    log: logging.Logger
    progress: bool = True
    headline: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def stimuli(self):
        from stimuli import StimulusSet

        return StimulusSet.from_netcdf(self.folder / "stimuli.nc")

    @cached_property
    def subject(self):
        from .subjects import load_subject

        subject = load_subject(**self.protocol.subject.kwargs())
        self.log.info("subject %s on %s", subject.name, subject.device)
        return subject

    @cached_property
    def readout(self):
        if self.protocol.behaviour is None:
            return None
        from .behaviour import make_readout

        return make_readout(self.subject, self.protocol.behaviour.model_dump())

    def recording(self) -> xr.Dataset:
        from .recorder import open_recording

        return open_recording(self.folder / "recording.nc")

    def write_dataset(self, relative: str, ds: xr.Dataset) -> str:
        with atomic_path(self.folder / relative) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4")
        return relative

    def write_figure(self, name: str, fig: Any, dpi: int = 110) -> str:
        relative = f"figures/{name}.png"
        with atomic_path(self.folder / relative) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        return relative

    def update_provenance(self, **fields: Any) -> None:
        path = self.folder / "provenance.json"
        data = json.loads(path.read_text())
        data.update(fields)
        write_json(path, data)


def run_step(ctx: StepContext, key: str) -> list[str]:
    """Run the step named `key` (as in session.json's steps) and return the files it wrote."""
    if key == "design":
        return design(ctx)
    if key == "record":
        return record(ctx)
    section, name = key.split("/", 1)
    spec = next(s for s in getattr(ctx.protocol, section) if s.key == name)
    return STEP_TYPES[spec.type](ctx, spec)


def design(ctx: StepContext) -> list[str]:
    """Generate the stimulus set; store its parameter table and two figures."""
    import stimuli

    spec = ctx.protocol.stimuli
    stim = stimuli.make(spec.generator, **spec.params())
    with atomic_path(ctx.folder / "stimuli.nc") as tmp:
        stim.to_netcdf(tmp)
    ctx.__dict__["stimuli"] = stim
    ctx.update_provenance(stimulus_hash=stim.content_hash())
    ctx.headline["stimuli"] = len(stim)
    return ["stimuli.nc",
            ctx.write_figure("stimuli_contact_sheet", stimuli.contact_sheet(stim, n=16, seed=spec.seed)),
            ctx.write_figure("stimuli_overview", stimuli.overview(stim))]


def record(ctx: StepContext) -> list[str]:
    """Show every stimulus to the subject; stream the chosen sites to recording.nc and behaviour to behaviour.nc."""
    from .recorder import record as record_sites

    spec = ctx.protocol.record
    subject = ctx.subject
    ctx.update_provenance(device=str(subject.device), weights_sha256=_weights_sha256(subject.model))
    record_sites(subject, ctx.stimuli, spec.sites, ctx.folder / "recording.nc", tokens=spec.tokens,
                 dtype=spec.dtype, batch_size=spec.batch_size, readout=ctx.readout, progress=ctx.progress,
                 compression=spec.compression, overwrite=True)
    outputs = ["recording.nc"]
    if ctx.readout is not None:
        outputs.append("behaviour.nc")
        with xr.open_dataset(ctx.folder / "behaviour.nc") as beh:
            if "target_probability" in beh:
                p = beh["target_probability"].values
                ctx.headline["behaviour"] = f"{float(np.mean(p)):.3f} +/- {float(np.std(p)):.3f}"
                ctx.headline["behaviour_target"] = str(beh.attrs.get("target", ""))
    with xr.open_dataset(ctx.folder / "recording.nc") as rec:
        ctx.headline["sites"] = len(rec.data_vars)
        ctx.headline["units"] = int(sum(np.prod([rec[v].sizes[d] for d in rec[v].dims if d != "stimulus"])
                                        for v in rec.data_vars))
    return outputs


def _weights_sha256(model: Any) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes): identifies the preparation."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
