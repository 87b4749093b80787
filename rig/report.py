"""Static HTML pages for a session (`report.html`) and for an archive (`index.html`).

Self-contained: inline CSS, no scripts, no network; figures are linked relatively (`figures/x.png`) so a
copied session folder keeps working, or embedded as data URIs with `embed=True`. Every string that comes
from a user or a file is escaped.
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from rig.archive import Archive, SessionInfo, flatten, human_bytes, parse_time
from rig.io import check_writable, write_text
from rig.layout import FIGURES_DIR, PROTOCOL_FILE, REPORT_FILE

INDEX_FILE = "index.html"
REFRESH_RUNNING_S = 10  # a running session's report reloads itself this often

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1240px;
padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
p{max-width:60em}
table{border-collapse:collapse;margin:.5em 0;max-width:100%}td,th{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}td.long{overflow-wrap:anywhere}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.time{white-space:nowrap}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:12.5px}code{font-size:12.5px;overflow-wrap:anywhere}
.status{display:inline-block;padding:.05em .55em;border-radius:.8em;font-weight:600;color:#fff;background:#888}
.completed{background:#2e7d32}.failed{background:#c62828}.running{background:#1565c0}
.stale{background:#ef6c00}.interrupted{background:#6d4c41}.done{background:#2e7d32}.pending{background:#9e9e9e}
h3{font-size:1.05em;margin:1.6em 0 .2em}
figure{display:block;margin:.8em 0 1.6em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:14px;color:#333;max-width:60em;margin-top:.3em}.muted{color:#777}
.results{font-size:13px}.results span{white-space:nowrap}
"""


