"""The `rig` command line: run protocols as sessions, inspect subjects, browse the archive."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import is_user_error


def main(argv: list[str] | None = None) -> int:
    """Run one `rig` command. A failure is one line on stderr, `error: <what went wrong>; <what to do>`: exit 2
    for mistakes the user can fix (and for faults of the environment, e.g. a read-only archive), 1 for a step
    that failed for another reason (its traceback is kept in the session) or a bug in rig (set RIG_DEBUG=1 to
    see the traceback); an interruption exits 130 with the command that finishes the session."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt as e:
        import shlex

        from .archive import archive_option, session_command
        from .session import SessionInterrupted

        if isinstance(e, SessionInterrupted) and Path(str(e)).parent.name == "sweeps":  # a sweep's folder
            print(f"interrupted: sweep {Path(str(e)).name} is marked interrupted; finish it with `rig sweep "
                  f"{shlex.quote(str(args.protocol))}{archive_option(Path(str(e)).parent.parent)}`", file=sys.stderr)
        elif isinstance(e, SessionInterrupted):
            print(f"interrupted: {Path(str(e)).name} is marked interrupted; finish it with "
                  f"`{session_command('resume', str(e))}`", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rig ls | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001  (every failure becomes one line; RIG_DEBUG=1 shows the traceback)
        if os.environ.get("RIG_DEBUG"):
            raise
        message, code = failure(e)
        print("\n".join(f"error: {line}" for line in message.splitlines()), file=sys.stderr)
        return code


def failure(error: Exception) -> tuple[str, int]:
    """The message and exit code for a command that raised `error` (see `main`). A protocol error with several
    problems keeps one line per problem; every other message is one line."""
    from .io import describe_os_error

    if is_user_error(error):
        message, code = str(error), 2
    elif isinstance(error, OSError):
        message, code = describe_os_error(error), 2
    else:
        message, code = f"{type(error).__name__}: {error}", 1
    where = getattr(error, "session_path", None)
    if where is None:
        if code == 1:
            message += " (a bug in rig; run again with RIG_DEBUG=1 for the traceback, and report it)"
        return (message if is_user_error(error) else " ".join(message.split())), code
    from .session import resume_advice

    info = f"session {Path(where).name} failed"
    try:
        advice = resume_advice(where)
    except Exception:  # noqa: BLE001  (the session folder itself is unreadable: say what failed, at least)
        advice = None
    return " ".join(f"{message}; {info}{'; ' + advice if advice else ''}".split()), code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rig", description="A virtual electrophysiology rig for vision networks: "
                                     "design stimuli, record units, analyse, perturb.")
    parser.add_argument("--version", action="version", version=f"rig {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("run", help="run a protocol file as a new session")
    p.add_argument("protocol", help="protocol file (.toml)")
    p.add_argument("--archive", help="archive folder (default $RIG_ARCHIVE or ./sessions)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol setting, e.g. --set stimuli.n=500 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved protocol and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("sweep", help="run a sweep protocol: one session per point, then its [[across]] steps",
                       description="Run one session per point of the protocol's [sweep] table (grid and/or "
                       "points), grouped by a sweep id, then its [[across]] steps over all of them. Running it "
                       "again skips completed points and resumes the others.")
    p.add_argument("protocol", help="protocol file with a [sweep] (or [compare]) table")
    p.add_argument("--archive", help="archive folder (default $RIG_ARCHIVE or ./sessions)")
    p.add_argument("--workers", type=int, metavar="N", help="run the points on a local Dask cluster of N worker "
                   "processes, one thread each (default: one after another in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the points on the Dask scheduler at ADDRESS "
                   "(e.g. tcp://10.0.0.5:8786); its workers must see the archive folder")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="tries more for a point that failed for a reason other than a mistake in it (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every point, e.g. --set stimuli.n=500 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the points (validated) and stop")
    p.add_argument("--new", action="store_true", help="start a new sweep of new sessions, even if this one ran")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_sweep)

    p = sub.add_parser("validate", help="check a protocol file and print what it resolves to")
    p.add_argument("protocol")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("resume", help="finish an interrupted or failed session")
    p.add_argument("session", help="session folder, id or unique id prefix")
    p.add_argument("--archive", help="archive to look the id up in (default $RIG_ARCHIVE or ./sessions)")
    p.add_argument("--force", action="store_true", help="resume even if the code or protocol changed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a protocol setting of a step not done yet, e.g. --set analyse.1.shuffles=10 "
                   "(repeatable; recorded in the session's provenance)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("rerun", help="run a session's resolved protocol again as a new session")
    p.add_argument("session")
    p.add_argument("--archive", help="archive to look the id up in and to write the new session to")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the new session (after the old session's own overrides)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_rerun)

    p = sub.add_parser("sites", help="list the recordable sites of a subject (protocol file or model name)")
    p.add_argument("subject", help="protocol file, or SOURCE:ARCH (e.g. open_clip:ViT-B-32, timm:resnet18, "
                   "torchvision:resnet18, phantom, factory:package.module:callable)")
    p.add_argument("--match", help="only sites matching this glob")
    p.add_argument("--types", help="only sites of these module types, comma-separated (e.g. Conv2d,LayerNorm)")
    p.set_defaults(handler=cmd_sites)

    p = sub.add_parser("compare", help="two sessions' spatial scores side by side (e.g. trained vs random weights)")
    p.add_argument("a", help="session (folder, id or id prefix)")
    p.add_argument("b", help="session to compare with")
    p.add_argument("--archive", help="archive to look the ids up in")
    p.add_argument("--analysis", default="spatial_scores", help="name of the spatial_scores step (default %(default)s)")
    p.add_argument("--out", help="figure file (.png), or a folder to write compare-<a>-<b>.png into (default: "
                   "the first session's figures/ folder)")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("schema", help="print the JSON Schema of protocol files (for editors)")
    p.set_defaults(handler=cmd_schema)

    try:
        from . import archive_cli
    except ImportError:  # pragma: no cover  (archive commands not installed)
        archive_cli = None
    if archive_cli is not None:
        archive_cli.add_parsers(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from . import protocol as protocol_mod
    from .session import run

    proto = protocol_mod.load_protocol(args.protocol, args.overrides)
    if args.dry_run:
        print(json.dumps(proto.resolved(), indent=2))
        return 0
    session = run(args.protocol, archive=args.archive, overrides=args.overrides, progress=not args.quiet)
    print(f"session {session.id}: {session.status}\n  {session.path}")
    if session.sweep:
        from .sweeps import open_sweep

        done = open_sweep(session.path.parent / "sweeps" / session.sweep)
        print(f"compared in sweep {done.id}: {', '.join(p['label'] for p in done.points)}\n  {done.report}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweeps import sweep

    if args.workers is not None and args.scheduler:
        from .errors import RigError

        raise RigError("give --workers (a local cluster) or --scheduler (a running one), not both")
    result = sweep(args.protocol, archive=args.archive, overrides=args.overrides, workers=args.workers,
                   scheduler=args.scheduler, retries=args.retries, progress=not args.quiet, dry_run=args.dry_run,
                   new=args.new)
    if args.dry_run:
        print(f"sweep {result.name}: {len(result.points)} points (id ends -{result.key})\n{result.table()}")
        return 0
    points = result.points
    for p in points:
        print(f"  {p['index']:>3}  {p['status']:<11} {p['label']}  {p.get('session') or ''}"
              + (f"  {p['error']}" if p.get("error") and p["status"] != "completed" else ""))
    done = sum(p["status"] == "completed" for p in points)
    print(f"sweep {result.id}: {result.status} ({done}/{len(points)} points completed)\n  {result.report}")
    if result.status != "completed":
        error = result.info.get("error") or {}
        if error.get("type") != "PointsFailed" and error.get("message"):
            print(f"error: {error.get('type')}: {error['message']}", file=sys.stderr)
        return 1
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .protocol import load_protocol
    from .session import step_keys

    proto = load_protocol(args.protocol, args.overrides)
    print(f"ok: {args.protocol}: protocol {proto.name!r}, steps: {', '.join(step_keys(proto))}")
    if proto.sweep is not None:
        from .sweeps import plan_sweep

        print(f"sweep of {len(plan_sweep(args.protocol, args.overrides).points)} points; `rig sweep "
              f"{args.protocol} --dry-run` lists them")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from .session import resume

    session = resume(args.session, progress=not args.quiet, force=args.force, archive=args.archive,
                     overrides=args.overrides)
    print(f"session {session.id}: {session.status}\n  {session.path}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from .errors import RigError
    from .session import open_session, run

    old = open_session(args.session, archive=args.archive)
    archive = args.archive or old.path.parent
    if (old.path / "protocol.toml").is_file() and old.point is None:  # a sweep point reruns its own protocol
        session = run(old.path / "protocol.toml", archive=archive, overrides=(old.overrides or []) + args.overrides,
                      progress=not args.quiet)
    elif args.overrides:
        raise RigError(f"{old.id} has no protocol file of its own to apply --set to; run its protocol.resolved.json's "
                       "settings as a protocol file of your own")
    else:
        session = run(old.protocol, archive=archive, progress=not args.quiet)
    print(f"session {session.id}: {session.status} (rerun of {old.id})\n  {session.path}")
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    from .sites import catalogue, format_catalogue
    from .subjects import load_subject

    spec = _subject_spec(args.subject)
    try:
        subject = load_subject(**spec)
    except Exception as e:  # noqa: BLE001  (re-raised, with a hint for bare names)
        raise cmd_sites_error(args.subject, e) from None
    infos = catalogue(subject)
    if args.match or args.types:
        from .sites import select_sites

        chosen = select_sites(subject, {"names": [args.match or "*"],
                                        "types": [t.strip() for t in (args.types or "").split(",") if t.strip()]}, infos)
        infos = [i for i in infos if i.name in chosen]
    print(format_catalogue(infos))
    print(f"{len(infos)} sites")
    if args.subject.endswith(".toml") and not (args.match or args.types):
        from .protocol import load_protocol
        from .sites import select_sites

        chosen = select_sites(subject, load_protocol(args.subject).record.sites, infos)
        print(f"{len(chosen)} selected by [record] sites of {args.subject}")
    return 0


def _subject_spec(text: str) -> dict:
    """`[subject]` settings from a protocol file, or from `SOURCE:ARCH` (a bare name means an open_clip arch)."""
    from .errors import RigError
    from .sources import sources

    if text.endswith(".toml") or Path(text).is_file():
        from .protocol import load_protocol

        return load_protocol(text).subject.kwargs()
    source, sep, rest = text.partition(":")
    if not sep:
        source, rest = ("phantom", "") if text == "phantom" else ("open_clip", text)
    if source not in sources:
        raise RigError(f"unknown subject source {source!r} in {text!r}; write SOURCE:ARCH with SOURCE one of "
                       f"{', '.join(sources)} (e.g. torchvision:resnet18, timm:resnet18, open_clip:ViT-B-32)")
    if source == "factory":
        return {"source": "factory", "factory": rest}
    return {"source": source, "arch": rest or None}


def cmd_sites_error(text: str, error: Exception) -> Exception:
    """A `rig sites` error that names the other sources when a bare name is not an open_clip model."""
    from .errors import SubjectError

    if isinstance(error, SubjectError) and ":" not in text and not text.endswith(".toml"):
        return SubjectError(f"{error}; for other libraries write torchvision:{text}, timm:{text} or factory:"
                            "package.module:callable")
    return error


def cmd_compare(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analyses import compare_preparations

    from .errors import RigError
    from .io import atomic_path, check_writable
    from .session import open_session

    sessions = [open_session(ref, archive=args.archive) for ref in (args.a, args.b)]
    key = f"analyses/{args.analysis}"
    scores = []
    for s in sessions:
        results = s.results
        if key not in results:
            raise RigError(f"{s.id} has no {key}.nc (its analyses: {', '.join(results) or 'none'})")
        scores.append(results[key])
    labels = tuple(f"{s.protocol.subject.arch or s.protocol.subject.source}:{s.protocol.subject.weights}"
                   for s in sessions)
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} ({sessions[0].id[-6:]})", f"{labels[1]} ({sessions[1].id[-6:]})")
    name = f"compare-{sessions[0].id[-6:]}-{sessions[1].id[-6:]}.png"
    if args.out is None:
        out = sessions[0].layout.figures_dir / name
    else:
        out = Path(args.out)
        if out.is_dir() or args.out.endswith(("/", os.sep)) or not out.suffix:
            out = out / name
    check_writable(out.parent, "folder", "pass --out FILE.png or --out DIR with a folder you can write")
    fig = compare_preparations(scores[0], scores[1], labels=labels)
    with atomic_path(out) as tmp:  # makes the folder; never leaves half a PNG
        fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    print(f"{out}: {labels[0]} vs {labels[1]}, {args.analysis}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .protocol import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("rig")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
