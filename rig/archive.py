"""The session archive: list, find, compare and remove session folders from their JSON files alone.

Reads only `session.json`, `protocol.resolved.json` and `provenance.json` (plus file sizes), so it is fast and
imports neither torch nor xarray; the heavy data access is `rig.open_session`. Folder format: DESIGN.md
section 6 and the `rig.session` docstring.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import shlex
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from rig.errors import RigError
from rig.layout import PROVENANCE_FILE, RESOLVED_FILE, SESSION_FILE, SWEEP_FILE, SWEEPS_DIR
from stimuli.registry import glob_match

if TYPE_CHECKING:  # pandas is imported lazily: the CLI must start fast
    import pandas

STALE_AFTER_BEATS = 3  # a running session whose heartbeat is older than this many intervals is stale
DEFAULT_HEARTBEAT_S = 5.0
# provenance keys that differ between any two sessions and so say nothing in a diff
_DIFF_IGNORED_PROVENANCE = ("created",)


class SessionNotFoundError(RigError):
    """A session reference that matches no session, or more than one."""


class SessionBusyError(RigError):
    """An operation refused because the session is still running."""


def default_archive() -> Path:
    """The archive root used when none is given: `$RIG_ARCHIVE`, else `./sessions`."""
    return Path(os.environ.get("RIG_ARCHIVE") or "sessions")


def archive_option(root: str | os.PathLike) -> str:
    """` --archive DIR` for a printed command about the archive `root`; '' when it is the default archive."""
    root = Path(root)
    return "" if root.resolve() == default_archive().resolve() else f" --archive {shlex.quote(str(root))}"


def session_command(verb: str, path: str | os.PathLike, *extra: str) -> str:
    """`rig VERB ID [--archive DIR] EXTRA...`: a command about the session folder `path` that works as printed
    from here: it names the archive when the session is not in the default one (`extra` is appended as is)."""
    path = Path(path)
    return " ".join([f"rig {verb} {shlex.quote(path.name)}{archive_option(path.parent)}", *extra])


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 string (`...Z` or with offset) as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists on this machine (a process we may not signal counts as alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys; lists of dicts are flattened by index (`analyse.0.type`).

    Lists of scalars stay values (`stimuli.diameter` -> `[20, 80]`); an empty dict stays a value.
    """
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj:
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(obj, list) and obj and any(isinstance(v, Mapping) for v in obj):
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}{i}."))
    elif prefix:
        out[prefix[:-1]] = obj
    return out


