"""A step is one object in one place: its settings (a pydantic model), the earlier results it reads (settings
fields marked `Needs`), the check it makes before any stimulus is shown, and how it runs.

    from typing import Literal
    from rig.steps import Step, StepSettings, Needs, register_step

    @register_step
    class ResponseStats(Step):
        '''Mean and sd of every unit over the stimuli.'''
        section = "analyse"

        class Settings(StepSettings):
            type: Literal["response_stats"]
            sites: list[str] = ["*"]

        def run(self, ctx, spec):
            ...                                   # read ctx.recording(), write ctx.write_result(dataset)

The step's type is the `type` literal of its settings; the protocol's step tables, their dependency checks and
`rig schema` are derived from the registered steps. A step's result file is `ctx.layout.result(section, name)`
(`analyses/<name>.nc`); a step reads another's through `ctx.result_of(spec, field)`, where `field` is a
settings field annotated `Needs("ratemaps")` that names the step. Plugins register from their own package
through the entry point group `rig.steps` (a module whose import registers, or a `Step` subclass).
"""
from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from stimuli.registry import Registry

from ..layout import SessionLayout

#: protocol sections of a session's steps in the order they run; "design" and "record" hold one step each
SECTIONS = ("design", "record", "analyse", "perturb")
LIST_SECTIONS = ("analyse", "perturb")
#: the `[[across]]` steps of a sweep: they run once every point's session is done, in the sweep's folder
ACROSS = "across"
#: every section written as an array of step tables, in the order their steps run
TABLE_SECTIONS = LIST_SECTIONS + (ACROSS,)


class Strict(BaseModel):
    """A protocol table: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class StepSettings(Strict):
    """Settings of one `[[analyse]]` / `[[perturb]]` step: `type` (a `Literal` of the step type) and `name`."""

    name: str | None = Field(None, description="name of the result (default: the type); unique per section")

    @property
    def key(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Needs:
    """Marks a settings field (`Annotated[str, Needs("ratemaps")]`) as naming an earlier step of that type, whose
    result this step reads. `when(settings)` limits the need (e.g. only targeted lesions read ratemaps)."""

    type: str
    when: Callable[[Any], bool] | None = None

    def applies(self, settings: Any) -> bool:
        return self.when is None or bool(self.when(settings))


class Step:
    """One step type. Subclasses set `section` and `Settings` and implement `run`; `check` is optional.

    `section`: `analyse` or `perturb` for steps written as `[[analyse]]` / `[[perturb]]` tables; the fixed
    steps `design` and `record` have their own section and read their settings from the protocol table named
    by `settings_from` (`stimuli`, `record`). `across`: a step of a sweep (`[[across]]` tables), run once
    every point's session is done, in the sweep's folder, with `ctx.sessions` (the point sessions in order).
    """

    section: ClassVar[str] = "analyse"
    Settings: ClassVar[type[BaseModel]]
    settings_from: ClassVar[str | None] = None

    @property
    def type(self) -> str:
        """The step type: the `type` literal of `Settings` (for the fixed steps, their section)."""
        if self.settings_from is not None:
            return self.section
        return settings_type(self.Settings)

    @property
    def description(self) -> str:
        return (type(self).__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def needs(self) -> dict[str, Needs]:
        """Settings field -> the step type it names (fields annotated with `Needs`)."""
        out = {}
        for name, info in self.Settings.model_fields.items():
            for meta in info.metadata:
                if isinstance(meta, Needs):
                    out[name] = meta
        return out

    def check(self, spec: Any, pre: "Preflight") -> None:
        """Check `spec` against the built subject before any stimulus is shown (raise `RigError`s that say what
        to fix; `pre.fail(...)` names the protocol line). Default: nothing to check."""

    def run(self, ctx: "StepContext", spec: Any) -> None:
        """Run the step: read inputs through `ctx`, write outputs with `ctx.write_result` / `ctx.write_figure`."""
        raise NotImplementedError

    def compare_figure(self, a: Any, b: Any, labels: tuple[str, str]) -> Any | None:
        """A figure of this step's results of two preparations side by side, or None."""
        return None

    def across_figure(self, results: "typing.Mapping[str, Any]") -> Any | None:
        """A figure of this step's results in several sessions (label -> result dataset, in the sweep's order)
        side by side, drawn by the `compare` across step, or `(figure, caption)`; None when the step has none.
        Default: two sessions through `compare_figure`."""
        if len(results) == 2:
            (la, a), (lb, b) = results.items()
            return self.compare_figure(a, b, (la, lb))
        return None

    def __repr__(self) -> str:
        return f"<step {self.type} ({self.section})>"


def settings_type(settings: type[BaseModel]) -> str:
    """The step type named by a settings model's `type: Literal["..."]` field."""
    info = settings.model_fields.get("type")
    args = typing.get_args(info.annotation) if info is not None else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{settings.__qualname__} needs a field `type: Literal['<step type>']`")
    return args[0]


def _adopt(name: str, obj: Any) -> None:
    register_step(obj)


