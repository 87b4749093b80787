"""The report page of a sweep (`<archive>/sweeps/<id>/report.html`): status, the points with links to their
sessions' reports, the across steps, key results and their figures with captions (the session report's style)."""
from __future__ import annotations

import os
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .io import write_text
from .layout import FIGURES_DIR, REPORT_FILE, SweepLayout


def sweep_report_html(folder: str | os.PathLike, embed: bool = False) -> str:
    """The HTML text of a sweep's report (see `write_sweep_report`)."""
    from .archive import _folder_files
    from .report import _figure, _figures_by_step, _Html, _href, _page, _status, _table

    layout = SweepLayout(folder)
    info = layout.read_json(layout.sweep_json)
    status = str(info.get("status") or "")
    parts = [f"<h1>sweep {escape(str(info.get('protocol_name') or ''))}</h1>",
             f"<p>{_status(status)} <code>{escape(layout.folder.name)}</code></p>"]
    error = info.get("error") or {}
    if error:
        parts.append(f"<h2>Error</h2><p><strong>{escape(str(error.get('type')))}</strong>: "
                     f"{escape(str(error.get('message')))}</p>")
        if error.get("traceback"):
            parts.append(f"<pre>{escape(str(error['traceback']))}</pre>")
    if info.get("headline"):
        parts += ["<h2>Key results</h2>", _table(["result", "value"], info["headline"].items())]
    rows = []
    for p in info.get("points") or []:
        session = p.get("session")
        link = _Html(f'<a href="{_href(f"../../{session}/{REPORT_FILE}")}">{escape(session)}</a>') if session else ""
        settings = ", ".join(f"{k}={v}" for k, v in (p.get("settings") or {}).items())
        rows.append([p.get("index"), p.get("label"), settings, _status(str(p.get("status"))), link,
                     p.get("attempts"), p.get("seconds"), p.get("error") or ""])
    parts += ["<h2>Points</h2>", _table(["point", "label", "settings", "status", "session", "attempts", "seconds",
                                         "error"], rows)]
    across = info.get("across") or {}
    if across:
        parts += ["<h2>Across steps</h2>", _table(["step", "status", "seconds", "outputs"], [
            (k, _status(str(v.get("status"))), v.get("seconds"), ", ".join(v.get("outputs") or []))
            for k, v in across.items()])]
    figures = [p for p, _n in _folder_files(layout.folder) if p.startswith(f"{FIGURES_DIR}/") and p.endswith(".png")]
    if figures:
        view = SimpleNamespace(path=layout.folder, steps=across)
        parts.append("<h2>Figures</h2>")
        for key, group in _figures_by_step(view, figures):
            parts.append(f"<h3>{escape(key)}</h3>")
            parts.append("".join(_figure(view, p, embed, caption) for p, caption in group))
    if layout.protocol_toml.is_file():
        parts += ["<h2>Protocol</h2>", f"<pre>{escape(layout.protocol_toml.read_text(encoding='utf-8'))}</pre>"]
    refresh = 10 if status == "running" else None
    return _page(f"sweep {info.get('protocol_name')} - {layout.folder.name}", "\n".join(parts), refresh_s=refresh)


def write_sweep_report(folder: str | os.PathLike, embed: bool = False) -> Path:
    """Write `<sweep folder>/report.html` and return its path."""
    path = SweepLayout(folder).report
    write_text(path, sweep_report_html(folder, embed=embed))
    return path


def sweep_of(session_info: Any) -> dict[str, Any] | None:
    """`{"id", "index", "label", "report"}` of the sweep a session (`rig.archive.SessionInfo`) is a point of,
    `report` relative to the session folder; None for a session of its own."""
    sweep_id = session_info.session.get("sweep")
    if not sweep_id:
        return None
    point = session_info.session.get("point") or {}
    return {"id": sweep_id, "index": point.get("index"), "label": point.get("label"),
            "report": f"../sweeps/{sweep_id}/{REPORT_FILE}"}