def _fmt(value: Any) -> str:
    """A value as short text: floats to 4 significant digits, lists/dicts as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


class _Html(str):
    """Text that is already HTML (built here from escaped parts): table cells insert it as is."""


def _cell(value: Any) -> str:
    if isinstance(value, _Html):
        return f"<td>{value}</td>"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric:
        return f'<td class="num">{escape(_fmt(value))}</td>'
    if isinstance(value, datetime):
        return f'<td class="time">{escape(_fmt(value))}</td>'
    text = _fmt(value)  # a long value (a path, a list) may break anywhere rather than widen the page
    return f'<td class="long">{escape(text)}</td>' if len(text) > 30 else f"<td>{escape(text)}</td>"


def _table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table (no header row when `headers` is None); every cell is escaped unless it is `_Html`."""
    head = "" if headers is None else "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead>"
    body = ["<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows]
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _status(status: str) -> _Html:
    return _Html(f'<span class="status {escape(status, quote=True)}">{escape(status)}</span>')


def _href(relpath: str) -> str:
    """A relative URL for a posix path inside the session folder (quoted, then attribute-escaped)."""
    return escape(quote(relpath), quote=True)


def _page(title: str, body: str, refresh_s: int | None = None, base: Path | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    # a page written outside its session folder resolves its relative links (figures, files) against it
    base_tag = f'<base href="{escape(base.resolve().as_uri(), quote=True)}/">' if base is not None else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # blocks every network fetch: the page must stand alone (images from files or data URIs only)
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data: file:;"
        " style-src 'unsafe-inline'\">"
        f"{base_tag}{refresh}<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _plural(n: int, word: str) -> str:
    """`1 session`, `2 sessions`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _figure(info: SessionInfo, relpath: str, embed: bool, number: int, caption: str = "") -> str:
    if embed:
        data = base64.b64encode((info.path / relpath).read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = _href(relpath)
    name = escape(Path(relpath).stem)
    text = escape(caption) if caption else "(no caption)"
    return (f'<figure><img src="{src}" alt="{escape(caption, quote=True) or name}"><figcaption><strong>Figure '
            f'{number}.</strong> {text} <span class="muted">({name})</span></figcaption></figure>')


def _figures_by_step(info: SessionInfo, figures: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The session's figures grouped by the step that drew them, in the order the steps ran, each with its
    caption; figures no step claims (folders written before captions existed) come last, by name."""
    present, claimed, groups = set(figures), set(), []
    for key, step in info.steps.items():
        captions = step.get("figures") or {}
        own = [p for p in (step.get("outputs") or []) if p in present and p not in claimed]
        if own:
            claimed.update(own)
            groups.append((key, [(p, str(captions.get(p) or "")) for p in own]))
    rest = [(p, "") for p in figures if p not in claimed]
    if rest:
        groups.append(("other figures", rest))
    return groups


def _step_about(key: str, resolved: Mapping[str, Any]) -> str:
    """One sentence on what step `key` (`design`, `analyse/<name>`) does: its step type's description."""
    section, _, name = key.partition("/")
    step_type = section
    if name and isinstance(resolved.get(section), list):
        step_type = next((str(e.get("type")) for e in resolved[section]
                          if isinstance(e, Mapping) and (e.get("name") or e.get("type")) == name), "")
    try:
        from rig.steps import steps

        step = steps.get(step_type)
    except Exception:  # noqa: BLE001  (a report never fails for want of a description)
        step = None
    return step.description.split(". ")[0].rstrip(".") + "." if step is not None and step.description else ""


def session_report_html(info: SessionInfo, embed: bool = False, index_link: bool | None = None,
                        elsewhere: Path | None = None) -> str:
    """The HTML text of a session's report (see `write_session_report`); `elsewhere`: the folder the page is
    written to when it is not the session's own (its links then resolve against the session folder)."""
    if index_link is None:
        index_link = (info.path.parent / INDEX_FILE).is_file()
    index_href = "../index.html" if elsewhere is None else (elsewhere.parent / INDEX_FILE).resolve().as_uri()
    protocol_toml = ""
    toml_path = info.path / PROTOCOL_FILE
    if toml_path.is_file():
        protocol_toml = toml_path.read_text(encoding="utf-8", errors="replace")
    files = info.files
    figures = [p for p, _n in files if p.startswith(f"{FIGURES_DIR}/") and p.lower().endswith(".png")]
    parts = [
        f"<p class=\"muted\"><a href=\"{escape(index_href, quote=True)}\">archive index</a></p>" if index_link else "",
        f"<h1>{escape(info.protocol_name or info.id)}</h1>",
        f"<p>{_status(info.status)} <code>{escape(info.id)}</code></p>",
    ]
    if info.description:
        parts.append(f"<p>{escape(info.description)}</p>")
    rows = [("subject", info.subject), ("created", info.created), ("updated", info.updated),
            ("heartbeat", info.heartbeat), ("wall time (s)", info.seconds), ("host", info.host), ("pid", info.pid)]
    if info.sweep:  # a point of a sweep: link the sweep's page
        from rig.sweep_report import sweep_of

        of = sweep_of(info)
        rows.insert(0, ("sweep", _Html(f'<a href="{_href(of["report"])}">{escape(of["id"])}</a> point '
                                       f'{escape(str(of["index"]))}: {escape(str(of["label"]))}')))
    parts.append(_table(None, rows))
    if info.error:
        e = info.error
        parts.append("<h2>Error</h2>")
        parts.append(f"<p>in step <code>{escape(_fmt(e.get('step')))}</code>: "
                     f"<strong>{escape(_fmt(e.get('type')))}</strong>: {escape(_fmt(e.get('message')))}</p>")
        if e.get("traceback"):
            parts.append(f"<pre>{escape(_fmt(e.get('traceback')))}</pre>")
    if info.headline:
        parts.append("<h2>Key results</h2>")
        parts.append(_table(["result", "value"], info.headline.items()))
    notes = [(name, w) for name, s in info.steps.items() for w in s.get("warnings") or []]
    if notes:
        parts.append("<h2>Notes</h2>")
        parts.append(_table(["step", "warning"], notes))
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.append("<p class=\"muted\">By step, in the order the steps ran; each caption says what is "
                     "plotted.</p>")
        number = 0
        for key, group in _figures_by_step(info, figures):
            parts.append(f"<h3>{escape(key)}</h3>")
            about = _step_about(key, info.resolved)
            if about:  # `code` in a docstring as <code>
                parts.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(about)) + "</p>")
            for p, caption in group:
                number += 1
                parts.append(_figure(info, p, embed, number, caption))
    parts.append("<h2>Steps</h2>")
    parts.append(_table(
        ["step", "status", "started", "finished", "seconds", "outputs"],
        [(name, _status(str(s.get("status", ""))), parse_time(s.get("started")), parse_time(s.get("finished")),
          s.get("seconds"), ", ".join(map(str, s.get("outputs") or []))) for name, s in info.steps.items()],
    ))
    parts.append("<h2>Protocol</h2>")
    parts.append(f"<pre>{escape(protocol_toml)}</pre>" if protocol_toml else "<p class=\"muted\">no protocol.toml</p>")
    parts.append("<h2>Resolved settings</h2>")
    parts.append(_table(["setting", "value"], flatten(info.resolved).items()))
    parts.append("<h2>Provenance</h2>")
    parts.append(_table(["key", "value"], flatten(info.provenance).items()))
    parts.append("<h2>Files</h2>")
    parts.append(_table(["file", "size"], [(_Html(f'<a href="{_href(p)}">{escape(p)}</a>'), human_bytes(n))
                                           for p, n in files]))
    refresh = REFRESH_RUNNING_S if info.status == "running" else None
    return _page(f"{info.protocol_name} - {info.id}", "\n".join(parts), refresh_s=refresh,
                 base=info.path if elsewhere is not None else None)


