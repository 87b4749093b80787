"""Sweeps: one protocol, one ordinary session per point, grouped in the archive by a sweep id.

    [sweep]
    grid = { "subject.weights" = ["random", "openai"], "stimuli.seed" = [0, 1] }    # every combination
    # or: points = [{ "subject.arch" = "RN50" }, { "subject.arch" = "ViT-B-32", label = "CLIP ViT" }]

    [[across]]                 # steps run once every point is done, over all the sessions
    type = "compare"

`rig sweep FILE` / `rig.sweep(FILE)` expands the points (`expand`: every point is validated as the session it
will run before anything runs; a mistake is `file:line: sweep point 3 (...): key: message`), runs each as a
session of the archive (an executor of `rig.sweep_exec`: in-process by default, or Dask), then the
`[[across]]` steps in the sweep's own folder (`rig.layout.SweepLayout`: `<archive>/sweeps/<id>/`, with its
sweep.json, results, figures and report). The id ends with a hash of the points' protocols, so running the
same file again finds the sweep: completed points are skipped, interrupted or failed ones resumed.
A `[compare]` table is a two-point sweep: the protocol as written and the protocol with `compare.overrides`,
plus the across step `compare`.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ProtocolError, RigError
from .io import now_iso, write_json, write_text
from .layout import SWEEPS_DIR, SweepLayout
from .protocol import Protocol

#: top-level protocol keys a sweep cannot vary
FIXED_KEYS = ("schema_version", "sweep", "across", "compare")


# ----------------------------------------------------------------------------------------------------------
# points


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its settings (key path -> value, applied to the protocol as written), its label
    (its name in figures and listings) and the validated protocol of its session."""

    index: int
    settings: dict[str, Any]
    label: str
    protocol: Protocol = field(repr=False)

    @property
    def needs_gpu(self) -> bool:
        """Whether the session must run on a CUDA device (`subject.device` names one)."""
        return str(self.protocol.subject.device).startswith("cuda")


def expand(data: dict[str, Any], source: str = "<protocol>", text: str = "",
           overrides: list[str] | None = None) -> list[Point]:
    """The points of the sweep protocol `data` (parsed TOML, `--set` overrides applied), each validated as the
    session it runs. A `[compare]` table gives two points: the protocol as written and the compared one."""
    from .protocol import _key_lines, _line_for, _Where, set_key, validate_protocol

    base = copy.deepcopy(data)
    spec = base.pop("sweep", None)
    base.pop("across", None)
    compare = base.pop("compare", None)
    lines = _key_lines(text)

    def at(loc: tuple) -> str:
        return f"{source}:{_line_for(loc, lines)}"

    if compare is not None:
        entries = _compare_entries(base, compare, at(("compare", "overrides")))
    else:
        entries = _sweep_entries(spec, source, lines, _array_item_lines(text, ("sweep", "points")))
    _check_distinct(entries, at(("sweep",)))
    grid = list(_flatten(spec.get("grid") or {})) if isinstance(spec, dict) else []
    labels = _labels(entries, grid)
    points = []
    for i, ((settings, _label, places), label) in enumerate(zip(entries, labels)):
        context = f"sweep point {i} ({label})"
        point_data = copy.deepcopy(base)
        for key, value in settings.items():
            set_key(point_data, key, value, where=f"{places[key]}: {context}:")
        where = _Where(source, text, overrides, placed=places, context=context)
        points.append(Point(i, settings, label, validate_protocol(point_data, source, text, overrides, where=where)))
    if compare is not None:  # the protocol as written, labelled by its own values of the compared settings
        from .archive import flatten

        mine = flatten(points[0].protocol.resolved())
        points[0] = dataclasses.replace(points[0], label=_auto_label({k: mine.get(k) for k in points[1].settings},
                                                                     list(points[1].settings)))
    return points


def _compare_entries(base: dict[str, Any], compare: dict[str, Any], place: str) -> list[tuple]:
    """`[compare]` as two points: the protocol as written and the compared preparation."""
    from .protocol import parse_override

    other = dict(parse_override(item) for item in compare.get("overrides") or [])
    return [({}, None, {}), (other, compare.get("label") or None, {k: place for k in other})]