steps: Registry[Step] = Registry("step type", "rig.steps", adopt=_adopt, builtin=(
    "rig.steps.design", "rig.steps.record", "rig.steps.ratemaps", "rig.steps.spatial_scores",
    "rig.steps.weight_lesions", "rig.steps.unit_lesions", "rig.steps.compare", "rig.steps.rsa", "rig.steps.ncut",
    "rig.steps.alignedcut", "rig.steps.segmentation",
    "rig.steps.gradient_rfs", "rig.steps.rf_structure", "rig.steps.reverse_correlation", "rig.steps.preferred_stimuli",
    "rig.steps.saliency_channels"))


def register_step(step: type[Step] | Step) -> Any:
    """Register a `Step` subclass (usable as a class decorator) or instance under its type; returns the argument."""
    instance = step() if isinstance(step, type) else step
    if not isinstance(instance, Step):
        raise TypeError(f"{step!r} is not a rig.steps.Step")
    if instance.section not in SECTIONS + (ACROSS,):
        raise ValueError(f"step {instance.type!r}: section must be one of {SECTIONS + (ACROSS,)}, got "
                         f"{instance.section!r}")
    steps.register(instance.type, instance)
    return step


def list_steps(pattern: str | None = None, section: str | None = None) -> list[str]:
    """Registered step types (optionally matching a glob, or of one section)."""
    return [n for n in steps.names(pattern) if section is None or steps[n].section == section]


def is_step(name: str) -> bool:
    return name in steps


def get_step(name: str) -> Step:
    return steps.lookup(name)


# ----------------------------------------------------------------------------------------------------------
# the plan of a session, and the context a step runs in


@dataclass(frozen=True)
class PlannedStep:
    """One step of a session: `key` as in session.json (`design`, `analyse/ratemaps`, ...), the step, its
    settings, and its protocol location (`("analyse", 0)`, or `("stimuli",)` for the fixed steps)."""

    key: str
    step: Step
    spec: Any
    loc: tuple

    @property
    def section(self) -> str:
        return self.step.section

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[-1]


def plan(protocol: Any) -> list[PlannedStep]:
    """The steps of a session of `protocol` in the order they run (a sweep's `[[across]]` steps: `plan_across`)."""
    out = []
    for section in SECTIONS:
        if section in LIST_SECTIONS:
            for i, spec in enumerate(getattr(protocol, section)):
                out.append(PlannedStep(f"{section}/{spec.key}", steps.lookup(spec.type), spec, (section, i)))
        else:
            step = steps.lookup(section)
            spec = getattr(protocol, step.settings_from)
            if spec is not None:
                out.append(PlannedStep(section, step, spec, (step.settings_from,)))
    return out


def plan_across(protocol: Any) -> list[PlannedStep]:
    """The `[[across]]` steps of a sweep protocol in the order they run (keys `across/<name>`)."""
    return [PlannedStep(f"{ACROSS}/{spec.key}", steps.lookup(spec.type), spec, (ACROSS, i))
            for i, spec in enumerate(getattr(protocol, ACROSS, None) or [])]


@dataclass
class Shared:
    """What the steps of one run share, built once: the subject, its behaviour readout, the stimulus set."""

    subject: Any = None
    readout: Any = None
    stimuli: Any = None


