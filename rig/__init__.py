"""rig: a virtual electrophysiology rig for vision networks.

    session = rig.run("protocols/quickstart.toml")        # design -> record -> analyse -> perturb
    session = rig.open_session("sessions/2026...")         # browse: .status .protocol .stimuli .recording .results
    sweep = rig.sweep("protocols/sweep-tiny.toml")         # one session per point of [sweep], then [[across]]
    rig.Archive().sessions()                               # a table of all sessions

Names are imported on first use, so the `rig` command starts fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": "session", "resume": "session", "open_session": "session", "Session": "session",
    "Archive": "archive", "Protocol": "protocol", "load_protocol": "protocol",
    "RigError": "errors", "ProtocolError": "errors", "SubjectError": "errors", "SiteError": "errors",
    "load_subject": "subjects", "open_recording": "dims",
    "sweep": "sweeps", "open_sweep": "sweeps", "Sweep": "sweeps", "open_sessions": "across",
    "register_step": "steps", "list_steps": "steps", "register_source": "sources", "list_sources": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rig' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