def _sweep_entries(spec: Any, source: str, lines: dict[tuple, int], item_lines: list[int]) -> list[tuple]:
    """(settings, label or None, key -> where it is written) of every point: each of `points` (or one empty
    point) crossed with every combination of `grid`."""
    from .protocol import _line_for

    def at(loc: tuple) -> str:
        return f"{source}:{_line_for(loc, lines)}"

    if not isinstance(spec, dict):
        raise ProtocolError(f"{at(('sweep',))}: sweep: must be a table with grid = {{...}} or points = [...]")
    grid: dict[str, list[Any]] = {}
    places: dict[str, str] = {}
    for key, values in _flatten(spec.get("grid") or {}).items():
        where = at(("sweep", "grid", *key.split(".")))
        _check_key(key, where, "sweep.grid")
        if not isinstance(values, list) or not values:
            raise ProtocolError(f"{where}: sweep.grid.{key}: needs a non-empty list of values, got {values!r}")
        grid[key], places[key] = values, where
    points = []
    for i, point in enumerate(spec.get("points") or []):
        if ("sweep", "points", i) in lines:  # [[sweep.points]] tables
            where = at(("sweep", "points", i))
        else:  # points = [{...}, ...]
            where = f"{source}:{item_lines[i]}" if i < len(item_lines) else at(("sweep", "points"))
        if not isinstance(point, dict):
            raise ProtocolError(f"{where}: sweep.points.{i}: a point is a table of settings, got {point!r}")
        settings = _flatten(point)
        label = settings.pop("label", None)
        if label is not None and not isinstance(label, str):
            raise ProtocolError(f"{where}: sweep.points.{i}.label: must be a string, got {label!r}")
        for key in settings:
            _check_key(key, where, f"sweep.points.{i}")
            if key in grid:
                raise ProtocolError(f"{where}: sweep.points.{i}: {key} is also swept by sweep.grid; set it in one")
        points.append((settings, label, {k: where for k in settings}))
    entries = []
    for settings, label, where in points or [({}, None, {})]:
        for combo in itertools.product(*grid.values()):
            chosen = dict(zip(grid, combo))
            entries.append(({**settings, **chosen}, label, {**where, **{k: places[k] for k in chosen}}))
    return entries


def _check_key(key: str, where: str, table: str) -> None:
    if key.split(".")[0] in FIXED_KEYS:
        raise ProtocolError(f"{where}: {table}: {key!r} cannot vary between the points of a sweep")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (`{subject = {arch = ...}}` and `{"subject.arch" = ...}` are the same)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_distinct(entries: list[tuple], where: str) -> None:
    seen: dict[str, int] = {}
    for i, (settings, _label, _places) in enumerate(entries):
        key = json.dumps(settings, sort_keys=True, default=str)
        if key in seen:
            raise ProtocolError(f"{where}: sweep: points {seen[key]} and {i} have the same settings ({key})")
        seen[key] = i


def _labels(entries: list[tuple], grid: list[str]) -> list[str]:
    """Each point's label: its own (followed by its grid values), else its settings written shortly
    (`arch=RN50, seed=1`); made unique."""
    keys = list(dict.fromkeys(k for settings, _l, _p in entries for k in settings))
    labels = []
    for settings, label, _p in entries:
        if label and grid:
            label = f"{label}, {_auto_label({k: settings[k] for k in grid}, keys)}"
        labels.append(label or _auto_label(settings, keys))
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = f"{label} [{i}]"
    return labels