@dataclass
class StepContext:
    """What a step sees: the session folder (`layout`), the protocol, a log, the headline (key results shown by
    `rig ls`), shared objects, and the files it wrote (`outputs`, relative paths). An `[[across]]` step runs in
    the sweep's folder (`layout` is a `rig.layout.SweepLayout`) and sees `sessions`: the point sessions in
    order (`rig.Session`, each with `.point`, its overrides, and `.label`)."""

    layout: SessionLayout
    protocol: Any
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("rig.session"))
    progress: bool = True
    headline: dict[str, Any] = field(default_factory=dict)
    shared: Shared = field(default_factory=Shared)
    planned: PlannedStep | None = None
    outputs: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    sessions: list[Any] = field(default_factory=list)

    def for_step(self, planned: PlannedStep) -> "StepContext":
        """The context of one step (same shared objects and headline, its own outputs)."""
        return replace(self, planned=planned, outputs=[], captions={})

    @property
    def folder(self) -> Path:
        return self.layout.folder

    # -- shared objects ----------------------------------------------------------------------------------
    @property
    def subject(self) -> Any:
        if self.shared.subject is None:
            from ..subjects import load_subject

            self.shared.subject = load_subject(**self.protocol.subject.kwargs())
            self.log.info("subject %s on %s", self.shared.subject.name, self.shared.subject.device)
        return self.shared.subject

    @property
    def readout(self) -> Any:
        """The session's behaviour readout (None without [behaviour]), built once."""
        if self.shared.readout is None and self.protocol.behaviour is not None:
            self.shared.readout = self.new_readout()
        return self.shared.readout

    def new_readout(self) -> Any:
        """A fresh readout of the subject as it is now (e.g. text embeddings under a text-tower lesion)."""
        from ..behaviour import make_readout

        return make_readout(self.subject, self.protocol.behaviour.model_dump())

    @property
    def stimuli(self) -> Any:
        """The session's stimulus set (from `stimuli.nc` unless the design step just made it)."""
        if self.shared.stimuli is None:
            from stimuli.base import StimulusSet

            self.shared.stimuli = StimulusSet.from_netcdf(self.layout.stimuli)
        return self.shared.stimuli

    def recording(self) -> Any:
        """The recording (`rig.dims.Recording`: site -> lazy DataArray in canonical dims)."""
        from ..dims import open_recording

        return open_recording(self.layout.recording)

    # -- other steps' results ------------------------------------------------------------------------------
    def referenced(self, spec: Any, field_name: str) -> PlannedStep:
        """The earlier step that settings field `field_name` (annotated `Needs`) names."""
        need = steps.lookup(spec.type).needs()[field_name]
        name = getattr(spec, field_name)
        for p in plan(self.protocol) + plan_across(self.protocol):
            if p.step.type == need.type and p.name == name:
                return p
        from ..errors import ProtocolError

        raise ProtocolError(f"{spec.key}: {field_name} = {name!r} names no {need.type} step")

    def result_of(self, spec: Any, field_name: str) -> Path:
        """The result file of the step that `field_name` names (see `referenced`); in an across step, of an
        earlier across step (a session step's files: `results_of`)."""
        p = self.referenced(spec, field_name)
        return self.layout.result(p.section, p.name)

    def results_of(self, spec: Any, field_name: str) -> dict[str, Path]:
        """In an across step: the result file, in each point session, of the session step that `field_name`
        names, as `{session label: path}` in the sweep's order (a session without the file is left out)."""
        p = self.referenced(spec, field_name)
        found = {s.label: s.layout.result(p.section, p.name) for s in self.sessions}
        return {label: path for label, path in found.items() if path.is_file()}

    # -- writing -------------------------------------------------------------------------------------------
    @property
    def result_path(self) -> Path:
        """This step's own result file (`analyses/<name>.nc`, `perturb/<name>.nc`)."""
        return self.layout.result(self.planned.section, self.planned.name)

    @property
    def scratch(self) -> Path:
        """This step's working folder (removed by `finish_scratch` when the step is done)."""
        return self.layout.scratch(self.planned.section, self.planned.name)

    def write_result(self, ds: Any) -> Path:
        """Write this step's result dataset (atomically) and count it as an output."""
        return self._out(self.layout.write_dataset(self.result_path, ds))

    def write_dataset(self, path: Path, ds: Any) -> Path:
        return self._out(self.layout.write_dataset(path, ds))

    def write_figure(self, name: str, fig: Any, caption: str = "", dpi: int = 110) -> Path:
        """Save a matplotlib figure as `figures/<name>.png` (atomically) and count it as an output. `caption`:
        a sentence or two a reader of the report needs (what is plotted, units, what a band or line means);
        the report shows it under the figure, in the order the steps ran."""
        path = self._out(self.layout.write_figure(name, fig, dpi=dpi))
        self.captions[self.layout.relative(path)] = caption
        return path

    def wrote(self, path: Path) -> Path:
        """Count a file written by other means (e.g. the recorder) as an output of this step."""
        return self._out(path)

    def finish_scratch(self) -> None:
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)

    def _out(self, path: Path) -> Path:
        rel = self.layout.relative(path)
        if rel not in self.outputs:
            self.outputs.append(rel)
        return path


# ----------------------------------------------------------------------------------------------------------
# preflight


@dataclass
class Preflight:
    """What a step's `check` sees before any folder is made: the protocol and its file, the built subject, its
    site catalogue, the recorded sites (names), the behaviour readout and the stimulus set (parameters only;
    nothing is rendered). `fail(loc, message)` raises a `ProtocolError` naming the file, line and key of `loc`
    (e.g. `("perturb", 0, "site")`)."""

    protocol: Any
    source: str
    subject: Any
    catalogue: list
    recorded: list[str]
    readout: Any
    stimuli: Any = None
    overrides: list[str] | None = None  # the --set overrides: a mistake in one is blamed on it, not a line

    def fail(self, loc: tuple, message: str) -> typing.NoReturn:
        from ..errors import ProtocolError
        from ..protocol import where

        raise ProtocolError(f"{where(self.source, loc, self.overrides)}: {'.'.join(map(str, loc))}: {message}")

    def site_info(self, name: str) -> Any:
        return next((i for i in self.catalogue if i.name == name), None)

    def planned_loc(self, spec: Any) -> tuple:
        """The protocol location of a step's settings: `("analyse", 0)`."""
        return next(p.loc for p in plan(self.protocol) if p.spec is spec)

    def planned_step(self, step_type: str, name: str) -> PlannedStep | None:
        """The step of type `step_type` named `name` in this protocol (None if there is none)."""
        return next((p for p in plan(self.protocol) if p.step.type == step_type and p.name == name), None)
