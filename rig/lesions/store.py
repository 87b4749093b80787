"""Resumable sweeps: each condition's result is a small file in `<folder>/conditions/`, written atomically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from rig.errors import RigError
from rig.io import atomic_path, write_json


class ConditionStore:
    """Per-condition results of one sweep in `folder` (None: in memory only).

    `spec` (JSON-able) identifies the sweep; a folder holding a different sweep raises `RigError`, so a
    killed sweep restarted with the same arguments continues where it stopped and nothing else mixes in.
    """

    def __init__(self, folder: str | Path | None, spec: dict[str, Any]):
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, np.ndarray] = {}
        if self.folder is None:
            return
        spec_path = self.folder / "sweep.json"
        text = json.dumps(spec, sort_keys=True, default=str)
        if spec_path.exists():
            old = json.dumps(json.loads(spec_path.read_text()), sort_keys=True, default=str)
            if old != text:
                raise RigError(
                    f"{self.folder} holds results of a different lesion sweep; delete it or choose another folder"
                )
        else:
            write_json(spec_path, spec)
        (self.folder / "conditions").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
        return self.folder / "conditions" / f"{safe}-{digest}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The stored result of condition `key`, or None if it has not run."""
        if key in self._memory:
            return self._memory[key]
        if self.folder is not None and self._path(key).exists():
            self._memory[key] = np.load(self._path(key))
            return self._memory[key]
        return None

    def put(self, key: str, value: np.ndarray) -> None:
        """Store condition `key` (atomically on disk when the store has a folder)."""
        self._memory[key] = value
        if self.folder is not None:
            with atomic_path(self._path(key)) as tmp, open(tmp, "wb") as f:
                np.save(f, value)
