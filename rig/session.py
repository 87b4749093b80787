"""Sessions: one run of one protocol, as a folder in the archive that can stop anywhere and be resumed.

    <archive>/<UTC time>-<protocol name>-<6 hex>/
      protocol.toml  protocol.resolved.json  session.json  provenance.json  log.txt
      stimuli.nc  recording.nc  behaviour.nc  analyses/<name>.nc  perturb/<name>.nc  figures/*.png  report.html

The folder's paths belong to `rig.layout.SessionLayout`; the steps to `rig.steps` (one object per step type).
Each step (design, record, analyse/<name>, perturb/<name>) writes its files atomically and is then
marked done in `session.json`; report.html is refreshed when the session ends. A resumed session redoes only the steps that
are not done. A heartbeat in `session.json` lets readers tell a live session from one that was killed (SIGKILL
leaves it "running" with a stale heartbeat); Ctrl-C and SIGTERM mark it "interrupted". An exclusive lock
(`.lock`, flock) stops two processes from writing one session.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

import xarray as xr

from . import provenance
from .archive import SessionInfo, default_archive, session_command
from .errors import RigError
from .io import check_writable, now_iso, write_json, write_text
from .layout import SCHEMA_VERSION as SESSION_SCHEMA
from .layout import SessionLayout
from .protocol import Protocol, parse_protocol, validate_protocol

HEARTBEAT_S = 5.0


class SessionInterrupted(KeyboardInterrupt):
    """A session stopped by Ctrl-C or SIGTERM (it is marked interrupted); the message is the session folder."""


# ----------------------------------------------------------------------------------------------------------
# reading


class Session:
    """A session folder, opened lazily: nothing heavy is read until asked for."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.layout = SessionLayout(self.path)
        if not self.layout.session_json.is_file():
            raise RigError(f"{self.path} is not a session folder (no session.json)")

    def __repr__(self) -> str:
        return f"Session({self.path.name!r}, status={self.status!r})"

    @property
    def info(self) -> dict[str, Any]:
        """The contents of session.json (re-read at each access: it changes while a session runs)."""
        return self.layout.read_json(self.layout.session_json)

    @property
    def status(self) -> str:
        """running | completed | failed | interrupted, or "stale" for a running session whose heartbeat stopped."""
        return SessionInfo.read(self.path).status

    @property
    def id(self) -> str:
        return self.path.name

    @cached_property
    def protocol(self) -> Protocol:
        """The resolved protocol (every default filled in)."""
        return validate_protocol(self.layout.read_json(self.layout.resolved), source=str(self.layout.resolved))

    @property
    def sweep(self) -> str | None:
        """The id of the sweep this session is a point of (None for a session of its own)."""
        return self.info.get("sweep")

    @property
    def point(self) -> dict[str, Any] | None:
        """A sweep point's settings (key path -> value, applied to the sweep's protocol); None outside sweeps."""
        point = self.info.get("point")
        return dict(point.get("settings") or {}) if isinstance(point, dict) else None

    @property
    def label(self) -> str:
        """The session's name in a sweep's figures (its point's label), else its id."""
        point = self.info.get("point")
        return str(point.get("label") or self.id) if isinstance(point, dict) else self.id

    @property
    def overrides(self) -> list[str] | None:
        """The `--set` overrides the session was run with (None when none)."""
        f = self.layout.overrides
        return self.layout.read_json(f) if f.is_file() else None

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return self.layout.read_json(self.layout.provenance)

    @cached_property
    def stimuli(self):
        from stimuli import StimulusSet

        return StimulusSet.from_netcdf(self._file(self.layout.stimuli))

    @cached_property
    def recording(self):
        """The recording (`rig.dims.Recording`): site -> lazy `xr.DataArray` with dims `(stimulus, unit)`,
        `(stimulus, token, unit)` or `(stimulus, unit, map_y, map_x)`, the stimulus parameters as coordinates."""
        from .dims import open_recording

        return open_recording(self._file(self.layout.recording))

    @cached_property
    def behaviour(self) -> xr.Dataset:
        return xr.open_dataset(self._file(self.layout.behaviour))

    @property
    def results(self) -> "Results":
        """Analysis and perturbation results by name (`analyses/<name>`, `perturb/<name>`); a file is opened
        (lazily, as an `xr.Dataset`) only when its name is looked up."""
        return Results(self.layout)

    def _file(self, f: Path) -> Path:
        if not f.is_file():
            done = [k for k, v in self.info.get("steps", {}).items() if v.get("status") == "done"]
            raise RigError(f"{self.id} has no {self.layout.relative(f)} (status {self.status}; steps done: "
                           f"{', '.join(done) or 'none'})")
        return f


