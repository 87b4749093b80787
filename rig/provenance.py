"""Provenance of a session: code, packages, machine, seeds and content hashes, for trust and re-runs."""
from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from stimuli.base import file_sha256

from .io import now_iso

PACKAGES = ("rig", "torch", "torchvision", "open_clip_torch", "timm", "numpy", "scipy", "xarray", "netCDF4",
            "matplotlib", "pillow", "pydantic")
#: what must match between the code that made finished steps and the code that resumes a session
COMPATIBILITY_KEYS = ("code_hash", "python")


def collect(protocol: Any) -> dict[str, Any]:
    """Everything known before the session runs; steps add `stimulus_hash`, `weights_sha256` (of the loaded
    state dict, for any preparation), `subject` and `device`."""
    commit, dirty = _git_state()
    return {
        "rig_version": _version("rig"),
        "git_commit": commit,
        "git_dirty": dirty,
        **code_state(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": None,
        "seeds": {"subject": protocol.subject.seed, "stimuli": protocol.stimuli.seed,
                  **{f"{s.key}": s.seed for s in [*protocol.analyse, *protocol.perturb] if hasattr(s, "seed")}},
        "weights": protocol.subject.weights,
        "weights_file_sha256": _weights_file_hash(protocol.subject.weights),
        "weights_sha256": None,
        "stimulus_hash": None,
        "protocol_hash": protocol.hash(),
        "created": now_iso(),
    }


def code_state() -> dict[str, Any]:
    """The part of provenance that `incompatibilities` compares: code hash, Python and package versions (cheap:
    no git call, no checkpoint hashing)."""
    return {"code_hash": code_hash(), "python": platform.python_version(),
            "packages": {name: _version(name) for name in PACKAGES}}


def incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Reasons why results made under `old` provenance must not be mixed with results made under `new`
    (`new` may be just `code_state()`)."""
    reasons = [f"{key} changed ({old.get(key)} -> {new.get(key)})"
               for key in COMPATIBILITY_KEYS if old.get(key) != new.get(key)]
    for name in ("torch", "open_clip_torch", "timm", "torchvision"):
        a, b = old.get("packages", {}).get(name), new.get("packages", {}).get(name)
        if a != b:
            reasons.append(f"{name} {a} -> {b}")
    return reasons


def code_hash() -> str:
    """sha256 over the source files of rig, stimuli and analyses: equal hashes mean the same code ran."""
    h = hashlib.sha256()
    import analyses
    import rig
    import stimuli

    for pkg in (rig, stimuli, analyses):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _weights_file_hash(weights: str) -> str | None:
    """sha256 of a local checkpoint file (None for "random" and library tags), by the subject loader's rule of
    what a checkpoint path is."""
    from .errors import SubjectError
    from .subjects import _checkpoint_path

    try:
        path = _checkpoint_path(weights)
    except SubjectError:  # a missing file: the subject loader says so
        return None
    return file_sha256(path) if path is not None else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


