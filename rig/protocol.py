"""Protocol files: a versioned, strict TOML schema, validated with pydantic, errors as `file:line: key: message`.

A protocol is data: nothing in it is executed, except the module named by `subject.factory` (for
`source = "factory"`), which is imported on purpose when the subject is built.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import stimuli as stimulus_generators
from stimuli import StimulusError

from .errors import ProtocolError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SubjectSpec(Strict):
    """The network under study and its preparation."""

    source: Literal["open_clip", "timm", "torchvision", "factory", "phantom"] = Field(
        "open_clip", description="where the network comes from")
    arch: str | None = Field(None, description="model name in the source library, e.g. 'ViT-B-32'")
    weights: str = Field("random", description="'random' (seeded init, the control preparation), a library "
                         "pretrained tag (e.g. 'openai'), or a path to a local checkpoint file")
    seed: int = Field(0, description="seed of the random initialisation")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    factory: str | None = Field(None, description="'package.module:callable' returning a torch module, or "
                                "(module, transform); imported and called (source = 'factory' only)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")

    @model_validator(mode="after")
    def _source_needs(self) -> "SubjectSpec":
        if self.source == "factory":
            if not self.factory or not re.fullmatch(r"[\w.]+:[\w.]+", self.factory):
                raise ValueError("source = 'factory' needs factory = 'package.module:callable'")
        elif self.factory is not None:
            raise ValueError(f"factory is only used with source = 'factory' (source is {self.source!r})")
        if self.source in ("open_clip", "timm", "torchvision") and not self.arch:
            raise ValueError(f"source = {self.source!r} needs arch = '<model name>'")
        return self

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `rig.subjects.load_subject`."""
        out = self.model_dump(exclude={"options"})
        if self.options:
            out["options"] = dict(self.options)
        return out