def human_bytes(n: float) -> str:
    """A byte count for people: `512 B`, `1.5 kB`, `3.2 MB` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RigError(f"cannot read {path}: {e}; the file is damaged, remove the session with `rig rm`") from e


_PHASES = ("design", "record", "behaviour", "analyse", "perturb", "report")


def order_steps(steps: Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """Steps in pipeline order (design, record, analyse/<name> in protocol order, perturb/<name>, ...);
    session.json stores them with sorted keys."""
    def key(name: str) -> tuple[int, int, str]:
        phase, _, sub = name.partition("/")
        rank = _PHASES.index(phase) if phase in _PHASES else len(_PHASES)
        entries = resolved.get(phase) if isinstance(resolved.get(phase), list) else []
        labels = [str(e.get("name") or e.get("type")) for e in entries if isinstance(e, Mapping)]
        return rank, labels.index(sub) if sub in labels else len(labels), name

    return {name: steps[name] for name in sorted(steps, key=key)}


def _folder_files(folder: Path, hidden: bool = False) -> list[tuple[str, int]]:
    """Every file under `folder` as (posix path relative to it, size in bytes), sorted by path; names
    starting with a dot (the session's `.lock`) only when `hidden`."""
    files = []
    for dirpath, dirs, names in os.walk(folder):
        if not hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            names = [n for n in names if not n.startswith(".")]
        for name in names:
            p = Path(dirpath, name)
            try:
                size = p.lstat().st_size
            except OSError:  # removed while we walk (a running session)
                continue
            files.append((p.relative_to(folder).as_posix(), size))
    return sorted(files)


@dataclass
class SessionInfo:
    """A session folder as its JSON files describe it (no netCDF is opened).

    `status` is the effective status: `recorded_status`, except that a `running` session whose heartbeat is
    older than 3 heartbeat intervals, or whose pid is gone on this host, is `stale`.
    """

    path: Path
    id: str
    status: str
    recorded_status: str
    protocol_name: str
    created: datetime | None
    updated: datetime | None
    heartbeat: datetime | None
    heartbeat_interval_s: float
    pid: int | None
    host: str | None
    steps: dict[str, dict[str, Any]]
    error: dict[str, Any] | None
    headline: dict[str, Any]
    resolved: dict[str, Any]
    provenance: dict[str, Any]
    session: dict[str, Any] = field(repr=False)

    @classmethod
    def read(cls, path: str | os.PathLike, now: float | None = None) -> SessionInfo:
        """Read the session folder `path`; `now` (Unix seconds, default: the clock) decides staleness."""
        path = Path(path)
        session = _read_json(path / SESSION_FILE)
        if not isinstance(session, dict):
            raise SessionNotFoundError(f"{path} is not a session folder (no {SESSION_FILE}); pass a session id or folder")
        resolved = _read_json(path / RESOLVED_FILE) or {}
        provenance = _read_json(path / PROVENANCE_FILE) or {}
        recorded = str(session.get("status") or "unknown")
        heartbeat = parse_time(session.get("heartbeat"))
        interval = float(session.get("heartbeat_interval_s") or DEFAULT_HEARTBEAT_S)
        pid = session.get("pid") if isinstance(session.get("pid"), int) else None
        host = session.get("host")
        status = recorded
        if recorded == "running" and _is_stale(heartbeat, interval, pid, host, time.time() if now is None else now):
            status = "stale"
        return cls(
            path=path,
            id=str(session.get("id") or path.name),
            status=status,
            recorded_status=recorded,
            protocol_name=str(session.get("protocol_name") or resolved.get("name") or ""),
            created=parse_time(session.get("created")),
            updated=parse_time(session.get("updated")),
            heartbeat=heartbeat,
            heartbeat_interval_s=interval,
            pid=pid,
            host=host,
            steps=order_steps(session.get("steps") or {}, resolved),
            error=session.get("error") or None,
            headline=dict(session.get("headline") or {}),
            resolved=resolved,
            provenance=provenance,
            session=session,
        )

    @property
    def sweep(self) -> str | None:
        """The id of the sweep this session is a point of (None for a session of its own)."""
        value = self.session.get("sweep")
        return str(value) if value else None

    @property
    def description(self) -> str:
        """The protocol's free-text description ('' when none)."""
        return str(self.resolved.get("description") or "")

    @property
    def subject(self) -> str:
        """The subject as `source:arch:weights` (factory: `factory:module:callable:weights`), '' if unknown."""
        s = self.resolved.get("subject")
        if not isinstance(s, Mapping):
            return ""
        middle = s.get("factory") if s.get("source") == "factory" else s.get("arch")
        return ":".join(str(p) for p in (s.get("source"), middle, s.get("weights")) if p not in (None, ""))

    @property
    def seconds(self) -> float | None:
        """Wall time from creation to the last update (or heartbeat), in seconds."""
        last = max((t for t in (self.updated, self.heartbeat) if t is not None), default=None)
        return None if self.created is None or last is None else max((last - self.created).total_seconds(), 0.0)

    @property
    def files(self) -> list[tuple[str, int]]:
        """The files of the session as (relative posix path, bytes), sorted by path, hidden ones left out
        (read on each access)."""
        return _folder_files(self.path)

    def disk_bytes(self) -> int:
        """Bytes of every file in the folder, hidden ones included."""
        return sum(n for _p, n in _folder_files(self.path, hidden=True))

    @property
    def live(self) -> bool:
        """Running with a fresh heartbeat: someone is writing this folder now."""
        return self.status == "running"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (times as ISO 8601 UTC strings, files with sizes)."""
        return {
            "id": self.id,
            "path": str(self.path),
            "status": self.status,
            "recorded_status": self.recorded_status,
            "protocol": self.protocol_name,
            "description": self.description,
            "subject": self.subject,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "heartbeat": _iso(self.heartbeat),
            "seconds": self.seconds,
            "pid": self.pid,
            "host": self.host,
            "steps": self.steps,
            "error": self.error,
            "headline": self.headline,
            "sweep": self.sweep,
            "point": self.session.get("point"),
            "files": [{"path": p, "bytes": n} for p, n in self.files],
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_stale(heartbeat: datetime | None, interval: float, pid: int | None, host: Any, now: float) -> bool:
    """A running session is stale when its heartbeat is missing or older than 3 intervals, or when its
    process is gone on this host. The one staleness rule of the rig (`rig.Session.status` uses it too)."""
    if heartbeat is None or now - heartbeat.timestamp() > STALE_AFTER_BEATS * interval:
        return True
    return pid is not None and host == socket.gethostname() and not pid_alive(pid)


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def value_matches(actual: Any, wanted: Any) -> bool:
    """Whether a setting equals a filter value given as text or a Python value.

    Numbers compare as numbers (`"300"` == `300` == `300.0`), booleans as `true`/`false`, lists and dicts as
    JSON (`"[20, 80]"`) or comma lists (`"20,80"`), everything else as strings; `*`/`?` globs match strings.
    """
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return str(actual).lower() == str(wanted).strip().lower()
    a, w = _as_number(actual), _as_number(wanted)
    if a is not None and w is not None:
        return math.isclose(a, w, rel_tol=1e-9, abs_tol=0.0) or (math.isnan(a) and math.isnan(w))
    if actual is None:
        return str(wanted).strip().lower() in ("none", "null", "")
    if isinstance(actual, (list, dict)):
        if isinstance(wanted, (list, dict)):
            return actual == wanted
        text = str(wanted).strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = [p.strip() for p in text.strip("[]").split(",")]
        if isinstance(actual, list) and isinstance(parsed, list) and len(parsed) == len(actual):
            return all(value_matches(x, y) for x, y in zip(actual, parsed))
        return actual == parsed
    actual_s, wanted_s = str(actual), str(wanted)
    if any(c in wanted_s for c in "*?["):
        return bool(glob_match([actual_s], wanted_s))
    return actual_s == wanted_s


def _matches_name(pattern: str, value: str) -> bool:
    return bool(glob_match([value], pattern)) if any(c in pattern for c in "*?[") else value == pattern


def _matches_subject(pattern: str, info: SessionInfo) -> bool:
    """A subject filter matches the full name or any of its parts (`ViT-B-32`, `random`, `open_clip`)."""
    names = [info.subject, *info.subject.split(":")]
    s = info.resolved.get("subject")
    if isinstance(s, Mapping):
        names += [str(v) for k, v in s.items() if k in ("source", "arch", "weights", "factory") and v is not None]
    return any(_matches_name(pattern, n) for n in names if n)


class Archive:
    """A folder of session folders (`<root>/<id>/session.json`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_archive()

    def __repr__(self) -> str:
        return f"Archive({str(self.root)!r})"

    def session_dirs(self) -> list[Path]:
        """Every direct sub-folder holding a `session.json`, sorted by name (ids sort by creation time)."""
        if not self.root.is_dir():
            if self.root.exists():
                raise RigError(f"archive {self.root} is a file, not a folder of sessions; pass --archive DIR with "
                               "the folder that holds the sessions")
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / SESSION_FILE).is_file())

    def sweep_dirs(self) -> list[Path]:
        """Every sweep folder (`<root>/sweeps/<id>/sweep.json`), sorted by id (ids sort by creation time)."""
        root = self.root / SWEEPS_DIR
        return sorted(p.parent for p in root.glob(f"*/{SWEEP_FILE}")) if root.is_dir() else []

    def infos(self, now: float | None = None) -> list[SessionInfo]:
        """Every session, newest first (by `created`, then id)."""
        infos = [SessionInfo.read(p, now=now) for p in self.session_dirs()]
        oldest = datetime.min.replace(tzinfo=timezone.utc)
        infos.sort(key=lambda i: (i.created or oldest, i.id), reverse=True)
        return infos

    def records(
        self,
        status: str | Iterable[str] | None = None,
        protocol: str | None = None,
        subject: str | None = None,
        where: Mapping[str, Any] | None = None,
        now: float | None = None,
        sweep: str | None = None,
    ) -> list[dict[str, Any]]:
        """The rows of `sessions()` as dicts (no pandas needed); see `sessions` for the filters."""
        infos = self.infos(now=now)
        if status is not None:
            wanted = {status} if isinstance(status, str) else set(status)
            wanted = {w.strip() for s in wanted for w in s.split(",")}
            infos = [i for i in infos if i.status in wanted]
        if protocol is not None:
            infos = [i for i in infos if _matches_name(protocol, i.protocol_name)]
        if subject is not None:
            infos = [i for i in infos if _matches_subject(subject, i)]
        if where:
            infos = self._filter_where(infos, where)
        if sweep is not None:
            infos = [i for i in infos if i.sweep and (i.sweep == sweep or i.sweep.startswith(sweep)
                                                      or sweep in i.sweep)]
        rows = []
        for i in infos:
            row = {"id": i.id, "status": i.status, "protocol": i.protocol_name, "subject": i.subject,
                   "created": i.created, "seconds": i.seconds, "sweep": i.sweep}
            for key, value in i.headline.items():
                row.setdefault(key, value)  # a headline key never hides a fixed column
            rows.append(row)
        return rows

    def sessions(
        self,
        status: str | Iterable[str] | None = None,
        protocol: str | None = None,
        subject: str | None = None,
        where: Mapping[str, Any] | None = None,
        sweep: str | None = None,
    ) -> pandas.DataFrame:
        """One row per session, newest first: id, status (`stale` included), protocol, subject, created (UTC),
        seconds (wall time), then one column per headline key.

        `status` takes one status or several (`"completed,failed"`); `protocol` a name or glob; `subject` the
        full subject name or a part of it (`ViT-B-32`, `random`) or a glob; `where` maps resolved-protocol key
        paths to values (`{"subject.weights": "random", "stimuli.n": 300}`), see `value_matches`; `sweep` a
        sweep id (or a unique part of it): only that sweep's point sessions (column `sweep`: the sweep of each).
        """
        import pandas as pd

        rows = self.records(status=status, protocol=protocol, subject=subject, where=where, sweep=sweep)
        columns = ["id", "status", "protocol", "subject", "created", "seconds", "sweep"]
        columns += sorted({k for r in rows for k in r} - set(columns))
        df = pd.DataFrame(rows, columns=columns)
        df["created"] = pd.to_datetime(df["created"], utc=True)
        return df

    @staticmethod
    def _filter_where(infos: list[SessionInfo], where: Mapping[str, Any]) -> list[SessionInfo]:
        flat = [flatten(i.resolved) for i in infos]
        known = {k for f in flat for k in f}
        for key in where:
            # a key naming a whole sub-table (`subject`) or a list element is fine if some session has it
            if key not in known and not any(k.startswith(key + ".") for k in known) and infos:
                near = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else "; see `rig show SESSION` for the settings"
                raise RigError(f"no session has the setting {key!r}{hint}")
        return [i for i, f in zip(infos, flat)
                if all(k in f and value_matches(f[k], v) for k, v in where.items())]

    def find(self, ref: str | os.PathLike) -> SessionInfo:
        """The session named by `ref`: a folder path, an id, a unique id prefix or a unique part of an id
        (e.g. its hex suffix), or `latest`."""
        if (Path(ref) / SESSION_FILE).is_file():
            return SessionInfo.read(Path(ref))
        ref = str(ref)
        dirs = self.session_dirs()
        if ref == "latest":
            infos = self.infos()
            if not infos:
                raise SessionNotFoundError(f"no sessions in {self.root}; run one with `rig run PROTOCOL`")
            return infos[0]
        names = [d.name for d in dirs]
        if ref in names:
            return SessionInfo.read(self.root / ref)
        candidates = [n for n in names if n.startswith(ref)] or [n for n in names if ref in n]
        if len(candidates) == 1:
            return SessionInfo.read(self.root / candidates[0])
        if len(candidates) > 1:
            shown = ", ".join(candidates[:10]) + (f" and {len(candidates) - 10} more" if len(candidates) > 10 else "")
            raise SessionNotFoundError(f"{ref!r} matches {len(candidates)} sessions ({shown}); give more of the id")
        near = difflib.get_close_matches(ref, names, n=3, cutoff=0.4)
        hint = (f"; did you mean {', '.join(near)}?" if near
                else f"; list them with `rig ls{archive_option(self.root)}`")
        if not names:
            hint = f"; {self.root} holds no sessions (pass --archive DIR or set $RIG_ARCHIVE)"
        raise SessionNotFoundError(f"no session {ref!r} in {self.root}{hint}")

    def diff(self, a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
        """What differs between two sessions: `{"a": id, "b": id, "settings": {key: [a, b]}, "provenance":
        {...}, "headline": {...}}`, keys flattened with dots, a missing key shown as None; only differences."""
        ia, ib = self.find(a), self.find(b)
        prov_a = {k: v for k, v in ia.provenance.items() if k not in _DIFF_IGNORED_PROVENANCE}
        prov_b = {k: v for k, v in ib.provenance.items() if k not in _DIFF_IGNORED_PROVENANCE}
        return {
            "a": ia.id,
            "b": ib.id,
            "settings": _differences(flatten(ia.resolved), flatten(ib.resolved)),
            "provenance": _differences(flatten(prov_a), flatten(prov_b)),
            "headline": _differences(ia.headline, ib.headline),
        }

    def remove(self, ref: str | os.PathLike, force: bool = False) -> int:
        """Delete a session folder; returns the bytes freed. A running session with a live heartbeat is
        refused unless `force` (a stale one is removed)."""
        info = self.find(ref)
        if info.live and not force:
            raise SessionBusyError(
                f"session {info.id} is running (pid {info.pid} on {info.host}, heartbeat {_iso(info.heartbeat)});"
                " stop it first or pass --force")
        freed = info.disk_bytes()
        shutil.rmtree(info.path)
        return freed


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list[Any]]:
    missing = object()
    out = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va is missing or vb is missing or not _same(va, vb):
            out[key] = [None if va is missing else va, None if vb is missing else vb]
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: 300 == 300.0, but "300" != 300, True != 1, and NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)
