"""Protocol files: a versioned, strict TOML schema, validated with pydantic, errors as `file:line: key: message`.

A protocol is data: nothing in it is executed, except the module named by `subject.factory` (for
`source = "factory"`), which is imported on purpose when the subject is built.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from stimuli.registry import did_you_mean

from .errors import ProtocolError
from .steps.base import ACROSS, TABLE_SECTIONS, StepSettings, Strict, steps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1


class SaliencyChannelsSpec(Strict):
    """Saliency as extra input channels (`rig.saliency_input`): the subject's preprocess appends a saliency map and
    its smoothed Sobel gradients, for networks that take 3 + len(channels) input channels."""

    model: str = Field("spectral_residual", description="a saliency model of analyses (spectral_residual, "
                       "itti_koch) or 'module:function' mapping (B, 3, H, W) images to (B, H, W) maps")
    sigma: float = Field(5.0, ge=0, description="s.d. (px) of the Gaussian smoothing before the Sobel gradients")
    channels: list[Literal["saliency", "dx", "dy"]] = Field(["saliency", "dx", "dy"], min_length=1,
                                                            description="the extra channels, in order")


class SubjectSpec(Strict):
    """The network under study and its preparation."""

    source: str = Field("open_clip", description="where the network comes from: a registered subject source "
                        "(open_clip, timm, torchvision, factory, phantom, or one of an installed plugin)")
    arch: str | None = Field(None, description="model name in the source library, e.g. 'ViT-B-32'")
    weights: str = Field("random", description="'random' (seeded init, the control preparation), a library "
                         "pretrained tag (e.g. 'openai'), or a path to a local checkpoint file")
    seed: int = Field(0, description="seed of the random initialisation")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    factory: str | None = Field(None, description="'package.module:callable' returning a torch module, or "
                                "(module, transform); imported and called (source = 'factory' only)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    saliency_channels: SaliencyChannelsSpec | None = Field(None, description="append saliency channels to the "
                                                           "subject's input (for networks that take them)")

    @model_validator(mode="after")
    def _source_needs(self) -> "SubjectSpec":
        from .sources import sources

        if self.source not in sources:
            raise ValueError(f"unknown subject source {self.source!r}{did_you_mean(self.source, list(sources))} "
                             f"(known: {', '.join(sources)})")
        if self.source == "factory":
            if not self.factory or not re.fullmatch(r"[\w.]+:[\w.]+", self.factory):
                raise ValueError("source = 'factory' needs factory = 'package.module:callable'")
        elif self.factory is not None:
            raise ValueError(f"factory is only used with source = 'factory' (source is {self.source!r})")
        if sources[self.source].needs_arch and not self.arch:
            raise ValueError(f"source = {self.source!r} needs arch = '<model name>'")
        return self

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `rig.subjects.load_subject`."""
        out = self.model_dump(exclude={"options", "saliency_channels"})
        if self.options:
            out["options"] = dict(self.options)
        if self.saliency_channels is not None:
            out["saliency_channels"] = self.saliency_channels.model_dump()
        return out