class StimuliSpec(BaseModel):
    """Generator name plus its parameters (checked against the generator's own arguments)."""

    model_config = ConfigDict(extra="allow")
    generator: str = Field("circles", description="stimulus generator: " + ", ".join(stimulus_generators.GENERATORS))
    n: int = Field(300, description="number of stimuli", gt=0)
    seed: int = Field(0, description="the one seed for every random choice of the design")

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the generator."""
        return {k: v for k, v in self.model_dump().items() if k != "generator"}


class RecordSpec(Strict):
    sites: list[str] = Field(..., min_length=1, description="globs over the subject's module names")
    tokens: Literal["cls", "patches", "all"] | list[int] = Field("cls", description="tokens of transformer sites")
    dtype: Literal["float32", "int16"] = Field("float32", description="storage type; int16 = packed, half size")
    batch_size: int = Field(32, gt=0)
    compression: bool = Field(False, description="zlib compression (slower to write)")


class BehaviourSpec(Strict):
    prompts: list[str] | None = Field(None, description="zero-shot prompts (CLIP subjects)")
    target: str | None = Field(None, description="the prompt that is the correct answer")
    top_k: int | None = Field(None, gt=0, description="classifiers: keep the top-k class probabilities")

    @model_validator(mode="after")
    def _target_in_prompts(self) -> "BehaviourSpec":
        if self.target is not None and (not self.prompts or self.target not in self.prompts):
            raise ValueError(f"target {self.target!r} must be one of the prompts {self.prompts}")
        return self


class Range(Strict):
    """An inclusive arithmetic range, e.g. proportions 0 to 1 in steps of 0.025 (41 values)."""

    start: float
    stop: float
    step: float = Field(..., gt=0)

    def values(self) -> list[float]:
        n = int(round((self.stop - self.start) / self.step)) + 1
        return [round(self.start + i * self.step, 12) for i in range(max(n, 0))]


class StepSpec(Strict):
    name: str | None = Field(None, description="name of the result (default: the type); unique per section")

    @property
    def key(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class RatemapsStep(StepSpec):
    type: Literal["ratemaps"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites")
    bins: int = Field(28, gt=1, description="bins per side")
    extent: tuple[float, float] | None = Field(None, description="[lo, hi] pixels; default the canvas")
    smoothing: float = Field(1.0, ge=0, description="Gaussian sigma in bins (NaN-aware); 0 = none")
    min_occupancy: int = Field(1, ge=1, description="bins visited by fewer stimuli are unvisited (NaN)")
    regress_out: list[str] = Field(default_factory=list, description="stimulus parameters removed from every "
                                   "unit's responses by least squares before mapping, e.g. ['diameter']: in "
                                   "the circles design only small circles reach the walls, so size tuning "
                                   "would otherwise look like border tuning")


class SpatialScoresStep(StepSpec):
    type: Literal["spatial_scores"]
    ratemaps: str = Field("ratemaps", description="name of the ratemaps step to score")
    rate: Literal["shift", "rectify", "none"] = Field(
        "shift", description="activation -> non-negative rate for spatial information")
    shuffles: int = Field(100, ge=0, description="shuffles of stimulus positions for per-unit nulls")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level against the unit's own null")
    top_k: int = Field(5, gt=0, description="units per score shown in the figure")
    seed: int = 0


class WeightLesionsStep(StepSpec):
    type: Literal["weight_lesions"]
    towers: list[Literal["visual", "text"]] = Field(["visual", "text"])
    modules: list[str] | None = Field(None, description="globs restricting the lesioned modules (default: every "
                                      "weighted module of the towers, in named_modules() order)")
    include_bias: bool = Field(False, description="zero biases too (the study zeroed weights only)")
    n_stimuli: int | None = Field(None, gt=0, description="use the first n stimuli (default all)")
    batch_size: int = Field(32, gt=0)


class UnitLesionsStep(StepSpec):
    type: Literal["unit_lesions"]
    site: str
    strategy: list[Literal["random", "targeted", "targeted_abs", "units"]] = ["random", "targeted",
                                                                              "targeted_abs"]
    proportions: Range | list[float] = Field(default_factory=lambda: Range(start=0, stop=1, step=0.1))
    units: list[int] | None = Field(None, description="the unit list for strategy 'units'")
    ratemaps: str = Field("ratemaps", description="ratemaps step that picks targeted units")
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


class CompareSpec(Strict):
    """A second preparation run through the same protocol, for side-by-side figures (e.g. trained vs random)."""

    overrides: list[str] = Field(..., min_length=1, description="settings of the second preparation as "
                                 "key.path=value, e.g. ['subject.weights=random']")
    label: str | None = Field(None, description="name of the second preparation in figures (default: its "
                              "weights)")


AnalyseStep = Annotated[Union[RatemapsStep, SpatialScoresStep], Field(discriminator="type")]
PerturbStep = Annotated[Union[WeightLesionsStep, UnitLesionsStep], Field(discriminator="type")]


class Protocol(Strict):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="version of this schema")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][\w.-]*$", max_length=64,
                      description="short name (letters, digits, . _ -), used in session ids")
    description: str = ""
    subject: SubjectSpec
    stimuli: StimuliSpec = Field(default_factory=StimuliSpec)
    record: RecordSpec
    behaviour: BehaviourSpec | None = None
    analyse: list[AnalyseStep] = Field(default_factory=list)
    perturb: list[PerturbStep] = Field(default_factory=list)
    compare: CompareSpec | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> "Protocol":
        for section in ("analyse", "perturb"):
            keys = [s.key for s in getattr(self, section)]
            dup = {k for k in keys if keys.count(k) > 1}
            if dup:
                raise ValueError(f"{section} steps need unique names; give `name = ...` to: {sorted(dup)}")
        maps = [s.key for s in self.analyse if s.type == "ratemaps"]
        for i, s in enumerate(self.analyse):  # steps run in order: the ratemaps must be made before they are scored
            earlier = [a.key for a in self.analyse[:i] if a.type == "ratemaps"]
            if s.type == "spatial_scores" and s.ratemaps not in earlier:
                raise ValueError(f"analyse.{i}: ratemaps = {s.ratemaps!r} must name an earlier ratemaps step "
                                 f"(ratemaps steps: {maps})")
        for i, s in enumerate(self.perturb):
            if s.type == "unit_lesions" and any(t.startswith("targeted") for t in s.strategy) and s.ratemaps not in maps:
                raise ValueError(f"perturb.{i}: targeted lesions need ratemaps = the name of a ratemaps step "
                                 f"(ratemaps steps: {maps})")
            if s.type == "unit_lesions" and "units" in s.strategy and not s.units:
                raise ValueError(f"perturb.{i}: strategy 'units' needs units = [list of unit indices]")
        if self.perturb and (self.behaviour is None or not (self.behaviour.target or self.behaviour.top_k)):
            raise ValueError("perturb steps measure behaviour: add [behaviour] with prompts and a target")
        return self

    def compared(self, source: str = "<protocol>") -> "Protocol":
        """The protocol of the comparison preparation: this one with `compare.overrides` applied (and no
        [compare] of its own)."""
        data = self.resolved()
        overrides = data.pop("compare")["overrides"]
        for item in overrides:
            _apply_override(data, item, f"{source} [compare]")
        return validate_protocol(data, source=f"{source} [compare]")

    def resolved(self) -> dict[str, Any]:
        """Every setting with defaults filled in, as JSON-able data (protocol.resolved.json)."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()


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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = m.group(1) if m else "?"
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ProtocolError(f"{source}:{line}: malformed TOML: {msg}") from None
    for item in overrides or []:
        _apply_override(data, item, source)
    return validate_protocol(data, source=source, text=text)


