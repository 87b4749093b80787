"""Builders of session folders in the archive format (DESIGN.md section 6), for archive/report tests."""
from __future__ import annotations

import copy
import json
import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

T0 = datetime(2024, 11, 25, 19, 0, 12, tzinfo=timezone.utc)

PROTOCOL_TOML = """\
schema_version = 1
name = "{name}"
description = "{description}"

[subject]
source = "open_clip"
arch = "ViT-B-32"
weights = "{weights}"
seed = 0

[stimuli]
generator = "circles"
n = {n}

[record]
sites = ["visual.transformer.resblocks.*.attn"]
"""

RESOLVED = {
    "schema_version": 1,
    "name": "circles",
    "description": "",
    "subject": {"source": "open_clip", "arch": "ViT-B-32", "weights": "random", "seed": 0, "device": "auto"},
    "stimuli": {"generator": "circles", "n": 300, "canvas": 224, "diameter": [20, 80], "color": "black",
                "seed": 0},
    "record": {"sites": ["visual.transformer.resblocks.*.attn"], "tokens": "cls", "dtype": "float32"},
    "behaviour": {"prompts": ["a black circle", "an empty image"], "target": "a black circle"},
    "analyse": [{"name": "ratemaps", "type": "ratemaps", "bins": 28, "smoothing": 1.0},
                {"name": "spatial_scores", "type": "spatial_scores"}],
    "perturb": [],
}

PROVENANCE = {
    "rig_version": "0.1.0", "git_commit": "48b25d6", "git_dirty": False, "python": "3.11.2",
    "packages": {"torch": "2.14.1", "numpy": "2.4.0"}, "host": "lab", "platform": "Linux", "device": "cpu",
    "seeds": {"stimuli": 0, "subject": 0}, "weights_sha256": None, "stimulus_hash": "ab12", "protocol_hash": "cd34",
}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def deep_update(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_png(path: Path, seed: int = 0) -> None:
    """A small real PNG figure (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(1.6, 1.2), dpi=50)
    ax.imshow(np.random.default_rng(seed).random((8, 8)), cmap="viridis")
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def make_session(
    root: Path,
    name: str = "circles",
    hexid: str = "a1b2c3",
    created: datetime = T0,
    status: str = "completed",
    resolved: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    headline: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    heartbeat: datetime | None = None,
    pid: int | None = None,
    host: str | None = None,
    figures: tuple[str, ...] = ("ratemaps",),
    description: str = "",
    data_bytes: int = 1234,
    slug: str | None = None,
) -> Path:
    """Write a session folder `<root>/<created>-<name>-<hexid>/` and return its path.

    `resolved` and `provenance` are changes deep-merged into the defaults; `stimuli.nc` gets `data_bytes`
    bytes so sizes are known; `slug` replaces `name` in the id.
    """
    sid = f"{created.strftime('%Y%m%dT%H%M%SZ')}-{slug or name}-{hexid}"
    folder = root / sid
    folder.mkdir(parents=True)
    res = deep_update(RESOLVED, {"name": name, "description": description, **(resolved or {})})
    prov = deep_update(PROVENANCE, {"created": iso(created), **(provenance or {})})
    updated = created + timedelta(seconds=42)
    steps = {
        "design": {"status": "done", "started": iso(created), "finished": iso(created + timedelta(seconds=2)),
                   "seconds": 2.0, "outputs": ["stimuli.nc"]},
        "record": {"status": "done" if status == "completed" else "failed" if status == "failed" else "running",
                   "started": iso(created + timedelta(seconds=2)), "finished": iso(updated), "seconds": 40.0,
                   "outputs": ["recording.nc"]},
        "analyse/ratemaps": {"status": "done" if status == "completed" else "pending", "started": None,
                             "finished": None, "seconds": None, "outputs": []},
    }
    session = {
        "id": sid, "schema_version": 1, "status": status, "protocol_name": name, "created": iso(created),
        "updated": iso(updated), "heartbeat": iso(heartbeat or updated), "heartbeat_interval_s": 5,
        "pid": pid if pid is not None else 999999, "host": host if host is not None else "elsewhere",
        "steps": steps, "error": error, "headline": headline if headline is not None else {"n_units": 768},
    }
    (folder / "protocol.toml").write_text(
        PROTOCOL_TOML.format(name=name.replace('"', '\\"'), description=description.replace('"', '\\"'),
                             weights=res["subject"]["weights"], n=res["stimuli"]["n"]), encoding="utf-8")
    for fname, data in (("protocol.resolved.json", res), ("session.json", session), ("provenance.json", prov)):
        (folder / fname).write_text(json.dumps(data, indent=2), encoding="utf-8")
    (folder / "stimuli.nc").write_bytes(os.urandom(data_bytes))
    (folder / "log.txt").write_text("design done\nrecord done\n", encoding="utf-8")
    for i, fig in enumerate(figures):
        tiny_png(folder / "figures" / f"{fig}.png", seed=i)
    return folder


def live_running(root: Path, now: datetime, **kw: Any) -> Path:
    """A running session owned by this very process (alive pid, this host, fresh heartbeat)."""
    return make_session(root, status="running", heartbeat=now, pid=os.getpid(), host=socket.gethostname(), **kw)
