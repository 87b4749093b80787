"""CLI commands to browse the archive: `rig ls`, `rig show`, `rig diff`, `rig rm`, `rig report`.

`add_parsers(subparsers)` registers them on the `rig` argparse parser; each handler is stored as the
sub-parser's `handler` default, prints, and returns an exit code. `RigError`s propagate to `rig.cli`, which prints
`error: <message>` and exits 2. Heavy modules are imported inside the handlers so `rig --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from rig.errors import RigError


def _archive_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive", metavar="DIR", default=None,
                   help="archive folder (default: $RIG_ARCHIVE, else ./sessions)")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `ls`, `show`, `diff`, `rm` and `report` on `subparsers` (from `parser.add_subparsers()`)."""
    p = subparsers.add_parser("ls", help="list sessions, newest first",
                              description="List the sessions of an archive, newest first, with key results.")
    _archive_arg(p)
    p.add_argument("--status", help="only these statuses, e.g. completed or failed,stale")
    p.add_argument("--protocol", help="only this protocol name (globs allowed)")
    p.add_argument("--subject", help="only this subject, whole (open_clip:ViT-B-32:random) or a part (ViT-B-32)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only sessions whose resolved setting KEY equals VALUE, e.g. stimuli.n=300 (repeatable)")
    p.add_argument("--sweep", metavar="ID", help="only the sessions of this sweep (id or a unique part of it)")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.set_defaults(handler=cmd_ls)

    p = subparsers.add_parser("show", help="show one session",
                              description="What a session ran, its status, steps, key results, files and error.")
    _archive_arg(p)
    p.add_argument("session", help="session id, unique part of an id, folder path, or 'latest'")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=cmd_show)

    p = subparsers.add_parser("diff", help="compare two sessions",
                              description="Settings, provenance and key results that differ between two sessions.")
    _archive_arg(p)
    p.add_argument("a", help="first session")
    p.add_argument("b", help="second session")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_diff)

    p = subparsers.add_parser("rm", help="delete sessions", description="Delete session folders for good.")
    _archive_arg(p)
    p.add_argument("sessions", nargs="+", metavar="SESSION", help="sessions to delete")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true", help="also delete sessions that are running now")
    p.set_defaults(handler=cmd_rm)

    p = subparsers.add_parser("report", help="write HTML reports",
                              description="Write or refresh report.html of sessions and the archive's index.html.")
    _archive_arg(p)
    p.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to report (default: all)")
    p.add_argument("--embed", action="store_true", help="embed figures in the page instead of linking them")
    p.add_argument("--out", metavar="DIR", help="write the reports to DIR/<id>/report.html and DIR/index.html "
                   "instead of into the archive (e.g. a read-only one)")
    p.set_defaults(handler=cmd_report)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as a plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[_text(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in rows if r[i] is not None) and any(r[i] is not None for r in rows)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _jsonable(v: Any) -> Any:
    """Plain JSON values: datetimes as ISO strings, NaN/inf as null."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _print_json(data: Any) -> None:
    print(json.dumps(_jsonable(data), indent=2, allow_nan=False, default=str))


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """`["stimuli.n=300", ...]` as `{"stimuli.n": "300"}`; raises RigError on an item without `=`."""
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RigError(f"--where {item!r} is not KEY=VALUE; write e.g. --where subject.weights=random")
        where[key.strip()] = value.strip()
    return where


def cmd_ls(args: argparse.Namespace) -> int:
    from rig.archive import Archive

    archive = Archive(args.archive)
    rows = archive.records(status=args.status, protocol=args.protocol, subject=args.subject,
                           where=parse_where(args.where), sweep=args.sweep)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no sessions in {archive.root}" + (" match" if (args.status or args.protocol or args.subject
                                                                or args.where or args.sweep) else ""))
        return 0
    headers = [h for h in dict.fromkeys(k for r in rows for k in r) if h != "sweep" or any(r.get(h) for r in rows)]
    # in a terminal (or with $COLUMNS) the table fits its width; piped, it keeps every column
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() or os.environ.get("COLUMNS") else 10 ** 6
    shown = fit_columns(headers, rows, width)
    table = [[r.get(h) for h in shown] for r in rows]
    over = sum(_width(h, rows) for h in shown) - 2 - width
    if over > 0 and "subject" in shown:  # even the essential columns are too wide: shorten the subjects
        i, keep = shown.index("subject"), max(_width("subject", rows) - 2 - over, 12)
        for row in table:
            text = _text(row[i])
            row[i] = text if len(text) <= keep else text[:keep - 1] + "…"
    print(format_table(shown, table))
    hidden = len(headers) - len(shown)
    if hidden:
        print(f"({_count(hidden, 'more column')}: `rig show ID`, `rig ls --json`, or a wider terminal)")
    return 0


#: `rig ls` columns kept first when the terminal is narrow; protocol and created are also in the id
_LS_PRIORITY = ("id", "status", "subject", "seconds")
_LS_LAST = ("protocol", "created")


def fit_columns(headers: Sequence[str], rows: Sequence[dict[str, Any]], width: int) -> list[str]:
    """The columns of `rig ls` that fit in `width` characters, in their own order: id, status, subject and
    seconds always, then key results in order while they fit, then protocol and created (which the id
    repeats)."""
    ranked = [h for h in _LS_PRIORITY if h in headers]
    ranked += [h for h in headers if h not in _LS_PRIORITY and h not in _LS_LAST]
    ranked += [h for h in _LS_LAST if h in headers]
    chosen, used = set(), 0
    for h in ranked:
        if h in _LS_PRIORITY or used + _width(h, rows) <= width + 2:
            chosen.add(h)
            used += _width(h, rows)
    return [h for h in headers if h in chosen]


def _width(header: str, rows: Sequence[dict[str, Any]]) -> int:
    """Characters a column takes in `format_table`, with the two spaces between columns."""
    return max([len(header)] + [len(_text(r.get(header))) for r in rows]) + 2


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cmd_show(args: argparse.Namespace) -> int:
    from rig.archive import Archive, human_bytes

    info = Archive(args.archive).find(args.session)
    if args.json:
        _print_json(info.to_dict())
        return 0
    out = [f"session   {info.id}", f"path      {info.path}", f"status    {info.status}"
           + (f" (recorded: {info.recorded_status})" if info.status != info.recorded_status else ""),
           f"protocol  {info.protocol_name}"]
    if info.description:
        out.append(f"          {info.description}")
    if info.sweep:
        point = info.session.get("point") or {}
        out.append(f"sweep     {info.sweep} (point {point.get('index')}: {point.get('label')})")
    out += [f"subject   {info.subject}", f"created   {_text(info.created)} UTC",
            f"updated   {_text(info.updated)} UTC", f"wall time {_text(info.seconds)} s",
            f"host/pid  {info.host or ''} {info.pid or ''}".rstrip()]
    if info.error:
        e = info.error
        out += ["", f"error in step {e.get('step')}: {e.get('type')}: {e.get('message')}"]
    if info.status in ("failed", "interrupted", "stale"):
        from rig.session import resume_advice

        out.append(resume_advice(info.path) or "")
    out += ["", "steps:", format_table(
        ["step", "status", "started", "finished", "seconds"],
        [[name, s.get("status"), s.get("started"), s.get("finished"), s.get("seconds")]
         for name, s in info.steps.items()])]
    notes = [f"  {name}: {w}" for name, s in info.steps.items() for w in s.get("warnings") or []]
    if notes:
        out += ["", "notes (warnings the steps raised):", *notes]
    if info.headline:
        out += ["", "key results:", format_table(["result", "value"], list(info.headline.items()))]
    files = info.files
    out += ["", "files:", format_table(["file", "size"], [[p, human_bytes(n)] for p, n in files]),
            f"total {human_bytes(sum(n for _p, n in files))}"]
    print("\n".join(out))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from rig.archive import Archive

    d = Archive(args.archive).diff(args.a, args.b)
    if args.json:
        _print_json(d)
        return 0
    rows = [[f"{section}: {key}" if section != "settings" else key, va, vb]
            for section in ("settings", "provenance", "headline") for key, (va, vb) in d[section].items()]
    if not rows:
        print(f"{d['a']} and {d['b']} have the same settings, provenance and key results")
        return 0
    print(format_table(["", d["a"], d["b"]], rows))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from rig.archive import Archive, SessionBusyError, human_bytes
    from rig.io import check_writable
    from rig.report import INDEX_FILE, write_index

    archive = Archive(args.archive)
    infos = list({i.path.resolve(): i for i in (archive.find(r) for r in args.sessions)}.values())
    busy = [i.id for i in infos if i.live]
    if busy and not args.force:  # refuse before deleting anything
        raise SessionBusyError(f"running now: {', '.join(busy)}; stop them first or pass --force")
    for i in infos:  # refuse before deleting anything: a read-only folder would be left half-deleted
        for folder in [i.path.parent, *(Path(d) for d, _, _ in os.walk(i.path))]:
            check_writable(folder, "folder", f"nothing was deleted; {i.id} is in a folder you cannot change")
    total = sum(i.disk_bytes() for i in infos)
    if not args.yes:
        if not sys.stdin.isatty():
            raise RigError(f"refusing to delete {len(infos)} session(s) without confirmation; pass --yes")
        names = "\n  ".join(i.id for i in infos)
        try:
            answer = input(f"delete {len(infos)} session(s), {human_bytes(total)}:\n  {names}\n[y/N] ")
        except EOFError:  # Ctrl-D: no
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    freed = 0
    for i in infos:
        n = archive.remove(i.path, force=args.force)
        freed += n
        print(f"removed {i.id} ({human_bytes(n)})")
    print(f"freed {human_bytes(freed)}")
    if (archive.root / INDEX_FILE).is_file():
        write_index(archive.root)  # no dead links left behind
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rig.archive import Archive
    from rig.report import write_reports

    archive = Archive(args.archive)
    if not args.sessions and not archive.root.is_dir():
        what = "is a file, not an archive folder" if archive.root.exists() else "does not exist"
        raise RigError(f"archive {archive.root} {what}; pass --archive DIR with the folder that holds the sessions, "
                       "or set $RIG_ARCHIVE")
    for path in write_reports(archive.root, args.sessions, embed=args.embed, out=args.out):
        print(path)
    return 0