def _auto_label(settings: dict[str, Any], keys: list[str]) -> str:
    """`arch=RN50, seed=1`: the last part of each key, or the whole key where last parts collide."""
    if not settings:
        return "as written"
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    return ", ".join(f"{short.get(k, k)}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings.items())


def _array_item_lines(text: str, loc: tuple[str, str]) -> list[int]:
    """The line of each `{` that opens an item of the inline array at `loc` (e.g. `points = [{...}, {...}]` in
    `[sweep]`), so a mistake in point 3 names point 3's line."""
    from .protocol import _key_lines

    start = _key_lines(text).get(tuple(loc))
    if start is None or "=" not in text.splitlines()[start - 1]:  # none, or [[sweep.points]] tables
        return []
    found: list[int] = []
    depth, quote = 0, ""
    for no, line in enumerate(text.splitlines()[start - 1:], start=start):
        i = line.index("=") + 1 if no == start else 0
        while i < len(line):
            c = line[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == "#":
                break
            elif c in "[{":
                if c == "{" and depth == 1:
                    found.append(no)
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return found
            i += 1
    return found


def point_protocol(text: str, source: str, overrides: list[str] | None, settings: dict[str, Any]) -> Protocol:
    """The protocol of one point: the sweep file (with its `--set` overrides) without its sweep, with the
    point's settings applied (what a point session's protocol.toml and session.json say it ran)."""
    from .protocol import protocol_data, set_key, validate_protocol

    data = protocol_data(text, source, overrides)
    for key in FIXED_KEYS[1:]:
        data.pop(key, None)
    for key, value in settings.items():
        set_key(data, key, value, where=f"{source}: point")
    return validate_protocol(data, source, text, overrides)


# ----------------------------------------------------------------------------------------------------------
# the plan of a sweep


@dataclass
class SweepPlan:
    """A sweep before it runs: the sweep protocol (as validated, with its across steps), its points, the file
    text and `--set` overrides it came from. `key`: a hash of the points' protocols, the end of the sweep id."""

    protocol: Protocol
    points: list[Point]
    text: str | None
    source: str
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.protocol.name

    @cached_property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([p.protocol.hash() for p in self.points]).encode()).hexdigest()[:8]

    @cached_property
    def across_protocol(self) -> Protocol:
        """The protocol the across steps see: `[compare]` adds the `compare` step when it is not written."""
        proto = self.protocol
        if proto.compare is not None and not any(s.type == "compare" for s in proto.across):
            from .steps import steps

            compare = steps.lookup("compare").Settings(type="compare")
            proto = proto.model_copy(update={"across": [*proto.across, compare]})
        return proto

    def table(self) -> str:
        """The points as a text table (`rig sweep --dry-run`)."""
        rows = [(str(p.index), p.label, ", ".join(f"{k}={json.dumps(v)}" for k, v in p.settings.items()) or "-",
                 "GPU" if p.needs_gpu else "") for p in self.points]
        widths = [max(len(r[i]) for r in rows + [("point", "label", "settings", "")]) for i in range(4)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(("point", "label", "settings", ""), widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def plan_sweep(protocol: str | os.PathLike | Protocol, overrides: list[str] | None = None) -> SweepPlan:
    """Read and validate a sweep protocol (a file, or a `Protocol`) and expand its points; nothing is run."""
    from .protocol import protocol_data, validate_protocol

    if isinstance(protocol, Protocol):
        if overrides:
            raise RigError("overrides apply to protocol files; change the Protocol object instead")
        text, source, data = None, "<protocol>", protocol.resolved()
        proto = protocol
    else:
        path = Path(protocol)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise RigError(f"{path}: cannot read protocol file ({e.strerror})") from None
        source = str(path)
        data = protocol_data(text, source, overrides)
        proto = validate_protocol(copy.deepcopy(data), source, text, overrides)
    if proto.sweep is None and proto.compare is None:
        raise RigError(f"{source} has no [sweep] table (and no [compare]): add one, e.g. [sweep] grid = "
                       "{\"stimuli.seed\" = [0, 1]}, or run it as one session with `rig run`")
    points = proto._points if text is not None and proto._points is not None else \
        expand(data, source=source, text=text or "", overrides=overrides)
    return SweepPlan(proto, points, text, source, list(overrides or []))


# ----------------------------------------------------------------------------------------------------------
# reading a sweep


class Sweep:
    """A sweep folder (`<archive>/sweeps/<id>/`), read from its files: `status`, `points` (one dict per point:
    index, label, settings, session, status, attempts, error, seconds), `sessions` (the point sessions in
    order, `rig.Session`; None for a point that has none yet), `results` (the across steps' files)."""

    def __init__(self, path: str | os.PathLike):
        self.layout = SweepLayout(path)
        self.path = self.layout.folder
        if not self.layout.sweep_json.is_file():
            raise RigError(f"{self.path} is not a sweep folder (no sweep.json)")

    def __repr__(self) -> str:
        return f"Sweep({self.id!r}, status={self.status!r}, points={len(self.points)})"

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def info(self) -> dict[str, Any]:
        """sweep.json (re-read at each access)."""
        return self.layout.read_json(self.layout.sweep_json)

    @property
    def status(self) -> str:
        """running | completed | failed | interrupted, or "stale" for a running sweep whose driver is gone."""
        from .archive import _is_stale, parse_time

        info = self.info
        status = str(info.get("status"))
        if status == "running" and _is_stale(parse_time(info.get("heartbeat")), float(info.get(
                "heartbeat_interval_s") or HEARTBEAT_S), info.get("pid"), info.get("host"), time.time()):
            return "stale"
        return status

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self.info.get("points") or [])

    @property
    def sessions(self) -> list[Any]:
        """The point sessions in point order (None where a point has no session)."""
        from .session import Session

        out = []
        for p in self.points:
            path = point_session(self.layout, p["index"])
            out.append(Session(path) if path is not None else None)
        return out

    @property
    def results(self) -> Any:
        """The across steps' results by name (`analyses/<name>`), opened lazily."""
        from .session import Results

        return Results(self.layout)

    @property
    def report(self) -> Path:
        return self.layout.report

    def open(self, name: str = "recording", site: str | None = None, **kw: Any) -> Any:
        """One file of every point session as one lazy object along `session` (`rig.open_sessions`)."""
        from .across import open_sessions

        return open_sessions(self, name, site=site, **kw)


def point_session(layout: SweepLayout, index: int) -> Path | None:
    """The session folder that runs point `index` (from `points/<index>.json`), None if none exists."""
    f = layout.point(index)
    if not f.is_file():
        return None
    try:
        folder = layout.archive / json.loads(f.read_text(encoding="utf-8"))["session"]
    except (OSError, ValueError, KeyError):
        return None
    return folder if (folder / "session.json").is_file() else None


def open_sweep(ref: str | os.PathLike, archive: str | os.PathLike | None = None) -> Sweep:
    """A sweep by folder path, id, unique id prefix or unique part of an id (e.g. its hash), or `latest`."""
    if (Path(ref) / "sweep.json").is_file():
        return Sweep(ref)
    from .archive import Archive

    dirs = Archive(archive).sweep_dirs()
    names = [d.name for d in dirs]
    if str(ref) == "latest" and dirs:  # the newest
        return Sweep(dirs[-1])
    found = [d for d in dirs if d.name == str(ref)] or [d for d in dirs if d.name.startswith(str(ref))] \
        or [d for d in dirs if str(ref) in d.name]
    if len(found) == 1:
        return Sweep(found[0])
    if found:
        raise RigError(f"{ref!r} matches {len(found)} sweeps ({', '.join(d.name for d in found[:5])}); give more")
    raise RigError(f"no sweep {ref!r} in {Archive(archive).root / SWEEPS_DIR}"
                   + (f" (newest: {', '.join(names[-5:])})" if names else "; run one with `rig sweep FILE`"))


# ----------------------------------------------------------------------------------------------------------
# running a sweep

HEARTBEAT_S = 5.0


def sweep(protocol: str | os.PathLike | Protocol, archive: str | os.PathLike | None = None,
          overrides: list[str] | None = None, workers: int | None = None, scheduler: str | None = None,
          retries: int = 1, progress: bool = True, dry_run: bool = False, new: bool = False) -> Sweep | SweepPlan:
    """Run a sweep protocol: one session per point in `archive`, then its `[[across]]` steps.

    Executor: in-process, one point after another (default); a local Dask cluster of `workers` processes (one
    thread each); or the Dask scheduler at `scheduler` (e.g. `tcp://10.0.0.5:8786`, workers started with
    `dask worker ADDRESS`; they must see the archive folder and have rig installed). Points whose subject runs
    on CUDA go only to workers that declare a GPU resource (`dask worker ADDRESS --resources GPU=1`).
    A point that fails for a reason other than a mistake the user must fix (e.g. its worker died) is tried
    again up to `retries` times; every point ends completed or reported failed in sweep.json. Running the same
    protocol again resumes the sweep: completed points are skipped, the others resumed (`new`: start a new
    sweep of new sessions instead). `dry_run`: return the `SweepPlan` (points and labels) without running
    anything. Returns the `Sweep`.
    """
    plan = plan_sweep(protocol, overrides)
    if dry_run:
        return plan
    from .sweep_exec import executor

    with executor(workers, scheduler, plan.points) as ex:
        return run_plan(plan, archive, ex, retries=retries, progress=progress, new=new)


def run_plan(plan: SweepPlan, archive: str | os.PathLike | None, executor: Any, retries: int = 1,
             progress: bool = True, fail_fast: bool = False, new: bool = False) -> Sweep:
    """Run a planned sweep in `archive` with an entered executor (see `sweep`); `fail_fast`: stop at the first
    point that fails (the others stay pending)."""
    from .archive import default_archive

    root = (Path(archive) if archive is not None else default_archive()).absolute()
    return SweepRunner(find_or_create(plan, root, new), plan, executor, retries=retries, progress=progress,
                       fail_fast=fail_fast).run()


def find_or_create(plan: SweepPlan, archive: Path, new: bool = False) -> Path:
    """The folder of the sweep of `plan` in `archive`: the newest one with the same points, or (none, or `new`)
    a new one."""
    root = archive / SWEEPS_DIR
    same = sorted(root.glob(f"*-{plan.name}-{plan.key}/sweep.json")) if root.is_dir() else []
    if same and not new:
        return same[-1].parent
    while True:  # ids sort by creation time: a second sweep of the same points in the same second waits
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        layout = SweepLayout(root / f"{stamp}-{plan.name}-{plan.key}")
        try:
            layout.folder.mkdir(parents=True)
            break
        except FileExistsError:
            time.sleep(0.5)
    if plan.text is not None:
        write_text(layout.protocol_toml, plan.text)
    write_json(layout.resolved, plan.protocol.resolved())
    if plan.overrides:
        write_json(layout.overrides, plan.overrides)
    write_json(layout.sweep_json, {"id": layout.folder.name, "status": "pending", "protocol_name": plan.name,
                                   "created": now_iso(), "updated": now_iso(), "points": [], "across": {},
                                   "headline": {}, "error": None})
    return layout.folder


class SweepRunner:
    """Drives one sweep folder: runs the points that are not completed through an executor, keeps sweep.json,
    then runs the across steps and writes the sweep's report."""

    def __init__(self, folder: Path, plan: SweepPlan, executor: Any, retries: int = 1, progress: bool = True,
                 fail_fast: bool = False):
        self.layout = SweepLayout(folder)
        self.plan, self.executor, self.retries, self.progress = plan, executor, max(int(retries), 0), progress
        self.fail_fast = fail_fast
        self.info = self.layout.read_json(self.layout.sweep_json)
        self._lock = threading.Lock()

    def run(self) -> Sweep:
        from .session import SessionInterrupted

        from .session import _sigterm_raises, exclusive, file_log, heartbeat

        busy = (f"sweep {self.layout.folder.name} is being run by another process (pid {self.info.get('pid')} on "
                f"{self.info.get('host')}); wait for it or stop it")
        with exclusive(self.layout.lock, busy), file_log(f"rig.sweep.{self.layout.folder.name}", self.layout.log) \
                as log, heartbeat(self._update, HEARTBEAT_S), _sigterm_raises():
            self._points_from_archive()
            self._update(status="running", pid=os.getpid(), host=socket.gethostname(), error=None,
                         heartbeat_interval_s=HEARTBEAT_S, executor=self.executor.describe())
            try:
                self._run_points(log)
                failed = [p for p in self.info["points"] if p["status"] != "completed"]
                if failed:
                    self._update(status="failed", error={"type": "PointsFailed", "message": (
                        f"{len(failed)} of {len(self.info['points'])} points did not complete: "
                        + "; ".join(f"{p['index']} ({p['label']}): {p.get('error') or p['status']}" for p in failed)
                        + "; run the sweep again to retry them")})
                else:
                    self._run_across(log)
                    self._update(status="completed")
            except KeyboardInterrupt:
                self._update(status="interrupted")
                self._report(log)
                raise SessionInterrupted(str(self.layout.folder)) from None
            except Exception as e:  # an across step failed: recorded, the sweep is failed
                log.error("sweep failed: %s", e)
                self._update(status="failed", error={"type": type(e).__name__, "message": str(e),
                                                     "traceback": traceback.format_exc()})
            self._report(log)
        return Sweep(self.layout.folder)

    # points ----------------------------------------------------------------------------------------------
    def _points_from_archive(self) -> None:
        """sweep.json's point entries for the plan's points, each with the state of its session (if any)."""
        from .archive import SessionInfo

        old = {p.get("hash"): p for p in self.info.get("points") or []}
        entries = []
        for p in self.plan.points:
            h = p.protocol.hash()
            entry = {"index": p.index, "label": p.label, "settings": p.settings, "hash": h, "gpu": p.needs_gpu,
                     "session": None, "status": "pending", "attempts": 0, "error": None, "seconds": None}
            entry.update({k: v for k, v in old.get(h, {}).items() if k in ("attempts", "seconds", "error")})
            folder = point_session(self.layout, p.index)
            if folder is not None:
                entry.update(session=folder.name, status=SessionInfo.read(folder).status)
            entries.append(entry)
        self.info["points"] = entries

    def _run_points(self, log: logging.Logger) -> None:
        from .sweep_exec import PointTask

        todo = [p for p in self.plan.points if self.info["points"][p.index]["status"] != "completed"]
        n = len(self.plan.points)
        if len(todo) < n:
            self._say(f"sweep {self.layout.folder.name}: {n - len(todo)} of {n} points already completed")
        if not todo:
            return
        sweep_meta = {"sweep_id": self.layout.folder.name, "sweep_dir": str(self.layout.folder),
                      "text": self.plan.text, "source": self.plan.source, "overrides": self.plan.overrides}
        for p in todo:
            self.executor.submit(PointTask(index=p.index, label=p.label, settings=p.settings,
                                           resolved=p.protocol.resolved(), gpu=p.needs_gpu,
                                           attempt=self.info["points"][p.index]["attempts"] + 1,
                                           retries=self.retries, **sweep_meta))
        self._update()
        done = n - len(todo)
        for task, outcome in self.executor.results():
            entry = self.info["points"][task.index]
            entry.update(status=outcome.get("status", "failed"), error=outcome.get("error"),
                         seconds=outcome.get("seconds"), worker=outcome.get("worker"), attempts=task.attempt)
            if outcome.get("session"):
                entry["session"] = outcome["session"]
            again = entry["status"] != "completed" and outcome.get("retryable") and task.retries > 0
            log.info("point %d (%s): %s%s", task.index, task.label, entry["status"],
                     f" ({entry['error']})" if entry["error"] else "")
            if again:
                self.executor.submit(task.retry())
                self._say(f"point {task.index} ({task.label}) {entry['status']}: {entry['error']}; trying again")
            else:
                done += 1
                took = f" in {entry['seconds']:.1f} s" if entry.get("seconds") is not None else ""
                self._say(f"[{done}/{n}] point {task.index} ({task.label}) {entry['status']}{took}"
                          + (f": {entry['error']}" if entry["error"] and entry["status"] != "completed" else ""))
            self._update()
            if self.fail_fast and entry["status"] != "completed" and not again:
                self.executor.cancel()
                break

    # across steps ----------------------------------------------------------------------------------------
    def _run_across(self, log: logging.Logger) -> None:
        from .steps import StepContext, plan_across, run_step

        proto = self.plan.across_protocol
        planned = plan_across(proto)
        if not planned:
            return
        sessions = Sweep(self.layout.folder).sessions
        steps_state = self.info.setdefault("across", {})
        ctx = StepContext(self.layout, proto, log=log, progress=self.progress,
                          headline=self.info.setdefault("headline", {}), sessions=sessions)
        for p in planned:
            state = steps_state.setdefault(p.key, {"status": "pending"})
            if state.get("status") == "done":
                continue
            state.update(status="running", started=now_iso())
            self._update()
            self._say(f"{p.key} ...")
            t0 = time.perf_counter()
            try:
                done = run_step(ctx, p)
            except BaseException:
                state.update(status="failed")
                self._update()
                raise
            seconds = round(time.perf_counter() - t0, 3)
            state.update(status="done", finished=now_iso(), seconds=seconds, outputs=done.outputs,
                         figures=done.captions)
            self._update()
            self._say(f"{p.key} done in {seconds:.1f} s")

    # bookkeeping -----------------------------------------------------------------------------------------
    def _update(self, **fields: Any) -> None:
        with self._lock:
            self.info.update(fields)
            self.info["updated"] = self.info["heartbeat"] = now_iso()
            write_json(self.layout.sweep_json, self.info)

    def _say(self, line: str) -> None:
        if self.progress:
            print(line, file=sys.stderr, flush=True)

    def _report(self, log: logging.Logger) -> None:
        try:
            from .sweep_report import write_sweep_report

            write_sweep_report(self.layout.folder)
        except Exception as e:  # noqa: BLE001  (a report is never fatal)
            log.warning("report.html not written: %s", e)
