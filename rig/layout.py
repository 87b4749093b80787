"""The session folder: one object that owns every path in it and writes every file atomically.

    <archive>/<UTC time>-<protocol name>-<6 hex>/
      protocol.toml            the user's file, verbatim
      protocol.resolved.json   every default filled in
      overrides.json           the --set overrides, when there were any
      session.json             status, steps, heartbeat, error, headline
      provenance.json          versions, commit, host, device, seeds, hashes
      .lock  log.txt  report.html
      stimuli.nc  recording.nc  behaviour.nc
      analyses/<name>.nc       one file per [[analyse]] step (`section` "analyse")
      perturb/<name>.nc        one file per [[perturb]] step; perturb/<name>/ is its resumable working folder
      figures/<name>.png
      compare/<session>/       (sessions of earlier versions) the nested session of a [compare] preparation

A sweep (`rig.sweep`) has a folder of its own, `SweepLayout`: `<archive>/sweeps/<id>/` (see there).

Nothing else in the rig spells these names: steps ask the layout for `stimuli`, `result(section, name)`, ...
The folder format has a `schema_version` (in session.json); folders written by earlier versions of this
format open unchanged (`SessionLayout.schema` reads it, 1 when absent).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .io import atomic_path, write_json, write_text

SCHEMA_VERSION = 1
PROTOCOL_FILE = "protocol.toml"
RESOLVED_FILE = "protocol.resolved.json"
OVERRIDES_FILE = "overrides.json"
SESSION_FILE = "session.json"
PROVENANCE_FILE = "provenance.json"
LOCK_FILE = ".lock"
LOG_FILE = "log.txt"
REPORT_FILE = "report.html"
STIMULI_FILE = "stimuli.nc"
RECORDING_FILE = "recording.nc"
BEHAVIOUR_FILE = "behaviour.nc"
FIGURES_DIR = "figures"
#: protocol section of a step -> folder of its results
RESULT_DIRS = {"analyse": "analyses", "perturb": "perturb"}
SWEEPS_DIR = "sweeps"
SWEEP_FILE = "sweep.json"
POINTS_DIR = "points"
ACROSS_DIR = "analyses"


class SessionLayout:
    """The paths of one session folder, and atomic writers for its files.

    Paths are absolute (`layout.recording`); `relative(path)` gives the form stored in session.json
    (`"analyses/ratemaps.nc"`).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"SessionLayout({str(self.folder)!r})"

    def _p(self, name: str) -> Path:
        return self.folder / name

    # -- the fixed files -------------------------------------------------------------------------------------
    protocol_toml = property(lambda self: self._p(PROTOCOL_FILE))
    resolved = property(lambda self: self._p(RESOLVED_FILE))
    overrides = property(lambda self: self._p(OVERRIDES_FILE))
    session_json = property(lambda self: self._p(SESSION_FILE))
    provenance = property(lambda self: self._p(PROVENANCE_FILE))
    lock = property(lambda self: self._p(LOCK_FILE))
    log = property(lambda self: self._p(LOG_FILE))
    report = property(lambda self: self._p(REPORT_FILE))
    stimuli = property(lambda self: self._p(STIMULI_FILE))
    recording = property(lambda self: self._p(RECORDING_FILE))
    behaviour = property(lambda self: self._p(BEHAVIOUR_FILE))
    figures_dir = property(lambda self: self._p(FIGURES_DIR))

    # -- per step ------------------------------------------------------------------------------------------
    def result(self, section: str, name: str) -> Path:
        """The result file of step `name` of protocol section `section` (`analyse` -> `analyses/<name>.nc`)."""
        return self._p(f"{RESULT_DIRS[section]}/{name}.nc")

    def scratch(self, section: str, name: str) -> Path:
        """The working folder of a step (e.g. a resumable lesion sweep's conditions), removed when it is done."""
        return self._p(f"{RESULT_DIRS[section]}/{name}")

    def figure(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"

    def results(self) -> dict[str, Path]:
        """Every result file: `"analyses/<name>"` / `"perturb/<name>"` -> path, sorted by section then name."""
        return {f"{d}/{f.stem}": f for d in RESULT_DIRS.values() for f in sorted((self.folder / d).glob("*.nc"))}

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.folder).as_posix()

    # -- reading and writing -------------------------------------------------------------------------------
    def read_json(self, path: Path) -> Any:
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def write_json(self, path: Path, data: Any) -> Path:
        write_json(path, data)
        return path

    def write_text(self, path: Path, text: str) -> Path:
        write_text(path, text)
        return path

    def write_dataset(self, path: Path, ds: Any) -> Path:
        """An `xr.Dataset` to netCDF, atomically."""
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4")
        return path

    def write_figure(self, name: str, fig: Any, dpi: int = 110) -> Path:
        """A matplotlib figure to `figures/<name>.png`, atomically."""
        path = self.figure(name)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        return path

    def update_provenance(self, **fields: Any) -> None:
        data = self.read_json(self.provenance)
        data.update(fields)
        write_json(self.provenance, data)

    @property
    def schema(self) -> int:
        """The folder format's version (session.json `schema_version`; 1 for folders written before it)."""
        try:
            return int(self.read_json(self.session_json).get("schema_version", 1))
        except (OSError, ValueError):
            return SCHEMA_VERSION


class SweepLayout(SessionLayout):
    """The folder of a sweep, beside the point sessions it groups (which are ordinary sessions of the archive):

        <archive>/sweeps/<UTC time>-<protocol name>-<8 hex>/
          protocol.toml  protocol.resolved.json  overrides.json   the sweep file, as for a session
          sweep.json               status, points (label, overrides, session, status, attempts, error), across
                                   steps, headline
          points/<index>.json      which session runs point <index> (written by whoever starts it)
          analyses/<name>.nc       one file per [[across]] step
          figures/<name>.png  report.html  log.txt  .lock
    """

    sweep_json = property(lambda self: self._p(SWEEP_FILE))
    points_dir = property(lambda self: self._p(POINTS_DIR))

    @property
    def archive(self) -> Path:
        """The archive root that holds the sweep's sessions (`<archive>/sweeps/<id>` -> `<archive>`)."""
        return self.folder.parent.parent

    def point(self, index: int) -> Path:
        """The record of which session runs point `index`."""
        return self.points_dir / f"{int(index):04d}.json"

    def result(self, section: str, name: str) -> Path:
        """The result file of across step `name` (`analyses/<name>.nc`)."""
        return self._p(f"{ACROSS_DIR}/{name}.nc")

    def scratch(self, section: str, name: str) -> Path:
        return self._p(f"{ACROSS_DIR}/{name}")

    def results(self) -> dict[str, Path]:
        return {f"{ACROSS_DIR}/{f.stem}": f for f in sorted((self.folder / ACROSS_DIR).glob("*.nc"))}
