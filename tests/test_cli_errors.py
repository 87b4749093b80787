"""A newcomer's path without dead ends: every CLI failure is one `error:` line that says what to do (exit 2 for
what the user can fix), nothing is half-written, and every printed hint is a command that works as printed."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from archive_fixtures import T0, make_session

from rig import cli
from rig.errors import ProtocolError

ROOT = Path(__file__).resolve().parent.parent

PHANTOM = """\
schema_version = 1
name = "tiny"

[subject]
source = "phantom"

[stimuli]
generator = "circles"
n = 60
diameter = [20, 40]

[record]
sites = ["place", "grid"]

[behaviour]
prompts = ["a stimulus", "an empty image"]
target = "a stimulus"

[[analyse]]
type = "ratemaps"
bins = 6

[[analyse]]
type = "spatial_scores"
shuffles = 3
"""


@pytest.fixture
def proto(tmp_path: Path) -> Path:
    f = tmp_path / "tiny.toml"
    f.write_text(PHANTOM)
    return f


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one `error:` line of a failed command (and nothing else on stderr)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def hint(text: str, verb: str) -> list[str]:
    """The `rig <verb> ...` command quoted in backticks in `text`, as argv after `rig`."""
    m = re.search(rf"`(rig {verb} [^`]*)`", text)
    assert m, text
    return shlex.split(m.group(1))[1:]


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------------------------
# archive faults


def test_archive_naming_a_file_fails_at_once_with_one_line(tmp_path, proto, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not an archive")
    for archive, says in ((afile, "is a file"), (afile / "sub", f"is under the file {afile}")):
        rc, _, err = main(capsys, "run", str(proto), "--archive", str(archive))
        assert rc == 2 and says in error_line(err) and "--archive DIR" in err
    for args in (["ls"], ["show", "x"], ["report"], ["resume", "x"], ["rm", "x", "-y"]):
        rc, _, err = main(capsys, *args, "--archive", str(afile))
        assert rc == 2 and "is a file" in error_line(err), args
    assert afile.read_text() == "not an archive"


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` read-only for the commands run with the yielded argv prefix: by its mode for a normal user,
    by a read-only bind mount in a private mount namespace for root (whom modes do not stop)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield []
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    q = shlex.quote(str(folder))
    prefix = ["unshare", "-m", "bash", "-c", f'mount --bind -o ro {q} {q} && exec "$@"', "bash"]
    if not shutil.which("unshare") or subprocess.run([*prefix, "true"], capture_output=True).returncode:
        pytest.skip("cannot make a folder read-only for root here (no mount namespace)")
    yield prefix


def test_read_only_archive_fails_with_one_line_and_changes_nothing(tmp_path, proto):
    archive = tmp_path / "archive"
    done = make_session(archive, hexid="aaaaaa")
    stopped = make_session(archive, hexid="bbbbbb", status="interrupted", created=T0.replace(hour=20))
    before = listing(archive)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with read_only(archive) as prefix:
        def rig(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*prefix, sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True,
                                  cwd=tmp_path, env=env)

        out = rig("run", str(proto), "--archive", str(archive))
        assert out.returncode == 2 and f"cannot write in archive {archive}" in error_line(out.stderr)
        out = rig("report", "--archive", str(archive))
        assert out.returncode == 2 and "--out DIR" in error_line(out.stderr)
        out = rig("report", "--archive", str(archive), "--out", str(tmp_path / "reports"))  # the fix works
        assert out.returncode == 0, out.stderr
        out = rig("rm", done.name, "--archive", str(archive), "--yes")
        assert out.returncode == 2 and "nothing was deleted" in error_line(out.stderr)
        out = rig("resume", stopped.name, "--archive", str(archive))
        assert out.returncode == 2 and "copy the session" in error_line(out.stderr)
        out = rig("ls", "--archive", str(archive))  # reading works
        assert out.returncode == 0 and done.name in out.stdout
    assert listing(archive) == before
    index = (tmp_path / "reports" / "index.html").read_text()
    assert f'href="{done.name}/report.html"' in index
    report = (tmp_path / "reports" / done.name / "report.html").read_text()
    assert f'<base href="{done.resolve().as_uri()}/">' in report  # its figures and files are the archive's


def test_unexpected_failures_are_one_line_too(monkeypatch, capsys):
    def boom(args):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_schema", boom)
    rc, _, err = main(capsys, "schema")
    assert rc == 1 and error_line(err) == ("error: ValueError: boom second line (a bug in rig; run again with "
                                           "RIG_DEBUG=1 for the traceback, and report it)")

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.nc")

    monkeypatch.setattr(cli, "cmd_schema", full)
    rc, _, err = main(capsys, "schema")
    assert rc == 2 and error_line(err) == "error: /data/x.nc: No space left on device; free some disk space"
    monkeypatch.setenv("RIG_DEBUG", "1")
    with pytest.raises(OSError):
        cli.main(["schema"])


# ----------------------------------------------------------------------------------------------------------
# hints that work as printed


def test_interrupted_run_prints_a_resume_that_works_as_printed(tmp_path, proto, monkeypatch, capsys):
    from rig.steps import get_step

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RIG_ARCHIVE", raising=False)

    def ctrl_c(ctx, spec):
        raise KeyboardInterrupt

    for archive in (["--archive", "my archive"], []):  # a folder with a space, and the default ./sessions
        with monkeypatch.context() as m:
            m.setattr(get_step("record"), "run", ctrl_c)
            rc, _, err = main(capsys, "run", proto.name, *archive, "--quiet")
        assert rc == 130 and "Traceback" not in err
        command = hint(err, "resume")
        assert ("--archive" in command) == bool(archive)
        if archive:
            rc, out, err = main(capsys, *command, "--quiet")
            assert rc == 0 and ": completed" in out, err


def _fail_on_odd_shuffles(monkeypatch) -> None:
    """spatial_scores raises a protocol mistake (as a step may find one only when it runs) for odd shuffles."""
    from rig.protocol import where
    from rig.steps import get_step

    step = get_step("spatial_scores")
    run = step.run

    def checked(ctx, spec):
        if spec.shuffles % 2:
            raise ProtocolError(f"{where(ctx.folder / 'protocol.toml', ('analyse', 1, 'shuffles'))}: "
                                f"analyse.1.shuffles: must be even, got {spec.shuffles}")
        return run(ctx, spec)

    monkeypatch.setattr(step, "run", checked)


def test_a_protocol_mistake_found_by_a_step_is_fixed_by_resume_with_set(tmp_path, proto, monkeypatch, capsys):
    _fail_on_odd_shuffles(monkeypatch)
    archive = tmp_path / "archive"
    rc, _, err = main(capsys, "run", str(proto), "--archive", str(archive), "--quiet")
    line = error_line(err)
    assert rc == 2 and "analyse.1.shuffles: must be even" in line
    (folder,) = archive.iterdir()
    command = hint(line, "resume")
    assert command[-2:] == ["--set", "analyse.1.shuffles=VALUE"] and command[1:4] == [folder.name, "--archive",
                                                                                       str(archive)]
    rc, out, _ = main(capsys, "show", folder.name, "--archive", str(archive))
    assert hint(out, "resume") == command  # rig show gives the same advice, never a bare resume that would fail

    rc, _, err = main(capsys, "resume", folder.name, "--archive", str(archive), "--set", "analyse.1.shufles=4")
    assert rc == 2 and "--set analyse.1.shufles=4: analyse.1.shufles: unknown key; did you mean 'shuffles'" \
        in error_line(err)
    rc, _, err = main(capsys, "resume", folder.name, "--archive", str(archive), "--set", "analyse.0.bins=5")
    line = error_line(err)
    assert rc == 2 and "steps already done (analyse/ratemaps)" in line
    assert hint(line, "rerun") == ["rerun", folder.name, "--archive", str(archive), "--set", "analyse.0.bins=5"]

    rc, out, err = main(capsys, *[c.replace("VALUE", "4") for c in command], "--quiet")
    assert rc == 0 and ": completed" in out, err
    resolved = json.loads((folder / "protocol.resolved.json").read_text())
    assert resolved["analyse"][1]["shuffles"] == 4
    assert json.loads((folder / "overrides.json").read_text()) == ["analyse.1.shuffles=4"]
    (resumed,) = json.loads((folder / "provenance.json").read_text())["resumes"]
    assert resumed["overrides"] == ["analyse.1.shuffles=4"] and "analyse/ratemaps" in resumed["steps_done"]
    rc, out, _ = main(capsys, "show", folder.name, "--archive", str(archive))
    assert "rig resume" not in out  # completed: nothing to advise
    rc, _, err = main(capsys, "resume", folder.name, "--archive", str(archive))
    assert rc == 2 and hint(error_line(err), "rerun") == ["rerun", folder.name, "--archive", str(archive)]


def test_preflight_blames_a_set_override_not_a_file_line(tmp_path, proto, capsys):
    archive = tmp_path / "archive"
    rc, _, err = main(capsys, "run", str(proto), "--archive", str(archive), "--set", 'record.sites=["plaec"]')
    assert rc == 2 and error_line(err).startswith(f"error: {proto} --set record.sites=[\"plaec\"]: record.sites: ")
    assert not archive.exists()


# ----------------------------------------------------------------------------------------------------------
# small things


def _scores(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = xr.Dataset({k: ("cell", rng.normal(size=20)) for k in ("spatial_information", "grid_score",
                                                                  "border_score")})
    (folder / "analyses").mkdir(exist_ok=True)
    table.to_netcdf(folder / "analyses" / "spatial_scores.nc")


def test_compare_writes_into_the_first_session_or_a_named_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "archive"
    a, b = make_session(archive, hexid="aaaaaa"), make_session(archive, hexid="bbbbbb", created=T0.replace(hour=20))
    _scores(a, 0)
    _scores(b, 1)
    rc, out, err = main(capsys, "compare", "aaaaaa", "bbbbbb", "--archive", str(archive))
    assert rc == 0, err
    assert (a / "figures" / "compare-aaaaaa-bbbbbb.png").is_file() and not list(tmp_path.glob("*.png"))
    rc, out, err = main(capsys, "compare", "aaaaaa", "bbbbbb", "--archive", str(archive), "--out", "figs")
    assert rc == 0 and (tmp_path / "figs" / "compare-aaaaaa-bbbbbb.png").is_file(), err
    rc, out, err = main(capsys, "compare", "aaaaaa", "bbbbbb", "--archive", str(archive), "--out", "c.png")
    assert rc == 0 and (tmp_path / "c.png").is_file(), err


def test_ls_fits_the_terminal(tmp_path, capsys, monkeypatch):
    make_session(tmp_path, headline={f"key result {i}": i / 3 for i in range(20)},
                 resolved={"subject": {"source": "factory", "factory": "lab.models.a_long_module_name:build"}})
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = main(capsys, "ls", "--archive", str(tmp_path))
    lines = out.splitlines()
    assert rc == 0 and max(map(len, lines)) <= 80, out
    assert lines[0].split()[:2] == ["id", "status"] and "more columns" in lines[-1]
    monkeypatch.delenv("COLUMNS")  # piped (not a terminal): every column, for tools like `less -S`
    rc, out, _ = main(capsys, "ls", "--archive", str(tmp_path))
    assert "key result 19" in out.splitlines()[0]


def test_sites_of_a_bare_name_that_is_not_open_clip_names_the_other_sources(capsys):
    rc, _, err = main(capsys, "sites", "resnet18")
    line = error_line(err)
    assert rc == 2 and "torchvision:resnet18" in line and "timm:resnet18" in line


def test_set_mistakes_and_the_resolved_protocol(capsys):
    quickstart = ROOT / "protocols" / "quickstart.toml"
    rc, _, err = main(capsys, "run", str(quickstart), "--dry-run", "--set", "stimuli.n=-1")
    assert rc == 2 and error_line(err).startswith(f"error: {quickstart} --set stimuli.n=-1: stimuli.n: ")
    rc, out, _ = main(capsys, "run", str(ROOT / "protocols" / "classifier.toml"), "--dry-run")
    stimuli = json.loads(out)["stimuli"]
    assert {"canvas", "color", "background"} <= set(stimuli)  # the generator's own defaults, resolved


def test_dir_rig_lists_the_public_names():
    import rig

    assert {"run", "open_session", "Session", "Archive", "resume", "load_protocol", "RigError"} <= set(dir(rig))
    assert all(not name.startswith("_") for name in dir(rig))