class StimuliSpec(BaseModel):
    """Generator name plus its parameters (checked against the generator's own arguments)."""

    model_config = ConfigDict(extra="allow")
    generator: str = Field("circles", description="a registered stimulus generator (circles, shapes, ...; "
                           "`rig schema` lists them)")
    n: int = Field(300, description="number of stimuli", gt=0)
    seed: int = Field(0, description="the one seed for every random choice of the design")

    @model_validator(mode="after")
    def _generator_defaults(self) -> "StimuliSpec":
        """Fill in the generator's own defaults, so the resolved protocol says every setting of the design."""
        import inspect

        from stimuli.catalog import generators

        fn = generators.get(self.generator)
        if fn is not None:
            for name, p in inspect.signature(fn).parameters.items():
                if name not in self.model_fields_set and name not in (self.model_extra or {}) \
                        and name not in type(self).model_fields and p.default is not inspect.Parameter.empty \
                        and name != "generator":
                    default = list(p.default) if isinstance(p.default, tuple) else p.default
                    if default is None or isinstance(default, (bool, int, float, str, list)):
                        setattr(self, name, default)
        return self

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the generator."""
        return {k: v for k, v in self.model_dump().items() if k != "generator"}


class SiteSelection(Strict):
    """Sites chosen by module type (the study's whole-network sweeps), optionally within name globs."""

    types: list[str] = Field(..., min_length=1, description="module class names, e.g. ['Conv2d', 'LayerNorm']")
    names: list[str] = Field(["*"], min_length=1, description="globs over the module names")


class RecordSpec(Strict):
    sites: list[str] | SiteSelection = Field(..., description="globs over the subject's module names, or "
                                             "{ types = ['Conv2d', 'LayerNorm'], names = [globs] }")
    tokens: Literal["cls", "patches", "all"] | list[int] = Field("cls", description="tokens of transformer sites")
    dtype: Literal["float32", "int16"] = Field("float32", description="storage type; int16 = packed, half size")
    batch_size: int = Field(32, gt=0)
    compression: bool = Field(False, description="zlib compression (slower to write)")

    @field_validator("sites")
    @classmethod
    def _some_sites(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one site glob, or { types = [...] }")
        return value


class BehaviourSpec(Strict):
    """The network's answer per stimulus. CLIP subjects: zero-shot over `prompts`. Classifiers: a softmax over
    all their classes (`top_k` keeps the k best per stimulus), or over the classes named in `prompts`;
    `target` is the correct answer: one of the prompts, or a class name (e.g. "tench" for ImageNet models)."""

    prompts: list[str] | None = Field(None, description="zero-shot prompts (CLIP subjects), or class names of "
                                      "a classifier to choose among")
    target: str | None = Field(None, description="the correct answer: one of the prompts, or a class name")
    top_k: int | None = Field(None, gt=0, description="classifiers: keep the top-k class probabilities")

    @model_validator(mode="after")
    def _target_in_prompts(self) -> "BehaviourSpec":
        if self.target is not None and self.prompts and self.target not in self.prompts:
            raise ValueError(f"target {self.target!r} must be one of the prompts {self.prompts}")
        return self


class Range(Strict):
    """An inclusive arithmetic range, e.g. proportions 0 to 1 in steps of 0.025 (41 values)."""

    start: float
    stop: float
    step: float = Field(..., gt=0)

    def values(self) -> list[float]:
        """`start, start + step, ...` up to `stop` included (within 1e-9 of a step), rounded to 1e-9."""
        n = int(math.floor((self.stop - self.start) / self.step + 1e-9)) + 1
        return [round(self.start + i * self.step, 9) for i in range(max(n, 0))]


class CompareSpec(Strict):
    """A second preparation run through the same protocol, for side-by-side figures (e.g. trained vs random)."""

    overrides: list[str] = Field(..., min_length=1, description="settings of the second preparation as "
                                 "key.path=value, e.g. ['subject.weights=random']")
    label: str | None = Field(None, description="name of the second preparation in figures (default: its "
                              "weights)")


class SweepSpec(Strict):
    """One session per point: a grid (every combination of the listed values) and/or a list of points, each a
    set of protocol settings by key path (`"subject.arch"`, `"stimuli.seed"`, `"analyse.0.bins"`); with both,
    every point is crossed with the grid. A point may carry a `label` (its name in figures)."""

    grid: dict[str, Any] = Field(default_factory=dict, description='key path -> list of values, e.g. '
                                 '{"subject.weights" = ["random", "openai"], "stimuli.seed" = [0, 1]}')
    points: list[dict[str, Any]] = Field(default_factory=list, description='list of {key path = value, ...}, '
                                         'e.g. [{"subject.arch" = "RN50"}, {"subject.arch" = "ViT-B-32", '
                                         'label = "CLIP ViT"}]')

    @model_validator(mode="after")
    def _not_empty(self) -> "SweepSpec":
        if not self.grid and not self.points:
            raise ValueError("a sweep needs grid = {\"key.path\" = [values, ...]} or points = [{...}, ...]")
        return self


class Protocol(Strict):
    """A validated protocol. The step tables `analyse` and `perturb` hold the settings of registered step types
    (`rig.steps`); `protocol_model()` is the schema with their unions, which validation uses."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="version of this schema")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][\w.-]*$", max_length=64,
                      description="short name (letters, digits, . _ -), used in session ids")
    description: str = ""
    subject: SubjectSpec
    stimuli: StimuliSpec = Field(default_factory=StimuliSpec)
    record: RecordSpec
    behaviour: BehaviourSpec | None = None
    analyse: list[StepSettings] = Field(default_factory=list, description="analysis steps, run in order")
    perturb: list[StepSettings] = Field(default_factory=list, description="perturbation steps, run in order")
    compare: CompareSpec | None = None
    sweep: SweepSpec | None = Field(None, description="run one session per point (`rig sweep`)")
    across: list[StepSettings] = Field(default_factory=list, description="steps run once every point of the "
                                       "sweep is done, over all its sessions")
    _points: Any = PrivateAttr(None)  # a sweep's points (`rig.sweeps.Point`), expanded at validation

    @model_validator(mode="after")
    def _steps_fit_together(self) -> "Protocol":
        if self.sweep is not None and self.compare is not None:
            raise ValueError("a protocol has [sweep] or [compare], not both: add the compared preparation as a "
                             "point of the sweep, and an [[across]] step of type \"compare\"")
        if self.across and self.sweep is None and self.compare is None:
            raise ValueError("[[across]] steps run over the sessions of a sweep: add a [sweep] table")
        for section in TABLE_SECTIONS:
            keys = [s.key for s in getattr(self, section)]
            dup = {k for k in keys if keys.count(k) > 1}
            if dup:
                raise ValueError(f"{section} steps need unique names; give `name = ...` to: {sorted(dup)}")
        earlier: list[tuple[str, str]] = []  # (type, name) of the steps before, in the order steps run
        for section in TABLE_SECTIONS:
            for i, spec in enumerate(getattr(self, section)):
                for field, need in steps[spec.type].needs().items():
                    value = getattr(spec, field)
                    if not need.applies(spec) or (need.type, value) in earlier:
                        continue
                    of_type = [name for t, name in earlier if t == need.type]
                    if not of_type:
                        raise ValueError(f"{section}.{i}: {spec.type} needs a {need.type} step before it "
                                         f"({field} = {value!r} names it)")
                    raise ValueError(f"{section}.{i}: {field} = {value!r} must name an earlier {need.type} step "
                                     f"({need.type} steps: {of_type})")
                earlier.append((spec.type, spec.key))
        if self.perturb and (self.behaviour is None or not (self.behaviour.target or self.behaviour.top_k)):
            raise ValueError("perturb steps measure behaviour: add [behaviour] with prompts and a target")
        return self

    def compared(self, source: str = "<protocol>") -> "Protocol":
        """The protocol of the comparison preparation: this one with `compare.overrides` applied (and no
        [compare] of its own)."""
        data = self.resolved()
        data.pop(ACROSS, None)
        overrides = data.pop("compare")["overrides"]
        for item in overrides:
            _apply_override(data, item, f"{source} [compare]")
        return validate_protocol(data, source=f"{source} [compare]")

    def resolved(self) -> dict[str, Any]:
        """Every setting with defaults filled in, as JSON-able data (protocol.resolved.json); a protocol without
        a sweep has no `sweep` / `across` keys (as before sweeps existed, so its hash is unchanged)."""
        data = self.model_dump(mode="json")
        if data.get("sweep") is None and not data.get(ACROSS):
            data.pop("sweep", None)
            data.pop(ACROSS, None)
        return data

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()


_MODEL: dict[str, Any] = {}


def protocol_model() -> type[Protocol]:
    """`Protocol` with the step tables typed by the registered steps (one discriminated union per section),
    rebuilt when a step is registered (e.g. by a plugin)."""
    from pydantic import create_model

    steps.load_plugins()
    if _MODEL.get("version") != steps.version:
        fields: dict[str, Any] = {}
        for section in TABLE_SECTIONS:
            models = [steps[t].Settings for t in steps.names() if steps[t].section == section]
            if not models:
                continue
            union = Annotated[Union[tuple(models)], Field(discriminator="type")] if len(models) > 1 else models[0]
            fields[section] = (list[union], Field(default_factory=list, description=f"{section} steps, run in order"))
        _MODEL.update(version=steps.version, model=create_model("Protocol", __base__=Protocol, **fields))
    return _MODEL["model"]


# ----------------------------------------------------------------------------------------------------------
# loading, overrides and error reporting


def load_protocol(path: str | Path, overrides: list[str] | None = None) -> Protocol:
    """Read, override (`key.path=value`, value in TOML syntax or a bare string) and validate a protocol file.

    Raises `ProtocolError` with one line per problem: `file:line: key.path: message`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProtocolError(f"{path}: cannot read protocol file ({e.strerror})") from None
    return parse_protocol(text, source=str(path), overrides=overrides)


def parse_protocol(text: str, source: str = "<protocol>", overrides: list[str] | None = None) -> Protocol:
    return validate_protocol(protocol_data(text, source, overrides), source=source, text=text, overrides=overrides)


def protocol_data(text: str, source: str = "<protocol>", overrides: list[str] | None = None) -> dict[str, Any]:
    """The TOML text as data, with the `key.path=value` overrides applied (not validated)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = m.group(1) if m else "?"
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ProtocolError(f"{source}:{line}: malformed TOML: {msg}") from None
    for item in overrides or []:
        _apply_override(data, item, source)
    return data


def key_path(key: str) -> tuple:
    """A dotted key path as a location tuple (`"analyse.0.bins"` -> `("analyse", 0, "bins")`)."""
    return tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))


class _Where:
    """Where a key path of a protocol is written: `file:line`, or `file --set key=value` for a key that an
    override set (the file's line would be the wrong place to look). `placed` maps key paths set elsewhere (a
    sweep point's settings) to where they are written; `context` (e.g. `sweep point 3 (seed=1)`) follows the
    place."""

    def __init__(self, source: str, text: str = "", overrides: list[str] | None = None,
                 placed: dict[str, str] | None = None, context: str = ""):
        self.source, self.lines = source, _key_lines(text)
        self.overrides = {key_path(item.split("=", 1)[0]): f"{source} --set {item}"
                          for item in overrides or [] if "=" in item}
        self.overrides.update({key_path(key): at for key, at in (placed or {}).items()})
        self.context = f": {context}" if context else ""

    def __call__(self, loc: tuple) -> str:
        loc = tuple(loc)
        for path, at in self.overrides.items():
            if loc[:len(path)] == path or (loc and path[:len(loc)] == loc):  # the key, or a table it is in
                return at + self.context
        return f"{self.source}:{_line_for(loc, self.lines)}{self.context}"


def validate_protocol(data: dict[str, Any], source: str = "<protocol>", text: str = "",
                      overrides: list[str] | None = None, where: _Where | None = None) -> Protocol:
    """Validate already-parsed protocol data (also the resolved JSON of a session); `text` (the TOML) and the
    `overrides` applied to it locate each mistake (or `where`, for a sweep's points). A sweep's points are
    validated too, each as the session it will run."""
    where = where or _Where(source, text, overrides)
    try:
        protocol = protocol_model().model_validate(data)
    except ValidationError as e:
        raise ProtocolError("\n".join(_format_error(err, data, where) for err in e.errors())) from None
    _check_stimuli(protocol, where)
    if protocol.compare is not None:
        try:
            protocol.compared("")
        except ProtocolError as e:
            first = re.sub(r"^ \[compare\]:[^:]*: ", "", str(e).splitlines()[0])
            raise ProtocolError(f"{where(('compare', 'overrides'))}: compare.overrides: {first}") from None
    if protocol.sweep is not None:  # every point, before anything runs (kept for `rig.sweeps.plan_sweep`)
        from .sweeps import expand

        protocol._points = expand(data, source=source, text=text, overrides=overrides)
    return protocol


def _check_stimuli(protocol: Protocol, at: _Where) -> None:
    """Check the generator's parameters by name, then by its own check or by building the (cheap) parameter
    table (`stimuli.catalog.check_params`)."""
    import inspect

    from stimuli.base import StimulusError
    from stimuli.catalog import check_params, generators

    spec = protocol.stimuli
    where = lambda key: at(("stimuli", key) if key else ("stimuli",))  # noqa: E731
    gen = generators.get(spec.generator)
    if gen is None:
        known = list(generators)
        raise ProtocolError(f"{where('generator')}: stimuli.generator: unknown generator {spec.generator!r}"
                            f"{did_you_mean(spec.generator, known)} (known: {', '.join(known)})")
    accepted = [p for p in inspect.signature(gen).parameters if p != "generator"]
    for key in spec.params():
        if key not in accepted:
            raise ProtocolError(f"{where(key)}: stimuli.{key}: not a parameter of generator {spec.generator!r}"
                                f"{did_you_mean(key, accepted)} (parameters: {', '.join(accepted)})")
    try:
        check_params(spec.generator, **spec.params())
    except (StimulusError, TypeError) as e:
        key = getattr(e, "param", None) or next((k for k in spec.params() if k in str(e)), None)
        raise ProtocolError(f"{where(key)}: stimuli{'.' + key if key else ''}: {e}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`key.path=value` as (key path, value): the value in TOML syntax, or else a bare string."""
    if "=" not in item:
        raise ProtocolError(f"--set {item!r}: expected key.path=value (e.g. stimuli.n=500)")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip(), value


def _apply_override(data: dict[str, Any], item: str, source: str) -> None:
    key, value = parse_override(item)
    set_key(data, key, value)


def set_key(data: dict[str, Any], key: str, value: Any, where: str = "--set") -> None:
    """Set the setting at dotted key path `key` of protocol data (tables are made as needed; a list element is
    named by its index). `where` starts the error message (`--set`, or the file and line of a sweep point)."""
    node: Any = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ProtocolError(f"{where} {key}: {'.'.join(parts[:i])} has no entry {part}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ProtocolError(f"{where} {key}: {'.'.join(parts[:i])} is a value ({node!r}), not a table; "
                                f"set {'.'.join(parts[:i])}=... instead")
        if i == len(parts) - 1:
            node[part] = value
        elif isinstance(node, dict) and part not in node and parts[i + 1].isdigit():
            raise ProtocolError(f"{where} {key}: {'.'.join(parts[:i + 1])} has no entry {parts[i + 1]}")
        else:
            node = node[part] if isinstance(node, list) else node.setdefault(part, {})


def _format_error(err: dict[str, Any], data: dict[str, Any], where: _Where) -> str:
    loc = _data_loc(err["loc"], data)
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        choices = _fields_at(loc[:-1], data)
        msg = f"unknown key{did_you_mean(str(loc[-1]), choices)}"
        if choices:
            msg += f" (valid keys: {', '.join(choices)})"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = err.get("ctx", {}).get("expected_tags", "")
        got = err.get("ctx", {}).get("tag", "")
        msg = f"unknown step type {got!r}{did_you_mean(str(got), re.findall(r'[a-z_]+', tags))}" \
              f" (known: {tags})" if got else f"each step needs type = one of {tags}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind not in ("model_type",) and not isinstance(err["input"], (dict, list)):
            msg += f", got {err['input']!r}"
    return f"{where(loc)}: {dotted}: {msg}"


def _data_loc(loc: tuple, data: Any) -> tuple:
    """Drop the discriminator tags pydantic inserts (`analyse.0.ratemaps.bins` -> `analyse.0.bins`)."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and "type" in node \
                and node.get("type") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _fields_at(loc: tuple, data: Any) -> list[str]:
    """Field names of the schema model at `loc` (for did-you-mean): a step table's own settings, by its type."""
    top = protocol_model()
    model: Any = top
    node = data
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
        if model == "steps":
            step = steps.get(node.get("type")) if isinstance(node, dict) else None
            model = step.Settings if step is not None else None
            continue
        if isinstance(part, int):
            continue
        if model is top and part in TABLE_SECTIONS:
            model = "steps"
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _model_of(field.annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside an annotation (unwrapping Optional, list, Annotated), or None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in typing.get_args(annotation):
        m = _model_of(a)
        if m is not None:
            return m
    return None


def _key_lines(text: str) -> dict[tuple, int]:
    """Map key paths to the 1-based line where they are written (tables, array tables, keys)."""
    lines: dict[tuple, int] = {}
    table: tuple = ()
    counts: dict[tuple, int] = {}
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[\[\s*([^\]]+?)\s*\]\](\s*#.*)?", line)
        if m:
            base = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            counts[base] = counts.get(base, -1) + 1
            table = base + (counts[base],)
            lines.setdefault(base, no)
            lines[table] = no
            continue
        m = re.fullmatch(r"\[\s*([^\]]+?)\s*\](\s*#.*)?", line)
        if m:
            table = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            lines[table] = no
            continue
        m = re.match(r"([A-Za-z0-9_\-.\" ]+?)\s*=", line)
        if m:
            key = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            lines.setdefault(table + key, no)
    return lines


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | str:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return 1 if lines else "?"


def where(path: str | Path, loc: tuple, overrides: list[str] | None = None) -> str:
    """`file:line` of a key path in a protocol file, for errors found after validation (e.g. unknown sites), or
    `file --set key=value` when one of the `overrides` set it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        text = ""
    at = _Where(str(path), text, overrides)(tuple(loc))
    return at if text or " --set " in at else str(path)


def json_schema() -> dict[str, Any]:
    """JSON Schema of protocol files (for editors: `rig schema > protocol.schema.json`)."""
    from stimuli.catalog import generators

    from .sources import sources

    schema = protocol_model().model_json_schema()
    defs = schema.get("$defs", {})  # the registered names, plugins included, as the editor's choices
    defs["SubjectSpec"]["properties"]["source"]["enum"] = list(sources)
    defs["StimuliSpec"]["properties"]["generator"]["enum"] = list(generators)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rig protocol"
    return schema