def validate_protocol(data: dict[str, Any], source: str = "<protocol>", text: str = "") -> Protocol:
    """Validate already-parsed protocol data (also the resolved JSON of a session)."""
    lines = _key_lines(text)
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as e:
        raise ProtocolError("\n".join(_format_error(err, data, source, lines) for err in e.errors())) from None
    _check_stimuli(protocol, source, lines)
    if protocol.compare is not None:
        try:
            protocol.compared("")
        except ProtocolError as e:
            first = re.sub(r"^ \[compare\]:[^:]*: ", "", str(e).splitlines()[0])
            where_ = f"{source}:{_line_for(('compare', 'overrides'), lines)}"
            raise ProtocolError(f"{where_}: compare.overrides: {first}") from None
    return protocol


def _check_stimuli(protocol: Protocol, source: str, lines: dict[tuple, int]) -> None:
    """Check the generator's parameters by name and by building the (cheap) parameter table."""
    import inspect

    spec = protocol.stimuli
    where = lambda key: f"{source}:{_line_for(('stimuli', key) if key else ('stimuli',), lines)}"  # noqa: E731
    gen = stimulus_generators.GENERATORS.get(spec.generator)
    if gen is None:
        known = list(stimulus_generators.GENERATORS)
        raise ProtocolError(f"{where('generator')}: stimuli.generator: unknown generator {spec.generator!r}"
                            f"{_did_you_mean(spec.generator, known)} (known: {', '.join(known)})")
    accepted = [p for p in inspect.signature(gen).parameters if p != "generator"]
    for key in spec.params():
        if key not in accepted:
            raise ProtocolError(f"{where(key)}: stimuli.{key}: not a parameter of generator {spec.generator!r}"
                                f"{_did_you_mean(key, accepted)} (parameters: {', '.join(accepted)})")
    try:
        stimulus_generators.make(spec.generator, **spec.params())
    except (StimulusError, TypeError) as e:
        key = getattr(e, "param", None) or next((k for k in spec.params() if k in str(e)), None)
        raise ProtocolError(f"{where(key)}: stimuli{'.' + key if key else ''}: {e}") from None


def _apply_override(data: dict[str, Any], item: str, source: str) -> None:
    if "=" not in item:
        raise ProtocolError(f"--set {item!r}: expected key.path=value (e.g. stimuli.n=500)")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    node: Any = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ProtocolError(f"--set {key}: {'.'.join(parts[:i])} has no entry {part}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ProtocolError(f"--set {key}: {'.'.join(parts[:i])} is a value ({node!r}), not a table; "
                                f"set {'.'.join(parts[:i])}=... instead")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part] if isinstance(node, list) else node.setdefault(part, {})


def _format_error(err: dict[str, Any], data: dict[str, Any], source: str, lines: dict[tuple, int]) -> str:
    loc = _data_loc(err["loc"], data)
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_for(loc, lines)
    kind = err["type"]
    if kind == "extra_forbidden":
        choices = _fields_at(loc[:-1], data)
        msg = f"unknown key{_did_you_mean(str(loc[-1]), choices)}"
        if choices:
            msg += f" (valid keys: {', '.join(choices)})"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = err.get("ctx", {}).get("expected_tags", "")
        got = err.get("ctx", {}).get("tag", "")
        msg = f"unknown step type {got!r}{_did_you_mean(str(got), re.findall(r'[a-z_]+', tags))}" \
              f" (known: {tags})" if got else f"each step needs type = one of {tags}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind not in ("model_type",) and not isinstance(err["input"], (dict, list)):
            msg += f", got {err['input']!r}"
    return f"{source}:{line}: {dotted}: {msg}"


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
    """Field names of the schema model at `loc` (for did-you-mean)."""
    model: Any = Protocol
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        node = node.get(part) if isinstance(node, dict) else None
        model = _model_of(field.annotation, node)
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _model_of(annotation: Any, node: Any) -> Any:
    """The pydantic model inside an annotation (unwrapping Optional, list, Annotated unions by `type`)."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates = []
    for a in args:
        m = _model_of(a, node)
        if m is not None:
            candidates.append(m)
    if isinstance(node, dict) and "type" in node:
        for m in candidates:
            if "type" in m.model_fields and typing.get_args(m.model_fields["type"].annotation) == (node["type"],):
                return m
    return candidates[0] if candidates else None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


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


def where(path: str | Path, loc: tuple) -> str:
    """`file:line` of a key path in a protocol file, for errors found after validation (e.g. unknown sites)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return str(path)
    return f"{path}:{_line_for(tuple(loc), _key_lines(text))}"


def json_schema() -> dict[str, Any]:
    """JSON Schema of protocol files (for editors: `rig schema > protocol.schema.json`)."""
    schema = Protocol.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rig protocol"
    return schema