def write_session_report(session_dir: str | os.PathLike, embed: bool = False,
                         index_link: bool | None = None, out: str | os.PathLike | None = None) -> Path:
    """Write `<session_dir>/report.html` (protocol verbatim, resolved settings, provenance, status and steps,
    error, key results, figures, files) and return its path. `embed=True` puts figures in the page as data
    URIs (one file to mail around) instead of linking `figures/*.png` relatively. The page links back to
    `../index.html` when `index_link` (default: when that file exists). `out`: write the page to
    `<out>/report.html` instead (for a read-only archive); its links still lead into the session folder."""
    info = SessionInfo.read(session_dir)
    elsewhere = Path(out) if out is not None else None
    path = (elsewhere or info.path) / REPORT_FILE
    write_text(path, session_report_html(info, embed=embed, index_link=index_link, elsewhere=elsewhere))
    return path


def index_html(archive: Archive, reports: Path | None = None) -> str:
    """The HTML text of an archive's index (see `write_index`); `reports`: the folder holding the sessions'
    reports as `<id>/report.html` (default: the archive itself)."""
    reports = archive.root if reports is None else reports
    infos = archive.infos()
    rows = []
    for i in infos:
        name = escape(i.id)
        if (reports / i.path.name / REPORT_FILE).is_file():
            name = f'<a href="{_href(i.path.name + "/" + REPORT_FILE)}">{name}</a>'
        results = " · ".join(f"<span>{escape(str(k))}: {escape(_fmt(v))}</span>" for k, v in i.headline.items())
        rows.append([_Html(f"{name} {_status(i.status)}"), i.protocol_name, i.subject, i.created, i.seconds,
                     _Html(f'<span class="results">{results}</span>')])
    body = [f"<h1>Sessions in {escape(str(archive.root))}</h1>",
            f"<p class=\"muted\">{_plural(len(infos), 'session')}, newest first; written "
            f"{escape(_fmt(datetime.now(timezone.utc)))}</p>"]
    body.append(_table(["session", "protocol", "subject", "created", "wall time (s)", "key results"], rows)
                if infos else "<p>No sessions yet: run one with <code>rig run PROTOCOL</code>.</p>")
    sweeps = archive.sweep_dirs()
    if sweeps:  # newest first, like the sessions
        body.append("<h2>Sweeps</h2>")
        body.append(_table(["sweep", "status"], [
            (_Html(f'<a href="{_href(f"sweeps/{d.name}/{REPORT_FILE}")}">{escape(d.name)}</a>'),
             _status(str(json.loads((d / "sweep.json").read_text(encoding="utf-8")).get("status"))))
            for d in reversed(sweeps)]))
    return _page(f"rig sessions - {archive.root}", "\n".join(body))


def write_index(archive_root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write `<archive_root>/index.html` (or `<out>/index.html`): every session (newest first) with status,
    protocol, subject and key results, linked to its `report.html` where one exists. Returns the path."""
    archive = Archive(archive_root)
    folder = Path(out) if out is not None else archive.root
    path = folder / INDEX_FILE
    write_text(path, index_html(archive, reports=folder))
    return path


def write_reports(archive_root: str | os.PathLike, refs: Sequence[str] = (), embed: bool = False,
                  out: str | os.PathLike | None = None) -> list[Path]:
    """Refresh `report.html` of the sessions `refs` (all sessions when empty), then the index; returns the
    paths written, index last. `out`: write them to `<out>/<id>/report.html` and `<out>/index.html` instead
    of into the archive (e.g. a read-only one). Every folder is checked first: nothing is half-written."""
    archive = Archive(archive_root)
    infos = [archive.find(r) for r in refs] if refs else archive.infos()
    indexed = archive.root.is_dir()
    if out is None:
        fix = (f"write the reports elsewhere: `rig report --archive {quote_arg(archive.root)} --out DIR`"
               + (" SESSION..." if refs else ""))
        for folder in [archive.root] * indexed + [i.path for i in infos]:
            check_writable(folder, "folder", fix)
        pages = {i.path: None for i in infos}
    else:
        check_writable(out, "--out folder", "pass --out DIR with a folder you can write")
        pages = {i.path: Path(out) / i.path.name for i in infos}
    written = [write_session_report(i.path, embed=embed, out=pages[i.path],
                                    index_link=indexed and i.path.parent.resolve() == archive.root.resolve())
               for i in infos]
    if not refs and out is None:  # a sweep's page sits in the archive beside its figures
        from rig.sweep_report import write_sweep_report

        written += [write_sweep_report(d, embed=embed) for d in archive.sweep_dirs()]
    if indexed:
        written.append(write_index(archive.root, out=out))
    return written


def quote_arg(path: Path) -> str:
    """A path as one shell word."""
    import shlex

    return shlex.quote(str(path))