class Results(Mapping[str, xr.Dataset]):
    """The result files of a session folder as a read-only mapping; each is opened on first access, once."""

    def __init__(self, layout: SessionLayout):
        self._files = layout.results()
        self._open: dict[str, xr.Dataset] = {}

    def __getitem__(self, name: str) -> xr.Dataset:
        if name not in self._files:
            raise KeyError(f"{name!r}: no such result (results: {', '.join(self._files) or 'none'})")
        if name not in self._open:
            self._open[name] = xr.open_dataset(self._files[name])
        return self._open[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"Results({list(self._files)})"


def open_session(path: str | os.PathLike, archive: str | os.PathLike | None = None) -> Session:
    """Open a session: a folder path, or an id / unique id prefix / `latest` in `archive` (default archive)."""
    from .archive import Archive

    return Session(Archive(archive).find(path).path)


# ----------------------------------------------------------------------------------------------------------
# running


def run(protocol: str | os.PathLike | Protocol, archive: str | os.PathLike | None = None,
        overrides: list[str] | None = None, progress: bool = True) -> Session:
    """Run a protocol (a file path, or a validated `Protocol`) as a new session in `archive`.

    A protocol with `[compare]` runs as a new two-point sweep (`rig.sweep`): the protocol as written, then the
    compared preparation, then their figures side by side in the sweep's folder; the session of the protocol
    as written is returned (`.sweep` names the sweep; `rig sweep FILE` finishes it if it was interrupted). A
    protocol with `[sweep]` is run by `rig.sweep`."""
    proto, text, source = _load(protocol, overrides)
    if proto.sweep is not None:
        raise RigError(f"{source} has a [sweep] table: run it with `rig sweep {source}` (or rig.sweep(...))")
    if proto.compare is not None:
        from .sweep_exec import Sequential
        from .sweeps import plan_sweep, run_plan

        plan = plan_sweep(protocol, overrides)
        first = preflight(plan.points[0].protocol, source)  # a mistake stops here, before anything is written
        with Sequential(prepared={0: first}) as ex:
            done = run_plan(plan, archive, ex, progress=progress, fail_fast=True, new=True)
        failed = [p for p in done.points if p.get("status") != "completed"]
        if failed:
            raise RigError(f"sweep {done.id}: " + "; ".join(f"point {p['index']} ({p['label']}) {p.get('status')}: "
                                                           f"{p.get('error') or 'see its session'}" for p in failed))
        return done.sessions[0]
    return start(proto, text, source, archive, overrides, progress)


def _load(protocol: str | os.PathLike | Protocol, overrides: list[str] | None) -> tuple[Protocol, str | None, str]:
    """(validated protocol, its TOML text or None, its source name) of a file path or a `Protocol`."""
    if isinstance(protocol, Protocol):
        if overrides:
            raise RigError("overrides apply to protocol files; change the Protocol object instead")
        return protocol, None, "<protocol>"
    path = Path(protocol)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RigError(f"{path}: cannot read protocol file ({e.strerror})") from None
    return parse_protocol(text, source=str(path), overrides=overrides), text, str(path)  # the text saved is run


def start(proto: Protocol, text: str | None, source: str, archive: str | os.PathLike | None = None,
          overrides: list[str] | None = None, progress: bool = True, sweep: dict[str, Any] | None = None,
          on_created: Any = None, shared: Any = None) -> Session:
    """Preflight `proto` (unless `shared` is its preflight already), make its session folder in `archive` and
    run it. `text`: the protocol file saved as protocol.toml (None: none); `sweep`: `{"sweep": id, "point":
    {...}}` for a sweep's point session, stored in session.json; `on_created(folder)` is called as soon as the
    folder exists."""
    archive = Path(archive) if archive is not None else default_archive()
    check_writable(archive, "archive", "pass --archive DIR with a folder you can write, or set $RIG_ARCHIVE")
    shared = shared if shared is not None else preflight(proto, source=source, overrides=overrides)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    layout = SessionLayout(archive / f"{stamp}-{proto.name}-{secrets.token_hex(3)}")
    info = {"id": layout.folder.name, "schema_version": SESSION_SCHEMA, "status": "running",
            "protocol_name": proto.name, "created": now_iso(), "updated": now_iso(), "heartbeat": now_iso(),
            "heartbeat_interval_s": HEARTBEAT_S, "pid": os.getpid(), "host": socket.gethostname(),
            "steps": {key: {"status": "pending"} for key in step_keys(proto)}, "error": None, "headline": {},
            **(sweep or {})}
    try:
        layout.folder.mkdir(parents=True)
        if on_created is not None:  # e.g. a sweep claims the folder for its point before it looks like a session
            on_created(layout.folder)
        if text is not None:
            write_text(layout.protocol_toml, text)
        write_json(layout.resolved, proto.resolved())
        if overrides:
            write_json(layout.overrides, list(overrides))
        write_json(layout.provenance, provenance.collect(proto))
        write_json(layout.session_json, info)  # last: a folder without it is no session
    except OSError as e:  # e.g. the disk filled up: leave nothing half-made behind
        import shutil

        from .io import describe_os_error

        shutil.rmtree(layout.folder, ignore_errors=True)
        raise RigError(f"cannot make the session folder: {describe_os_error(e)}") from None
    return Runner(layout.folder, proto, progress=progress, shared=shared).run()


def preflight(proto: Protocol, source: str, overrides: list[str] | None = None) -> Any:
    """Build the subject, resolve its sites and readout, and let every step check its settings against them,
    before any file is written: a wrong model name, missing weights, a site glob that matches nothing or a
    step that cannot run is reported as `file:line: key: message` and leaves no half-made session behind.
    Returns what it built (`rig.steps.Shared`: subject and readout), which the session reuses, so the model
    is built and the prompts' text embeddings computed once. A mistake in a setting given by one of the
    `overrides` is reported as `file --set key=value: key: message`."""
    from .behaviour import make_readout
    from .errors import ProtocolError, SiteError, SubjectError
    from .protocol import where
    from .sites import catalogue, select_sites
    from .steps import Preflight, Shared, plan
    from .subjects import load_subject

    try:
        subject = load_subject(**proto.subject.kwargs())
    except SubjectError as e:
        raise ProtocolError(f"{where(source, ('subject', e.key), overrides)}: subject.{e.key}: {e}") from None
    try:
        recorded = select_sites(subject, proto.record.sites)
    except SiteError as e:
        raise ProtocolError(f"{where(source, ('record', 'sites'), overrides)}: record.sites: {e}") from None
    readout = None
    if proto.behaviour is not None:
        try:
            readout = make_readout(subject, proto.behaviour.model_dump())
        except RigError as e:
            raise ProtocolError(f"{where(source, ('behaviour',), overrides)}: behaviour: {e}") from None
    import stimuli

    stimulus_set = stimuli.make(proto.stimuli.generator, **proto.stimuli.params())  # validated: this works
    pre = Preflight(proto, source, subject, catalogue(subject), recorded, readout, stimulus_set, overrides)
    for planned in plan(proto):
        planned.step.check(planned.spec, pre)
    return Shared(subject=subject, readout=readout, stimuli=stimulus_set)


def resume(path: str | os.PathLike, progress: bool = True, force: bool = False,
           archive: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Session:
    """Finish an incomplete session, redoing only the steps that are not done.

    Refuses (with the reason) when the protocol file was edited since, or when the code that made the finished
    steps differs from the code running now (results would mix), unless `force`. `overrides` (`--set`) fix the
    protocol of a session that failed on a setting: they may change only steps not done yet; the new settings
    are checked like a new run's (preflight), saved with the session (`overrides.json`, the resolved protocol)
    and recorded in provenance (`resumes`).
    """
    session = open_session(path, archive)
    check_writable(session.path, "session folder", "copy the session to a folder you can write and resume it there")
    blocker = resume_blocker(session, force)
    if blocker:
        raise RigError(blocker)
    proto, shared = session.protocol, None
    if overrides:
        proto, shared = _fixed_protocol(session, list(overrides))
    return Runner(session.path, proto, progress=progress, shared=shared).run()


def resume_blocker(session: Session, force: bool = False) -> str | None:
    """Why `rig resume` would refuse this session, as a message with the command to use instead; None when it
    can be resumed (`force` accepts an edited protocol file and other code)."""
    rerun = session_command("rerun", session.path)
    resume_force = session_command("resume", session.path, "--force")
    status = session.status
    if status == "completed":
        return f"{session.id} is already completed; `{rerun}` starts a new session"
    if status == "running":
        info = session.info
        return (f"{session.id} is running (pid {info.get('pid')} on {info.get('host')}, heartbeat "
                f"{info.get('heartbeat')}); stop it first, or wait for it")
    if force:
        return None
    toml = session.layout.protocol_toml
    if toml.is_file():
        current = _protocol_file(session, session.overrides)
        if current.hash() != session.protocol.hash():
            return (f"{session.id}: protocol.toml was edited after the session started; resuming would mix "
                    f"settings: `{rerun}` starts a new session from it, `{resume_force}` resumes anyway")
    reasons = provenance.incompatibilities(session.provenance, provenance.code_state())
    done = [k for k, v in session.info["steps"].items() if v.get("status") == "done"]
    if reasons and done:
        return (f"{session.id}: cannot resume: {'; '.join(reasons)}; the finished steps ({', '.join(done)}) were "
                f"made by other code: `{rerun}` starts a new session, `{resume_force}` mixes them")
    return None


def resume_advice(path: str | os.PathLike) -> str | None:
    """What to do about an unfinished session (failed, interrupted, stale), as one sentence with a command that
    works as printed; None for a session that needs nothing (completed, running)."""
    session = Session(path)
    if session.status not in ("failed", "interrupted", "stale"):
        return None
    try:
        blocker = resume_blocker(session)
    except RigError as e:  # its protocol no longer validates: resume would fail the same way
        return f"it cannot be resumed as it is: {' '.join(str(e).split())}"
    if blocker:
        return blocker
    resume_cmd = session_command("resume", session.path)
    error = session.info.get("error") or {}
    if error.get("key"):
        key = error["key"]
        return (f"it stopped on the setting {key}: fix it and finish the session with "
                f"`{session_command('resume', session.path, f'--set {key}=VALUE')}`")
    if error.get("user_error"):
        return (f"fix what the error says, then finish the session with `{resume_cmd}` (a protocol setting: "
                f"`{resume_cmd} --set KEY=VALUE`)")
    if error:
        return f"finish it with `{resume_cmd}` (the traceback: `{session_command('show', session.path, '--json')}`)"
    return f"finish it with `{resume_cmd}`"


def _protocol_file(session: Session, overrides: list[str] | None) -> Protocol:
    """The session's protocol.toml as it reads now, with `overrides` (a sweep point's: the sweep file with the
    point's settings)."""
    toml = session.layout.protocol_toml
    text = toml.read_text(encoding="utf-8")
    if session.point is not None:
        from .sweeps import point_protocol

        return point_protocol(text, str(toml), overrides, session.point)
    return parse_protocol(text, str(toml), overrides)


def _fixed_protocol(session: Session, overrides: list[str]) -> tuple[Protocol, Any]:
    """The session's protocol with `overrides` applied for `resume`, checked (preflight) and saved; refused when
    they change a step that is done. Returns the protocol and what preflight built."""
    from .protocol import _apply_override

    old = session.protocol
    every = (session.overrides or []) + overrides
    toml = session.layout.protocol_toml
    if toml.is_file():
        source = str(toml)
        new = _protocol_file(session, every)
    else:
        source = str(session.layout.resolved)
        data = old.resolved()
        for item in overrides:
            _apply_override(data, item, source)
        new = validate_protocol(data, source=source, overrides=overrides)
    done = [k for k, v in session.info["steps"].items() if v.get("status") == "done"]
    changed = [k for k in done if _step_inputs(old, k) != _step_inputs(new, k)]
    if changed:
        sets = " ".join(f"--set {o}" for o in overrides)
        raise RigError(f"{session.id}: {sets} changes settings of steps already done ({', '.join(changed)}), whose "
                       f"results would not match; `{session_command('rerun', session.path, sets)}` starts a new "
                       "session with them")
    shared = preflight(new, source=source, overrides=every)
    layout = session.layout
    write_json(layout.resolved, new.resolved())
    write_json(layout.overrides, every)
    data = layout.read_json(layout.provenance)
    data.setdefault("resumes", []).append({"at": now_iso(), "overrides": overrides, "steps_done": done,
                                           "protocol_hash_before": old.hash()})
    data["protocol_hash"] = new.hash()
    write_json(layout.provenance, data)
    info = session.info  # the plan may have new or renamed steps: keep what is done, the rest pending
    keys = step_keys(new)
    info["steps"] = {k: info["steps"].get(k, {"status": "pending"}) for k in keys}
    write_json(layout.session_json, info)
    return new, shared


def _step_inputs(protocol: Protocol, key: str) -> Any:
    """What the result of step `key` depends on: the design and recording settings, and the settings of every step
    up to and including it (None when the protocol has no such step)."""
    from .steps import plan

    planned = plan(protocol)
    keys = [p.key for p in planned]
    if key not in keys:
        return None
    data = protocol.resolved()
    upto = [p.spec.model_dump(mode="json") for p in planned[:keys.index(key) + 1]]
    return [data.get(k) for k in ("subject", "stimuli", "record", "behaviour")] + upto


def step_keys(protocol: Protocol) -> list[str]:
    """The keys of a session's steps in the order they run (`design`, `record`, `analyse/<name>`, ...)."""
    from .steps import plan

    return [p.key for p in plan(protocol)]


class Runner:
    """Drives the steps of one session folder, keeping session.json, the heartbeat and the lock."""

    def __init__(self, folder: Path, protocol: Protocol, progress: bool = True, shared: Any = None):
        from .steps import Shared, plan

        self.layout = SessionLayout(folder)
        self.folder, self.protocol, self.progress = self.layout.folder, protocol, progress
        self.shared = shared if shared is not None else Shared()
        self.plan = plan(protocol)
        self._state_lock = threading.Lock()
        self.info = self.layout.read_json(self.layout.session_json)
        for planned in self.plan:
            self.info["steps"].setdefault(planned.key, {"status": "pending"})

    def run(self) -> Session:
        from .steps import StepContext, run_step

        with self._exclusive(), self._logging() as log, self._heartbeat(), _sigterm_raises() as received:
            self._update(status="running", pid=os.getpid(), host=socket.gethostname(), error=None)
            ctx = StepContext(self.layout, self.protocol, log=log, progress=self.progress,
                              headline=self.info.setdefault("headline", {}), shared=self.shared)
            current = None
            try:
                keys = [p.key for p in self.plan]
                for number, planned in enumerate(self.plan, start=1):
                    key = planned.key
                    if received["signal"]:
                        raise SessionInterrupted(f"signal {received['signal']}")
                    if self.info["steps"][key].get("status") == "done":
                        log.info("step %s already done", key)
                        continue
                    current = key
                    self._step(key, status="running", started=now_iso())
                    log.info("step %s started", key)
                    self._say(f"[{number}/{len(keys)}] {key} ...")
                    t0, c0 = time.perf_counter(), time.process_time()
                    with self._warnings(key, log):
                        done = run_step(ctx, planned)
                    seconds = round(time.perf_counter() - t0, 3)
                    self._step(key, status="done", finished=now_iso(), seconds=seconds, outputs=done.outputs,
                               figures=done.captions, cpu_seconds=round(time.process_time() - c0, 3))
                    log.info("step %s done in %.1f s", key, seconds)
                    self._say(f"[{number}/{len(keys)}] {key} done in {seconds:.1f} s")
                    current = None
                if received["signal"]:
                    raise SessionInterrupted(f"signal {received['signal']}")
                self._update(status="completed")
                self._report(log)
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as SessionInterrupted
                log.warning("session interrupted during %s", current)
                if current and self.info["steps"][current].get("status") != "done":  # not just after it
                    self._step(current, status="interrupted")
                self._update(status="interrupted")
                self._report(log)
                raise SessionInterrupted(str(self.folder)) from None
            except BaseException as e:
                log.error("step %s failed: %s", current, e)
                if current and self.info["steps"][current].get("status") != "done":
                    self._step(current, status="failed")
                self._update(status="failed", error={"type": type(e).__name__, "message": str(e),
                                                     "step": current, "traceback": traceback.format_exc(),
                                                     **_error_kind(e)})
                self._report(log)
                e.session_path = self.folder  # type: ignore[attr-defined]  (the CLI names the session)
                raise
        return Session(self.folder)

    @contextlib.contextmanager
    def _warnings(self, key: str, log: logging.Logger) -> Iterator[None]:
        """Collect the warnings a step raises (e.g. one per site), and pass each distinct one on once: to the log,
        to the step's `warnings` in session.json (`rig show`, the report) and, with progress on, as one `note:`
        line on stderr."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                notes = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
                for note in notes:
                    log.warning("step %s: %s", key, note)
                    self._say(f"note ({key}): {note}")
                if notes:
                    self._step(key, warnings=notes)

    def _say(self, line: str) -> None:
        """One progress line on stderr per step (with progress on), beside the step's own progress bars."""
        if self.progress:
            print(line, file=sys.stderr, flush=True)

    def _report(self, log: logging.Logger) -> None:
        """Write report.html; a report that cannot be written is logged, never fatal to the session."""
        try:
            from .report import write_session_report

            write_session_report(self.folder)
        except Exception as e:  # noqa: BLE001
            log.warning("report.html not written: %s", e)

    # session.json ------------------------------------------------------------------------------------------
    def _update(self, **fields: Any) -> None:
        with self._state_lock:
            self.info.update(fields)
            self.info["updated"] = self.info["heartbeat"] = now_iso()
            write_json(self.layout.session_json, self.info)

    def _step(self, key: str, **fields: Any) -> None:
        with self._state_lock:
            self.info["steps"][key].update(fields)
        self._update()

    def _heartbeat(self) -> Any:
        return heartbeat(self._update, HEARTBEAT_S)

    def _exclusive(self) -> Any:
        return exclusive(self.layout.lock, f"{self.folder.name} is being written by another process (pid "
                                           f"{self.info.get('pid')}); wait for it or stop it")

    def _logging(self) -> Any:
        return file_log(f"rig.session.{self.folder.name}", self.layout.log)


@contextlib.contextmanager
def heartbeat(beat: Any, interval_s: float) -> Iterator[None]:
    """Call `beat()` every `interval_s` seconds in a thread while the block runs (a folder's heartbeat:
    readers tell a live session or sweep from one whose process was killed)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            with contextlib.suppress(OSError):
                beat()

    thread = threading.Thread(target=loop, name="rig-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def exclusive(lock: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock (flock) on the file `lock` while the block runs; raise `RigError(busy)` if another
    process holds it. The file is removed on the way out."""
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RigError(busy) from None
        try:
            yield
        finally:  # still holding the lock: no one else can be using the file
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_log(name: str, path: Path) -> Iterator[logging.Logger]:
    """A logger `name` that writes to the file `path` (and nowhere else) while the block runs."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def _error_kind(error: BaseException) -> dict[str, Any]:
    """`user_error` (the user can fix it: a `RigError` or an `OSError` of the environment) and, for a protocol
    mistake (`file:line: key.path: message`), the `key` at fault; `rig show` and the CLI advise from them."""
    import re

    from .errors import is_user_error

    out: dict[str, Any] = {"user_error": is_user_error(error) or isinstance(error, OSError)}
    m = re.match(r"^.*?(?::[\d?]+| --set \S+): ((?:subject|stimuli|record|behaviour|analyse|perturb|compare)"
                 r"(?:\.\w+)*): ", str(error))
    if m:
        out["key"] = m.group(1)
    return out


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[dict[str, int | None]]:
    """Turn SIGTERM into `SessionInterrupted` in the main thread, so the session is marked interrupted.

    Python swallows (and prints) an exception raised while it runs a finalizer, e.g. a weakref callback; such a
    swallowed interruption is delivered again (`_thread.interrupt_main`, from a timer thread) instead of being
    printed. The signal is also recorded in the yielded dict, which the runner checks at every step boundary.
    """
    import _thread

    received: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received["signal"] = signum
        raise SessionInterrupted(f"signal {signum}")

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, SessionInterrupted):
            # delivered again from another thread a moment later: called here, the handler would run inside
            # this hook, whose exception Python swallows too (and prints with a traceback)
            threading.Timer(0.05, _thread.interrupt_main, (signal.SIGTERM,)).start()
        else:
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGTERM, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook
